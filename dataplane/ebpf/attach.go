package ebpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
)

// linkPath is where the TCX link of a pod's interface is pinned; a pinned
// link keeps the program attached while no process holds it (a restart of
// nsx-kube-proxy or nsx-node-agent) and is how a DEL finds it.
func linkPath(pinDir, name, dir string) string {
	return filepath.Join(pinDir, "links", name+"-"+dir)
}

// AttachPod attaches the programs to ifName in the network namespace at
// netnsPath, name being the pod's port (host interface) name. Idempotent:
// an existing pinned link is switched to these programs in place (an
// upgrade replaces programs without a gap); a defunct one (its interface
// is gone) is replaced.
func (o *Objects) AttachPod(netnsPath, ifName, name string) error {
	return o.attach(netnsPath, ifName, name, o.NsxIngress)
}

// AttachNode is AttachPod for the node's interface on the bridge, whose
// ingress also serves external frontends to clients outside the node.
func (o *Objects) AttachNode(netnsPath, ifName, name string) error {
	return o.attach(netnsPath, ifName, name, o.NsxNodeIngress)
}

func (o *Objects) attach(netnsPath, ifName, name string, ingress *ebpf.Program) error {
	if o.PinDir == "" {
		return errors.New("ebpf: attaching needs a pin dir")
	}
	if err := os.MkdirAll(filepath.Join(o.PinDir, "links"), 0o700); err != nil {
		return err
	}
	return ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		iface, err := net.InterfaceByName(ifName)
		if err != nil {
			return fmt.Errorf("ebpf: interface %s in %s: %w", ifName, netnsPath, err)
		}
		// Ingress first: the replies of a connection the egress program
		// NATs must find their reverse NAT in place (a pod attached while
		// it opens connections, as in a live switch).
		for _, a := range []struct {
			dir    string
			prog   *ebpf.Program
			attach ebpf.AttachType
		}{{"ingress", ingress, ebpf.AttachTCXIngress}, {"egress", o.NsxEgress, ebpf.AttachTCXEgress}} {
			if err := attachOne(iface.Index, a.prog, a.attach, linkPath(o.PinDir, name, a.dir)); err != nil {
				return fmt.Errorf("ebpf: %s of %s (%s): %w", a.dir, ifName, name, err)
			}
		}
		return nil
	})
}

func attachOne(ifindex int, prog *ebpf.Program, typ ebpf.AttachType, pin string) error {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := l.Info()
		if ierr == nil {
			if tcx := info.TCX(); tcx != nil && int(tcx.Ifindex) == ifindex {
				err := l.Update(prog)
				l.Close()
				return err
			}
		}
		// Defunct (interface gone) or another interface of that name.
		_ = l.Unpin()
		l.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: typ})
	if err != nil {
		return err
	}
	defer l.Close()
	return l.Pin(pin)
}

// DetachPod removes the pinned links of the pod's port name: the programs
// are detached when the last reference goes. Idempotent.
func DetachPod(pinDir, name string) error {
	var errs []error
	for _, dir := range []string{"egress", "ingress"} {
		p := linkPath(pinDir, name, dir)
		l, err := link.LoadPinnedLink(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			// Not loadable: remove the pin file itself.
			if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				errs = append(errs, rerr)
			}
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
		l.Close()
	}
	return errors.Join(errs...)
}

// AttachedPods lists the port names with pinned links.
func AttachedPods(pinDir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(pinDir, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		// <name>-<dir>: names may hold dashes themselves (node-br-int).
		i := strings.LastIndexByte(e.Name(), '-')
		if i <= 0 {
			continue
		}
		name := e.Name()[:i]
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out, nil
}
