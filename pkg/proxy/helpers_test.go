package proxy

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

const testNode = "node-a"

// --- objects ---

func mkService(ns, name string, mods ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func withIPs(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}

func withPorts(ps ...v1.ServicePort) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.Ports = ps }
}

func withLabels(kv ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			s.Labels[kv[i]] = kv[i+1]
		}
	}
}

func withLocal(s *v1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
}

func sport(name string, proto v1.Protocol, port int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: proto, Port: port}
}

func eport(name string, proto v1.Protocol, port int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(port)}
}

// conds builds endpoint conditions; nil arguments stay nil.
func conds(ready, serving, terminating *bool) discovery.EndpointConditions {
	return discovery.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
}

var (
	readyC       = conds(ptr.To(true), ptr.To(true), ptr.To(false))
	notReadyC    = conds(ptr.To(false), ptr.To(false), ptr.To(false))
	servingTermC = conds(ptr.To(false), ptr.To(true), ptr.To(true))
	deadTermC    = conds(ptr.To(false), ptr.To(false), ptr.To(true))
)

func endpoint(ip, node string, c discovery.EndpointConditions) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{ip}, Conditions: c}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	return e
}

func mkSlice(ns, svc, name string, family discovery.AddressType, ports []discovery.EndpointPort, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			Labels: map[string]string{discovery.LabelServiceName: svc},
		},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
}

// --- model values ---

func fk(ip string, port uint16, proto dataplane.Protocol) dataplane.FrontendKey {
	return dataplane.FrontendKey{IP: netip.MustParseAddr(ip), Port: port, Protocol: proto}
}

func dep(ip string, port uint16, node string, ready, serving, terminating bool) dataplane.Endpoint {
	return dataplane.Endpoint{IP: netip.MustParseAddr(ip), Port: port, NodeName: node,
		Ready: ready, Serving: serving, Terminating: terminating}
}

func readyEP(ip string, port uint16, node string) dataplane.Endpoint {
	return dep(ip, port, node, true, true, false)
}

// --- fake backend ---

type syncCall struct {
	model *dataplane.Model
	full  bool
	start time.Time
	err   error
}

// fakeBackend records every Sync. hook, if set, runs inside Sync with the
// 0-based call number; its error is Sync's.
type fakeBackend struct {
	mu      sync.Mutex
	entered int
	calls   []syncCall
	hook    func(ctx context.Context, n int) error
}

func (f *fakeBackend) Name() string { return "fake" }

func (f *fakeBackend) Sync(ctx context.Context, m *dataplane.Model, opts dataplane.SyncOptions) error {
	start := time.Now()
	f.mu.Lock()
	n := f.entered
	f.entered++
	hook := f.hook
	f.mu.Unlock()
	var err error
	if hook != nil {
		err = hook(ctx, n)
	}
	f.mu.Lock()
	f.calls = append(f.calls, syncCall{model: m, full: opts.Full, start: start, err: err})
	f.mu.Unlock()
	return err
}

func (f *fakeBackend) Cleanup(context.Context) error { return nil }

func (f *fakeBackend) setHook(h func(ctx context.Context, n int) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
}

func (f *fakeBackend) snapshot() []syncCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]syncCall(nil), f.calls...)
}

func (f *fakeBackend) numEntered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.entered
}

// lastOK is the model of the last successful Sync, or nil.
func (f *fakeBackend) lastOK() *dataplane.Model {
	calls := f.snapshot()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].err == nil {
			return calls[i].model
		}
	}
	return nil
}

// --- running a Proxier ---

// waitFor polls cond until it holds; the deadline is generous because a
// loaded 2-core machine running -race is slow, and only a bug waits it out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// start runs a Proxier on a fake clientset holding objs until the test
// ends. Zero SyncPeriod becomes an hour, so no periodic resync interferes.
func start(t *testing.T, fb *fakeBackend, o Options, objs ...runtime.Object) (*Proxier, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset(objs...)
	if o.NodeName == "" {
		o.NodeName = testNode
	}
	if o.SyncPeriod == 0 {
		o.SyncPeriod = time.Hour
	}
	o.Log = zaptest.NewLogger(t)
	p := New(client, fb, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return after its context ended")
		}
	})
	return p, client
}

// waitModel waits for a successful Sync whose model satisfies cond and
// returns that model.
func waitModel(t *testing.T, fb *fakeBackend, what string, cond func(m *dataplane.Model) bool) *dataplane.Model {
	t.Helper()
	var got *dataplane.Model
	waitFor(t, what, func() bool {
		got = fb.lastOK()
		return got != nil && cond(got)
	})
	return got
}

func hasKeys(keys ...dataplane.FrontendKey) func(*dataplane.Model) bool {
	return func(m *dataplane.Model) bool {
		if len(m.Frontends) != len(keys) {
			return false
		}
		for _, k := range keys {
			if m.Frontends[k] == nil {
				return false
			}
		}
		return true
	}
}

var bg = context.Background()
