package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// Return codes of the programs (TCX and TC).
const (
	protoTCP    = dataplane.ProtoTCP
	protoUDP    = dataplane.ProtoUDP
	protoICMP   = 1
	protoICMPv6 = 58
	tcxNext     = 0xffffffff // TCX_NEXT (-1)
	tcxPass     = 0
	tcActShot   = 2
	tcRedirect  = 7 // bpf_redirect: a test run does not redirect, it returns this
)

// Trace runs the egress program attached to the pod whose port (host
// interface) is port on a packet like pkt, against the live maps pinned in
// pinDir (BPF_PROG_TEST_RUN): the decision the dataplane makes for it.
//
// On an open connection (its conntrack entry exists) the packet is the
// connection's next one and only reads the maps. Otherwise it is the first
// (a TCP SYN), which writes the conntrack entries (and an affinity entry)
// a real connection would: Trace removes what it created, so a later real
// connection from the same source port balances afresh. The per-frontend
// new-connection counter counts the traced connection.
func Trace(pinDir, port string, pkt dataplane.TracePacket) (*dataplane.Trace, error) {
	v6 := pkt.Src.Addr().Is6()
	if pkt.Dst.Addr().Is6() != v6 {
		return nil, fmt.Errorf("ebpf: trace: %s -> %s: source and destination of two address families", pkt.Src, pkt.Dst)
	}
	proto := pkt.Protocol.Number()
	if proto != protoTCP && proto != protoUDP {
		return nil, fmt.Errorf("ebpf: trace: protocol %s: want TCP or UDP", pkt.Protocol)
	}
	prog, err := podProgram(pinDir, port)
	if err != nil {
		return nil, err
	}
	defer prog.Close()
	names := []string{nsxMapNsxConntrack, nsxMapNsxAffinity, nsxMapNsxServices}
	if v6 {
		names = []string{nsxMapNsxConntrack6, nsxMapNsxAffinity6, nsxMapNsxServices6}
	}
	var maps []*ebpf.Map
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	for _, name := range names {
		m, err := ebpf.LoadPinnedMap(pinDir+"/"+name, nil)
		if err != nil {
			return nil, fmt.Errorf("ebpf: trace: map %s: %w", name, err)
		}
		maps = append(maps, m)
	}
	fam := &family{v6: v6, conntrack: maps[0], affinity: maps[1], services: maps[2]}
	established := fam.hasConn(pkt.Src, pkt.Dst, proto, ctDirFwd)
	svc, isSvc := fam.lookupService(dataplane.FrontendKey{IP: pkt.Dst.Addr(), Port: pkt.Dst.Port(), Protocol: pkt.Protocol})
	affined, hadAffinity := netip.AddrPort{}, false
	if isSvc {
		affined, hadAffinity = fam.lookupAffinity(pkt.Src.Addr(), svc.Id)
	}

	flags := uint8(tcpSYN)
	if established {
		flags = tcpACK
	}
	in := buildPacket(proto, pkt.Src.Addr(), pkt.Dst.Addr(), pkt.Src.Port(), pkt.Dst.Port(), flags)
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, 1500)}
	ret, err := prog.Run(opts)
	if err != nil {
		return nil, fmt.Errorf("ebpf: trace: run the program of %s: %w", port, err)
	}
	t := &dataplane.Trace{Established: established}
	out, perr := parsePacket(opts.DataOut)
	t.Raw = fmt.Sprintf("program %s of port %s returned %s", progName(prog), port, retName(ret))
	if perr == nil {
		t.Raw += fmt.Sprintf("; packet out: %s %s:%d -> %s:%d", protoName(out.proto), out.src, out.sport, out.dst, out.dport)
	}
	switch ret {
	case tcxNext:
		t.Verdict = dataplane.VerdictPass
	case tcActShot:
		t.Verdict = dataplane.VerdictDrop
	case tcxPass, tcRedirect:
		if perr != nil {
			return nil, fmt.Errorf("ebpf: trace: the program returned a packet that does not parse: %w", perr)
		}
		switch {
		case out.proto == protoICMP || out.proto == protoICMPv6 || (out.proto == protoTCP && out.tcpFlags&tcpRST != 0):
			t.Verdict = dataplane.VerdictReject
		default:
			t.Verdict = dataplane.VerdictForward
			t.Backend = netip.AddrPortFrom(out.dst, out.dport)
			if ret == tcRedirect && out.dst == pkt.Src.Addr() {
				// Hairpin: the pod reaching itself, seen from the hairpin address.
				t.NAT = append(t.NAT, fmt.Sprintf("src %s -> %s:%d (hairpin)", pkt.Src, out.src, out.sport))
			}
			t.NAT = append([]string{fmt.Sprintf("dst %s -> %s", pkt.Dst, t.Backend)}, t.NAT...)
		}
	default:
		return nil, fmt.Errorf("ebpf: trace: the program returned %d", int32(ret))
	}
	if isSvc && svc.Flags&flagAffinity != 0 && t.Verdict == dataplane.VerdictForward && !established {
		t.Affinity = "created"
		if hadAffinity && affined == t.Backend {
			t.Affinity = "used"
		}
	}
	if !established && t.Verdict == dataplane.VerdictForward {
		// Remove what the traced SYN created.
		rsrc, rdst, rdir := t.Backend, pkt.Src, uint8(ctDirRev)
		if out.dst == pkt.Src.Addr() && ret == tcRedirect {
			rdst, rdir = netip.AddrPortFrom(out.src, pkt.Src.Port()), ctDirHairpinReply
		}
		errs := []error{fam.deleteConn(pkt.Src, pkt.Dst, proto, ctDirFwd), fam.deleteConn(rsrc, rdst, proto, rdir)}
		if t.Affinity == "created" && !hadAffinity {
			errs = append(errs, fam.deleteAffinity(pkt.Src.Addr(), svc.Id))
		}
		if err := errors.Join(errs...); err != nil {
			return t, fmt.Errorf("ebpf: trace: removing the traced connection's entries: %w", err)
		}
	}
	return t, nil
}

// podProgram is the egress program attached to the pod's port, through
// its pinned link: the program that runs for the pod's packets, whatever
// version loaded it.
func podProgram(pinDir, port string) (*ebpf.Program, error) {
	pin := linkPath(pinDir, port, "egress")
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ebpf: trace: no eBPF program attached to port %s (no link pinned at %s)", port, pin)
		}
		return nil, fmt.Errorf("ebpf: trace: link of port %s: %w", port, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("ebpf: trace: link of port %s: %w", port, err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil, fmt.Errorf("ebpf: trace: program %d of port %s: %w", info.Program, port, err)
	}
	return prog, nil
}

func progName(p *ebpf.Program) string {
	if info, err := p.Info(); err == nil {
		return info.Name
	}
	return "?"
}

func retName(ret uint32) string {
	switch ret {
	case tcxNext:
		return "TCX_NEXT (not a Service packet)"
	case tcxPass:
		return "TCX_PASS"
	case tcActShot:
		return "TC_ACT_SHOT (drop)"
	case tcRedirect:
		return "TC_ACT_REDIRECT (turned around)"
	}
	return fmt.Sprint(int32(ret))
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoICMP:
		return "icmp"
	case protoICMPv6:
		return "icmpv6"
	}
	return fmt.Sprint(p)
}
