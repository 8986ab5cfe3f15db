package proxy

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// Desired builds from one List what the running proxier builds from its
// informers: nsxctl's drift column depends on it.
func TestDesiredIsTheProxiersModel(t *testing.T) {
	headlessSlice := mkSlice("ns", "hl", "hl-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.9", "", readyC))
	headlessSlice.Labels[v1.IsHeadlessService] = ""
	objs := []runtime.Object{
		mkService("ns", "web"),
		mkSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.1", "", readyC), endpoint("10.1.0.3", "", readyC)),
		mkService("ns", "dual", withIPs("10.96.0.20", "fd00::20")),
		mkSlice("ns", "dual", "dual-4", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.2", "", readyC)),
		mkSlice("ns", "dual", "dual-6", discovery.AddressTypeIPv6, httpEP, endpoint("fd01::2", "", readyC)),
		mkService("ns", "hl", withIPs("None")),
		headlessSlice,
		mkService("ns", "empty", withIPs("10.96.0.50")),
		mkService("ns", "other-proxy", withIPs("10.96.0.30"), withLabels(LabelServiceProxyName, "someone-else")),
	}
	fb := &fakeBackend{}
	_, client := start(t, fb, Options{NodeName: "n1"}, objs...)
	want := waitModel(t, fb, "initial model", hasKeys(fk("10.96.0.10", 80, dataplane.TCP), fk("10.96.0.20", 80, dataplane.TCP),
		fk("fd00::20", 80, dataplane.TCP), fk("10.96.0.50", 80, dataplane.TCP)))
	got, err := Desired(bg, client, Options{NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Frontends) != len(want.Frontends) {
		t.Fatalf("Desired has %d frontends, the proxier %d: %v", len(got.Frontends), len(want.Frontends), got.Frontends)
	}
	for k, f := range want.Frontends {
		if g := got.Frontends[k]; g == nil || !frontendEqual(g, f) {
			t.Errorf("frontend %s: Desired %+v, proxier %+v", k, g, f)
		}
	}
}
