package perf

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/dataplane/conformance"
	ebpfdp "github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

const (
	rrRounds      = 6000 // request/response exchanges on one connection
	crrRounds     = 300  // new connections
	rrRoundsSplit = 6    // interleaved rounds per path
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
// and, as the baseline in the same run, straight to the pod IP; with 1 and
// with 10k services installed; for both dataplanes. TCP_RR-style: one
// connection, one line each way per round; and connect/request/close rate.
func BenchmarkDatapath(b *testing.B) {
	var res []pathResult
	for _, dp := range []string{"ovs", "ebpf"} {
		for _, n := range benchSizes(b, "NSX_BENCH_DATAPATH_SERVICES", []int{1, 10000}) {
			res = append(res, benchPath(b, dp, n)...)
		}
	}
	w := os.Stdout
	fmt.Fprintf(w, "\nData path: client pod -> server pod on another subnet, %d request/response rounds on one connection, %d new connections\n\n", rrRounds, crrRounds)
	fmt.Fprintln(w, "| dataplane | services | path | RR/s | RR p50 | RR p99 | conn/s | RR/s vs direct |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for i, r := range res {
		direct := res[i-i%2]
		rate := float64(len(r.rr)) / r.rrWall.Seconds()
		base := float64(len(direct.rr)) / direct.rrWall.Seconds()
		fmt.Fprintf(w, "| %s | %d | %s | %.0f | %.0f µs | %.0f µs | %.0f | %.3f |\n", r.dataplane, r.services, r.path, rate,
			float64(pct(r.rr, .5).Nanoseconds())/1000, float64(pct(r.rr, .99).Nanoseconds())/1000,
			float64(crrRounds)/r.crrWall.Seconds(), rate/base)
		if r.path == "ClusterIP" {
			b.ReportMetric(rate/base, fmt.Sprintf("%s-%dsvc-rr-ratio", r.dataplane, r.services))
		}
	}
	fmt.Fprintln(w)
}

func benchPath(b *testing.B, dp string, n int) []pathResult {
	e := conformance.NewEnv(b)
	server := e.AddPod("server", 102, 20)
	client := e.AddPod("client", 101, 50)
	server.Serve(b, 8080)

	var be dataplane.ServiceBackend
	switch dp {
	case "ovs":
		o, err := ovsdp.New(ovsdp.Options{Bridge: "br-int", OVSRunDir: e.OVS.RunDir, NodeName: conformance.NodeName, Timeout: 60 * time.Second, Log: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		defer o.Close()
		be = o
	case "ebpf":
		dir := harness.TempDir(b)
		eb, err := ebpfdp.New(ebpfdp.Options{PinDir: dir, Bridge: "br-int", OVSRunDir: e.OVS.RunDir, Log: zap.NewNop(),
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
	if err := be.Sync(context.Background(), m, dataplane.SyncOptions{}); err != nil {
		b.Fatal(err)
	}
	targets := []struct{ path, addr string }{
		{"direct pod IP", netip.AddrPortFrom(server.IP, 8080).String()},
		{"ClusterIP", netip.AddrPortFrom(vip, 80).String()},
	}
	out := make([]pathResult, len(targets))
	conns := make([]*conformance.Conn, len(targets))
	for i, target := range targets {
		out[i] = pathResult{dataplane: dp, path: target.path, services: n}
		c, err := client.Dial(target.addr, 5*time.Second)
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
				if _, _, err := client.Get(targets[i].addr, 5*time.Second); err != nil {
					b.Fatalf("%s %s connection %d: %v", dp, targets[i].path, j, err)
				}
			}
			out[i].crrWall += time.Since(start)
		}
	}
	return out
}
