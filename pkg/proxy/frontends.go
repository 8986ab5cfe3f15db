package proxy

import (
	"cmp"
	"net/netip"
	"slices"
	"sort"
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

// BuildFrontends computes the frontends of one Service from its
// EndpointSlices: one per (cluster IP, service port), each with the
// endpoints kube-proxy would use from nodeName. svc must not be skipped
// (skipReason ""). slices may be in any order. Exported for the dataplane
// conformance suite, which checks the selection with real traffic.
func BuildFrontends(svc *v1.Service, slices []*discovery.EndpointSlice, nodeName string) map[dataplane.FrontendKey]*dataplane.Frontend {
	// Deterministic iteration, so duplicate endpoints resolve the same way
	// every time.
	sorted := append([]*discovery.EndpointSlice(nil), slices...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })

	local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	affinity := affinityTimeout(svc)
	out := map[dataplane.FrontendKey]*dataplane.Frontend{}
	for _, ip := range clusterIPs(svc) {
		family := discovery.AddressTypeIPv4
		if ip.Is6() {
			family = discovery.AddressTypeIPv6
		}
		for _, sp := range svc.Spec.Ports {
			proto, ok := protocol(sp.Protocol)
			if !ok || sp.Port <= 0 || sp.Port > 65535 {
				continue
			}
			all := collectEndpoints(sorted, family, sp.Name, sp.Protocol, ip.Is6())
			eps, ifEmpty := selectEndpoints(all, local, nodeName)
			fe := &dataplane.Frontend{
				Key:             dataplane.FrontendKey{IP: ip, Port: uint16(sp.Port), Protocol: proto},
				Name:            dataplane.ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: sp.Name},
				AffinityTimeout: affinity,
				Local:           local,
				Endpoints:       eps,
				IfEmpty:         ifEmpty,
			}
			out[fe.Key] = fe
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
	return a.Key == b.Key && a.Name == b.Name && a.AffinityTimeout == b.AffinityTimeout && a.Local == b.Local &&
		a.IfEmpty == b.IfEmpty && slices.Equal(a.Endpoints, b.Endpoints)
}
