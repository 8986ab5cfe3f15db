package agent_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
)

const gw6 = "fd00:10:0:1::1"

// ip6 is a dual-stack pod's IPv6 address (without prefix length).
func (p *pod) ip6() string { return "fd00:10:0:1::" + strings.TrimPrefix(p.ip, "10.0.1.") }

// dualStack gives p an IPv6 address and gateway next to its IPv4 ones.
func (nd *node) dualStack(t *testing.T, p *pod) {
	t.Helper()
	a := strings.Replace(p.annotation(), `"vlan_id"`, fmt.Sprintf(`"ipv6_address":"%s/64","ipv6_gateway_ip":%q,"vlan_id"`, p.ip6(), gw6), 1)
	if err := nd.src.set("default", p.name, p.uid, a); err != nil {
		t.Fatal(err)
	}
}

// A dual-stack pod: the CNI result lists both addresses with their gateways
// and both default routes, the pod has both, and reaches another pod over
// both families through br-int. A repeated ADD returns the same result
// and repairs a lost IPv6 address, which CHECK reports.
func TestAddDualStack(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		nd := newNodeIn(t, mode)
		a, b := nd.newPod(t, 1, 101), nd.newPod(t, 2, 101)
		nd.dualStack(t, a)
		nd.dualStack(t, b)
		res := nd.mustAdd(t, a)
		if len(res.IPs) != 2 || res.IPs[0].Address.String() != a.ip+"/24" || res.IPs[0].Gateway.String() != "10.0.1.1" ||
			res.IPs[1].Address.String() != a.ip6()+"/64" || res.IPs[1].Gateway.String() != gw6 ||
			res.IPs[1].Interface == nil || *res.IPs[1].Interface != 1 ||
			len(res.Routes) != 2 || res.Routes[1].Dst.String() != "::/0" || res.Routes[1].GW.String() != gw6 {
			t.Fatalf("result %s", mustJSON(res))
		}
		addr := a.ns.Output(t, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
		route := a.ns.Output(t, "ip", "-6", "route", "show", "default")
		if !strings.Contains(addr, a.ip6()+"/64") || strings.Contains(addr, "tentative") ||
			!strings.Contains(route, "default via "+gw6+" dev eth0") {
			t.Fatalf("pod interface:\n%s\n%s", addr, route)
		}
		nd.mustAdd(t, b)
		a.ns.Run(t, "ping", "-c", "1", "-W", "2", b.ip)
		a.ns.Run(t, "ping", "-c", "1", "-W", "2", b.ip6())

		host := podnet.HostIfName(a.container, "eth0")
		uuid := nd.ovs.Vsctl(t, "get", "Port", host, "_uuid")
		if again := nd.mustAdd(t, a); mustJSON(again.IPs) != mustJSON(res.IPs) || mustJSON(again.Routes) != mustJSON(res.Routes) {
			t.Fatalf("repeated ADD:\n%s\nfirst:\n%s", mustJSON(again), mustJSON(res))
		}
		if nd.ovs.Vsctl(t, "get", "Port", host, "_uuid") != uuid {
			t.Fatal("repeated ADD recreated an intact dual-stack attachment")
		}
		if resp := nd.do(t, a.req(cniwire.CmdCheck)); resp.Error != nil {
			t.Fatalf("CHECK: %v", resp.Error)
		}
		a.ns.Run(t, "ip", "-6", "addr", "del", a.ip6()+"/64", "dev", "eth0")
		if resp := nd.do(t, a.req(cniwire.CmdCheck)); resp.Error == nil || !strings.Contains(resp.Error.Msg+resp.Error.Details, a.ip6()+"/64 missing") {
			t.Fatalf("CHECK without the IPv6 address: %+v", resp.Error)
		}
		nd.mustAdd(t, a)
		if resp := nd.do(t, a.req(cniwire.CmdCheck)); resp.Error != nil {
			t.Fatalf("CHECK after the repairing ADD: %v", resp.Error)
		}
		a.ns.Run(t, "ping", "-c", "1", "-W", "2", b.ip6())
	})
}
