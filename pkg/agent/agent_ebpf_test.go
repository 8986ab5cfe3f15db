package agent_test

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	ciliumebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	ebpfdp "github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

type realAttacher struct{ objs *ebpfdp.Objects }

func (r realAttacher) Attach(netns, ifName, port string) error {
	return r.objs.AttachPod(netns, ifName, port)
}
func (r realAttacher) Detach(port string) error { return ebpfdp.DetachPod(r.objs.PinDir, port) }

type failingAttacher struct{}

func (failingAttacher) Attach(string, string, string) error { return errors.New("verifier says no") }
func (failingAttacher) Detach(string) error                 { return nil }

func TestADDAttachesProgramsAndDELDetaches(t *testing.T) {
	dir := harness.TempDir(t)
	objs, err := ebpfdp.Load(ebpfdp.LoadOptions{PinDir: dir, Sizes: ebpfdp.MapSizes{Services: 64, Backends: 256, Conntrack: 1024, Affinity: 64}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })

	nd := newNode(t)
	nd.agent.Programs = realAttacher{objs}
	p := nd.newPod(t, 1, 101)
	nd.mustAdd(t, p)
	host := podnet.HostIfName(p.container, "eth0")
	if got, _ := ebpfdp.AttachedPods(dir); !slices.Contains(got, host) {
		t.Fatalf("after ADD attached pods %v, want %s", got, host)
	}
	// The kernel has a program on both TCX hooks of the pod's eth0.
	for _, at := range []ciliumebpf.AttachType{ciliumebpf.AttachTCXEgress, ciliumebpf.AttachTCXIngress} {
		var n int
		err := p.ns.Do(func() error {
			iface, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			res, err := link.QueryPrograms(link.QueryOptions{Target: iface.Index, Attach: at})
			if res != nil {
				n = len(res.Programs)
			}
			return err
		})
		if err != nil || n != 1 {
			t.Fatalf("%v programs on eth0: %d, %v", at, n, err)
		}
	}
	if resp := nd.do(t, p.req(cniwire.CmdDel)); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	if got, _ := ebpfdp.AttachedPods(dir); len(got) != 0 {
		t.Fatalf("after DEL attached pods %v", got)
	}

	// An attach failure rolls the whole ADD back.
	nd.agent.Programs = failingAttacher{}
	q := nd.newPod(t, 2, 101)
	resp := nd.do(t, q.req(cniwire.CmdAdd))
	if resp.Error == nil || !contains(resp.Error.Msg+resp.Error.Details, "verifier says no") {
		t.Fatalf("ADD with a failing attach: %+v", resp.Error)
	}
	nd.assertEmpty(t)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
