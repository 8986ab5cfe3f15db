package ovs_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
)

// recircDrop is a datapath flow of a recirculation (the second half of a
// packet's trip through conntrack) that drops.
var recircDrop = regexp.MustCompile(`recirc_id\(0x[0-9a-f]*[1-9a-f][0-9a-f]*\).*actions:drop$`)

// TestCleanupLeavesNoRecirculationDrops: when the node switches to eBPF,
// the OVS dataplane's Cleanup runs while pods' connections, DNATed by the
// eBPF programs, still cross the bridge, and every IP packet went through
// our table 0 (conntrack, then our tables after a recirculation). Removing
// everything at once left the datapath flows of those recirculations
// behind as drops (a cached first half still sent packets into them until
// the revalidators reached it, and the next program of these tables reuses
// the recirculation ids): a SYN-ACK lost at the switch became a reset
// connection when the client's retransmitted SYN was balanced to another
// backend (BenchmarkDataplaneSwitch). After Cleanup no datapath flow may
// drop in a recirculation, and pod-to-pod traffic keeps flowing.
func TestCleanupLeavesNoRecirculationDrops(t *testing.T) {
	e := conformance.NewEnv(t)
	client, server := e.AddPod("client", 101, 50), e.AddPod("server", 102, 20)
	server.Serve(t, 8080)
	b, err := ovsdp.New(ovsdp.Options{Bridge: "br-int", Uplink: conformance.Uplink, OVSRunDir: e.OVS.RunDir, NodeName: conformance.NodeName,
		Timeout: 5 * time.Second, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	m := conformance.Model(conformance.Frontend(80, dataplane.TCP, []*conformance.Pod{server}, 8080))
	if err := b.Sync(ctx, m, dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	// Direct pod-to-pod traffic, as the eBPF dataplane sends it after its
	// DNAT: TCP and a UDP flow kept open across the Cleanup.
	direct := server.IP.String() + ":8080"
	u, err := client.UDPConn(direct)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range 3 {
		if _, _, err := client.Get(direct, 2*time.Second); err != nil {
			t.Fatalf("TCP %d to %s through the OVS dataplane: %v", i, direct, err)
		}
		if _, err := u.Ask(2 * time.Second); err != nil {
			t.Fatalf("UDP %d to %s through the OVS dataplane: %v", i, direct, err)
		}
	}
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	// Each request answers after a complete revalidation round that began
	// after it: every datapath flow has been translated again since.
	e.OVS.Appctl(t, "revalidator/wait")
	e.OVS.Appctl(t, "revalidator/wait")
	var drops []string
	for _, l := range strings.Split(e.OVS.Appctl(t, "dpctl/dump-flows"), "\n") {
		if l = strings.TrimSpace(l); recircDrop.MatchString(l) {
			drops = append(drops, l)
		}
	}
	if len(drops) > 0 {
		t.Errorf("after Cleanup %d datapath flows drop recirculated packets (their recirculation ids are handed out again):\n%s",
			len(drops), strings.Join(drops, "\n"))
	}
	if _, _, err := client.Get(direct, 2*time.Second); err != nil {
		t.Errorf("TCP to %s after Cleanup: %v", direct, err)
	}
	if _, err := u.Ask(2 * time.Second); err != nil {
		t.Errorf("UDP to %s after Cleanup: %v", direct, err)
	}
}
