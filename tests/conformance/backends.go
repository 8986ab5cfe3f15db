package conformance

import (
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/dataplane/backends"
	"github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// OVS is the Factory of the OVS dataplane, as nsx-kube-proxy builds it
// (without the take-over from the other dataplane, which tests/e2e
// TestSwitchDataplane runs with the real binary).
func OVS(t *testing.T, e *Env) *Instance {
	b, err := ovsdp.New(ovsdp.Options{Bridge: "br-int", Uplink: Uplink, OVSRunDir: e.OVS.RunDir, NodeName: NodeName,
		Timeout: 5 * time.Second, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	inst := instance(e, b, func() []string {
		var left []string
		for _, l := range strings.Split(e.OVS.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows", "--no-stats"), "\n") {
			if strings.Contains(l, "cookie=0x5a") || strings.Contains(l, "cookie=0x5b") {
				left = append(left, "flow: "+strings.TrimSpace(l))
			}
		}
		for _, l := range strings.Split(e.OVS.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups"), "\n") {
			if strings.Contains(l, "group_id=") {
				left = append(left, "group: "+strings.TrimSpace(l))
			}
		}
		return left
	})
	inst.Dataplane = "ovs"
	return inst
}

// closer is a dataplane backend as the factories make them.
type closer interface {
	dataplane.ServiceBackend
	Close() error
}

// instance wraps b as nsx-kube-proxy does (the node's own NodePorts through
// nftables) with its leftovers check.
func instance(e *Env, b closer, leftovers func() []string) *Instance {
	return &Instance{
		Backend:   backends.WithLocalNodePorts(b, nftables.New(nftables.Options{NetNS: e.Node.Path})),
		Close:     func() { b.Close() },
		Leftovers: leftovers,
	}
}

// EBPF returns the Factory of the eBPF dataplane, as nsx-kube-proxy builds
// it (without the take-over, as OVS): each env gets its own bpffs pin dir,
// which a restart (a second instance on the env) finds again.
func EBPF() Factory {
	dirs := map[*Env]string{}
	return func(t *testing.T, e *Env) *Instance {
		dir, ok := dirs[e]
		if !ok {
			dir = harness.TempDir(t)
			if err := ebpf.EnsureBPFFS(dir); err != nil {
				t.Fatal(err)
			}
			dirs[e] = dir
		}
		b, err := ebpf.New(ebpf.Options{PinDir: dir, Bridge: "br-int", OVSRunDir: e.OVS.RunDir, NodeNetns: e.Node.Path, Timeout: 5 * time.Second,
			Sizes: ebpf.MapSizes{Services: 1024, Backends: 4096, Conntrack: 8192, Affinity: 1024}, Log: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		inst := instance(e, b, func() []string {
			var left []string
			filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				// maps.debug and progs.debug come with every bpffs mount.
				if err == nil && p != dir && filepath.Ext(p) != ".debug" {
					left = append(left, p)
				}
				return nil
			})
			return left
		})
		inst.Dataplane, inst.PinDir = "ebpf", dir
		return inst
	}
}
