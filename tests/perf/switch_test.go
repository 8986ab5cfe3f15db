package perf

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

const (
	switchHeld     = 16                     // long-lived connections, one request each 100 ms
	switchSettle   = 2 * time.Second        // load kept on after the take-over
	switchTimeout  = 3 * time.Second        // a new connection not up in this failed (one SYN retransmission fits)
	switchSlow     = 500 * time.Millisecond // a new connection slower than this was slow
	switchBackends = 4
)

// switchResult is one switch (or restart) under load.
type switchResult = conformance.LoadResult

// BenchmarkDataplaneSwitch measures a live dataplane switch of a running
// node (the real nsx-kube-proxy restarted with the other dataplane) under
// a steady load: switchHeld established connections through a ClusterIP
// (a request each 100 ms, each answer checked) and new connections back
// to back. The baseline, in the same run, is a plain restart of the proxy
// on the same dataplane. Figures: new connections failed (not up within
// 3 s) and slow (over 500 ms: a SYN retransmitted), the longest gap
// between two successful ones, established connections broken, and the
// time from the old proxy's stop until the new dataplane serves alone;
// NSX_BENCH_REPEAT times at rest and with the other core busy.
func BenchmarkDataplaneSwitch(b *testing.B) {
	harness.RequireRoot(b)
	bin := harness.TempDir(b)
	if err := cluster.BuildBinaries(bin); err != nil {
		b.Fatal(err)
	}
	api := harness.StartAPIServer(b)
	cs := api.Client(b)
	e := conformance.NewEnv(b)
	api.ExposeIn(b, e.Node)
	ctx := context.Background()
	var eps []*conformance.Pod
	for i := 0; i < switchBackends; i++ {
		p := e.AddPod(fmt.Sprintf("s%d", i), 102, 20+i)
		p.Serve(b, 8080)
		eps = append(eps, p)
	}
	client, prober := e.AddPod("client", 101, 50), e.AddPod("prober", 101, 51)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "switch"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	svc, err := cs.CoreV1().Services("switch").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "switch"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	es := conformance.ReadySlice("switch", "web", eps...)
	if _, err := cs.DiscoveryV1().EndpointSlices("switch").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	vip := svc.Spec.ClusterIP + ":80"
	pins := harness.TempDir(b)
	start := func(dp string) *cluster.Process {
		return cluster.StartKubeProxy(b, cluster.KubeProxyOptions{BinDir: bin, Kubeconfig: api.Kubeconfig, Node: e.Node,
			NodeName: conformance.NodeName, OVSRunDir: e.OVS.RunDir, Uplink: conformance.Uplink, PinDir: pins, Dataplane: dp,
			ExtraINI: "switch_drain_period = 3"})
	}
	ourFlows := func() int {
		out := e.OVS.Ofctl(b, "br-int", "-O", "OpenFlow15", "dump-flows", "cookie=0x5a00000000000000/0xfe00000000000000")
		return strings.Count(out, "cookie=")
	}
	// alone says when dp serves alone: the other one's state is gone (OVS
	// flows) or takes no new connections (eBPF: services map emptied;
	// its programs drain the connections they carry).
	alone := func(dp string) bool {
		if dp == "ebpf" {
			return ourFlows() == 0
		}
		if ourFlows() == 0 {
			return false
		}
		out, err := e.Node.Exec(ctx, "bpftool", "map", "dump", "pinned", pins+"/nsx_services").CombinedOutput()
		return err != nil || !strings.Contains(string(out), "key")
	}

	cur := "ovs"
	p := start(cur)
	waitServed(b, client, vip)
	type key struct {
		from, to string
		busy     bool
	}
	res := map[key][]switchResult{}
	for rep := 0; rep < 2*repeats(b); rep++ {
		busy := rep%2 == 1
		var stopBusy func()
		if busy {
			stopBusy = busyCore(b)
		}
		// Both switches and both restarts, in an order that ends where it began.
		for _, to := range []string{"ovs", "ebpf", "ebpf", "ovs"} {
			from := cur
			r := measureSwitch(b, client, prober, vip, func() {
				p.Stop()
				p = start(to)
				deadline := time.Now().Add(60 * time.Second)
				for !alone(to) {
					if time.Now().After(deadline) {
						b.Fatalf("%s -> %s: the new dataplane does not serve alone after 60 s", from, to)
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
			cur = to
			for _, f := range r.Failures {
				b.Logf("%s -> %s: new connection failed at %s", from, to, f)
			}
			res[key{from, to, busy}] = append(res[key{from, to, busy}], r)
			if to == "ovs" && from == "ebpf" {
				time.Sleep(4 * time.Second) // let the drain end before the next switch
			}
		}
		if stopBusy != nil {
			stopBusy()
		}
	}
	p.Stop()

	w := os.Stdout
	fmt.Fprintf(w, "\nLive dataplane switch under load (%d established connections, new ones back to back; a restart on the same dataplane is the baseline), min/median/max of %d runs\n\n", switchHeld, repeats(b))
	fmt.Fprintln(w, "| switch | load | new conns failed (3 s) | slower than 500 ms | longest gap | established broken | switch time | baseline (restart) failed / slow / gap / broken / time |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, sw := range [][2]string{{"ovs", "ebpf"}, {"ebpf", "ovs"}} {
		for _, busy := range []bool{false, true} {
			got, base := res[key{sw[0], sw[1], busy}], res[key{sw[1], sw[1], busy}]
			load := "at rest"
			if busy {
				load = "other core busy"
			}
			fmt.Fprintf(w, "| %s -> %s | %s | %s | %s | %s | %s | %s | %s / %s / %s / %s / %s |\n", sw[0], sw[1], load,
				stat(got, func(r switchResult) float64 { return float64(r.Failed) }, ""),
				stat(got, func(r switchResult) float64 { return float64(r.Slow) }, ""),
				stat(got, func(r switchResult) float64 { return msf(r.LongestGap) }, " ms"),
				stat(got, func(r switchResult) float64 { return float64(r.Broken) }, ""),
				stat(got, func(r switchResult) float64 { return msf(r.Took) }, " ms"),
				stat(base, func(r switchResult) float64 { return float64(r.Failed) }, ""),
				stat(base, func(r switchResult) float64 { return float64(r.Slow) }, ""),
				stat(base, func(r switchResult) float64 { return msf(r.LongestGap) }, " ms"),
				stat(base, func(r switchResult) float64 { return float64(r.Broken) }, ""),
				stat(base, func(r switchResult) float64 { return msf(r.Took) }, " ms"))
			for _, fg := range []struct {
				metric, unit string
				v            func(switchResult) float64
			}{
				{"new connections failed (3 s)", "conns", func(r switchResult) float64 { return float64(r.Failed) }},
				{"new connections slower than 500 ms", "conns", func(r switchResult) float64 { return float64(r.Slow) }},
				{"longest gap", "ms", func(r switchResult) float64 { return msf(r.LongestGap) }},
				{"established broken", "conns", func(r switchResult) float64 { return float64(r.Broken) }},
				{"switch time", "ms", func(r switchResult) float64 { return msf(r.Took) }},
			} {
				f := Figure{Bench: "dataplane switch", Case: fmt.Sprintf("%s %s", load, fg.metric),
					Subject: fmt.Sprintf("nsx %s -> %s", sw[0], sw[1]), Baseline: fmt.Sprintf("nsx %s restart", sw[1]), Unit: fg.unit}
				for _, r := range got {
					f.Values = append(f.Values, fg.v(r))
				}
				for _, r := range base {
					f.BaselineValues = append(f.BaselineValues, fg.v(r))
				}
				record.Add(f)
			}
		}
	}
	fmt.Fprintln(w)
}

func stat(rs []switchResult, v func(switchResult) float64, unit string) string {
	var vals []float64
	for _, r := range rs {
		vals = append(vals, v(r))
	}
	s := Summarize(vals)
	if s.Min == s.Max {
		return fmt.Sprintf("%.0f%s", s.Min, unit)
	}
	return fmt.Sprintf("%.0f/%.0f/%.0f%s", s.Min, s.Median, s.Max, unit)
}

func waitServed(b *testing.B, client *conformance.Pod, vip string) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, err := client.Get(vip, time.Second); err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s not served", vip)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// measureSwitch runs the load around do (which returns once the switch is
// complete), then keeps it on for switchSettle.
func measureSwitch(b *testing.B, client, prober *conformance.Pod, vip string, do func()) switchResult {
	r, err := conformance.MeasureUnderLoad(client, prober, vip, conformance.LoadOptions{Held: switchHeld, NewTimeout: switchTimeout,
		Slow: switchSlow, Settle: switchSettle}, do)
	if err != nil {
		b.Fatal(err)
	}
	return r
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
