package ebpf_test

import (
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/dataplane/backends"
	"github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// pinDir gives each test node its own bpffs mount, removed at the end.
func pinDir(t *testing.T) string {
	dir := harness.TempDir(t)
	if err := ebpf.EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestConformance(t *testing.T) {
	dirs := map[*conformance.Env]string{}
	conformance.Run(t, func(t *testing.T, e *conformance.Env) *conformance.Instance {
		dir, ok := dirs[e]
		if !ok {
			dir = pinDir(t)
			dirs[e] = dir
		}
		b, err := ebpf.New(ebpf.Options{PinDir: dir, Bridge: "br-int", OVSRunDir: e.OVS.RunDir, NodeNetns: e.Node.Path, Timeout: 5 * time.Second,
			Sizes: ebpf.MapSizes{Services: 1024, Backends: 4096, Conntrack: 8192, Affinity: 1024}, Log: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return &conformance.Instance{
			Backend: backends.WithLocalNodePorts(b, nftables.New(nftables.Options{NetNS: e.Node.Path})),
			Close:   func() { b.Close() },
			Leftovers: func() []string {
				var left []string
				filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
					// maps.debug and progs.debug come with every bpffs mount.
					if err == nil && p != dir && filepath.Ext(p) != ".debug" {
						left = append(left, p)
					}
					return nil
				})
				return left
			},
		}
	})
}
