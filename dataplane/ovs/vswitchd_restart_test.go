package ovs_test

import (
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
)

// ovs-vswitchd crashes and comes back with empty flow tables (no saved
// flows): traffic through the ClusterIP resumes within seconds, with no
// Sync call (no proxy restart, no periodic resync): the backend's
// connection reconnects and reinstalls what it had.
func TestVSwitchdRestartReplaysWithoutSync(t *testing.T) {
	e := conformance.NewEnv(t)
	b, err := ovsdp.New(ovsdp.Options{Bridge: "br-int", OVSRunDir: e.OVS.RunDir, NodeName: conformance.NodeName,
		Timeout: 5 * time.Second, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a := e.AddPod("a", 101, 10)
	client := e.AddPod("client", 101, 50)
	a.Serve(t, 8080)
	m := conformance.Model(conformance.Frontend(80, dataplane.TCP, []*conformance.Pod{a}, 8080))
	if err := b.Sync(t.Context(), m, dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	const vip = "10.96.0.10:80"
	if _, _, err := client.Get(vip, 2*time.Second); err != nil {
		t.Fatal(err)
	}

	e.OVS.KillVSwitchd(t, "br-int", "br-fabric")
	start := time.Now()
	var lastErr error
	for time.Since(start) < 10*time.Second {
		if _, _, lastErr = client.Get(vip, 500*time.Millisecond); lastErr == nil {
			t.Logf("traffic through the ClusterIP resumed %v after ovs-vswitchd restarted (replays: %d)",
				time.Since(start).Round(time.Millisecond), b.Stats().Replays)
			if b.Stats().Replays == 0 {
				t.Error("traffic resumed but the backend did not replay")
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no traffic through the ClusterIP 10 s after ovs-vswitchd restarted: %v", lastErr)
}
