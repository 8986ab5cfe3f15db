package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nsx-ujo/nsx-ujo/pkg/sysctl"
)

// HostPortTable is the table of pods' hostPorts, in the ip and ip6
// families.
const HostPortTable = "nsx-ujo-hostport"

// HostPort is one pod's hostPort: connections to HostIP:HostPort (any
// node address when HostIP is invalid) go to PodIP:ContainerPort.
type HostPort struct {
	HostIP        netip.Addr
	HostPort      uint16
	Protocol      string // tcp, udp or sctp
	PodIP         netip.Addr
	ContainerPort uint16
}

// HostPortsOptions configure HostPorts.
type HostPortsOptions struct {
	// NetNS is the network namespace path whose nftables to program
	// (default: this process's).
	NetNS string
	// LocalnetInterface is the interface hostPort traffic leaves the node
	// by (the bridge's internal port): a hostPort on 127.0.0.1 needs its
	// route_localnet, as with the reference portmap plugin.
	LocalnetInterface string
	// Sysctl is where the node's /proc/sys is (proc_mount_path_prefix).
	Sysctl sysctl.Dir
}

// HostPorts serves pods' hostPorts with the node's nftables, in place of
// chaining the reference portmap plugin (an exec per pod): DNAT from
// outside (prerouting) and from the node itself (output) to the pod, and
// masquerade of those connections, so that the pod's replies come back
// through the node (its gateway is the fabric's, not the node). Sync and
// Cleanup may be called from any goroutine; they serialize.
type HostPorts struct {
	o       HostPortsOptions
	mu      sync.Mutex
	applied []HostPort // nil: unknown
}

// NewHostPorts returns a HostPorts; it touches nothing before Sync.
func NewHostPorts(o HostPortsOptions) *HostPorts { return &HostPorts{o: o} }

// Sync makes the tables serve exactly hps. Idempotent (nothing is written
// when hps equals the last Sync's, in any order) and atomic per family (the
// table is replaced in one netlink transaction).
func (h *HostPorts) Sync(hps []HostPort) error {
	want := slices.Clone(hps)
	slices.SortFunc(want, compareHostPort)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.applied != nil && slices.Equal(h.applied, want) {
		return nil
	}
	if h.o.LocalnetInterface != "" && slices.ContainsFunc(want, func(hp HostPort) bool { return hp.HostIP.IsLoopback() && hp.HostIP.Is4() }) {
		if err := h.routeLocalnet(); err != nil {
			return err
		}
	}
	h.applied = nil // unknown until both families are written
	if err := eachFamily(h.o.NetNS, func(c *nftables.Conn, fam nftables.TableFamily) error {
		return replaceHostPortTable(c, fam, want)
	}); err != nil {
		return err
	}
	h.applied = want
	return nil
}

// Cleanup removes both tables. Idempotent.
func (h *HostPorts) Cleanup() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.applied = nil
	return removeTables(h.o.NetNS, HostPortTable)
}

func compareHostPort(a, b HostPort) int {
	if c := a.HostIP.Compare(b.HostIP); c != 0 {
		return c
	}
	if a.HostPort != b.HostPort {
		return int(a.HostPort) - int(b.HostPort)
	}
	if a.Protocol != b.Protocol {
		if a.Protocol < b.Protocol {
			return -1
		}
		return 1
	}
	if c := a.PodIP.Compare(b.PodIP); c != 0 {
		return c
	}
	return int(a.ContainerPort) - int(b.ContainerPort)
}

// routeLocalnet lets packets from 127.0.0.1 leave by the interface once
// DNATed to a pod (the masquerade rule then gives them the node's address).
func (h *HostPorts) routeLocalnet() error {
	key := filepath.Join("net/ipv4/conf", h.o.LocalnetInterface, "route_localnet")
	write := func(ns.NetNS) error { return h.o.Sysctl.Write(key, "1") }
	var err error
	if h.o.NetNS == "" {
		err = write(nil)
	} else {
		err = ns.WithNetNSPath(h.o.NetNS, write)
	}
	if err != nil {
		return fmt.Errorf("hostPort on 127.0.0.1: %w", err)
	}
	return nil
}

func protoNum(p string) byte {
	switch p {
	case "udp":
		return unix.IPPROTO_UDP
	case "sctp":
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

// replaceHostPortTable rebuilds one family's table in one transaction:
//
//	table ip nsx-ujo-hostport {
//	  chain prerouting { type nat hook prerouting priority dstnat; jump hostports }
//	  chain output { type nat hook output priority dstnat; jump hostports }
//	  chain hostports {
//	    meta l4proto tcp ip daddr 10.0.100.2 tcp dport 8080 dnat to 10.0.1.5:80
//	    meta l4proto tcp fib daddr type local tcp dport 9090 dnat to 10.0.1.6:90   (no hostIP)
//	  }
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    ct status dnat meta l4proto tcp ip daddr 10.0.1.5 tcp dport 80 masquerade ... }
//	  chain localnet-guard { type filter hook prerouting priority raw     (ip only)
//	    iifname != "lo" ip daddr 127.0.0.0/8 drop }                       (CVE-2020-8558)
//	}
func replaceHostPortTable(c *nftables.Conn, fam nftables.TableFamily, hps []HostPort) error {
	v6 := fam == nftables.TableFamilyIPv6
	daddrOff, daddrLen, natFam := uint32(16), uint32(4), uint32(unix.NFPROTO_IPV4)
	if v6 {
		daddrOff, daddrLen, natFam = 24, 16, unix.NFPROTO_IPV6
	}
	t := &nftables.Table{Name: HostPortTable, Family: fam}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	mappings := c.AddChain(&nftables.Chain{Name: "hostports", Table: t})
	for _, hook := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"prerouting", nftables.ChainHookPrerouting}, {"output", nftables.ChainHookOutput}} {
		ch := c.AddChain(&nftables.Chain{Name: hook.name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: hook.hook,
			Priority: nftables.ChainPriorityNATDest})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: mappings.Name}}})
	}
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	if !v6 {
		guard := c.AddChain(&nftables.Chain{Name: "localnet-guard", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw})
		c.AddRule(&nftables.Rule{Table: t, Chain: guard, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname("lo")},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{127}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	for _, hp := range hps {
		if hp.PodIP.Is6() != v6 || (hp.HostIP.IsValid() && hp.HostIP.Is6() != v6) {
			continue
		}
		l4 := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNum(hp.Protocol)}},
		}
		var daddr []expr.Any
		if hp.HostIP.IsValid() {
			daddr = []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOff, Len: daddrLen},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: hp.HostIP.AsSlice()},
			}
		} else {
			daddr = []expr.Any{
				&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
			}
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: mappings, Exprs: slices.Concat(l4, daddr, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(hp.HostPort)},
			&expr.Immediate{Register: 1, Data: hp.PodIP.AsSlice()},
			&expr.Immediate{Register: 2, Data: be16(hp.ContainerPort)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: natFam, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		})})
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat([]expr.Any{
			&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binary.NativeEndian.AppendUint32(nil, ipsDstNAT), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		}, l4, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOff, Len: daddrLen},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: hp.PodIP.AsSlice()},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(hp.ContainerPort)},
			&expr.Masq{},
		})})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: replace table %s (%s): %w", HostPortTable, famName(v6), err)
	}
	return nil
}

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits.
const ipsDstNAT = 1 << 5

// ifname is an interface name as nftables compares it (NUL-padded to
// IFNAMSIZ).
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
