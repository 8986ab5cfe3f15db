package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// MapSizes are the maps' max_entries ([nsx_kube_proxy] bpf_*_map_size);
// 0 keeps the size compiled into the object.
type MapSizes struct {
	Services, Backends, Conntrack, Affinity uint32
	// The IPv6 LRU maps (0: the program's defaults); IPv6's hash maps
	// take their IPv4 counterparts' sizes, allocated on use.
	Conntrack6, Affinity6 uint32
}

// Objects are the loaded programs and the (pinned) maps. The maps are
// shared through their pins by every loader on the node: nsx-kube-proxy
// writes them, the programs that nsx-node-agent attaches read them.
type Objects struct {
	nsxObjects
	PinDir string
}

// bpffsMagic is BPF_FS_MAGIC.
const bpffsMagic = 0xcafe4a11

// EnsureBPFFS makes dir a bpffs mount point, mounting one there when it is
// not, as Cilium does (a container may see /sys/fs/bpf as plain sysfs).
func EnsureBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bpf pin dir %s: %w", dir, err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err != nil {
			return fmt.Errorf("bpf pin dir %s: %w", d, err)
		}
		if st.Type == bpffsMagic {
			return nil
		}
		if d == "/" || d == "." {
			break
		}
		if d != dir {
			break // only dir itself or its parent may be the mount
		}
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}

// LoadOptions say where the maps are pinned and what the programs are
// built with. Every loader on a node (nsx-kube-proxy, nsx-node-agent) must
// use the same: backends.EBPFOptions derives them from ncp.ini.
type LoadOptions struct {
	// PinDir is bpf_pin_dir; "" loads unpinned maps (unit tests).
	PinDir string
	Sizes  MapSizes
	// HairpinIP is the source a pod sees when it reaches itself through a
	// Service; default dataplane.DefaultHairpinIP, as the OVS dataplane.
	HairpinIP netip.Addr
	// HairpinIP6 is HairpinIP for IPv6 Services; default
	// dataplane.DefaultHairpinIP6.
	HairpinIP6 netip.Addr
}

// Load loads the programs and creates or opens the maps pinned in
// o.PinDir (mounting a bpffs there if needed). A pinned map whose
// definition no longer matches (a changed size) is an error naming it:
// Cleanup removes the old pins.
func Load(o LoadOptions) (*Objects, error) {
	pinDir, sizes := o.PinDir, o.Sizes
	spec, err := loadNsx()
	if err != nil {
		return nil, fmt.Errorf("ebpf: load object: %w", err)
	}
	hairpin := o.HairpinIP
	if !hairpin.IsValid() {
		hairpin = dataplane.DefaultHairpinIP
	}
	if !hairpin.Is4() {
		return nil, fmt.Errorf("ebpf: hairpin address %s: want IPv4", hairpin)
	}
	if err := spec.Variables[nsxVarHairpinIp].Set(be32(hairpin)); err != nil {
		return nil, fmt.Errorf("ebpf: set the hairpin address: %w", err)
	}
	hairpin6 := o.HairpinIP6
	if !hairpin6.IsValid() {
		hairpin6 = dataplane.DefaultHairpinIP6
	}
	if !hairpin6.Is6() || hairpin6.Is4In6() {
		return nil, fmt.Errorf("ebpf: IPv6 hairpin address %s: want IPv6", hairpin6)
	}
	if err := spec.Variables[nsxVarHairpinIp6].Set(be128(hairpin6)); err != nil {
		return nil, fmt.Errorf("ebpf: set the IPv6 hairpin address: %w", err)
	}
	// Affinity members are at most every backend.
	for name, n := range map[string]uint32{nsxMapNsxServices: sizes.Services, nsxMapNsxBackends: sizes.Backends,
		nsxMapNsxMembers: sizes.Backends, nsxMapNsxSvcConns: sizes.Services, nsxMapNsxConntrack: sizes.Conntrack, nsxMapNsxAffinity: sizes.Affinity,
		nsxMapNsxServices6: sizes.Services, nsxMapNsxBackends6: sizes.Backends, nsxMapNsxMembers6: sizes.Backends,
		nsxMapNsxConntrack6: sizes.Conntrack6, nsxMapNsxAffinity6: sizes.Affinity6} {
		if n > 0 {
			spec.Maps[name].MaxEntries = n
		}
	}
	opts := &ebpf.CollectionOptions{}
	if pinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else {
		if err := EnsureBPFFS(pinDir); err != nil {
			return nil, err
		}
		opts.Maps.PinPath = pinDir
	}
	objs := &Objects{PinDir: pinDir}
	if err := spec.LoadAndAssign(&objs.nsxObjects, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("ebpf: a map pinned in %s has another definition (a map size changed, or this version changed its layout): remove the old pins with the dataplane cleanup: %w", pinDir, err)
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("ebpf: verifier: %+v", ve)
		}
		return nil, fmt.Errorf("ebpf: load: %w", err)
	}
	return objs, nil
}

// Close releases this process's references; pinned maps and links stay.
func (o *Objects) Close() error { return o.nsxObjects.Close() }

// The maps hold addresses and ports as their bytes in network order (so
// bpftool prints them legibly); these convert.

// be32 is an IPv4 address as the maps hold it.
func be32(a netip.Addr) [4]byte { return a.As4() }

func addrOf(v [4]byte) netip.Addr { return netip.AddrFrom4(v) }

// be16 is a port as the maps hold it.
func be16(p uint16) [2]byte { return [2]byte{byte(p >> 8), byte(p)} }

func portOf(v [2]byte) uint16 { return binary.BigEndian.Uint16(v[:]) }
