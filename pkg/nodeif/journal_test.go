package nodeif

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestJournalRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if j, err := LoadJournal(dir); j != nil || err != nil {
		t.Fatalf("empty state dir: %v, %v; want nil, nil", j, err)
	}
	want := &Journal{
		Version: journalVersion, Phase: PhaseMigrate, Step: "routes", Uplink: "node-if", Bridge: "br-int",
		CapturedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), MAC: "02:00:00:00:00:01", MTU: 1400, Up: true, DHCP: true,
		Addresses: []Address{
			{Prefix: netip.MustParsePrefix("10.0.0.2/24"), Broadcast: netip.MustParseAddr("10.0.0.255"), LabelSuffix: ":1", Flags: 0x80},
			{Prefix: netip.MustParsePrefix("2001:db8::2/64"), Flags: 0x2, ValidLft: 3600, PreferredLft: 1800},
		},
		Routes: []Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("10.0.0.1"), Table: 254, Protocol: 3, Type: 1},
			{Dst: netip.MustParsePrefix("198.51.100.0/24"), Table: 100, Metric: 50, Scope: 253, OnLink: true, MTU: 1300},
		},
		Sysctls: map[string]string{"net/ipv4/conf/node-if/rp_filter": "0"},
	}
	if err := want.save(dir); err != nil {
		t.Fatal(err)
	}
	got, err := LoadJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Errorf("temp files left: %v", left)
	}

	os.WriteFile(journalPath(dir), []byte(`{"version": 99}`), 0o644)
	if _, err := LoadJournal(dir); err == nil || !strings.Contains(err.Error(), "version 99") {
		t.Errorf("unknown version: %v", err)
	}
	if err := removeJournal(dir); err != nil {
		t.Fatal(err)
	}
	if err := removeJournal(dir); err != nil {
		t.Errorf("removing a missing journal: %v", err)
	}
}

func TestAddressAged(t *testing.T) {
	a := Address{ValidLft: 100, PreferredLft: 40}
	if got := a.aged(50 * time.Second); got.ValidLft != 50 || got.PreferredLft != 0 {
		t.Errorf("aged 50s: %+v, want valid 50, preferred 0", got)
	}
	if got := a.aged(time.Hour); got.ValidLft != 0 {
		t.Errorf("aged 1h: %+v, want expired", got)
	}
}
