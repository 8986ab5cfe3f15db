package nftables

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// A connection from the node to its own NodePort goes to the target, the
// table follows Sync, and Cleanup removes it.
func TestNodePortFromTheNode(t *testing.T) {
	harness.RequireRoot(t)
	node := harness.NewNetNS(t)
	peer := harness.NewNetNS(t)
	harness.VethPair(t, node, "eth0", peer, "eth0")
	node.Run(t, "ip", "addr", "add", "10.0.100.2/24", "dev", "eth0")
	node.Run(t, "ip", "addr", "add", "10.0.100.3/24", "dev", "eth0")
	// The "cluster IP" here is the node's second address: what serves it
	// is the dataplane's business, not this table's.
	var ln net.Listener
	if err := node.Do(func() (err error) { ln, err = net.Listen("tcp4", "10.0.100.3:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("served " + c.LocalAddr().String() + "\n"))
			c.Close()
		}
	}()
	get := func() (string, error) {
		var c net.Conn
		err := node.Do(func() (err error) { c, err = net.DialTimeout("tcp4", "10.0.100.2:30080", time.Second); return err })
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	if _, err := get(); err == nil {
		t.Fatal("the NodePort answered before any Sync")
	}
	np := New(Options{NetNS: node.Path})
	rs := []Redirect{{Node: netip.MustParseAddrPort("10.0.100.2:30080"), Protocol: dataplane.TCP, Target: netip.MustParseAddrPort("10.0.100.3:8080")},
		{Node: netip.MustParseAddrPort("10.0.100.2:30080"), Protocol: dataplane.UDP, Target: netip.MustParseAddrPort("10.0.100.3:5353")},
		{Node: netip.MustParseAddrPort("[fd00::2]:30081"), Protocol: dataplane.TCP, Target: netip.MustParseAddrPort("[fd00:96::1]:80")}}
	if err := np.Sync(rs); err != nil {
		t.Fatal(err)
	}
	if got, err := get(); err != nil || got != "served 10.0.100.3:8080" {
		t.Fatalf("from the node to its NodePort: %q, %v", got, err)
	}
	if err := np.Sync(rs); err != nil { // unchanged: nothing written
		t.Fatal(err)
	}
	out := node.Output(t, "nft", "list", "table", "ip6", TableName)
	if !strings.Contains(out, "30081 : fd00:96::1") {
		t.Fatalf("ip6 table:\n%s", out)
	}
	if err := np.Sync(rs[1:]); err != nil {
		t.Fatal(err)
	}
	if _, err := get(); err == nil {
		t.Fatal("a removed redirect still answers")
	}
	if err := np.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := np.Cleanup(); err != nil {
		t.Fatal(err)
	}
	err := node.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		ts, err := c.ListTables()
		for _, tb := range ts {
			if tb.Name == TableName {
				t.Errorf("table %s (family %d) left after Cleanup", tb.Name, tb.Family)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestFromModel(t *testing.T) {
	name := dataplane.ServicePortName{Namespace: "ns", Name: "web", Port: "http"}
	fe := func(ip string, port uint16, p dataplane.Protocol, kind dataplane.FrontendKind) *dataplane.Frontend {
		return &dataplane.Frontend{Key: dataplane.FrontendKey{IP: netip.MustParseAddr(ip), Port: port, Protocol: p}, Name: name, Kind: kind}
	}
	m := &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{}}
	for _, f := range []*dataplane.Frontend{fe("10.96.0.10", 80, dataplane.TCP, dataplane.ClusterIP),
		fe("10.0.100.2", 30080, dataplane.TCP, dataplane.NodePort), fe("10.0.100.2", 30080, dataplane.UDP, dataplane.NodePort),
		fe("192.0.2.1", 80, dataplane.TCP, dataplane.ExternalIP)} {
		m.Frontends[f.Key] = f
	}
	got := FromModel(m)
	want := Redirect{Node: netip.MustParseAddrPort("10.0.100.2:30080"), Protocol: dataplane.TCP, Target: netip.MustParseAddrPort("10.96.0.10:80")}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("FromModel = %+v, want [%+v] (no UDP cluster IP frontend: no UDP redirect)", got, want)
	}
}
