// Package podnet owns a pod's veth pair: it creates it, configures the pod
// end inside the pod's network namespace (name, MAC, address, MTU, default
// route) and removes it. It knows nothing of OVS or Kubernetes.
package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Options say where the host end lives.
type Options struct {
	// HostNetNS is the path of the namespace that holds the OVS bridge and
	// the host ends; "" means the agent's own namespace.
	HostNetNS string
}

// Pod is the desired pod interface.
type Pod struct {
	ContainerID string
	Netns       string // path of the pod's network namespace
	IfName      string // name inside the pod, e.g. eth0
	IP          *net.IPNet
	Gateway     net.IP
	// IP6 and Gateway6 are a dual-stack pod's IPv6 address and gateway
	// (IP is then IPv4); nil for a single-stack pod.
	IP6      *net.IPNet
	Gateway6 net.IP
	MAC      net.HardwareAddr
	MTU      int
	// TxChecksumOff disables TX checksum offload on both ends (needed on
	// the userspace datapath).
	TxChecksumOff bool
}

// Link describes what Setup created.
type Link struct {
	HostIfName string
	HostMAC    net.HardwareAddr
	PodMAC     net.HardwareAddr
}

// ErrNetnsGone is returned (wrapped) when the pod's namespace does not exist.
var ErrNetnsGone = errors.New("network namespace does not exist")

// HostIfName is the host end's name for a container's attachment (CNI
// identifies one by container id and ifname): deterministic (a repeated ADD
// or a DEL after an agent restart finds it again), unique enough (48 bits of
// a hash), and within IFNAMSIZ.
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "nsx" + hex.EncodeToString(sum[:])[:12]
}

// Manager creates and removes pod links. Safe for concurrent use for
// different containers; callers serialise calls for one container.
type Manager struct {
	opts Options
}

// New returns a Manager.
func New(opts Options) *Manager { return &Manager{opts: opts} }

func (m *Manager) inHost(fn func() error) error {
	if m.opts.HostNetNS == "" {
		return fn()
	}
	return ns.WithNetNSPath(m.opts.HostNetNS, func(ns.NetNS) error { return fn() })
}

func openPodNS(path string) (ns.NetNS, error) {
	pns, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		if errors.As(err, &notExist) {
			return nil, fmt.Errorf("netns %s: %w", path, ErrNetnsGone)
		}
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	return pns, nil
}

// Setup creates the veth pair and configures the pod end. On error nothing
// it created is left behind. It fails if the host end already exists: the
// caller decides whether an existing link is reused or torn down first.
func (m *Manager) Setup(p Pod) (*Link, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	pns, err := openPodNS(p.Netns)
	if err != nil {
		return nil, err
	}
	defer pns.Close()
	host := HostIfName(p.ContainerID, p.IfName)
	link := &Link{HostIfName: host, PodMAC: p.MAC}

	err = m.inHost(func() error {
		veth := &netlink.Veth{
			LinkAttrs:        netlink.LinkAttrs{Name: host, MTU: p.MTU},
			PeerName:         p.IfName,
			PeerHardwareAddr: p.MAC,
			PeerMTU:          uint32(p.MTU),
			PeerNamespace:    netlink.NsFd(int(pns.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("create veth %s/%s: %s or %s exists already: %w", host, p.IfName, host, p.IfName, err)
			}
			return fmt.Errorf("create veth %s/%s: %w", host, p.IfName, err)
		}
		l, err := netlink.LinkByName(host)
		if err != nil {
			return fmt.Errorf("veth %s: %w", host, err)
		}
		link.HostMAC = l.Attrs().HardwareAddr
		if p.TxChecksumOff {
			if err := disableTxChecksum(host); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("veth %s up: %w", host, err)
		}
		return nil
	})
	if err == nil {
		err = pns.Do(func(ns.NetNS) error { return configurePod(p) })
	}
	if err != nil {
		if derr := m.deleteHost(host); derr != nil {
			err = fmt.Errorf("%w (rollback: %v)", err, derr)
		}
		return nil, err
	}
	return link, nil
}

// validate refuses a Pod that Setup could only half configure.
func (p *Pod) validate() error {
	if p.IP == nil || p.MAC == nil {
		return errors.New("podnet: IP and MAC are required")
	}
	if p.IP6 != nil && (p.IP.IP.To4() == nil || p.IP6.IP.To4() != nil) {
		// Two addresses of one family would compete for one default route.
		return fmt.Errorf("podnet: pod %s: IP6 %s needs an IPv4 IP (have %s) and must be IPv6", p.ContainerID, p.IP6, p.IP)
	}
	if p.Gateway6 != nil && (p.IP6 == nil || p.Gateway6.To4() != nil) {
		return fmt.Errorf("podnet: pod %s: Gateway6 %s needs IP6 and must be IPv6", p.ContainerID, p.Gateway6)
	}
	return nil
}

// addresses lists the pod's addresses with their gateways (nil: none).
func (p *Pod) addresses() []podAddr {
	as := []podAddr{{p.IP, p.Gateway}}
	if p.IP6 != nil {
		as = append(as, podAddr{p.IP6, p.Gateway6})
	}
	return as
}

type podAddr struct {
	ip *net.IPNet
	gw net.IP
}

// configurePod runs inside the pod's namespace.
func configurePod(p Pod) error {
	l, err := netlink.LinkByName(p.IfName)
	if err != nil {
		return fmt.Errorf("pod interface %s: %w", p.IfName, err)
	}
	if p.TxChecksumOff {
		if err := disableTxChecksum(p.IfName); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("pod interface %s up: %w", p.IfName, err)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo) // the loopback plugin normally does it
	}
	for _, a := range p.addresses() {
		if err := configureAddr(l, p.IfName, a); err != nil {
			return err
		}
	}
	return nil
}

// configureAddr adds an address and the default route of its family
// through its gateway. Both are replaced, so a repeated Setup is no error.
func configureAddr(l netlink.Link, ifName string, a podAddr) error {
	addr := &netlink.Addr{IPNet: a.ip}
	if a.ip.IP.To4() == nil {
		// No DAD: the address is ours by allocation, and a tentative
		// address would make the pod's first packets fail.
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("pod interface %s: address %s: %w", ifName, a.ip, err)
	}
	if a.gw == nil {
		return nil
	}
	route := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: a.gw, Scope: netlink.SCOPE_UNIVERSE}
	if a.gw.To4() != nil {
		route.Dst = &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	} else {
		route.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("pod interface %s: default route via %s: %w", ifName, a.gw, err)
	}
	return nil
}

// DeleteHostLink removes a host end by name (audit and GC know names only).
func (m *Manager) DeleteHostLink(name string) error { return m.deleteHost(name) }

func (m *Manager) deleteHost(name string) error {
	return m.inHost(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return fmt.Errorf("veth %s: %w", name, err)
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete veth %s: %w", name, err)
		}
		return nil
	})
}

// HostLinkExists says whether the host end called name exists.
func (m *Manager) HostLinkExists(name string) (bool, error) {
	var exists bool
	err := m.inHost(func() error {
		_, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		switch {
		case err == nil:
			exists = true
		case errors.As(err, &nf):
		default:
			return err
		}
		return nil
	})
	return exists, err
}

// Check verifies that the pod end exists in the pod's namespace with the
// expected MAC, address and default route, and that the host end exists.
func (m *Manager) Check(p Pod) error {
	host := HostIfName(p.ContainerID, p.IfName)
	ok, err := m.HostLinkExists(host)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("host interface %s is missing", host)
	}
	pns, err := openPodNS(p.Netns)
	if err != nil {
		return err
	}
	defer pns.Close()
	return pns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(p.IfName)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", p.IfName, err)
		}
		if got := l.Attrs().HardwareAddr.String(); got != p.MAC.String() {
			return fmt.Errorf("pod interface %s: MAC %s, want %s", p.IfName, got, p.MAC)
		}
		if p.MTU != 0 && l.Attrs().MTU != p.MTU {
			return fmt.Errorf("pod interface %s: MTU %d, want %d", p.IfName, l.Attrs().MTU, p.MTU)
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("pod interface %s: addresses: %w", p.IfName, err)
		}
		var routes []netlink.Route
		if p.Gateway != nil || p.Gateway6 != nil {
			routes, err = netlink.RouteList(l, netlink.FAMILY_ALL)
			if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
				return fmt.Errorf("pod interface %s: routes: %w", p.IfName, err)
			}
		}
		for _, want := range p.addresses() {
			if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == want.ip.String() }) {
				return fmt.Errorf("pod interface %s: address %s missing", p.IfName, want.ip)
			}
			if want.gw != nil && !slices.ContainsFunc(routes, func(r netlink.Route) bool {
				return r.Gw != nil && r.Gw.Equal(want.gw) && (r.Dst == nil || isDefault(r.Dst))
			}) {
				return fmt.Errorf("pod interface %s: default route via %s missing", p.IfName, want.gw)
			}
		}
		return nil
	})
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// NetnsExists reports whether path names a network namespace.
func NetnsExists(path string) bool {
	if _, err := os.Stat(path); err != nil {
		return false
	}
	return ns.IsNSorErr(path) == nil
}

// HostPath is where a process in the node DaemonSet finds a netns path the
// runtime gave: under procPrefix (proc_mount_path_prefix, the host's /proc
// mounted at <prefix>/proc) when it is a /proc path.
func HostPath(procPrefix, path string) string {
	if procPrefix != "" && strings.HasPrefix(path, "/proc/") {
		return procPrefix + path
	}
	return path
}
