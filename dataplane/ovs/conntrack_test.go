package ovs

import (
	"net/netip"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

func TestParseConntrack(t *testing.T) {
	out := `tcp,orig=(src=10.0.1.50,dst=10.96.0.10,sport=46874,dport=80),reply=(src=10.0.2.20,dst=10.0.1.50,sport=8080,dport=46874),zone=65520,protoinfo=(state=ESTABLISHED)
tcp,orig=(src=10.0.1.50,dst=10.96.0.10,sport=46875,dport=80),reply=(src=10.0.2.20,dst=10.0.1.50,sport=8080,dport=46875),zone=65520,protoinfo=(state=SYN_SENT)
tcp,orig=(src=10.0.1.50,dst=10.96.0.10,sport=46877,dport=80),reply=(src=10.0.2.21,dst=10.0.1.50,sport=8080,dport=46877),zone=65520,protoinfo=(state=TIME_WAIT)
udp,orig=(src=10.0.1.51,dst=10.96.0.11,sport=5000,dport=53),reply=(src=10.0.2.21,dst=10.0.1.51,sport=5353,dport=5000),zone=65520
tcp,orig=(src=10.0.1.50,dst=10.0.2.20,sport=46876,dport=8080),reply=(src=10.0.2.20,dst=10.0.1.50,sport=8080,dport=46876),zone=65520,protoinfo=(state=ESTABLISHED)
tcp,orig=(src=192.168.50.2,dst=10.0.100.2,sport=1000,dport=30080),reply=(src=10.0.2.20,dst=10.0.100.2,sport=8080,dport=1000),zone=65520,protoinfo=(state=ESTABLISHED)
icmp,orig=(src=10.0.1.50,dst=10.0.2.20,id=1,type=8,code=0),reply=(src=10.0.2.20,dst=10.0.1.50,id=1,type=0,code=0),zone=65520
tcp,orig=(src=garbage`
	want := []dataplane.Conn{
		{Frontend: dataplane.FrontendKey{IP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: dataplane.TCP},
			Client: netip.MustParseAddrPort("10.0.1.50:46874"), Backend: netip.MustParseAddrPort("10.0.2.20:8080")},
		{Frontend: dataplane.FrontendKey{IP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: dataplane.TCP},
			Client: netip.MustParseAddrPort("10.0.1.50:46875"), Backend: netip.MustParseAddrPort("10.0.2.20:8080")},
		{Frontend: dataplane.FrontendKey{IP: netip.MustParseAddr("10.96.0.11"), Port: 53, Protocol: dataplane.UDP},
			Client: netip.MustParseAddrPort("10.0.1.51:5000"), Backend: netip.MustParseAddrPort("10.0.2.21:5353")},
	}
	entries := parseConntrack(out)
	if len(entries) != 5 || entries[2].Open || entries[2].State != "TIME_WAIT" || !entries[4].SNATed || !entries[3].Open {
		t.Fatalf("entries %+v: want the 5 DNATed ones (direct, ICMP and garbage left out), TIME_WAIT not open, the NodePort one SNATed", entries)
	}
	got := openConns(entries)
	if len(got) != len(want) {
		t.Fatalf("parsed %+v\nwant %+v (closed, direct and SNATed connections, ICMP and garbage left out)", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("conn %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
