package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
	"github.com/nsx-ujo/nsx-ujo/pkg/hyperbus"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
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
		if got := nd.externalIDs(t, host, "ipv6-address", "ipv6-gateway-ip"); got[0] != a.ip6()+"/64" || got[1] != gw6 {
			t.Fatalf("port record of a dual-stack pod: ipv6-address %q ipv6-gateway-ip %q", got[0], got[1])
		}

		// The config moves the pod to another IPv6 address: the record
		// differs, so a repeated ADD recreates the attachment with it.
		moved := *a
		moved.ip = "10.0.1.99" // its ip6() is ...::99; the IPv4 address is not used
		uuid = nd.ovs.Vsctl(t, "get", "Port", host, "_uuid")
		if err := nd.src.set("default", a.name, a.uid, strings.Replace(a.annotation(), `"vlan_id"`,
			fmt.Sprintf(`"ipv6_address":"%s/64","ipv6_gateway_ip":%q,"vlan_id"`, moved.ip6(), gw6), 1)); err != nil {
			t.Fatal(err)
		}
		nd.mustAdd(t, a)
		if nd.ovs.Vsctl(t, "get", "Port", host, "_uuid") == uuid {
			t.Error("repeated ADD kept the attachment of a changed IPv6 address")
		}
		if got := nd.externalIDs(t, host, "ipv6-address"); got[0] != moved.ip6()+"/64" {
			t.Errorf("port record after the IPv6 address changed: ipv6-address %q", got[0])
		}
		addr = a.ns.Output(t, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
		if !strings.Contains(addr, moved.ip6()+"/64") || strings.Contains(addr, a.ip6()+"/") {
			t.Fatalf("pod addresses after the IPv6 address changed:\n%s", addr)
		}

		// The config drops IPv6: a repeated ADD leaves the pod no IPv6
		// address and the record none (PodNet.Check alone would pass, as
		// nothing the config asks for is missing).
		if err := nd.src.set("default", a.name, a.uid, a.annotation()); err != nil {
			t.Fatal(err)
		}
		res = nd.mustAdd(t, a)
		if len(res.IPs) != 1 {
			t.Errorf("result after IPv6 was dropped: %s", mustJSON(res))
		}
		if got := nd.externalIDs(t, host, "ipv6-address", "ipv6-gateway-ip"); got[0] != "" || got[1] != "" {
			t.Errorf("port record after IPv6 was dropped: ipv6-address %q ipv6-gateway-ip %q", got[0], got[1])
		}
		addr = a.ns.Output(t, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
		route = a.ns.Output(t, "ip", "-6", "route", "show", "default")
		if strings.TrimSpace(addr) != "" || strings.TrimSpace(route) != "" {
			t.Fatalf("pod still has IPv6 after the config dropped it:\n%s\n%s", addr, route)
		}
		a.ns.Run(t, "ping", "-c", "1", "-W", "2", b.ip)
	})
}

// externalIDs reads keys of the external_ids of the port called port ("":
// the key is not set).
func (nd *node) externalIDs(t *testing.T, port string, keys ...string) []string {
	t.Helper()
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = strings.Trim(strings.TrimSpace(nd.ovs.Vsctl(t, "--if-exists", "get", "Port", port, "external_ids:"+k)), `"`)
	}
	return out
}

// A dual-stack pod's hostPort answers over both families, from the node
// acting as the pod's gateway (an internal port on the pod's VLAN), and
// again after an agent restart from the port's record; a hostPort on an
// IPv4 hostIP is served over IPv4 only.
func TestHostPortsDualStack(t *testing.T) {
	nd := newNode(t)
	p := nd.newPod(t, 1, 101)
	nd.dualStack(t, p)
	// The node's end of VLAN 101, holding both gateway addresses.
	nd.ovs.Vsctl(t, "add-port", "br-int", "gw0", "tag=101", "--", "set", "Interface", "gw0", "type=internal")
	nd.ns.Run(t, "ethtool", "-K", "gw0", "tx", "off")
	nd.ns.Run(t, "ip", "addr", "add", "10.0.1.1/24", "dev", "gw0")
	nd.ns.Run(t, "ip", "addr", "add", gw6+"/64", "dev", "gw0", "nodad")
	nd.ns.Run(t, "ip", "link", "set", "gw0", "up")

	add := p.req(cniwire.CmdAdd)
	add.Config = json.RawMessage(`{"cniVersion":"1.1.0","name":"nsx","type":"nsx","runtimeConfig":{"portMappings":[
		{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":8081,"containerPort":80,"protocol":"tcp","hostIP":"10.0.1.1"}]}}`)
	if resp := nd.do(t, add); resp.Error != nil {
		t.Fatalf("ADD: %v", resp.Error)
	}
	var l net.Listener
	if err := p.ns.Do(func() (err error) { l, err = net.Listen("tcp", ":80"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.LocalAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	// ask returns the pod address that answered addr, or the error.
	ask := func(addr string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := nd.ns.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err.Error()
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err.Error()
		}
		return strings.TrimSpace(line)
	}
	check := func(when string) {
		t.Helper()
		for addr, want := range map[string]string{
			"10.0.1.1:8080": p.ip, "[" + gw6 + "]:8080": p.ip6(), "10.0.1.1:8081": p.ip,
		} {
			if got := ask(addr); got != want {
				t.Errorf("%s: hostPort %s answered by %q, want the pod's %s", when, addr, got, want)
			}
		}
		if got := ask("[" + gw6 + "]:8081"); got == p.ip6() {
			t.Errorf("%s: the hostPort on IPv4 hostIP 10.0.1.1 answers over IPv6", when)
		}
	}
	check("after ADD")

	// Restart with the node's tables flushed: the record serves both again.
	nd.ns.Run(t, "nft", "delete", "table", "ip", nftables.HostPortTable)
	nd.ns.Run(t, "nft", "delete", "table", "ip6", nftables.HostPortTable)
	nd.agent = nd.newAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nd.agent.RestoreHostPorts(ctx); err != nil {
		t.Fatal(err)
	}
	check("after a restart")

	if resp := nd.do(t, p.req(cniwire.CmdDel)); resp.Error != nil {
		t.Fatalf("DEL: %v", resp.Error)
	}
	if out := nd.ns.Output(t, "nft", "list", "table", "ip6", nftables.HostPortTable); strings.Contains(out, "dnat") {
		t.Fatalf("ip6 hostPort table after DEL:\n%s", out)
	}
}

// A running dual-stack pod whose IPv6 address changed while no HyperBus
// session existed is reported attached, with how its IPv6 address differs.
func TestHyperBusReportsChangedIPv6(t *testing.T) {
	nd := newNodeIn(t, hyperbusMode)
	p := nd.newPod(t, 1, 101)
	nd.dualStack(t, p)
	nd.mustAdd(t, p)
	nd.hb.drop()
	moved := *p
	moved.ip = "10.0.1.99"
	a := strings.Replace(p.annotation(), `"vlan_id"`, fmt.Sprintf(`"ipv6_address":"%s/64","ipv6_gateway_ip":%q,"vlan_id"`, moved.ip6(), gw6), 1)
	if err := nd.hb.set("default", p.name, p.uid, a); err != nil {
		t.Fatal(err)
	}
	nd.hb.connect()
	m := nd.hb.status(t, p.name)
	if m.State != hyperbus.StateAttached || !strings.Contains(m.Error, p.ip6()+"/64") || !strings.Contains(m.Error, moved.ip6()+"/64") {
		t.Errorf("status of the pod whose IPv6 address changed: %+v", m)
	}
}
