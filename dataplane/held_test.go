package dataplane

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestWantAndDiff(t *testing.T) {
	a, b := netip.MustParseAddrPort("10.0.1.10:80"), netip.MustParseAddrPort("10.0.2.20:80")
	f := &Frontend{Key: FrontendKey{IP: netip.MustParseAddr("192.168.1.2"), Port: 30080, Protocol: TCP}, Kind: NodePort,
		SNAT: netip.MustParseAddr("192.168.1.2"), AffinityTimeout: time.Minute,
		SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("10.0.0.7/8")},
		Endpoints:    []Endpoint{{IP: b.Addr(), Port: 80}, {IP: a.Addr(), Port: 80}, {IP: a.Addr(), Port: 80}}}
	w := Want(f)
	if !w.External || w.SNAT != f.SNAT || !slices.Equal(w.Endpoints, []netip.AddrPort{a, b}) ||
		!slices.Equal(w.SourceRanges, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16")}) {
		t.Fatalf("Want: %+v (sorted, deduplicated, masked, this family's ranges only)", w)
	}
	if d := Diff(w, w); len(d) != 0 {
		t.Fatalf("Diff with itself: %v", d)
	}
	for _, c := range []struct {
		change func(h *Held)
		want   string
	}{
		{func(h *Held) { h.External = false }, "external"},
		{func(h *Held) { h.SNAT = netip.Addr{} }, "snat: want 192.168.1.2, holds none"},
		{func(h *Held) { h.AffinityTimeout = 0 }, "affinity"},
		{func(h *Held) { h.SourceRanges = nil }, "source ranges"},
		{func(h *Held) { h.Endpoints = h.Endpoints[:1] }, "1 endpoint missing"},
		{func(h *Held) {
			h.Endpoints = append(h.Endpoints, netip.MustParseAddrPort("10.9.9.9:80"))
			h.Normalize()
		}, "1 endpoint not in the model"},
		{func(h *Held) { h.NewConnections = 7 }, ""}, // counters are not compared
	} {
		h := w
		h.Endpoints, h.SourceRanges = slices.Clone(w.Endpoints), slices.Clone(w.SourceRanges)
		c.change(&h)
		got := strings.Join(Diff(w, h), "; ")
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("Diff = %q, want %q", got, c.want)
		}
	}
	// Without endpoints, what a new connection meets is compared.
	empty := &Frontend{Key: f.Key, IfEmpty: Drop}
	if d := Diff(Want(empty), Held{Key: f.Key, IfEmpty: Reject}); len(d) != 1 || !strings.Contains(d[0], "want drop, holds reject") {
		t.Fatalf("reject held where drop is wanted: %v", d)
	}
}
