package ebpf

import (
	"context"
	"net/netip"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// pinDir is a bpffs directory of the test's own, emptied at its end.
func pinDir(t *testing.T) string {
	harness.RequireRoot(t)
	dir := harness.TempDir(t)
	if err := EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { CleanupPins(dir) })
	return dir
}

// TestRestartSaysWhatItFound: a proxy started over the pinned maps of an
// earlier one says so once, with the count, so that the log after a crash
// tells the operator the services kept forwarding.
func TestRestartSaysWhatItFound(t *testing.T) {
	dir := pinDir(t)
	m := &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{}}
	for _, vip := range []string{"10.96.0.10", "10.96.0.11"} {
		k := dataplane.FrontendKey{IP: netip.MustParseAddr(vip), Port: 80, Protocol: dataplane.TCP}
		m.Frontends[k] = &dataplane.Frontend{Key: k, Endpoints: []dataplane.Endpoint{
			{IP: netip.MustParseAddr("10.0.1.5"), Port: 8080, Ready: true, Serving: true}}}
	}
	ctx := context.Background()
	sizes := MapSizes{Services: 64, Backends: 256, Conntrack: 1024, Affinity: 64}
	start := func() (*Backend, *observer.ObservedLogs) {
		core, logs := observer.New(zapcore.InfoLevel)
		b, err := New(Options{PinDir: dir, Sizes: sizes, Log: zap.New(core)})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Sync(ctx, m, dataplane.SyncOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := b.Sync(ctx, m, dataplane.SyncOptions{Full: true}); err != nil {
			t.Fatal(err)
		}
		return b, logs
	}
	const said = "found the services of an earlier nsx-kube-proxy"
	b1, logs := start()
	if n := logs.FilterMessageSnippet(said).Len(); n != 0 {
		t.Errorf("a first start over empty maps said %q %d times", said, n)
	}
	b1.Close()
	b2, logs := start()
	defer b2.Close()
	if found := logs.FilterMessageSnippet(said).All(); len(found) != 1 || found[0].ContextMap()["frontends"] != int64(2) {
		t.Errorf("the restarted proxy's log (want %q once, frontends 2): %v", said, logs.All())
	}
}
