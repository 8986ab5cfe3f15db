package dataplane

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func fk(port uint16) FrontendKey {
	return FrontendKey{IP: netip.MustParseAddr("10.96.0.10"), Port: port, Protocol: TCP}
}

func TestIDs(t *testing.T) {
	a := NewIDs(3)
	if !a.Adopt(fk(1), 2) || a.Adopt(fk(2), 2) || a.Adopt(fk(2), 4) || a.Adopt(fk(2), 0) || a.Adopt(fk(1), 3) {
		t.Fatal("Adopt: want only an unused id in 1..max for a key without one")
	}
	// Ids cycle after the highest adopted one, skipping used ones.
	for _, want := range []struct {
		port uint16
		id   uint32
	}{{2, 3}, {3, 1}, {2, 3}} {
		if id, err := a.Assign(fk(want.port)); err != nil || id != want.id {
			t.Fatalf("Assign(%d) = %d, %v; want %d", want.port, id, err, want.id)
		}
	}
	if _, err := a.Assign(fk(4)); !errors.Is(err, ErrNoIDs) {
		t.Fatalf("Assign with every id used: %v", err)
	}
	a.Release(fk(3))
	if a.InUse(1) {
		t.Fatal("a released id is still in use")
	}
	if id, err := a.Assign(fk(4)); err != nil || id != 1 {
		t.Fatalf("Assign after a release: %d, %v", id, err)
	}
	keys := a.Keys()
	slices.SortFunc(keys, func(x, y FrontendKey) int { return int(x.Port) - int(y.Port) })
	if !slices.Equal(keys, []FrontendKey{fk(1), fk(2), fk(4)}) {
		t.Fatalf("Keys %v", keys)
	}
}

func TestGoneEndpoints(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		old, cur, want []netip.AddrPort
	}{
		{[]netip.AddrPort{ap("10.0.0.1:80"), ap("10.0.0.2:80")}, []netip.AddrPort{ap("10.0.0.2:80")}, []netip.AddrPort{ap("10.0.0.1:80")}},
		{[]netip.AddrPort{ap("10.0.0.1:80"), ap("10.0.0.1:80")}, nil, []netip.AddrPort{ap("10.0.0.1:80")}},
		{[]netip.AddrPort{ap("10.0.0.1:80")}, []netip.AddrPort{ap("10.0.0.1:81")}, []netip.AddrPort{ap("10.0.0.1:80")}},
		{nil, []netip.AddrPort{ap("10.0.0.1:80")}, nil},
	} {
		if got := GoneEndpoints(tc.old, tc.cur); !slices.Equal(got, tc.want) {
			t.Errorf("GoneEndpoints(%v, %v) = %v, want %v", tc.old, tc.cur, got, tc.want)
		}
	}
}

func TestProtocolNumbers(t *testing.T) {
	for _, p := range []Protocol{TCP, UDP, SCTP} {
		if q, ok := ProtocolOf(p.Number()); !ok || q != p {
			t.Errorf("%s: number %d back to %s, %v", p, p.Number(), q, ok)
		}
	}
	if _, ok := ProtocolOf(1); ok {
		t.Error("ICMP is no Service protocol")
	}
}
