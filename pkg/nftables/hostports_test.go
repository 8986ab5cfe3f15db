package nftables

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// serve answers each TCP connection and UDP datagram on port with
// "<name> <remote ip>".
func serve(t *testing.T, n *harness.NetNS, name string, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		if ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 100)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(fmt.Sprintf("%s %s", name, from.(*net.UDPAddr).IP)), from)
		}
	}()
}

func ask(n *harness.NetNS, network, addr string) (string, error) {
	var c net.Conn
	if err := n.Do(func() (err error) { c, err = net.DialTimeout(network, addr, time.Second); return err }); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp4" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return "", err
		}
		buf := make([]byte, 100)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// Two pods with the same hostPort on different host addresses and
// protocols, reached from outside the node and from the node itself
// (127.0.0.1 too); the pods see the node as the source (their replies
// must come back through it); a removed mapping stops answering.
func TestHostPorts(t *testing.T) {
	harness.RequireRoot(t)
	node, client, pod1, pod2 := harness.NewNetNS(t), harness.NewNetNS(t), harness.NewNetNS(t), harness.NewNetNS(t)
	harness.VethPair(t, client, "eth0", node, "eth0")
	harness.VethPair(t, pod1, "eth0", node, "pod1")
	harness.VethPair(t, pod2, "eth0", node, "pod2")
	client.Run(t, "ip", "addr", "add", "10.0.100.9/24", "dev", "eth0")
	node.Run(t, "ip", "addr", "add", "10.0.100.2/24", "dev", "eth0")
	node.Run(t, "ip", "addr", "add", "10.0.100.3/24", "dev", "eth0")
	node.Run(t, "ip", "addr", "add", "10.0.1.1/24", "dev", "pod1")
	node.Run(t, "ip", "addr", "add", "10.0.2.1/24", "dev", "pod2")
	node.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	pod1.Run(t, "ip", "addr", "add", "10.0.1.5/24", "dev", "eth0")
	pod1.Run(t, "ip", "route", "add", "default", "via", "10.0.1.1")
	pod2.Run(t, "ip", "addr", "add", "10.0.2.5/24", "dev", "eth0")
	pod2.Run(t, "ip", "route", "add", "default", "via", "10.0.2.1")
	serve(t, pod1, "pod1", 80)
	serve(t, pod2, "pod2", 80)

	h := NewHostPorts(HostPortsOptions{NetNS: node.Path, LocalnetInterface: "pod1"})
	t.Cleanup(func() { _ = h.Cleanup() })
	hps := []HostPort{
		{HostIP: netip.MustParseAddr("10.0.100.2"), HostPort: 8080, Protocol: "tcp", PodIP: netip.MustParseAddr("10.0.1.5"), ContainerPort: 80},
		{HostIP: netip.MustParseAddr("10.0.100.3"), HostPort: 8080, Protocol: "tcp", PodIP: netip.MustParseAddr("10.0.2.5"), ContainerPort: 80},
		{HostIP: netip.MustParseAddr("10.0.100.2"), HostPort: 8080, Protocol: "udp", PodIP: netip.MustParseAddr("10.0.2.5"), ContainerPort: 80},
		{HostPort: 9090, Protocol: "tcp", PodIP: netip.MustParseAddr("10.0.2.5"), ContainerPort: 80},
		{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 54323, Protocol: "tcp", PodIP: netip.MustParseAddr("10.0.1.5"), ContainerPort: 80},
	}
	if err := h.Sync(hps); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		from          *harness.NetNS
		network, addr string
		want          string
	}{
		{client, "tcp4", "10.0.100.2:8080", "pod1 10.0.1.1"},
		{client, "tcp4", "10.0.100.3:8080", "pod2 10.0.2.1"},
		{client, "udp4", "10.0.100.2:8080", "pod2 10.0.2.1"},
		{client, "tcp4", "10.0.100.3:9090", "pod2 10.0.2.1"},
		{node, "tcp4", "10.0.100.2:8080", "pod1 10.0.1.1"},
		{node, "udp4", "10.0.100.2:8080", "pod2 10.0.2.1"},
		{node, "tcp4", "10.0.100.2:9090", "pod2 10.0.2.1"},
		{node, "tcp4", "127.0.0.1:54323", "pod1 10.0.1.1"},
	} {
		if got, err := ask(c.from, c.network, c.addr); err != nil || got != c.want {
			t.Errorf("%s to %s from the %s: %q, %v; want %q", c.network, c.addr, map[*harness.NetNS]string{client: "client", node: "node"}[c.from], got, err, c.want)
		}
	}
	if _, err := ask(client, "tcp4", "10.0.100.2:54323"); err == nil {
		t.Error("a hostPort on 127.0.0.1 answers on the node's address")
	}
	if err := h.Sync(hps[1:]); err != nil {
		t.Fatal(err)
	}
	if _, err := ask(client, "tcp4", "10.0.100.2:8080"); err == nil {
		t.Error("a removed hostPort still answers")
	}
	if got, err := ask(client, "tcp4", "10.0.100.3:8080"); err != nil || got != "pod2 10.0.2.1" {
		t.Errorf("after removing another mapping: %q, %v", got, err)
	}
}
