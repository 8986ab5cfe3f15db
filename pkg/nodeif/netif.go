package nodeif

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// keptAddrFlags are the IFA_F_* flags that are configuration. The others
// (permanent, secondary, tentative, deprecated, dadfailed) are state the
// kernel derives and refuses or ignores on input.
const keptAddrFlags = unix.IFA_F_NODAD | unix.IFA_F_OPTIMISTIC | unix.IFA_F_HOMEADDRESS |
	unix.IFA_F_MANAGETEMPADDR | unix.IFA_F_NOPREFIXROUTE | unix.IFA_F_MCAUTOJOIN

// foreverLft is the kernel's infinite lifetime (INFINITY_LIFE_TIME).
const foreverLft = 0xFFFFFFFF

func toAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func toPrefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(toAddr(n.IP), ones)
}

func toIPNet(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipOrNil(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return a.AsSlice()
}

// movable says whether an uplink address belongs to the node's
// configuration. IPv6 link-local and temporary (privacy) addresses are the
// kernel's own: every interface gets its own, the bridge too.
func movable(a netlink.Addr) bool {
	ip := toAddr(a.IP)
	if ip.Is6() && (ip.IsLinkLocalUnicast() || a.Flags&unix.IFA_F_TEMPORARY != 0) {
		return false
	}
	return true
}

// dynamic reports a leased address: not permanent, with a finite lifetime
// (what DHCP clients and IPv6 autoconfiguration install).
func dynamic(a netlink.Addr) bool {
	return a.Flags&unix.IFA_F_PERMANENT == 0 && a.ValidLft != foreverLft
}

func addressFrom(a netlink.Addr, ifName string) Address {
	out := Address{
		Prefix:    toPrefix(a.IPNet),
		Peer:      toPrefix(a.Peer),
		Broadcast: toAddr(a.Broadcast),
		Scope:     a.Scope,
		Flags:     a.Flags &^ unix.IFA_F_SECONDARY, // recomputed by the kernel (IPv4)
	}
	if suffix, ok := strings.CutPrefix(a.Label, ifName); ok {
		out.LabelSuffix = suffix
	}
	if dynamic(a) {
		out.ValidLft, out.PreferredLft = a.ValidLft, a.PreferedLft
	}
	return out
}

// nl builds the netlink address to add on link ifName; lifetimes left at
// 0 make a permanent address.
func (a Address) nl(ifName string, extraFlags int) *netlink.Addr {
	n := &netlink.Addr{
		IPNet: toIPNet(a.Prefix),
		Peer:  toIPNet(a.Peer),
		Scope: a.Scope,
		Flags: a.Flags&keptAddrFlags | extraFlags,
	}
	if a.Prefix.Addr().Is4() {
		// An unset broadcast must stay unset: netlink would compute one.
		n.Broadcast = net.IPv4zero
		if a.Broadcast.IsValid() {
			n.Broadcast = a.Broadcast.AsSlice()
		}
		if a.LabelSuffix != "" {
			n.Label = ifName + a.LabelSuffix
		}
	}
	if a.ValidLft > 0 {
		n.ValidLft, n.PreferedLft = a.ValidLft, a.PreferredLft
	}
	return n
}

func routeFrom(r netlink.Route) Route {
	out := Route{
		Dst:      toPrefix(r.Dst),
		Gw:       toAddr(r.Gw),
		Src:      toAddr(r.Src),
		Table:    r.Table,
		Metric:   r.Priority,
		Scope:    int(r.Scope),
		Protocol: int(r.Protocol),
		Type:     r.Type,
		Tos:      r.Tos,
		OnLink:   r.Flags&unix.RTNH_F_ONLINK != 0,
		MTU:      r.MTU,
		AdvMSS:   r.AdvMSS,
		Hoplimit: r.Hoplimit,
	}
	if !out.Dst.IsValid() { // a default route has no RTA_DST
		out.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if r.Family == unix.AF_INET6 {
			out.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
	}
	return out
}

func (r Route) family() int {
	if r.Dst.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func (r Route) nl(linkIndex int) *netlink.Route {
	n := &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       toIPNet(r.Dst),
		Gw:        ipOrNil(r.Gw),
		Src:       ipOrNil(r.Src),
		Family:    r.family(),
		Table:     r.Table,
		Priority:  r.Metric,
		Scope:     netlink.Scope(r.Scope),
		Protocol:  netlink.RouteProtocol(r.Protocol),
		Type:      r.Type,
		Tos:       r.Tos,
		MTU:       r.MTU,
		AdvMSS:    r.AdvMSS,
		Hoplimit:  r.Hoplimit,
	}
	if r.OnLink {
		n.Flags = unix.RTNH_F_ONLINK
	}
	return n
}

// sameRoute matches a listed route against a journaled one by the
// kernel's identity of a route plus its next hop.
func sameRoute(n netlink.Route, r Route) bool {
	got := routeFrom(n)
	return got.Table == r.Table && got.Dst == r.Dst && got.Metric == r.Metric && got.Tos == r.Tos && got.Gw == r.Gw
}

// linkByName returns the link, or an error naming what the name is.
func linkByName(h *netlink.Handle, name, what string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, fmt.Errorf("%s %q: no such network interface in this network namespace", what, name)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", what, name, err)
	}
	return l, nil
}

// capture reads what the uplink carries now: its movable addresses and
// every route through it in any table, except those the kernel makes for
// an address (proto kernel: prefix, local, broadcast and multicast
// routes), which follow the address by themselves.
func capture(h *netlink.Handle, uplink netlink.Link) (addrs []Address, routes []Route, dhcp bool, skipped []string, err error) {
	name := uplink.Attrs().Name
	nlAddrs, err := h.AddrList(uplink, netlink.FAMILY_ALL)
	if err != nil {
		return nil, nil, false, nil, fmt.Errorf("addresses of %s: %w", name, err)
	}
	for _, a := range nlAddrs {
		if !movable(a) {
			continue
		}
		dhcp = dhcp || dynamic(a)
		addrs = append(addrs, addressFrom(a, name))
	}
	nlRoutes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, nil, false, nil, fmt.Errorf("routes: %w", err)
	}
	for _, r := range nlRoutes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		if r.LinkIndex == uplink.Attrs().Index {
			routes = append(routes, routeFrom(r))
			continue
		}
		for _, nh := range r.MultiPath {
			if nh.LinkIndex == uplink.Attrs().Index {
				skipped = append(skipped, r.String())
				break
			}
		}
	}
	return addrs, routes, dhcp, skipped, nil
}

// moveAddresses takes the journaled addresses off from and puts them on
// to, keeping a leased address's remaining lifetime. All are removed
// before any is added, so no address is ever on both links (the kernel's
// local routes would then name the wrong device); secondaries go first,
// as removing a primary takes its secondaries with it. Addresses are
// added in journal order, which puts each primary back before its
// secondaries. Idempotent.
func moveAddresses(h *netlink.Handle, j *Journal, from netlink.Link, to netlink.Link, extraFlags int) error {
	current := map[netip.Prefix]netlink.Addr{}
	if from != nil {
		list, err := h.AddrList(from, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", from.Attrs().Name, err)
		}
		for _, a := range list {
			current[toPrefix(a.IPNet)] = a
		}
		for _, a := range slices.Backward(j.Addresses) {
			if _, ok := current[a.Prefix]; !ok {
				continue
			}
			err := h.AddrDel(from, a.nl(from.Attrs().Name, 0))
			if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("remove address %s from %s: %w", a.Prefix, from.Attrs().Name, err)
			}
		}
	}
	for _, a := range j.Addresses {
		if a.ValidLft > 0 {
			if cur, ok := current[a.Prefix]; ok {
				a.ValidLft, a.PreferredLft = cur.ValidLft, cur.PreferedLft
			} else if a = a.aged(time.Since(j.CapturedAt)); a.ValidLft == 0 {
				continue // the lease ran out while the address was on neither link
			}
		}
		if err := h.AddrReplace(to, a.nl(to.Attrs().Name, extraFlags)); err != nil {
			return fmt.Errorf("add address %s to %s: %w", a.Prefix, to.Attrs().Name, err)
		}
	}
	return nil
}

// aged returns a leased address with its lifetimes reduced by d; a
// ValidLft of 0 means it has expired.
func (a Address) aged(d time.Duration) Address {
	s := int(d.Seconds())
	a.ValidLft = max(a.ValidLft-s, 0)
	a.PreferredLft = max(a.PreferredLft-s, 0)
	return a
}

// moveRoutes puts the journaled routes on to, then deletes what is left of
// them on from. They come from the journal because the kernel flushes a
// device's IPv4 routes with its last IPv4 address, which moveAddresses
// has just taken. Routes without a gateway go first: a gateway route needs
// its gateway reachable on the new link. Replace makes it idempotent.
func moveRoutes(h *netlink.Handle, j *Journal, from, to netlink.Link) error {
	ordered := slices.Clone(j.Routes)
	slices.SortStableFunc(ordered, func(a, b Route) int { return b.Scope - a.Scope })
	for _, r := range ordered {
		if err := h.RouteReplace(r.nl(to.Attrs().Index)); err != nil {
			return fmt.Errorf("route %s on %s: %w", r, to.Attrs().Name, err)
		}
	}
	if from == nil {
		return nil
	}
	for _, r := range ordered {
		err := h.RouteDel(r.nl(from.Attrs().Index))
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove route %s from %s: %w", r, from.Attrs().Name, err)
		}
	}
	return nil
}

// isolationSysctls keep the kernel's own stack off an uplink that the
// userspace datapath reads with a packet socket: the kernel still receives
// every frame there and, by the weak host model, would answer ARP and
// deliver packets for the addresses now on the bridge a second time.
// Strict reverse-path filtering drops IPv4 (every route now leads to the
// bridge), arp_ignore=8 stops ARP replies, disable_ipv6 stops IPv6.
func isolationSysctls(uplink string) map[string]string {
	return map[string]string{
		filepath.Join("net/ipv4/conf", uplink, "rp_filter"):    "1",
		filepath.Join("net/ipv4/conf", uplink, "arp_ignore"):   "8",
		filepath.Join("net/ipv6/conf", uplink, "disable_ipv6"): "1",
	}
}
