package perf

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// bigModel is one Service with n endpoints.
func bigModel(n int) *dataplane.Model {
	f := &dataplane.Frontend{Key: dataplane.FrontendKey{IP: vipOf(0), Port: 80, Protocol: dataplane.TCP},
		Name: dataplane.ServicePortName{Namespace: "bench", Name: "big"}}
	for i := 0; i < n; i++ {
		f.Endpoints = append(f.Endpoints, dataplane.Endpoint{IP: netip.AddrFrom4([4]byte{10, 128 + byte(i>>16), byte(i >> 8), byte(i)}),
			Port: 8080, Ready: true, Serving: true, NodeName: "other"})
	}
	return &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{f.Key: f}}
}

// BenchmarkOVSScale: a single Service with 10,000 endpoints programmed
// from empty (OVS splits it over sub-groups), beside kube-proxy-style
// iptables-restore of the same Service; and, with 10k Services x 10
// endpoints installed, ovs-vswitchd killed and restarted without saved
// flows: the time until the backend has reinstalled everything by itself
// (reconnect and replay), beside a full iptables-restore of the same
// 10k Services (what kube-proxy does to rebuild its rules).
func BenchmarkOVSScale(b *testing.B) {
	harness.RequireRoot(b)
	reps := repeats(b)
	const bigN, replayN = 10000, 10000
	big := []Figure{
		{Bench: "ovs-scale", Case: fmt.Sprintf("one Service with %d endpoints from empty", bigN), Subject: "nsx ovs", Baseline: "iptables", Unit: "ms"},
		{Bench: "ovs-scale", Case: fmt.Sprintf("reinstall %d Services x %d after an ovs-vswitchd crash", replayN, endpointsPerService), Subject: "nsx ovs (reconnect + replay)", Baseline: "iptables full restore", Unit: "ms"},
	}
	var trips [2]uint64
	for i := 0; i < reps; i++ {
		d, t := ovsProgram(b, bigModel(bigN))
		big[0].Values = append(big[0].Values, millis(d))
		trips[0] = t
		big[0].BaselineValues = append(big[0].BaselineValues, millis(iptablesFull(b, bigModel(bigN))))
		d, t = ovsReplay(b, benchModel(replayN))
		big[1].Values = append(big[1].Values, millis(d))
		trips[1] = t
		big[1].BaselineValues = append(big[1].BaselineValues, millis(iptablesFull(b, benchModel(replayN))))
	}
	for _, f := range big {
		record.Add(f)
		b.ReportMetric(Summarize(f.Values).Median, strings.ReplaceAll(f.Case, " ", "-")+"-ms")
	}
	var w bytes.Buffer
	fmt.Fprintf(&w, "OpenFlow round trips: %d to program one Service of %d endpoints from empty (flow/group dumps at start, one bundle); %d for the replay of %d Services x %d.\n",
		trips[0], bigN, trips[1], replayN, endpointsPerService)
	fmt.Fprint(os.Stdout, "\n", w.String())
	record.Section("OVS scale: a 10,000-endpoint Service, replay after an ovs-vswitchd crash", w.String())
}

func newOVSBackend(b *testing.B, sc *scope, o *harness.OVS) *ovsdp.Backend {
	be, err := ovsdp.New(ovsdp.Options{Bridge: "br-int", OVSRunDir: o.RunDir, NodeName: "bench", Timeout: 60 * time.Second, Log: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	sc.Cleanup(func() { be.Close() })
	return be
}

// ovsProgram syncs m into a fresh bridge: how long, and the OpenFlow round
// trips it took.
func ovsProgram(b *testing.B, m *dataplane.Model) (time.Duration, uint64) {
	sc := newScope(b)
	defer sc.close()
	o := harness.StartOVS(sc, harness.OVSOptions{Bridges: []string{"br-int"}})
	be := newOVSBackend(b, sc, o)
	start := time.Now()
	if err := be.Sync(context.Background(), m, dataplane.SyncOptions{}); err != nil {
		b.Fatal(err)
	}
	return time.Since(start), be.RoundTrips()
}

// ovsReplay installs m, kills ovs-vswitchd and times how long the backend
// takes, unprompted, to have reinstalled everything.
func ovsReplay(b *testing.B, m *dataplane.Model) (time.Duration, uint64) {
	sc := newScope(b)
	defer sc.close()
	o := harness.StartOVS(sc, harness.OVSOptions{Bridges: []string{"br-int"}})
	be := newOVSBackend(b, sc, o)
	if err := be.Sync(context.Background(), m, dataplane.SyncOptions{}); err != nil {
		b.Fatal(err)
	}
	before := be.RoundTrips()
	o.KillVSwitchd(sc, "br-int")
	restarted := time.Now()
	for be.Stats().Replays == 0 {
		if time.Since(restarted) > 5*time.Minute {
			b.Fatal("no replay 5 minutes after ovs-vswitchd restarted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The replay has ended when Replays moved; LastReplay is its own time,
	// the rest is the reconnection.
	return time.Since(restarted), be.RoundTrips() - before
}

// iptablesFull loads m's kube-proxy-style rules with one iptables-restore.
func iptablesFull(b *testing.B, m *dataplane.Model) time.Duration {
	sc := newScope(b)
	defer sc.close()
	text, _, _ := iptablesRules(m)
	return iptablesRestore(b, harness.NewNetNS(sc), text)
}
