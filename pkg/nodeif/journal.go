package nodeif

import (
	"github.com/nsx-ujo/nsx-ujo/pkg/atomicfile"

	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// JournalFile is the journal's name in state_dir.
const JournalFile = "node-if.json"

// journalVersion changes when a field changes meaning; an unknown version
// is refused rather than half understood.
const journalVersion = 1

// Phases of the journal: which way the node is going.
const (
	PhaseMigrate = "migrate" // node-if -> bridge
	PhaseCleanup = "cleanup" // bridge -> node-if
)

// Journal is the node's network configuration as it was before the first
// migration, plus how far the last run got. It is written before anything
// is touched and is the only source of truth afterwards: once addresses
// have moved, the kernel no longer shows what node-if had.
type Journal struct {
	Version    int       `json:"version"`
	Phase      string    `json:"phase"`
	Step       string    `json:"step"` // last completed step of Phase
	Uplink     string    `json:"uplink"`
	Bridge     string    `json:"bridge"`
	CapturedAt time.Time `json:"captured_at"`

	MAC string `json:"mac"`
	MTU int    `json:"mtu"`
	Up  bool   `json:"up"`
	// DHCP: the uplink's addresses are leased (the setting, or a dynamic
	// address was seen).
	DHCP bool `json:"dhcp"`

	// BridgeExisted: the bridge was there before nsx-ovs, so cleanup
	// leaves it and only puts back BridgeHWAddr (its other_config:hwaddr).
	BridgeExisted bool   `json:"bridge_existed"`
	BridgeHWAddr  string `json:"bridge_hwaddr,omitempty"`

	Addresses []Address `json:"addresses"`
	Routes    []Route   `json:"routes"`
	// Sysctls are the uplink's values before isolation (netdev only), by
	// path under /proc/sys; nil until the isolation step first runs.
	Sysctls map[string]string `json:"sysctls,omitempty"`
}

// Address is one address of the uplink, as `ip addr` shows it.
type Address struct {
	Prefix    netip.Prefix `json:"prefix"` // address/prefix length, host bits kept
	Peer      netip.Prefix `json:"peer,omitzero"`
	Broadcast netip.Addr   `json:"broadcast,omitzero"`
	// LabelSuffix is the IPv4 label after the interface name (":1" for
	// "node-if:1"), so it can follow the address to the bridge.
	LabelSuffix string `json:"label_suffix,omitempty"`
	Scope       int    `json:"scope"`
	Flags       int    `json:"flags"` // IFA_F_*
	// Lifetimes in seconds; both 0 for a permanent address.
	ValidLft     int `json:"valid_lft,omitempty"`
	PreferredLft int `json:"preferred_lft,omitempty"`
}

// Route is one route through the uplink, in any table.
type Route struct {
	Dst      netip.Prefix `json:"dst"` // 0.0.0.0/0 or ::/0 for a default route
	Gw       netip.Addr   `json:"gw,omitzero"`
	Src      netip.Addr   `json:"src,omitzero"`
	Table    int          `json:"table"`
	Metric   int          `json:"metric"`
	Scope    int          `json:"scope"`
	Protocol int          `json:"protocol"`
	Type     int          `json:"type"`
	Tos      int          `json:"tos,omitempty"`
	OnLink   bool         `json:"onlink,omitempty"`
	MTU      int          `json:"mtu,omitempty"`
	AdvMSS   int          `json:"advmss,omitempty"`
	Hoplimit int          `json:"hoplimit,omitempty"`
}

func (r Route) String() string {
	s := r.Dst.String()
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	return fmt.Sprintf("%s table %d metric %d", s, r.Table, r.Metric)
}

func journalPath(stateDir string) string { return filepath.Join(stateDir, JournalFile) }

// LoadJournal reads the journal of stateDir; (nil, nil) when there is none.
func LoadJournal(stateDir string) (*Journal, error) {
	path := journalPath(stateDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	var j Journal
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	if j.Version != journalVersion {
		return nil, fmt.Errorf("journal %s: version %d, this nsx-ovs understands %d", path, j.Version, journalVersion)
	}
	if err := j.validate(); err != nil {
		return nil, fmt.Errorf("journal %s: %w (nsx-ovs did not write this: restore the node by hand or from a backup of the file)", path, err)
	}
	return &j, nil
}

// phaseSteps names each phase's steps; set in init, as the steps' functions
// read journals themselves.
var phaseSteps map[string][]string

func init() {
	phaseSteps = map[string][]string{PhaseMigrate: MigrateSteps(), PhaseCleanup: CleanupSteps()}
}

// validate refuses what nsx-ovs cannot have written. Cleanup acts on the
// journal (it writes its sysctls, sets the links' MAC and MTU, adds its
// addresses and routes), so a damaged or foreign file must stop it before
// the first step, not half way.
func (j *Journal) validate() error {
	names, ok := phaseSteps[j.Phase]
	if !ok {
		return fmt.Errorf("field phase: %q is neither %q nor %q", j.Phase, PhaseMigrate, PhaseCleanup)
	}
	if !slices.Contains(names, j.Step) {
		return fmt.Errorf("field step: %q is not a step of %s (%s)", j.Step, j.Phase, strings.Join(names, ", "))
	}
	for field, name := range map[string]string{"uplink": j.Uplink, "bridge": j.Bridge} {
		if err := validIfName(name); err != nil {
			return fmt.Errorf("field %s: %w", field, err)
		}
	}
	if j.MAC != "" {
		if _, err := net.ParseMAC(j.MAC); err != nil {
			return fmt.Errorf("field mac: %w", err)
		}
	}
	if j.BridgeHWAddr != "" {
		if _, err := net.ParseMAC(j.BridgeHWAddr); err != nil {
			return fmt.Errorf("field bridge_hwaddr: %w", err)
		}
	}
	if j.MTU != 0 && (j.MTU < 68 || j.MTU > 65535) {
		return fmt.Errorf("field mtu: %d is outside 68-65535", j.MTU)
	}
	for i, a := range j.Addresses {
		if err := a.validate(); err != nil {
			return fmt.Errorf("field addresses[%d]: %w", i, err)
		}
	}
	for i, r := range j.Routes {
		if err := r.validate(); err != nil {
			return fmt.Errorf("field routes[%d]: %w", i, err)
		}
	}
	allowed := isolationSysctls(j.Uplink)
	for k, v := range j.Sysctls {
		if _, ok := allowed[k]; !ok {
			return fmt.Errorf("field sysctls: key %q is not one nsx-ovs sets on uplink %s", k, j.Uplink)
		}
		if _, err := strconv.Atoi(v); err != nil {
			return fmt.Errorf("field sysctls: %s = %q is not a number", k, v)
		}
	}
	return nil
}

// validIfName is the kernel's rule for a link name (dev_valid_name).
func validIfName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%q is not a link name", name)
	case len(name) > 15:
		return fmt.Errorf("%q is longer than a link name can be (15 bytes)", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return fmt.Errorf("%q: a link name has no '/', ':' or white space", name)
	}
	return nil
}

func (a Address) validate() error {
	switch {
	case !a.Prefix.IsValid():
		return errors.New("prefix missing or invalid")
	case a.Peer.IsValid() && a.Peer.Addr().Is4() != a.Prefix.Addr().Is4():
		return fmt.Errorf("peer %s is not of the family of %s", a.Peer, a.Prefix)
	case a.Broadcast.IsValid() && !(a.Broadcast.Is4() && a.Prefix.Addr().Is4()):
		return fmt.Errorf("broadcast %s on %s: only IPv4 has one", a.Broadcast, a.Prefix)
	case a.Scope < 0 || a.Scope > 255:
		return fmt.Errorf("scope %d is outside 0-255", a.Scope)
	case a.Flags < 0 || a.ValidLft < 0 || a.PreferredLft < 0:
		return errors.New("negative flags or lifetime")
	}
	return nil
}

func (r Route) validate() error {
	family := func(a netip.Addr) bool { return a.Is4() == r.Dst.Addr().Is4() }
	switch {
	case !r.Dst.IsValid():
		return errors.New("dst missing or invalid")
	case r.Gw.IsValid() && !family(r.Gw):
		return fmt.Errorf("gateway %s is not of the family of %s", r.Gw, r.Dst)
	case r.Src.IsValid() && !family(r.Src):
		return fmt.Errorf("src %s is not of the family of %s", r.Src, r.Dst)
	case r.Table < 0 || r.Table > math.MaxUint32:
		return fmt.Errorf("table %d is outside 0-%d", r.Table, uint32(math.MaxUint32))
	case r.Metric < 0 || r.Metric > math.MaxUint32:
		return fmt.Errorf("metric %d is outside 0-%d", r.Metric, uint32(math.MaxUint32))
	case r.Scope < 0 || r.Scope > 255 || r.Protocol < 0 || r.Protocol > 255 || r.Type < 0 || r.Type > 255 || r.Tos < 0 || r.Tos > 255:
		return errors.New("scope, protocol, type or tos outside 0-255")
	case r.MTU < 0 || r.AdvMSS < 0 || r.Hoplimit < 0 || r.Hoplimit > 255:
		return errors.New("negative mtu or advmss, or hoplimit outside 0-255")
	}
	return nil
}

// save writes the journal atomically: a crash leaves the previous or the
// new journal, never a torn one.
func (j *Journal) save(stateDir string) error {
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := atomicfile.WriteFile(journalPath(stateDir), data, 0o644); err != nil {
		return fmt.Errorf("journal %s: %w", journalPath(stateDir), err)
	}
	return nil
}

// sameButStep says whether a and b differ at most in their phase and step.
func sameButStep(a, b *Journal) bool {
	ac, bc := *a, *b
	ac.Phase, ac.Step, bc.Phase, bc.Step = "", "", "", ""
	ja, erra := json.Marshal(&ac)
	jb, errb := json.Marshal(&bc)
	return erra == nil && errb == nil && string(ja) == string(jb)
}

func removeJournal(stateDir string) error {
	if err := os.Remove(journalPath(stateDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("journal: %w", err)
	}
	return atomicfile.SyncDir(stateDir)
}
