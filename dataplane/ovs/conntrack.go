package ovs

import (
	"context"
	"fmt"
	"net/netip"

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
