package ovs_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
)

// servedVIP is a node whose backend (logging to log) serves
// 10.96.0.10:80/TCP from one pod, and a client pod.
func servedVIP(t *testing.T, log *zap.Logger) (*conformance.Env, *ovsdp.Backend, *conformance.Pod) {
	e := conformance.NewEnv(t)
	b, err := ovsdp.New(ovsdp.Options{Bridge: "br-int", OVSRunDir: e.OVS.RunDir, NodeName: conformance.NodeName,
		Timeout: 5 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	a := e.AddPod("a", 101, 10)
	client := e.AddPod("client", 101, 50)
	a.Serve(t, 8080)
	m := conformance.Model(conformance.Frontend(80, dataplane.TCP, []*conformance.Pod{a}, 8080))
	if err := b.Sync(t.Context(), m, dataplane.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	return e, b, client
}

// ovs-vswitchd crashes and comes back with empty flow tables (no saved
// flows): traffic through the ClusterIP resumes within seconds, with no
// Sync call (no proxy restart, no periodic resync): the backend's
// connection reconnects and reinstalls what it had.
func TestVSwitchdRestartReplaysWithoutSync(t *testing.T) {
	e, b, client := servedVIP(t, zaptest.NewLogger(t))
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

// ovs-vswitchd restarts while nsx-ovs restores the flows it saved
// (flow-restore-wait set): the backend waits for the restore instead of
// racing it. Before, its replay added the groups first and nsx-ovs's
// add-groups then failed, so the saved flows were never restored (found by
// make chaos).
func TestReplayWaitsForFlowRestore(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	e, b, client := servedVIP(t, zap.New(core))
	// What nsx-ovs saves at its stop: the groups (the flows go the same way).
	var saved []string
	for _, l := range strings.Split(e.OVS.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups"), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "group_id=") {
			saved = append(saved, l)
		}
	}
	if len(saved) == 0 {
		t.Fatal("no group to save")
	}

	e.OVS.Vsctl(t, "set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
	e.OVS.KillVSwitchd(t)
	for deadline := time.Now().Add(20 * time.Second); logs.FilterMessageSnippet("waiting for nsx-ovs to restore its saved flows").Len() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the backend reconnected without waiting for the restore (groups now: %s)", e.OVS.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups"))
		}
	}
	// nsx-ovs's restore: groups, then the flag removed.
	file := filepath.Join(t.TempDir(), "groups")
	if err := os.WriteFile(file, []byte(strings.Join(saved, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.OVS.Ofctl(t, "br-int", "-O", "OpenFlow15", "--bundle", "add-groups", file)
	e.OVS.Ofctl(t, "br-int", "add-flow", "priority=0,actions=NORMAL")
	e.OVS.Vsctl(t, "remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")
	for deadline := time.Now().Add(20 * time.Second); b.Stats().Replays == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no replay after the restore finished")
		}
	}
	if _, _, err := client.Get("10.96.0.10:80", 2*time.Second); err != nil {
		t.Fatalf("the ClusterIP after the restore and the replay: %v", err)
	}
}
