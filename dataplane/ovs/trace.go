package ovs

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsrun"
)

// natDst finds the DNAT of a traced packet in ofproto/trace's datapath
// actions: ct(commit,zone=65520,nat(dst=10.0.1.5:8080)) ([a::b]:p for IPv6).
var natDst = regexp.MustCompile(`nat\(dst=(\[[^\]]+\]|[0-9.]+)(?::(\d+))?`)

// Trace is what the bridge does with pkt arriving from OpenFlow port
// inPort (a pod's port): on an open connection (an entry in the service
// zone) the backend conntrack holds; otherwise ofproto/trace, over
// ovs-vswitchd's unixctl socket (no process), with conntrack simulated as
// a new connection. OVS picks a group bucket by hashing the packet's
// fields, so the backend it names is the one a real connection from the
// same source port gets. Read-only.
func Trace(ctx context.Context, runDir, bridge string, inPort int, pkt dataplane.TracePacket) (*dataplane.Trace, error) {
	entries, err := NATEntries(ctx, runDir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.Client == pkt.Src && e.Frontend == pkt.Dst && e.Protocol == pkt.Protocol && e.Open {
			return &dataplane.Trace{Verdict: dataplane.VerdictForward, Backend: e.Backend, Established: true,
				NAT: []string{fmt.Sprintf("dst %s -> %s", pkt.Dst, e.Backend)}, Raw: e.Raw}, nil
		}
	}
	l4 := strings.ToLower(string(pkt.Protocol)) // tcp, udp, sctp: also the port fields' prefix
	proto, ip := l4, "nw"
	if pkt.Dst.Addr().Is6() {
		proto, ip = l4+"6", "ipv6"
	}
	flow := fmt.Sprintf("in_port=%d,%s,%s_src=%s,%s_dst=%s,%s_src=%d,%s_dst=%d", inPort, proto, ip, pkt.Src.Addr(), ip, pkt.Dst.Addr(),
		l4, pkt.Src.Port(), l4, pkt.Dst.Port())
	if pkt.Protocol == dataplane.TCP {
		flow += ",tcp_flags=0x002" // a SYN
	}
	// One conntrack state for each recirculation: the classifier's
	// ct(nat), then SvcDNAT's ct(commit,nat(dst=...)).
	out, err := ovsrun.Appctl(ctx, ovsrun.VSwitchdCtl(runDir), "ofproto/trace", bridge, flow,
		"--ct-next", "trk,new", "--ct-next", "trk,new,dnat")
	if err != nil {
		return nil, fmt.Errorf("ovs dataplane: ofproto/trace %s %s: %w", bridge, flow, err)
	}
	return readTrace(out, pkt), nil
}

// learnedMatch is ofproto/trace's line for a learned ClientIP affinity
// flow (table SvcAffinity, our learned cookie) the packet matched.
var learnedMatch = regexp.MustCompile(fmt.Sprintf(`(?m)^\s*%d\. .*cookie 0x%x`, tAffinity, compLearned))

// readTrace reads ofproto/trace's output into a Trace.
func readTrace(out string, pkt dataplane.TracePacket) *dataplane.Trace {
	t := &dataplane.Trace{Raw: out}
	switch {
	case learnedMatch.MatchString(out):
		t.Affinity = "used"
	case strings.Contains(out, fmt.Sprintf("learn(table=%d", tAffinity)):
		t.Affinity = "created"
	}
	var actions []string
	for _, line := range strings.Split(out, "\n") {
		if a, ok := strings.CutPrefix(strings.TrimSpace(line), "Datapath actions:"); ok {
			actions = append(actions, strings.TrimSpace(a))
		}
	}
	all := strings.Join(actions, " ")
	switch m := natDst.FindStringSubmatch(all); {
	case m != nil:
		addr, err := netip.ParseAddr(strings.Trim(m[1], "[]"))
		port := pkt.Dst.Port()
		if m[2] != "" {
			fmt.Sscan(m[2], &port)
		}
		if err == nil {
			t.Verdict, t.Backend = dataplane.VerdictForward, netip.AddrPortFrom(addr, port)
			t.NAT = []string{fmt.Sprintf("dst %s -> %s", pkt.Dst, t.Backend)}
			if strings.Contains(all, "nat(src=") {
				t.NAT = append(t.NAT, "src NATed (hairpin or SNAT): "+all[strings.Index(all, "nat(src="):])
			}
			return t
		}
	case strings.Contains(all, "controller") || strings.Contains(out, "-> output to CONTROLLER") || strings.Contains(out, "controller("):
		t.Verdict = dataplane.VerdictReject // the reject responder answers what reaches the controller
		return t
	}
	if len(actions) == 0 || actions[len(actions)-1] == "drop" {
		t.Verdict = dataplane.VerdictDrop
		return t
	}
	t.Verdict = dataplane.VerdictPass
	return t
}
