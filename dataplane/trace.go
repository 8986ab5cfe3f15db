package dataplane

import "net/netip"

// TracePacket is the packet a trace sends: the first (or, on an open
// connection, the next) packet of a connection from a pod.
type TracePacket struct {
	Src, Dst netip.AddrPort
	Protocol Protocol
}

// Verdict is what a dataplane does with a traced packet.
type Verdict string

// The verdicts.
const (
	// VerdictForward: NATed to a backend (Trace.Backend).
	VerdictForward Verdict = "forward"
	// VerdictReject: answered at once (TCP RST, ICMP port unreachable).
	VerdictReject Verdict = "reject"
	// VerdictDrop: dropped silently.
	VerdictDrop Verdict = "drop"
	// VerdictPass: not a Service packet; it goes on untouched.
	VerdictPass Verdict = "pass"
)

// Trace is one dataplane's decision for a TracePacket, in the same terms
// for both dataplanes.
type Trace struct {
	Verdict Verdict
	Backend netip.AddrPort // VerdictForward
	// Established: the packet followed the conntrack entry of an open
	// connection (the backend it already uses); else it was balanced as a
	// new connection.
	Established bool
	// Affinity: "used" (a ClientIP affinity entry chose the backend),
	// "created" (the new connection created one), or "".
	Affinity string
	// NAT lists the rewrites, e.g. "dst 10.96.0.10:80 -> 10.0.1.5:8080".
	NAT []string
	// Raw is the dataplane's own account: ofproto/trace's output, or the
	// program's return code and the packet it returned.
	Raw string
}
