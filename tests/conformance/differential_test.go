package conformance_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/proxy"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
)

var (
	diffSeed   = flag.Uint64("differential.seed", 1, "seed of the differential test's first round")
	diffRounds = flag.Int("differential.rounds", 4, "random models each dataplane is given in turn (make fuzz runs many)")
)

// The differential test: random Services and EndpointSlices (IPv4, IPv6
// or dual-stack, ports, protocols, endpoint conditions and nodes, affinity,
// traffic policy, empty sets), through the model code nsx-kube-proxy runs, are synced in turn to
// each dataplane on one node; real connections from pods then check every
// outcome against the model (an allowed backend, reject or drop, the
// client's address preserved, affinity) and the dataplanes against each
// other. Seeded: a failure names the seed that reproduces it.
func TestDifferential(t *testing.T) {
	e := conformance.NewEnv(t)
	w := newWorld(t, e)
	rounds := make([]*round, *diffRounds)
	for i := range rounds {
		rounds[i] = generate(*diffSeed+uint64(i), w)
	}
	outcomes := map[string]map[string]string{} // dataplane -> observation -> outcome class
	for _, dp := range []struct {
		name string
		f    conformance.Factory
	}{{"ovs", conformance.OVS}, {"ebpf", conformance.EBPF()}} {
		inst := dp.f(t, e)
		outcomes[dp.name] = map[string]string{}
		for _, r := range rounds {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := inst.Backend.Sync(ctx, r.model, dataplane.SyncOptions{})
			cancel()
			if err != nil {
				t.Fatalf("%s, seed %d: Sync: %v", dp.name, r.seed, err)
			}
			for k, v := range w.observe(t, dp.name, r) {
				outcomes[dp.name][k] = v
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := inst.Backend.Cleanup(ctx); err != nil {
			t.Fatalf("%s: Cleanup: %v", dp.name, err)
		}
		cancel()
		if left := inst.Leftovers(); len(left) > 0 {
			t.Fatalf("%s: left after Cleanup: %v", dp.name, left)
		}
		inst.Close()
	}
	var diffs []string
	for k, o := range outcomes["ovs"] {
		if e := outcomes["ebpf"][k]; e != o {
			diffs = append(diffs, fmt.Sprintf("%s: ovs %s, ebpf %s", k, o, e))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("the dataplanes disagree on %d of %d observations:\n%s", len(diffs), len(outcomes["ovs"]), strings.Join(diffs, "\n"))
	}
	v6 := 0
	for k := range outcomes["ovs"] {
		if strings.Contains(k, "[") { // an IPv6 frontend's address and port
			v6++
		}
	}
	t.Logf("%d rounds from seed %d, %d observations per dataplane, %d of them of IPv6 frontends", len(rounds), *diffSeed, len(outcomes["ovs"]), v6)
}

// world is the node's pods (dual-stack): backends serving on two ports,
// and clients.
type world struct {
	backends []*conformance.Pod
	nodeOf   map[*conformance.Pod]string // a backend's node in the slices
	clients  []*conformance.Pod          // the last one is also a backend (hairpin)
}

var servedPorts = []uint16{8080, 8081}

func newWorld(t *testing.T, e *conformance.Env) *world {
	w := &world{nodeOf: map[*conformance.Pod]string{}}
	for i := 0; i < 5; i++ {
		vlan := 101 + i%2
		p := e.AddPod(fmt.Sprintf("b%d", i), vlan, 10+i)
		for _, port := range servedPorts {
			p.ServeByAddress(t, port)
		}
		w.backends = append(w.backends, p)
		// Endpoints of the first three are on this node: what
		// internalTrafficPolicy Local keeps.
		w.nodeOf[p] = conformance.NodeName
		if i >= 3 {
			w.nodeOf[p] = "node2"
		}
	}
	w.clients = []*conformance.Pod{e.AddPod("c0", 101, 50), e.AddPod("c1", 102, 51), w.backends[0]}
	return w
}

// round is one random model and what it was built from.
type round struct {
	seed  uint64
	model *dataplane.Model
}

// generate builds a random model from API objects with the model code
// nsx-kube-proxy runs (proxy.BuildFrontends).
func generate(seed uint64, w *world) *round {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	m := &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{}}
	for s := 0; s < 1+r.IntN(3); s++ {
		svc, epSlices := randomService(r, s, w)
		for k, f := range proxy.BuildFrontends(svc, epSlices, proxy.Node{Name: conformance.NodeName,
			Addresses: []netip.Addr{conformance.NodeIP, conformance.NodeIP6}}) {
			m.Frontends[k] = f
		}
	}
	return &round{seed: seed, model: m}
}

// randomService is a Service of one family or both (its families in
// random order, as either may be a dual-stack Service's primary) with an
// EndpointSlice per family, of the same pods in the same states, as the
// EndpointSlice controller writes them.
func randomService(r *rand.Rand, i int, w *world) (*corev1.Service, []*discoveryv1.EndpointSlice) {
	name := fmt.Sprintf("svc%d", i)
	vips := map[conformance.Family]string{conformance.IPv4: fmt.Sprintf("10.96.77.%d", 10+i), conformance.IPv6: fmt.Sprintf("fd00:10:96:77::%d", 10+i)}
	fams := [][]conformance.Family{{conformance.IPv4}, {conformance.IPv6},
		{conformance.IPv4, conformance.IPv6}, {conformance.IPv6, conformance.IPv4}}[r.IntN(4)]
	itp := corev1.ServiceInternalTrafficPolicyCluster
	if r.IntN(3) == 0 {
		itp = corev1.ServiceInternalTrafficPolicyLocal
	}
	familyPolicy := corev1.IPFamilyPolicySingleStack
	if len(fams) > 1 {
		familyPolicy = corev1.IPFamilyPolicyRequireDualStack
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: vips[fams[0]], InternalTrafficPolicy: &itp, IPFamilyPolicy: &familyPolicy},
	}
	for _, f := range fams {
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, vips[f])
		svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, map[conformance.Family]corev1.IPFamily{
			conformance.IPv4: corev1.IPv4Protocol, conformance.IPv6: corev1.IPv6Protocol}[f])
	}
	if r.IntN(3) == 0 {
		timeout := int32(60 + r.IntN(600))
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
	}
	var epSlices []*discoveryv1.EndpointSlice
	for _, f := range fams {
		epSlices = append(epSlices, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("%s-%s", name, f), Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: map[conformance.Family]discoveryv1.AddressType{conformance.IPv4: discoveryv1.AddressTypeIPv4, conformance.IPv6: discoveryv1.AddressTypeIPv6}[f],
		})
	}
	// One or two ports, TCP or UDP, each to one of the served ports.
	for j, n := 0, 1+r.IntN(2); j < n; j++ {
		proto := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}[r.IntN(2)]
		pname := fmt.Sprintf("p%d", j)
		target := int32(servedPorts[r.IntN(len(servedPorts))])
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: pname, Port: int32(80 + j), Protocol: proto,
			TargetPort: intstr.FromInt32(target)})
		for _, s := range epSlices {
			s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: &pname, Port: &target, Protocol: &proto})
		}
	}
	// Endpoints: a random subset (maybe none), each in one of the states
	// the model treats differently.
	for _, p := range w.backends {
		if r.IntN(2) == 0 {
			continue
		}
		ready, serving, terminating := true, true, false
		switch r.IntN(5) {
		case 0: // terminating but still serving: the fallback when nothing is ready
			ready, terminating = false, true
		case 1: // terminating, not serving: never used
			ready, serving, terminating = false, false, true
		case 2: // not ready
			ready, serving = false, false
		}
		node := w.nodeOf[p]
		for k, f := range fams {
			epSlices[k].Endpoints = append(epSlices[k].Endpoints, discoveryv1.Endpoint{Addresses: []string{p.Addr(f).String()}, NodeName: &node,
				Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating}})
		}
	}
	return svc, epSlices
}

// observe makes connections from every client to every frontend, checks
// each against the model and returns its outcome class by observation.
func (w *world) observe(t *testing.T, dp string, r *round) map[string]string {
	t.Helper()
	out := map[string]string{}
	keys := make([]dataplane.FrontendKey, 0, len(r.model.Frontends))
	for k := range r.model.Frontends {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		f := r.model.Frontends[k]
		allowed := map[string]bool{}
		for _, e := range f.Endpoints {
			allowed[e.AddrPort().String()] = true
		}
		for _, c := range w.clients {
			obs := fmt.Sprintf("seed %d %s from %s", r.seed, k, c.Name)
			class, err := w.connect(c, f, allowed)
			if err != nil {
				t.Errorf("%s, %s: %v", dp, obs, err)
			}
			out[obs] = class
		}
	}
	return out
}

// connect makes a few connections (each a new 5-tuple) from c to f and
// returns their outcome class: "served", "refused" or "dropped"; an error
// when they break the model.
func (w *world) connect(c *conformance.Pod, f *dataplane.Frontend, allowed map[string]bool) (string, error) {
	addr := netip.AddrPortFrom(f.Key.IP, f.Key.Port).String()
	udp := f.Key.Protocol == dataplane.UDP
	if len(f.Endpoints) == 0 {
		_, _, err := c.Ask(addr, udp, 700*time.Millisecond)
		class := classOf(err)
		want := map[dataplane.NoEndpointsAction]string{dataplane.Reject: "refused", dataplane.Drop: "dropped"}[f.IfEmpty]
		if class != want {
			return class, fmt.Errorf("no endpoints (%v): %s (%v), want %s", f.IfEmpty, class, err, want)
		}
		return class, nil
	}
	var servers []string
	for i := 0; i < 4; i++ {
		server, source, err := c.Ask(addr, udp, 3*time.Second)
		if err != nil {
			return classOf(err), fmt.Errorf("connection %d: %v (endpoints %v)", i, err, keysOf(allowed))
		}
		if !allowed[server] {
			return "served", fmt.Errorf("connection %d reached %s, not an endpoint of the model %v", i, server, keysOf(allowed))
		}
		// Every endpoint is of the frontend's family (allowed): so is the
		// source the server sees.
		fam := conformance.FamilyOf(f.Key.IP)
		wantSource := c.Addr(fam).String()
		if ap, _ := netip.ParseAddrPort(server); ap.Addr() == c.Addr(fam) {
			wantSource = conformance.HairpinIP(fam).String() // the pod reached itself
		}
		if source != wantSource {
			return "served", fmt.Errorf("connection %d: %s saw source %s, want %s", i, server, source, wantSource)
		}
		servers = append(servers, server)
	}
	if f.AffinityTimeout > 0 && len(slices.Compact(slices.Sorted(slices.Values(servers)))) > 1 {
		return "served", fmt.Errorf("ClientIP affinity: connections reached %v", servers)
	}
	return "served", nil
}

func classOf(err error) string {
	switch {
	case err == nil:
		return "served"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case isTimeout(err):
		return "dropped"
	}
	return "error: " + err.Error()
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

func keysOf(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
