package ovsrun

import (
	"slices"
	"testing"
)

func TestParseFlows(t *testing.T) {
	out := []byte(`OFPST_FLOW reply (OF1.5) (xid=0x2):
 cookie=0x1234, table=0, idle_age=3, hard_age=5, priority=10,ip,nw_dst=203.0.113.7 actions=drop
 table=1, priority=5,igmp,igmp_type=17,igmp_code=0 actions=NORMAL

 priority=0 actions=NORMAL
`)
	want := []string{
		"cookie=0x1234, table=0, priority=10,ip,nw_dst=203.0.113.7 actions=drop",
		"table=1, priority=5,ip,nw_proto=2,tp_src=17,tp_dst=0 actions=NORMAL",
		"priority=0 actions=NORMAL",
	}
	if got := parseFlows(out); !slices.Equal(got, want) {
		t.Errorf("parseFlows:\n got %q\nwant %q", got, want)
	}
}

func TestParseTLVMap(t *testing.T) {
	out := []byte(`NXST_TLV_TABLE reply (xid=0x4):
 max option space=256 max fields=64
 allocated option space=8

 mapping table:
 class	type	length	match field
 ------	----	------	-----------
 0xffff	0x0	4	tun_metadata0
 0x102	0x80	4	tun_metadata1
`)
	want := "{class=0xffff,type=0x0,len=4}->tun_metadata0,{class=0x102,type=0x80,len=4}->tun_metadata1"
	if got := parseTLVMap(out); got != want {
		t.Errorf("parseTLVMap = %q, want %q", got, want)
	}
	if got := parseTLVMap([]byte("NXST_TLV_TABLE reply (xid=0x4):\n max option space=256 max fields=64\n")); got != "" {
		t.Errorf("empty map parsed as %q", got)
	}
}

func TestNormalFlowMatch(t *testing.T) {
	for line, want := range map[string]bool{
		"priority=0 actions=NORMAL":                                 true,
		"cookie=0x0, priority=0 actions=NORMAL":                     true,
		"table=0, priority=0 actions=NORMAL":                        true,
		"priority=0 actions=drop":                                   false,
		"priority=0,ip actions=NORMAL":                              false,
		"priority=10 actions=NORMAL":                                false,
		"priority=0 actions=ct(table=77,zone=1),NORMAL":             false,
		"cookie=0x5a00000000000001, priority=200,ip actions=NORMAL": false,
	} {
		if got := reNormal.MatchString(line); got != want {
			t.Errorf("%q: NORMAL catch-all = %v, want %v", line, got, want)
		}
	}
}
