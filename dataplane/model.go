// Package dataplane is the seam between nsx-kube-proxy's core and its
// dataplanes: the desired Service model the core computes from Services and
// EndpointSlices, and the ServiceBackend interface each dataplane (OVS
// flows, eBPF maps) implements.
package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// Protocol is an L4 protocol of a service port.
type Protocol string

// The protocols a frontend may have.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// FrontendKey identifies one frontend: one ClusterIP, port and protocol.
// A dual-stack Service port has one frontend per family; TCP and UDP on the
// same port number are two frontends.
type FrontendKey struct {
	IP       netip.Addr
	Port     uint16
	Protocol Protocol
}

func (k FrontendKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.IP, k.Port), k.Protocol)
}

// ServicePortName names the Kubernetes object a frontend comes from.
type ServicePortName struct {
	Namespace, Name, Port string
}

func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.Namespace + "/" + n.Name
	}
	return n.Namespace + "/" + n.Name + ":" + n.Port
}

// Endpoint is one backend of a frontend, with its target port resolved
// (named ports resolve per endpoint).
type Endpoint struct {
	IP          netip.Addr
	Port        uint16
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
}

// AddrPort is the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, e.Port) }

// NoEndpointsAction is what a frontend does with a new connection when it
// has no usable endpoint.
type NoEndpointsAction int

const (
	// Reject answers at once (TCP RST, ICMP port unreachable): the client
	// fails fast instead of timing out (kube-proxy, Cluster policy).
	Reject NoEndpointsAction = iota
	// Drop silently drops (internalTrafficPolicy Local with no local
	// endpoint).
	Drop
)

func (a NoEndpointsAction) String() string {
	if a == Drop {
		return "drop"
	}
	return "reject"
}

// FrontendKind says which address of a Service a frontend serves.
type FrontendKind uint8

// The frontend kinds. Every kind but ClusterIP is external: kube-proxy's
// externalTrafficPolicy applies to it, and traffic for it may arrive from
// outside the node.
const (
	ClusterIP      FrontendKind = iota
	NodePort                    // a node address and the Service's nodePort
	ExternalIP                  // spec.externalIPs
	LoadBalancerIP              // status.loadBalancer.ingress[].ip with ipMode VIP
)

func (k FrontendKind) String() string {
	switch k {
	case ClusterIP:
		return "ClusterIP"
	case NodePort:
		return "NodePort"
	case ExternalIP:
		return "ExternalIP"
	case LoadBalancerIP:
		return "LoadBalancerIP"
	}
	return fmt.Sprintf("FrontendKind(%d)", uint8(k))
}

// External reports whether the kind is reachable from outside the cluster.
func (k FrontendKind) External() bool { return k != ClusterIP }

// Frontend is one service frontend and the endpoints the dataplane must
// balance over. Endpoints is already the kube-proxy selection (ready, else
// serving+terminating; only local ones under internalTrafficPolicy Local),
// sorted by address and port so equal sets compare equal.
//
// A Frontend is immutable once it is in a Model: the core builds a new one
// when anything about it changes, so a backend may use pointer identity as
// a cheap "unchanged since last sync" test.
type Frontend struct {
	Key  FrontendKey
	Name ServicePortName
	Kind FrontendKind
	// AffinityTimeout > 0 enables ClientIP session affinity with that
	// inactivity timeout.
	AffinityTimeout time.Duration
	// Local is the traffic policy Local: internalTrafficPolicy for a
	// ClusterIP frontend, externalTrafficPolicy for an external one.
	Local bool
	// SNAT, when valid, is the node address that connections arriving at
	// an external frontend from outside the node are source-NATed to
	// (externalTrafficPolicy Cluster), so that their replies come back
	// through this node to be un-NATed. Connections from this node's pods
	// and from the node itself keep their source: their replies pass
	// through this node anyway.
	SNAT netip.Addr
	// SourceRanges, when not empty, are the only client addresses an
	// external frontend accepts (loadBalancerSourceRanges); packets from
	// other sources are dropped.
	SourceRanges []netip.Prefix
	Endpoints    []Endpoint
	// IfEmpty applies when Endpoints is empty.
	IfEmpty NoEndpointsAction
}

// Model is the whole desired state. Backends must not modify it.
type Model struct {
	Frontends map[FrontendKey]*Frontend
}

// FrontendErrors is what Sync returns when the dataplane refused some
// frontends while every other one converged in the same Sync. The refused
// ones keep what they had before (or nothing) and are retried by the next
// Sync.
type FrontendErrors struct {
	Failed []FrontendError
}

// FrontendError is one refused frontend.
type FrontendError struct {
	Key  FrontendKey
	Name ServicePortName
	Err  error
}

func (e *FrontendErrors) Error() string {
	s := fmt.Sprintf("%d frontend(s) refused", len(e.Failed))
	for i, f := range e.Failed {
		if i == 3 {
			s += fmt.Sprintf("; and %d more", len(e.Failed)-3)
			break
		}
		s += fmt.Sprintf("; %s (%s): %v", f.Key, f.Name, f.Err)
	}
	return s
}

// SyncOptions tune one Sync.
type SyncOptions struct {
	// Full re-reads what the dataplane actually holds before diffing,
	// repairing drift (someone deleted a flow, a map entry). Without it the
	// backend diffs against its own record of what it installed.
	Full bool
}

// ServiceBackend programs one dataplane.
//
//   - Sync makes the dataplane equal to the model. It is idempotent: a
//     second call with the same model changes nothing. It is incremental: a
//     frontend whose pointer is unchanged since the last successful Sync is
//     not looked at (unless opts.Full), and one endpoint change touches O(1)
//     flows or map entries. Each frontend is applied atomically from the
//     packet's view (no packet sees a half-written frontend). Installed state
//     is recorded only after the apply succeeded; after an error the next
//     Sync retries whatever is still different.
//   - The first Sync after a restart adopts what is already installed
//     (flows by cookie, pinned maps) instead of flushing it, so established
//     connections survive a restart of the proxy.
//   - Cleanup removes everything the backend ever installed on this node,
//     including state left by an earlier process (used when the node
//     switches dataplane). It is idempotent.
//
// Sync and Cleanup are called from one goroutine at a time (the proxy's sync
// loop); implementations need no locking against each other.
type ServiceBackend interface {
	Name() string
	Sync(ctx context.Context, m *Model, opts SyncOptions) error
	Cleanup(ctx context.Context) error
}

// DefaultHairpinIP is the source a pod sees when it reaches itself through
// a Service, on either dataplane (link-local: never routed off the node).
var DefaultHairpinIP = netip.MustParseAddr("169.254.169.253")

// DefaultHairpinIP6 is DefaultHairpinIP for IPv6 Services. Not link-local
// as the IPv4 one: a pod reaches fe80::/64 on-link, by neighbour discovery
// nobody answers, so its replies would never leave it. A ULA goes to the
// pod's default gateway, where the dataplane turns it around.
var DefaultHairpinIP6 = netip.MustParseAddr("fd00:a9fe:a9fe::fd")
