package nodeif

import (
	"encoding/json"
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

// A journal is a file anyone with write access to state_dir can change,
// and cleanup acts on it (sysctls, links, routes): what it holds is checked
// when it is read, each wrong field named, before anything is touched.
func TestLoadJournalRefusesWhatItCannotHaveWritten(t *testing.T) {
	good := func() *Journal {
		return &Journal{
			Version: journalVersion, Phase: PhaseMigrate, Step: "isolate-uplink", Uplink: "node-if", Bridge: "br-int",
			MAC: "02:00:00:00:00:01", MTU: 1500, Up: true,
			Addresses: []Address{{Prefix: netip.MustParsePrefix("10.0.0.2/24"), Broadcast: netip.MustParseAddr("10.0.0.255")}},
			Routes:    []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("10.0.0.1"), Table: 254}},
			Sysctls:   map[string]string{"net/ipv4/conf/node-if/rp_filter": "2"},
		}
	}
	for _, tc := range []struct {
		name, field string
		mangle      func(j *Journal)
	}{
		{"unknown phase", "phase", func(j *Journal) { j.Phase = "sideways" }},
		{"step of no phase", "step", func(j *Journal) { j.Step = "unisolate-uplink" }},
		{"empty uplink", "uplink", func(j *Journal) { j.Uplink = "" }},
		{"uplink a path", "uplink", func(j *Journal) { j.Uplink = "../../kernel" }},
		{"bridge too long", "bridge", func(j *Journal) { j.Bridge = "a-bridge-name-over-15" }},
		{"bad MAC", "mac", func(j *Journal) { j.MAC = "02:00:zz" }},
		{"MTU out of range", "mtu", func(j *Journal) { j.MTU = -1 }},
		{"address without prefix", "addresses[0]", func(j *Journal) { j.Addresses[0].Prefix = netip.Prefix{} }},
		{"route without destination", "routes[0]", func(j *Journal) { j.Routes[0].Dst = netip.Prefix{} }},
		{"route gateway of the other family", "routes[0]", func(j *Journal) { j.Routes[0].Gw = netip.MustParseAddr("2001:db8::1") }},
		{"negative table", "routes[0]", func(j *Journal) { j.Routes[0].Table = -3 }},
		{"sysctl nsx-ovs never sets", "sysctls", func(j *Journal) { j.Sysctls["kernel/core_pattern"] = "|/tmp/x" }},
		{"sysctl of another link", "sysctls", func(j *Journal) { j.Sysctls["net/ipv4/conf/eth9/rp_filter"] = "0" }},
		{"sysctl value not a number", "sysctls", func(j *Journal) { j.Sysctls["net/ipv4/conf/node-if/rp_filter"] = "1\n2" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j := good()
			if err := j.save(dir); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadJournal(dir); err != nil {
				t.Fatalf("the unmangled journal: %v", err)
			}
			tc.mangle(j)
			if err := j.save(dir); err != nil {
				t.Fatal(err)
			}
			_, err := LoadJournal(dir)
			if err == nil || !strings.Contains(err.Error(), journalPath(dir)) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("LoadJournal: %v; want an error naming %s and the field %q", err, journalPath(dir), tc.field)
			}
		})
	}
}

// FuzzLoadJournal: any bytes in node-if.json give a journal that passes the
// checks and survives a round trip, or an error naming the file; the file
// is never changed by reading it.
func FuzzLoadJournal(f *testing.F) {
	seed, _ := json.Marshal(&Journal{
		Version: journalVersion, Phase: PhaseCleanup, Step: "addresses", Uplink: "eth0", Bridge: "br-int", MTU: 9000,
		Addresses: []Address{{Prefix: netip.MustParsePrefix("2001:db8::2/64"), ValidLft: 30}},
		Routes:    []Route{{Dst: netip.MustParsePrefix("::/0"), Gw: netip.MustParseAddr("fe80::1"), Table: 254}},
		Sysctls:   map[string]string{"net/ipv6/conf/eth0/disable_ipv6": "0"},
	})
	f.Add(seed)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"phase":"migrate","step":"journal","uplink":"x","bridge":"y","sysctls":{"../../x":"1"}}`))
	f.Add([]byte(`[]`))
	dir := f.TempDir() // one per worker process; inputs run one at a time in it
	f.Fuzz(func(t *testing.T, data []byte) {
		path := journalPath(dir)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		j, err := LoadJournal(dir)
		if after, _ := os.ReadFile(path); string(after) != string(data) {
			t.Fatalf("reading the journal changed it")
		}
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error without the journal's path: %v", err)
			}
			return
		}
		if err := j.validate(); err != nil {
			t.Fatalf("loaded a journal that does not validate: %v", err)
		}
		if err := j.save(dir); err != nil {
			t.Fatal(err)
		}
		// Compared as JSON: an empty list or map comes back as nil.
		again, err := LoadJournal(dir)
		a, _ := json.Marshal(again)
		b, _ := json.Marshal(j)
		if err != nil || string(a) != string(b) {
			t.Fatalf("round trip: %v\n got %s\nwant %s", err, a, b)
		}
	})
}
