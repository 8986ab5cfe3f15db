package proxy

import (
	"cmp"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// Labels and annotations the proxy reads, as kube-proxy spells them.
const (
	// LabelServiceProxyName on a Service (copied to its EndpointSlices)
	// hands it to another proxy.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// ToBeDeletedTaint is the cluster autoscaler's taint on a Node it is
	// about to delete.
	ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"
)

// defaultAffinityTimeout is ClientIP affinity's timeout when the Service
// does not set one (v1.DefaultClientIPServiceAffinitySeconds).
const defaultAffinityTimeout = time.Duration(v1.DefaultClientIPServiceAffinitySeconds) * time.Second

// skipReason says why the proxy does not program svc, or "" if it does.
func skipReason(svc *v1.Service) string {
	switch {
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return "ExternalName"
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		return "headless"
	case len(clusterIPs(svc)) == 0:
		return "no cluster IP"
	}
	return ""
}

// clusterIPs returns the service's valid cluster IPs, both families, in
// spec order (spec.clusterIPs, or spec.clusterIP on objects that predate
// it).
func clusterIPs(svc *v1.Service) []netip.Addr {
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	var ips []netip.Addr
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			continue // "None", "", garbage: nothing to program
		}
		ips = append(ips, a)
	}
	return ips
}

func protocol(p v1.Protocol) (dataplane.Protocol, bool) {
	switch p {
	case v1.ProtocolTCP, "":
		return dataplane.TCP, true
	case v1.ProtocolUDP:
		return dataplane.UDP, true
	case v1.ProtocolSCTP:
		return dataplane.SCTP, true
	}
	return "", false
}

func affinityTimeout(svc *v1.Service) time.Duration {
	if svc.Spec.SessionAffinity != v1.ServiceAffinityClientIP {
		return 0
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil &&
		*c.ClientIP.TimeoutSeconds > 0 {
		return time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
	}
	return defaultAffinityTimeout
}

// Node is what building frontends needs to know about this node.
type Node struct {
	Name string
	// Addresses are the node addresses NodePorts are served on
	// (nodeport_addresses, resolved). The first of each family is also the
	// address connections from outside the node are source-NATed to under
	// externalTrafficPolicy Cluster.
	Addresses []netip.Addr
}

// snatAddr is the node address of ip's family, or invalid.
func (n Node) snatAddr(v6 bool) netip.Addr {
	for _, a := range n.Addresses {
		if a.Is6() == v6 {
			return a
		}
	}
	return netip.Addr{}
}

// externalAddrs are the Service's external addresses of one family that
// this node serves, with their kind: externalIPs, then load-balancer
// ingress IPs whose ipMode is VIP (Proxy is left to the load balancer,
// which sends to the nodePort itself).
func externalAddrs(svc *v1.Service, v6 bool) (addrs []netip.Addr, kinds []dataplane.FrontendKind) {
	add := func(s string, kind dataplane.FrontendKind) {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || a.Zone() != "" || a.Is6() != v6 || slices.Contains(addrs, a) {
			return // API validation refuses such values; nothing to serve
		}
		addrs, kinds = append(addrs, a), append(kinds, kind)
	}
	for _, s := range svc.Spec.ExternalIPs {
		add(s, dataplane.ExternalIP)
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" && (in.IPMode == nil || *in.IPMode == v1.LoadBalancerIPModeVIP) {
				add(in.IP, dataplane.LoadBalancerIP)
			}
		}
	}
	return addrs, kinds
}

// sourceRanges parses loadBalancerSourceRanges (kube-proxy trims spaces).
func sourceRanges(svc *v1.Service) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// BuildFrontends computes the frontends of one Service from its
// EndpointSlices, each with the endpoints kube-proxy would use on node:
// one per (cluster IP, service port); and, for the families of its
// cluster IPs, one per (node address, nodePort), (external IP, port) and
// (load-balancer IP, port). svc must not be skipped (skipReason "").
// slices may be in any order. Exported for the dataplane conformance
// suite, which checks the selection with real traffic.
func BuildFrontends(svc *v1.Service, slices []*discovery.EndpointSlice, node Node) map[dataplane.FrontendKey]*dataplane.Frontend {
	// Deterministic iteration, so duplicate endpoints resolve the same way
	// every time.
	sorted := append([]*discovery.EndpointSlice(nil), slices...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })

	itpLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	etpLocal := svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	affinity := affinityTimeout(svc)
	ranges := sourceRanges(svc)
	out := map[dataplane.FrontendKey]*dataplane.Frontend{}
	for _, ip := range clusterIPs(svc) {
		v6 := ip.Is6()
		family := discovery.AddressTypeIPv4
		if v6 {
			family = discovery.AddressTypeIPv6
		}
		ext, extKinds := externalAddrs(svc, v6)
		snat := netip.Addr{}
		if !etpLocal {
			snat = node.snatAddr(v6)
		}
		for _, sp := range svc.Spec.Ports {
			proto, ok := protocol(sp.Protocol)
			if !ok || sp.Port <= 0 || sp.Port > 65535 {
				continue
			}
			all := collectEndpoints(sorted, family, sp.Name, sp.Protocol, v6)
			name := dataplane.ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: sp.Name}
			eps, ifEmpty := selectEndpoints(all, itpLocal, node.Name)
			fe := &dataplane.Frontend{
				Key:             dataplane.FrontendKey{IP: ip, Port: uint16(sp.Port), Protocol: proto},
				Name:            name,
				Kind:            dataplane.ClusterIP,
				AffinityTimeout: affinity,
				Local:           itpLocal,
				Endpoints:       eps,
				IfEmpty:         ifEmpty,
			}
			out[fe.Key] = fe
			if sp.NodePort == 0 && len(ext) == 0 {
				continue
			}
			// External frontends share one selection (and one slice).
			eps, ifEmpty = selectEndpoints(all, etpLocal, node.Name)
			external := func(kind dataplane.FrontendKind, a netip.Addr, port int32) {
				fe := &dataplane.Frontend{
					Key:  dataplane.FrontendKey{IP: a, Port: uint16(port), Protocol: proto},
					Name: name, Kind: kind, AffinityTimeout: affinity, Local: etpLocal, SNAT: snat,
					Endpoints: eps, IfEmpty: ifEmpty,
				}
				if kind == dataplane.LoadBalancerIP {
					fe.SourceRanges = ranges
				}
				out[fe.Key] = fe
			}
			if sp.NodePort > 0 && sp.NodePort <= 65535 {
				for _, a := range node.Addresses {
					if a.Is6() == v6 {
						external(dataplane.NodePort, a, sp.NodePort)
					}
				}
			}
			for i, a := range ext {
				external(extKinds[i], a, sp.Port)
			}
		}
	}
	return out
}

// collectEndpoints gathers, from the slices of one address family, the
// endpoints of the service port named portName with protocol proto. The
// port number comes from each slice, so a named target port resolves per
// slice. An address seen twice (an endpoint moving between slices) is kept
// once, preferring a non-terminating copy, as kube-proxy does.
func collectEndpoints(slices []*discovery.EndpointSlice, family discovery.AddressType, portName string, proto v1.Protocol, v6 bool) []dataplane.Endpoint {
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	var eps []dataplane.Endpoint
	index := map[netip.AddrPort]int{}
	for _, s := range slices {
		if s.AddressType != family {
			continue
		}
		for _, p := range s.Ports {
			name, pproto := "", v1.ProtocolTCP
			if p.Name != nil {
				name = *p.Name
			}
			if p.Protocol != nil {
				pproto = *p.Protocol
			}
			if name != portName || pproto != proto || p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				continue
			}
			for _, e := range s.Endpoints {
				if len(e.Addresses) == 0 {
					continue
				}
				// kube-proxy uses the first address: the EndpointSlice
				// controller writes exactly one.
				ip, err := netip.ParseAddr(e.Addresses[0])
				if err != nil || ip.Is6() != v6 || ip.Zone() != "" {
					continue
				}
				ep := dataplane.Endpoint{
					IP:          ip,
					Port:        uint16(*p.Port),
					Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
					Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
					Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
				}
				if e.NodeName != nil {
					ep.NodeName = *e.NodeName
				}
				if i, dup := index[ep.AddrPort()]; dup {
					if !ep.Terminating {
						eps[i] = ep
					}
					continue
				}
				index[ep.AddrPort()] = len(eps)
				eps = append(eps, ep)
			}
		}
	}
	return eps
}

// selectEndpoints applies kube-proxy's selection (CategorizeEndpoints for
// ClusterIP traffic): ready endpoints, else serving+terminating ones;
// under internalTrafficPolicy Local only those on nodeName, chosen the same
// way among the local ones. The result is sorted by address and port.
//
// With nothing to use, a Cluster frontend rejects. A Local one drops when
// other nodes have usable endpoints and, like kube-proxy, rejects when no
// node has any.
func selectEndpoints(all []dataplane.Endpoint, local bool, nodeName string) ([]dataplane.Endpoint, dataplane.NoEndpointsAction) {
	candidates := all
	if local {
		candidates = nil
		for _, e := range all {
			if e.NodeName == nodeName {
				candidates = append(candidates, e)
			}
		}
	}
	var sel []dataplane.Endpoint
	for _, e := range candidates {
		if e.Ready {
			sel = append(sel, e)
		}
	}
	if len(sel) == 0 {
		for _, e := range candidates {
			if e.Serving && e.Terminating {
				sel = append(sel, e)
			}
		}
	}
	slices.SortFunc(sel, func(a, b dataplane.Endpoint) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port))
	})
	ifEmpty := dataplane.Reject
	if local && slices.ContainsFunc(all, func(e dataplane.Endpoint) bool { return e.Ready || (e.Serving && e.Terminating) }) {
		ifEmpty = dataplane.Drop
	}
	return sel, ifEmpty
}

// frontendEqual reports whether two frontends program the same thing.
func frontendEqual(a, b *dataplane.Frontend) bool {
	return a.Key == b.Key && a.Name == b.Name && a.Kind == b.Kind && a.AffinityTimeout == b.AffinityTimeout &&
		a.Local == b.Local && a.SNAT == b.SNAT && slices.Equal(a.SourceRanges, b.SourceRanges) &&
		a.IfEmpty == b.IfEmpty && slices.Equal(a.Endpoints, b.Endpoints)
}
