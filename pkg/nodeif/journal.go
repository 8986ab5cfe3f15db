package nodeif

import (
	"github.com/nsx-ujo/nsx-ujo/pkg/atomicfile"

	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
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
	return &j, nil
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

func removeJournal(stateDir string) error {
	if err := os.Remove(journalPath(stateDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("journal: %w", err)
	}
	return atomicfile.SyncDir(stateDir)
}
