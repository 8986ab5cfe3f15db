// Package podconfig gives the node agent a pod's network configuration: the
// `ncp/network_config` annotation the controller (NCP) writes, parsed and
// checked, and a Source that waits for it.
package podconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
)

// AnnotationKey is the pod annotation holding the network config.
const AnnotationKey = "ncp/network_config"

// Config is a pod's network configuration.
type Config struct {
	PodUID  string
	IP      *net.IPNet // address with the subnet's prefix length
	MAC     net.HardwareAddr
	Gateway net.IP
	// IP6 and Gateway6 are a dual-stack pod's IPv6 address (with its
	// prefix length) and gateway; nil for a single-stack pod (an IPv6-only
	// pod has its address in IP).
	IP6      *net.IPNet
	Gateway6 net.IP
	VLAN     int
	MTU      int // 0: use the node's mtu
}

// annotation is the wire form (DESIGN.md, "Pod network config").
type annotation struct {
	Version    *int   `json:"version"`
	PodUID     string `json:"pod_uid"`
	IPAddress  string `json:"ip_address"`
	MACAddress string `json:"mac_address"`
	GatewayIP  string `json:"gateway_ip"`
	// IPv6Address and IPv6GatewayIP: a dual-stack pod's second address,
	// allowed only when ip_address is IPv4.
	IPv6Address   string `json:"ipv6_address"`
	IPv6GatewayIP string `json:"ipv6_gateway_ip"`
	VLANID        *int   `json:"vlan_id"`
	MTU           int    `json:"mtu"`
}

// FieldError names the config field that is wrong.
type FieldError struct {
	// Origin is where the config came from ("annotation
	// ncp/network_config" when empty).
	Origin string
	Field  string
	Value  string
	Reason string
}

func (e *FieldError) Error() string {
	origin := e.Origin
	if origin == "" {
		origin = "annotation " + AnnotationKey
	}
	if e.Value == "" {
		return fmt.Sprintf("%s: field %q: %s", origin, e.Field, e.Reason)
	}
	return fmt.Sprintf("%s: field %q = %q: %s", origin, e.Field, e.Value, e.Reason)
}

// ErrUIDMismatch is returned (wrapped) when the annotation was written for
// another pod of the same name: a recreated pod must never get it.
var ErrUIDMismatch = errors.New("pod_uid does not match the pod")

// Parse decodes and validates an annotation value. podUID, when not empty,
// must equal the annotation's pod_uid.
func Parse(value, podUID string) (*Config, error) {
	return ParseFrom("", value, podUID)
}

// ParseFrom is Parse for a config in the annotation's schema that came
// from origin (another source, e.g. HyperBus): its errors name origin.
func ParseFrom(origin, value, podUID string) (*Config, error) {
	cfg, err := parse(value, podUID)
	var fe *FieldError
	if errors.As(err, &fe) && origin != "" {
		fe.Origin = origin
	}
	return cfg, err
}

func parse(value, podUID string) (*Config, error) {
	var a annotation
	dec := json.NewDecoder(bytes.NewReader([]byte(value)))
	if err := dec.Decode(&a); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, &FieldError{Field: te.Field, Reason: "expected " + te.Type.String() + ", got JSON " + te.Value}
		}
		return nil, fmt.Errorf("annotation %s: not valid JSON: %w", AnnotationKey, err)
	}
	if a.Version == nil {
		return nil, &FieldError{Field: "version", Reason: "missing"}
	}
	if *a.Version != 1 {
		return nil, &FieldError{Field: "version", Value: fmt.Sprint(*a.Version), Reason: "only version 1 is understood"}
	}
	if a.PodUID == "" {
		return nil, &FieldError{Field: "pod_uid", Reason: "missing"}
	}
	if podUID != "" && a.PodUID != podUID {
		return nil, fmt.Errorf("annotation %s: pod_uid %s, pod has %s: %w", AnnotationKey, a.PodUID, podUID, ErrUIDMismatch)
	}
	ip, ipnet, err := net.ParseCIDR(a.IPAddress)
	if err != nil {
		return nil, &FieldError{Field: "ip_address", Value: a.IPAddress, Reason: "not an address in CIDR notation (e.g. 10.0.1.5/24)"}
	}
	ones, bits := ipnet.Mask.Size()
	if ip.Equal(ipnet.IP) && ones < bits-1 {
		return nil, &FieldError{Field: "ip_address", Value: a.IPAddress, Reason: "is the subnet's network address"}
	}
	if ip4 := ip.To4(); ip4 != nil {
		ip = ip4
	}
	cfg := &Config{PodUID: a.PodUID, IP: &net.IPNet{IP: ip, Mask: ipnet.Mask}}

	mac, err := net.ParseMAC(a.MACAddress)
	if err != nil || len(mac) != 6 {
		return nil, &FieldError{Field: "mac_address", Value: a.MACAddress, Reason: "not a 48-bit MAC address"}
	}
	if mac[0]&1 == 1 {
		return nil, &FieldError{Field: "mac_address", Value: a.MACAddress, Reason: "is a multicast address"}
	}
	cfg.MAC = mac

	if a.GatewayIP != "" {
		gw := net.ParseIP(a.GatewayIP)
		if gw == nil {
			return nil, &FieldError{Field: "gateway_ip", Value: a.GatewayIP, Reason: "not an IP address"}
		}
		if (gw.To4() == nil) != (ip.To4() == nil) {
			return nil, &FieldError{Field: "gateway_ip", Value: a.GatewayIP, Reason: "not of the address family of ip_address"}
		}
		if !ipnet.Contains(gw) {
			return nil, &FieldError{Field: "gateway_ip", Value: a.GatewayIP, Reason: "not in the subnet of ip_address " + ipnet.String()}
		}
		if gw.Equal(ip) {
			return nil, &FieldError{Field: "gateway_ip", Value: a.GatewayIP, Reason: "equals ip_address"}
		}
		if gw4 := gw.To4(); gw4 != nil {
			gw = gw4
		}
		cfg.Gateway = gw
	}
	if err := parseIPv6(&a, cfg); err != nil {
		return nil, err
	}
	if a.VLANID == nil {
		return nil, &FieldError{Field: "vlan_id", Reason: "missing"}
	}
	if *a.VLANID < 1 || *a.VLANID > 4094 {
		return nil, &FieldError{Field: "vlan_id", Value: fmt.Sprint(*a.VLANID), Reason: "must be 1..4094"}
	}
	cfg.VLAN = *a.VLANID
	if a.MTU != 0 && (a.MTU < 576 || a.MTU > 9216) {
		return nil, &FieldError{Field: "mtu", Value: fmt.Sprint(a.MTU), Reason: "must be 576..9216 (or absent for the node's mtu)"}
	}
	if a.MTU != 0 && a.MTU < minMTU6 && (cfg.IP6 != nil || cfg.IP.IP.To4() == nil) {
		// The kernel turns IPv6 off on a link with a smaller MTU: the
		// pod's IPv6 address could not be configured.
		return nil, &FieldError{Field: "mtu", Value: fmt.Sprint(a.MTU), Reason: fmt.Sprintf("must be %d or more for a pod with an IPv6 address", minMTU6)}
	}
	cfg.MTU = a.MTU
	return cfg, nil
}

// minMTU6 is IPv6's minimum link MTU (RFC 8200).
const minMTU6 = 1280

// parseIPv6 checks a dual-stack pod's ipv6_address and ipv6_gateway_ip
// and sets cfg.IP6 and cfg.Gateway6; cfg.IP is already parsed.
func parseIPv6(a *annotation, cfg *Config) error {
	if a.IPv6Address == "" {
		if a.IPv6GatewayIP != "" {
			return &FieldError{Field: "ipv6_gateway_ip", Value: a.IPv6GatewayIP, Reason: "given without ipv6_address"}
		}
		return nil
	}
	if cfg.IP.IP.To4() == nil {
		return &FieldError{Field: "ipv6_address", Value: a.IPv6Address,
			Reason: "only for a dual-stack pod, whose ip_address is IPv4 (an IPv6-only pod has its address in ip_address)"}
	}
	ip, subnet, err := net.ParseCIDR(a.IPv6Address)
	if err != nil {
		return &FieldError{Field: "ipv6_address", Value: a.IPv6Address, Reason: "not an address in CIDR notation (e.g. fd00:10:0:1::5/64)"}
	}
	if ip.To4() != nil {
		return &FieldError{Field: "ipv6_address", Value: a.IPv6Address, Reason: "not an IPv6 address"}
	}
	if ones, bits := subnet.Mask.Size(); ip.Equal(subnet.IP) && ones < bits-1 {
		return &FieldError{Field: "ipv6_address", Value: a.IPv6Address, Reason: "is the subnet's network address"}
	}
	if !ip.IsGlobalUnicast() {
		// Link-local, multicast, loopback: never a pod's allocated address.
		return &FieldError{Field: "ipv6_address", Value: a.IPv6Address, Reason: "not a global or unique-local unicast address"}
	}
	cfg.IP6 = &net.IPNet{IP: ip, Mask: subnet.Mask}
	if a.IPv6GatewayIP == "" {
		return nil
	}
	gw := net.ParseIP(a.IPv6GatewayIP)
	switch {
	case gw == nil:
		return &FieldError{Field: "ipv6_gateway_ip", Value: a.IPv6GatewayIP, Reason: "not an IP address"}
	case gw.To4() != nil:
		return &FieldError{Field: "ipv6_gateway_ip", Value: a.IPv6GatewayIP, Reason: "not an IPv6 address"}
	case !subnet.Contains(gw):
		return &FieldError{Field: "ipv6_gateway_ip", Value: a.IPv6GatewayIP, Reason: "not in the subnet of ipv6_address " + subnet.String()}
	case gw.Equal(ip):
		return &FieldError{Field: "ipv6_gateway_ip", Value: a.IPv6GatewayIP, Reason: "equals ipv6_address"}
	}
	cfg.Gateway6 = gw
	return nil
}

// Marshal renders cfg as an annotation value (used by the tests and by the
// fabric simulator that plays NCP).
func Marshal(cfg *Config) string {
	a := map[string]any{
		"version":     1,
		"pod_uid":     cfg.PodUID,
		"ip_address":  cfg.IP.String(),
		"mac_address": cfg.MAC.String(),
		"vlan_id":     cfg.VLAN,
	}
	if cfg.Gateway != nil {
		a["gateway_ip"] = cfg.Gateway.String()
	}
	if cfg.IP6 != nil {
		a["ipv6_address"] = cfg.IP6.String()
	}
	if cfg.Gateway6 != nil {
		a["ipv6_gateway_ip"] = cfg.Gateway6.String()
	}
	if cfg.MTU != 0 {
		a["mtu"] = cfg.MTU
	}
	b, _ := json.Marshal(a)
	return string(b)
}
