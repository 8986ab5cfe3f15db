package perf

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ebpfdp "github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

const (
	rrRounds      = 6000 // request/response exchanges on one connection
	crrRounds     = 300  // new connections
	rrRoundsSplit = 6    // interleaved rounds per path
	directPort    = 8081 // the server's port for the direct path; the ClusterIP's backend is 8080
)

type pathResult struct {
	dataplane, path string
	services        int
	rr              []time.Duration
	rrWall          time.Duration
	crrWall         time.Duration
}

// BenchmarkDatapath measures a client pod talking to a server pod on
// another subnet (routed by the fabric stand-in), through the ClusterIP
// and, as the baseline in the same run, straight to the pod IP; and a
// client outside the node through the NodePort (SNAT to the node) beside
// the same client straight to the pod IP; the ClusterIP path again over
// IPv6 beside the pod's IPv6 address; with 1 and
// with 10k services installed (NSX_BENCH_DATAPATH_SERVICES); for both
// dataplanes. TCP_RR-style: one connection, one line each way per round;
// and connect/request/close rate. Each environment is set up once and
// measured NSX_BENCH_REPEAT times.
func BenchmarkDatapath(b *testing.B) {
	reps := repeats(b)
	for _, dp := range []string{"ovs", "ebpf"} {
		for _, n := range benchSizes(b, "NSX_BENCH_DATAPATH_SERVICES", []int{1, 10000}) {
			res := benchPath(b, dp, n, reps)
			for _, busy := range []bool{false, true} {
				for _, pair := range pathPairs {
					recordDatapath(b, res[busy], pair, busy)
				}
			}
		}
	}
	record.Note("datapath: client pod -> server pod on another subnet, and a client outside the node (behind the fabric's router) -> "+
		"the NodePort on the node's address (externalTrafficPolicy Cluster: SNAT to the node) or the pod IP; the ClusterIP path again over IPv6 (an IPv6 ClusterIP vs the pod's IPv6 address); per repetition %d "+
		"request/response rounds on one connection and %d new connections per path, all paths interleaved in %d rounds; N = services installed; "+
		"each repetition at rest and with the other core busy; "+
		"the direct path goes to a second server port (%d) so that its connections never share a 5-tuple with a ClusterIP one.",
		rrRounds, crrRounds, rrRoundsSplit, directPort)
	record.Table(os.Stdout, "datapath")
}

// pathPairs are the (baseline, subject) indexes into benchPath's paths.
var pathPairs = [][2]int{{0, 1}, {2, 3}, {4, 5}}

// recordDatapath adds the figures of one dataplane and service count: the
// subject path beside its baseline, one value per repetition.
func recordDatapath(b *testing.B, reps [][]pathResult, pair [2]int, busy bool) {
	direct, cip := reps[0][pair[0]], reps[0][pair[1]]
	load := ""
	if busy {
		load = ", other core busy"
	}
	figs := []struct {
		metric, unit string
		higher       bool
		v            func(pathResult) float64
	}{
		{"RR/s", "RR/s", true, func(r pathResult) float64 { return float64(len(r.rr)) / r.rrWall.Seconds() }},
		{"RR p50", "µs", false, func(r pathResult) float64 { return micros(pct(r.rr, .5)) }},
		{"RR p99", "µs", false, func(r pathResult) float64 { return micros(pct(r.rr, .99)) }},
		{"conn/s", "conn/s", true, func(r pathResult) float64 { return float64(crrRounds) / r.crrWall.Seconds() }},
	}
	for _, fg := range figs {
		f := Figure{Bench: "datapath", Case: fmt.Sprintf("N=%d%s %s", cip.services, load, fg.metric), N: cip.services,
			Subject: "nsx " + cip.dataplane + " " + cip.path, Baseline: "nsx " + direct.dataplane + " " + direct.path,
			Unit: fg.unit, HigherIsBetter: fg.higher}
		for _, rep := range reps {
			f.BaselineValues = append(f.BaselineValues, fg.v(rep[pair[0]]))
			f.Values = append(f.Values, fg.v(rep[pair[1]]))
		}
		record.Add(f)
		if fg.metric == "RR/s" && !busy {
			if r, ok := f.Ratio(); ok {
				b.ReportMetric(r, fmt.Sprintf("%s-%dsvc-%s-rr-ratio", cip.dataplane, cip.services, strings.ReplaceAll(cip.path, " ", "-")))
			}
		}
	}
}

// benchPath sets up one dataplane with n services and measures both paths
// reps times at rest and reps times with the other core busy; it returns
// [busy][repetition][path] (see the targets).
func benchPath(b *testing.B, dp string, n, reps int) map[bool][][]pathResult {
	sc := newScope(b) // this environment goes before the next one starts
	defer sc.close()
	e := conformance.NewEnv(sc)
	server := e.AddPod("server", 102, 20)
	client := e.AddPod("client", 101, 50)
	outside := e.ExternalClient()
	// The direct path gets its own server port. On one port, a direct
	// connection that reuses the client port of a recently closed ClusterIP
	// connection has the same 5-tuple at the server as that connection,
	// whose conntrack entry (TIME_WAIT, in the dataplane, not in the
	// kernel) then reverse-NATs the direct SYN-ACK to the ClusterIP: the
	// client drops it and the dial times out. Linux conntrack would remap
	// the source port; the benchmark measures speed, not that case.
	server.Serve(sc, 8080)
	server.Serve(sc, directPort)

	var be dataplane.ServiceBackend
	switch dp {
	case "ovs":
		o, err := ovsdp.New(ovsdp.Options{Bridge: "br-int", Uplink: conformance.Uplink, OVSRunDir: e.OVS.RunDir, NodeName: conformance.NodeName,
			Timeout: 60 * time.Second, Log: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		defer o.Close()
		be = o
	case "ebpf":
		dir := harness.TempDir(sc)
		eb, err := ebpfdp.New(ebpfdp.Options{PinDir: dir, Bridge: "br-int", OVSRunDir: e.OVS.RunDir, NodeNetns: e.Node.Path, Log: zap.NewNop(),
			Sizes: ebpfdp.MapSizes{Services: uint32(2*n + 16), Backends: uint32(2*n*endpointsPerService + 16)}})
		if err != nil {
			b.Fatal(err)
		}
		defer eb.Cleanup(context.Background())
		be = eb
	}
	m := benchModel(n - 1)
	vip := netip.MustParseAddr("10.96.255.254")
	fe := &dataplane.Frontend{Key: dataplane.FrontendKey{IP: vip, Port: 80, Protocol: dataplane.TCP},
		Endpoints: []dataplane.Endpoint{{IP: server.IP, Port: 8080, Ready: true, Serving: true, NodeName: "other"}}}
	m.Frontends[fe.Key] = fe
	np := conformance.External(&dataplane.Frontend{Key: fe.Key, Endpoints: fe.Endpoints}, dataplane.NodePort,
		conformance.NodeIP, conformance.NodePortNumber, false)
	m.Frontends[np.Key] = np
	// The same ClusterIP path over IPv6 (the pods are dual-stack).
	vip6 := netip.MustParseAddr("fd00:10:96::fffe")
	fe6 := &dataplane.Frontend{Key: dataplane.FrontendKey{IP: vip6, Port: 80, Protocol: dataplane.TCP},
		Endpoints: []dataplane.Endpoint{{IP: server.IP6, Port: 8080, Ready: true, Serving: true, NodeName: "other"}}}
	m.Frontends[fe6.Key] = fe6
	if err := be.Sync(context.Background(), m, dataplane.SyncOptions{}); err != nil {
		b.Fatal(err)
	}
	targets := []struct {
		path   string
		client *conformance.Pod
		addr   string
	}{
		{"direct pod IP", client, netip.AddrPortFrom(server.IP, directPort).String()},
		{"ClusterIP", client, netip.AddrPortFrom(vip, 80).String()},
		{"outside: direct pod IP", outside, netip.AddrPortFrom(server.IP, directPort).String()},
		{"outside: NodePort", outside, netip.AddrPortFrom(conformance.NodeIP, conformance.NodePortNumber).String()},
		{"direct pod IPv6", client, netip.AddrPortFrom(server.IP6, directPort).String()},
		{"IPv6 ClusterIP", client, netip.AddrPortFrom(vip6, 80).String()},
	}
	conns := make([]*conformance.Conn, len(targets))
	for i, target := range targets {
		c, err := target.client.Dial(target.addr, 5*time.Second)
		if err != nil {
			b.Fatalf("%s %s: %v", dp, target.path, err)
		}
		defer c.Close()
		conns[i] = c
		for j := 0; j < 200; j++ { // warm up
			if err := c.Echo("warm", 5*time.Second); err != nil {
				b.Fatal(err)
			}
		}
	}
	all := map[bool][][]pathResult{}
	for run := 0; run < 2*reps; run++ {
		busy := run%2 == 1 // alternate, so a slow phase of the machine hits both alike
		var stop func()
		if busy {
			stop = busyCore(b)
		}
		out := make([]pathResult, len(targets))
		for i, target := range targets {
			out[i] = pathResult{dataplane: dp, path: target.path, services: n}
		}
		// Interleave the paths in rounds so a noisy moment hits both alike.
		for round := 0; round < rrRoundsSplit; round++ {
			for i := range targets {
				start := time.Now()
				for j := 0; j < rrRounds/rrRoundsSplit; j++ {
					t0 := time.Now()
					if err := conns[i].Echo("x", 5*time.Second); err != nil {
						b.Fatal(err)
					}
					out[i].rr = append(out[i].rr, time.Since(t0))
				}
				out[i].rrWall += time.Since(start)
				start = time.Now()
				for j := 0; j < crrRounds/rrRoundsSplit; j++ {
					if _, _, err := targets[i].client.Get(targets[i].addr, 5*time.Second); err != nil {
						b.Fatalf("%s %s connection %d: %v", dp, targets[i].path, j, err)
					}
				}
				out[i].crrWall += time.Since(start)
			}
		}
		if stop != nil {
			stop()
		}
		all[busy] = append(all[busy], out)
	}
	return all
}
