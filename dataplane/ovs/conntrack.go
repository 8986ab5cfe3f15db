package ovs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsrun"
)

// staleUDP is a UDP endpoint that left a frontend: its conntrack entries
// would keep sending a client's datagrams to it (UDP has no end of
// connection), so they are flushed once the new flows are in.
type staleUDP struct {
	key dataplane.FrontendKey
	ep  netip.AddrPort
}

// goneUDP lists the UDP endpoints of old that are not in cur (nil: removed).
func goneUDP(old, cur *dataplane.Frontend) []staleUDP {
	if old == nil || old.Key.Protocol != dataplane.UDP {
		return nil
	}
	var out []staleUDP
	for _, e := range dataplane.GoneEndpoints(dataplane.EndpointAddrs(old), dataplane.EndpointAddrs(cur)) {
		out = append(out, staleUDP{key: old.Key, ep: e})
	}
	return out
}

// flushUDP deletes the conntrack entries of the service zone whose
// original destination is the frontend and whose reply source is the gone
// endpoint, over ovs-vswitchd's unixctl socket (no ovs-appctl process).
// dpctl/flush-conntrack works for the userspace and the kernel datapath
// alike.
func (b *Backend) flushUDP(ctx context.Context, stale []staleUDP) {
	ctl := ovsrun.VSwitchdCtl(b.opts.OVSRunDir)
	for _, s := range stale {
		ipf := "ct_nw"
		if s.key.IP.Is6() {
			ipf = "ct_ipv6"
		}
		orig := fmt.Sprintf("%s_dst=%s,ct_nw_proto=17,ct_tp_dst=%d", ipf, s.key.IP, s.key.Port)
		reply := fmt.Sprintf("%s_src=%s,ct_nw_proto=17,ct_tp_src=%d", ipf, s.ep.Addr(), s.ep.Port())
		if _, err := ovsrun.Appctl(ctx, ctl, "dpctl/flush-conntrack", fmt.Sprintf("zone=%d", SvcZone), orig, reply); err != nil {
			b.log.Warn("flushing conntrack of a removed UDP endpoint failed", zap.Stringer("frontend", s.key),
				zap.Stringer("endpoint", s.ep), zap.Error(err))
			continue
		}
		b.log.Debug("flushed conntrack of a removed UDP endpoint", zap.Stringer("frontend", s.key), zap.Stringer("endpoint", s.ep))
	}
}

// Connections lists the established Service connections of the service
// zone (what a dataplane taking over adopts): open connections that were
// DNATed and not SNATed.
func (b *Backend) Connections(ctx context.Context) ([]dataplane.Conn, error) {
	entries, err := NATEntries(ctx, b.opts.OVSRunDir)
	if err != nil {
		return nil, err
	}
	return openConns(entries), nil
}

// openConns are the entries of open connections that were DNATed and not
// SNATed: those a dataplane can take over.
func openConns(entries []dataplane.NATEntry) []dataplane.Conn {
	var conns []dataplane.Conn
	for _, e := range entries {
		if e.Open && !e.SNATed {
			conns = append(conns, dataplane.Conn{Frontend: dataplane.FrontendKey{IP: e.Frontend.Addr(), Port: e.Frontend.Port(), Protocol: e.Protocol},
				Client: e.Client, Backend: e.Backend})
		}
	}
	return conns
}

// NATEntries lists the service zone's conntrack entries of connections
// to a frontend (DNATed: the reply comes from the endpoint), read over
// ovs-vswitchd's unixctl socket (dpctl/dump-conntrack), no process.
func NATEntries(ctx context.Context, runDir string) ([]dataplane.NATEntry, error) {
	out, err := ovsrun.Appctl(ctx, ovsrun.VSwitchdCtl(runDir), "dpctl/dump-conntrack", fmt.Sprintf("zone=%d", SvcZone))
	if err != nil {
		return nil, fmt.Errorf("ovs dataplane: conntrack of the service zone: %w", err)
	}
	return parseConntrack(out), nil
}

// parseConntrack reads dpctl/dump-conntrack lines such as
//
//	tcp,orig=(src=10.0.1.50,dst=10.96.0.10,sport=46874,dport=80),reply=(src=10.0.2.20,dst=10.0.1.50,sport=8080,dport=46874),zone=65520,protoinfo=(state=ESTABLISHED)
//
// into the DNATed connections; lines it cannot read are skipped.
func parseConntrack(out string) []dataplane.NATEntry {
	var entries []dataplane.NATEntry
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		proto, rest, ok := strings.Cut(line, ",")
		if !ok {
			continue
		}
		p, ok := map[string]dataplane.Protocol{"tcp": dataplane.TCP, "udp": dataplane.UDP, "sctp": dataplane.SCTP}[proto]
		if !ok {
			continue
		}
		orig, okO := tuple(rest, "orig=(")
		reply, okR := tuple(rest, "reply=(")
		if !okO || !okR || reply.src == orig.dst {
			continue // not DNATed: not a Service connection
		}
		e := dataplane.NATEntry{Protocol: p, Client: orig.src, Frontend: orig.dst, Backend: reply.src,
			// Closing or closed TCP is not open: adopting it could
			// clobber a new connection on the same ports.
			Open:   p != dataplane.TCP || liveTCP(rest),
			SNATed: reply.dst != orig.src,
			Raw:    line}
		if _, st, ok := strings.Cut(rest, "state="); ok {
			e.State, _, _ = strings.Cut(st, ")")
		}
		entries = append(entries, e)
	}
	return entries
}

// liveTCP says whether a TCP entry's state is one of an open connection.
func liveTCP(line string) bool {
	for _, st := range []string{"state=ESTABLISHED", "state=SYN_SENT", "state=SYN_RECV"} {
		if strings.Contains(line, st) {
			return true
		}
	}
	return false
}

type ctTuple struct{ src, dst netip.AddrPort }

// tuple reads "src=A,dst=B,sport=N,dport=M" after prefix up to ")".
func tuple(s, prefix string) (ctTuple, bool) {
	i := strings.Index(s, prefix)
	if i < 0 {
		return ctTuple{}, false
	}
	body, _, ok := strings.Cut(s[i+len(prefix):], ")")
	if !ok {
		return ctTuple{}, false
	}
	f := map[string]string{}
	for _, kv := range strings.Split(body, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			f[k] = v
		}
	}
	src, err1 := netip.ParseAddr(f["src"])
	dst, err2 := netip.ParseAddr(f["dst"])
	sport, err3 := strconv.ParseUint(f["sport"], 10, 16)
	dport, err4 := strconv.ParseUint(f["dport"], 10, 16)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return ctTuple{}, false
	}
	return ctTuple{netip.AddrPortFrom(src, uint16(sport)), netip.AddrPortFrom(dst, uint16(dport))}, true
}
