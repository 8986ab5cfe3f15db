package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	dto "github.com/prometheus/client_model/go"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

var httpEP = []discovery.EndpointPort{eport("http", v1.ProtocolTCP, 8080)}

func TestProxierBuildsModelAndSkips(t *testing.T) {
	headlessSlice := mkSlice("ns", "hl", "hl-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.9", "", readyC))
	headlessSlice.Labels[v1.IsHeadlessService] = ""
	objs := []runtime.Object{
		mkService("ns", "web"),
		mkSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.1", "", readyC)),
		mkService("ns", "dual", withIPs("10.96.0.20", "fd00::20")),
		mkSlice("ns", "dual", "dual-4", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.2", "", readyC)),
		mkSlice("ns", "dual", "dual-6", discovery.AddressTypeIPv6, httpEP, endpoint("fd01::2", "", readyC)),
		mkService("ns", "hl", withIPs("None")),
		headlessSlice,
		mkService("ns", "ext", func(s *v1.Service) {
			s.Spec.Type, s.Spec.ClusterIP, s.Spec.ClusterIPs, s.Spec.ExternalName = v1.ServiceTypeExternalName, "", nil, "example.com"
		}),
		mkService("ns", "other-proxy", withIPs("10.96.0.30"), withLabels(LabelServiceProxyName, "someone-else")),
	}
	fb := &fakeBackend{}
	p, client := start(t, fb, Options{}, objs...)

	m := waitModel(t, fb, "initial model", hasKeys(
		fk("10.96.0.10", 80, dataplane.TCP), fk("10.96.0.20", 80, dataplane.TCP), fk("fd00::20", 80, dataplane.TCP)))
	if calls := fb.snapshot(); !calls[0].full {
		t.Error("first Sync is not a full one")
	}
	if eps := m.Frontends[fk("fd00::20", 80, dataplane.TCP)].Endpoints; len(eps) != 1 || eps[0].IP.String() != "fd01::2" {
		t.Errorf("IPv6 frontend endpoints = %v", eps)
	}
	if got := p.LastSynced(); got.IsZero() {
		t.Error("LastSynced is zero after a successful sync")
	}

	// A labelled Service created later stays skipped (the fake clientset's
	// watch does not filter by label: this is the proxier's own check).
	if _, err := client.CoreV1().Services("ns").Create(bg,
		mkService("ns", "late-other", withIPs("10.96.0.31"), withLabels(LabelServiceProxyName, "x")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Services("ns").Create(bg, mkService("ns", "late", withIPs("10.96.0.40")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "late Service", hasKeys(fk("10.96.0.10", 80, dataplane.TCP), fk("10.96.0.20", 80, dataplane.TCP),
		fk("fd00::20", 80, dataplane.TCP), fk("10.96.0.40", 80, dataplane.TCP)))
}

func TestProxierServiceProxyName(t *testing.T) {
	fb := &fakeBackend{}
	// The EndpointSlice controller copies the Service's labels to its slices.
	labelled := mkSlice("ns", "ours", "ours-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.1", "", readyC))
	labelled.Labels[LabelServiceProxyName] = "nsx"
	start(t, fb, Options{ServiceProxyName: "nsx"},
		mkService("ns", "plain"),
		mkService("ns", "ours", withIPs("10.96.0.50"), withLabels(LabelServiceProxyName, "nsx")),
		labelled,
		mkSlice("ns", "ours", "ours-2", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.2", "", readyC)),
		mkService("ns", "theirs", withIPs("10.96.0.51"), withLabels(LabelServiceProxyName, "other")),
	)
	m := waitModel(t, fb, "only the Service named for us", hasKeys(fk("10.96.0.50", 80, dataplane.TCP)))
	eps := m.Frontends[fk("10.96.0.50", 80, dataplane.TCP)].Endpoints
	if len(eps) != 1 || eps[0].IP.String() != "10.1.0.1" {
		t.Errorf("endpoints = %v, want only those of the slice labelled for us", eps)
	}
}

func TestProxierPointerIdentityAndRemoval(t *testing.T) {
	fb := &fakeBackend{}
	a, b := fk("10.96.0.1", 80, dataplane.TCP), fk("10.96.0.2", 80, dataplane.TCP)
	sliceB := mkSlice("ns", "b", "b-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.2", "", readyC))
	_, client := start(t, fb, Options{},
		mkService("ns", "a", withIPs("10.96.0.1")),
		mkSlice("ns", "a", "a-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.1", "", readyC)),
		mkService("ns", "b", withIPs("10.96.0.2")),
		sliceB,
	)
	m1 := waitModel(t, fb, "initial model", hasKeys(a, b))

	// An endpoint change of b: a keeps its pointer, b gets a new one.
	sliceB = sliceB.DeepCopy()
	sliceB.Endpoints = append(sliceB.Endpoints, endpoint("10.1.0.3", "", readyC))
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(bg, sliceB, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	m2 := waitModel(t, fb, "b with two endpoints", func(m *dataplane.Model) bool {
		return m.Frontends[b] != nil && len(m.Frontends[b].Endpoints) == 2
	})
	if m2.Frontends[a] != m1.Frontends[a] {
		t.Error("unchanged frontend a got a new pointer")
	}
	if m2.Frontends[b] == m1.Frontends[b] {
		t.Error("changed frontend b kept its pointer")
	}
	if len(m1.Frontends[b].Endpoints) != 1 {
		t.Error("the model given to an earlier Sync was modified")
	}

	// A change that makes no difference to the frontend (a label) is
	// recomputed deep-equal and keeps the old pointer.
	n := fb.numEntered()
	svcB, err := client.CoreV1().Services("ns").Get(bg, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svcB.Labels = map[string]string{"team": "x"}
	if _, err := client.CoreV1().Services("ns").Update(bg, svcB, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a Sync for the label change", func() bool { return len(fb.snapshot()) > n })
	m3 := fb.lastOK()
	if m3.Frontends[b] != m2.Frontends[b] || m3.Frontends[a] != m2.Frontends[a] {
		t.Error("deep-equal recomputed frontend got a new pointer")
	}

	// Deleting a Service removes its frontends, and only them.
	if err := client.CoreV1().Services("ns").Delete(bg, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	m4 := waitModel(t, fb, "b removed", hasKeys(a))
	if m4.Frontends[a] != m1.Frontends[a] {
		t.Error("frontend a got a new pointer when b was deleted")
	}

	// Recreated with the same name and IP: back again.
	if _, err := client.CoreV1().Services("ns").Create(bg, mkService("ns", "b", withIPs("10.96.0.2")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "b recreated", hasKeys(a, b))

	// A Service turning headless loses its frontends.
	svcA, err := client.CoreV1().Services("ns").Get(bg, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svcA.Spec.ClusterIP, svcA.Spec.ClusterIPs = v1.ClusterIPNone, []string{v1.ClusterIPNone}
	if _, err := client.CoreV1().Services("ns").Update(bg, svcA, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "a gone headless", hasKeys(b))
}

func TestProxierEndpointSliceChanges(t *testing.T) {
	fb := &fakeBackend{}
	web := fk("10.96.0.10", 80, dataplane.TCP)
	_, client := start(t, fb, Options{}, mkService("ns", "web", withLocal))
	waitModel(t, fb, "Local frontend without endpoints", func(m *dataplane.Model) bool {
		f := m.Frontends[web]
		return f != nil && f.Local && f.IfEmpty == dataplane.Reject && len(f.Endpoints) == 0
	})
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(bg, mkSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, httpEP,
		endpoint("10.1.0.1", "node-b", readyC)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "remote-only endpoints: drop", func(m *dataplane.Model) bool {
		f := m.Frontends[web]
		return f != nil && f.IfEmpty == dataplane.Drop && len(f.Endpoints) == 0
	})
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(bg, mkSlice("ns", "web", "web-2", discovery.AddressTypeIPv4, httpEP,
		endpoint("10.1.0.2", testNode, readyC)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "the local endpoint", func(m *dataplane.Model) bool {
		f := m.Frontends[web]
		return f != nil && len(f.Endpoints) == 1 && f.Endpoints[0].NodeName == testNode
	})
	if err := client.DiscoveryV1().EndpointSlices("ns").Delete(bg, "web-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "local endpoint gone", func(m *dataplane.Model) bool {
		f := m.Frontends[web]
		return f != nil && len(f.Endpoints) == 0 && f.IfEmpty == dataplane.Drop
	})
}

// Changes arriving while a Sync runs are applied together by the next one.
func TestProxierCoalescesChangesDuringSync(t *testing.T) {
	fb := &fakeBackend{}
	release := make(chan struct{})
	fb.setHook(func(ctx context.Context, n int) error {
		if n == 1 {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return nil
	})
	p, client := start(t, fb, Options{})
	waitFor(t, "initial sync", func() bool { return len(fb.snapshot()) == 1 })

	create := func(i int) {
		t.Helper()
		svc := mkService("ns", fmt.Sprintf("s%d", i), withIPs(fmt.Sprintf("10.96.1.%d", i)))
		if _, err := client.CoreV1().Services("ns").Create(bg, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create(0)
	waitFor(t, "the slow Sync to start", func() bool { return fb.numEntered() == 2 })
	const more = 20
	for i := 1; i <= more; i++ {
		create(i)
	}
	waitFor(t, "all changes queued", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.dirty) == more
	})
	close(release)
	waitFor(t, "the coalesced Sync", func() bool { return len(fb.snapshot()) >= 3 })
	calls := fb.snapshot()
	if n := len(calls[1].model.Frontends); n != 1 {
		t.Errorf("slow Sync had %d frontends, want 1", n)
	}
	if n := len(calls[2].model.Frontends); n != more+1 {
		t.Errorf("next Sync had %d frontends, want %d", n, more+1)
	}
	// Nothing is left to do: no further Sync comes. (A bug here shows as
	// extra calls; a slow machine cannot make this fail.)
	time.Sleep(200 * time.Millisecond)
	if n := len(fb.snapshot()); n != 3 {
		t.Errorf("%d Syncs, want 3 (initial, slow, coalesced)", n)
	}
}

// A failed Sync is retried with growing delays and keeps its changes.
func TestProxierRetriesWithBackoff(t *testing.T) {
	fb := &fakeBackend{}
	const failures = 3
	fb.setHook(func(_ context.Context, n int) error {
		if n >= 1 && n <= failures {
			return errors.New("dataplane unavailable")
		}
		return nil
	})
	p, client := start(t, fb, Options{SyncPeriod: time.Hour})
	waitFor(t, "initial sync", func() bool { return len(fb.snapshot()) == 1 })
	if _, err := client.CoreV1().Services("ns").Create(bg, mkService("ns", "web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := waitModel(t, fb, "the change applied after the failures", hasKeys(fk("10.96.0.10", 80, dataplane.TCP)))
	calls := fb.snapshot()
	if len(calls) != failures+2 {
		t.Fatalf("%d Syncs, want %d", len(calls), failures+2)
	}
	for i := 1; i <= failures; i++ {
		if calls[i].err == nil {
			t.Errorf("Sync %d succeeded, want a failure", i)
		}
		if n := len(calls[i].model.Frontends); n != 1 {
			t.Errorf("failed Sync %d had %d frontends, want 1", i, n)
		}
	}
	// Each retry waits at least its backoff (timers never fire early).
	for i := 2; i <= failures+1; i++ {
		gap := calls[i].start.Sub(calls[i-1].start)
		if want := backoff(i-1, time.Hour); gap < want {
			t.Errorf("retry %d came %v after the failure, want >= %v", i-1, gap, want)
		}
	}
	if m != calls[failures+1].model {
		t.Error("last model is not the successful one")
	}
	if h := p.health(time.Now()); !h.Healthy {
		t.Error("unhealthy after the retry succeeded")
	}
	p.mu.Lock()
	pending := len(p.dirty)
	p.mu.Unlock()
	if pending != 0 {
		t.Errorf("%d services still dirty after success", pending)
	}
}

func TestProxierFullResyncEverySyncPeriod(t *testing.T) {
	fb := &fakeBackend{}
	start(t, fb, Options{SyncPeriod: 50 * time.Millisecond}, mkService("ns", "web"))
	waitFor(t, "three full syncs", func() bool {
		full := 0
		for _, c := range fb.snapshot() {
			if c.full {
				full++
			}
		}
		return full >= 3
	})
	calls := fb.snapshot()
	for i, c := range calls {
		if !c.full {
			t.Errorf("Sync %d without changes is not full", i)
		}
		if i > 0 && c.model.Frontends[fk("10.96.0.10", 80, dataplane.TCP)] != calls[0].model.Frontends[fk("10.96.0.10", 80, dataplane.TCP)] {
			t.Errorf("full resync %d replaced an unchanged frontend", i)
		}
		if i > 0 && c.start.Sub(calls[i-1].start) < 50*time.Millisecond {
			t.Errorf("full resync %d came %v after the previous one", i, c.start.Sub(calls[i-1].start))
		}
	}
}

func TestProxierMinSyncPeriod(t *testing.T) {
	fb := &fakeBackend{}
	const minGap = 300 * time.Millisecond
	_, client := start(t, fb, Options{MinSyncPeriod: minGap})
	waitFor(t, "initial sync", func() bool { return len(fb.snapshot()) == 1 })
	for i := range 2 {
		svc := mkService("ns", fmt.Sprintf("s%d", i), withIPs(fmt.Sprintf("10.96.2.%d", i)))
		if _, err := client.CoreV1().Services("ns").Create(bg, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		want := i + 1
		waitModel(t, fb, "the new Service", func(m *dataplane.Model) bool { return len(m.Frontends) == want })
	}
	calls := fb.snapshot()
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].start.Sub(calls[i-1].start); gap < minGap {
			t.Errorf("Sync %d started %v after the previous one, want >= %v", i, gap, minGap)
		}
	}
}

// A frontend the dataplane refuses is counted against its Service and
// reported as a Warning Event on it; the sync is retried.
func TestProxierReportsRefusedFrontend(t *testing.T) {
	fb := &fakeBackend{}
	key := fk("10.96.0.10", 80, dataplane.TCP)
	fb.setHook(func(_ context.Context, n int) error {
		if n == 1 {
			return &dataplane.FrontendErrors{Failed: []dataplane.FrontendError{{Key: key,
				Name: dataplane.ServicePortName{Namespace: "ns", Name: "web", Port: "http"}, Err: errors.New("switch said no")}}}
		}
		return nil
	})
	p, client := start(t, fb, Options{SyncPeriod: time.Hour})
	waitFor(t, "initial sync", func() bool { return len(fb.snapshot()) == 1 })
	if _, err := client.CoreV1().Services("ns").Create(bg, mkService("ns", "web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "the retry after the refusal", hasKeys(key))
	var got dto.Metric
	if err := p.m.frontendRefused.WithLabelValues("ns", "web").Write(&got); err != nil || got.GetCounter().GetValue() != 1 {
		t.Errorf("frontend refused counter = %v (%v), want 1", got.GetCounter().GetValue(), err)
	}
	waitFor(t, "the Warning event on the Service", func() bool {
		evs, err := client.CoreV1().Events("ns").List(bg, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.Reason == "DataplaneRefused" && e.InvolvedObject.Kind == "Service" && e.InvolvedObject.Name == "web" &&
				e.Type == v1.EventTypeWarning && strings.Contains(e.Message, "switch said no") {
				return true
			}
		}
		return false
	})
}

// A frontend neither dataplane serves (refused as ErrUnservable at every
// sync) is reported once, and the proxy stays healthy and does not retry:
// the sync succeeded for everything else.
func TestProxierUnservableFrontendIsNotAFailure(t *testing.T) {
	fb := &fakeBackend{}
	key := fk("10.96.0.10", 80, dataplane.TCP)
	fb.setHook(func(_ context.Context, n int) error {
		if n == 0 {
			return nil
		}
		return &dataplane.FrontendErrors{Failed: []dataplane.FrontendError{{Key: key,
			Name: dataplane.ServicePortName{Namespace: "ns", Name: "web", Port: "http"}, Err: fmt.Errorf("frontend %s: %w", key, dataplane.ErrSCTPPortRewrite)}}}
	})
	const period = 100 * time.Millisecond
	p, client := start(t, fb, Options{SyncPeriod: period})
	waitFor(t, "initial sync", func() bool { return len(fb.snapshot()) == 1 })
	if _, err := client.CoreV1().Services("ns").Create(bg, mkService("ns", "web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the Service in a Sync", func() bool {
		calls := fb.snapshot()
		return hasKeys(key)(calls[len(calls)-1].model)
	})
	// Several full syncs, each refusing it again.
	n := len(fb.snapshot())
	waitFor(t, "five more syncs", func() bool { return len(fb.snapshot()) >= n+5 })
	if h := p.health(time.Now()); !h.Healthy {
		t.Errorf("unhealthy with only an unservable frontend refused: %+v", h)
	}
	var got dto.Metric
	if err := p.m.frontendRefused.WithLabelValues("ns", "web").Write(&got); err != nil || got.GetCounter().GetValue() != 1 {
		t.Errorf("frontend refused counter = %v (%v), want 1: reported once", got.GetCounter().GetValue(), err)
	}
	if err := p.m.syncFailures.Write(&got); err != nil || got.GetCounter().GetValue() != 0 {
		t.Errorf("sync failures = %v (%v), want 0", got.GetCounter().GetValue(), err)
	}
}

// NodePorts follow the Node's InternalIP: registered after the proxy
// started, then changed.
func TestProxierNodePortFollowsNodeAddress(t *testing.T) {
	fb := &fakeBackend{}
	svc := mkService("ns", "web", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	})
	_, client := start(t, fb, Options{}, svc)
	waitModel(t, fb, "the ClusterIP frontend, no NodePort before the Node exists", func(m *dataplane.Model) bool {
		return len(m.Frontends) == 1 && m.Frontends[fk("10.96.0.10", 80, dataplane.TCP)] != nil
	})
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
		{Type: v1.NodeHostName, Address: "node-a"}, {Type: v1.NodeInternalIP, Address: "10.0.100.2"},
		{Type: v1.NodeInternalIP, Address: "10.0.100.3"}}}}
	if _, err := client.CoreV1().Nodes().Create(bg, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "the NodePort on the first InternalIP", func(m *dataplane.Model) bool {
		f := m.Frontends[fk("10.0.100.2", 30080, dataplane.TCP)]
		return len(m.Frontends) == 2 && f != nil && f.Kind == dataplane.NodePort && f.SNAT == netip.MustParseAddr("10.0.100.2")
	})
	node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.100.9"}}
	if _, err := client.CoreV1().Nodes().UpdateStatus(bg, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "the NodePort moved to the new address", func(m *dataplane.Model) bool {
		return len(m.Frontends) == 2 && m.Frontends[fk("10.0.100.9", 30080, dataplane.TCP)] != nil
	})
}
