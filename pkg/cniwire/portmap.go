package cniwire

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// PortMapping is one entry of the runtime's runtimeConfig.portMappings (the
// portMappings capability): a pod's ports[].hostPort. It is the form the
// agent records on the pod's OVS port.
type PortMapping struct {
	// HostIP is the node address the port is opened on; invalid: every
	// address of the node.
	HostIP        netip.Addr `json:"hostIP,omitzero"`
	HostPort      uint16     `json:"hostPort"`
	ContainerPort uint16     `json:"containerPort"`
	Protocol      string     `json:"protocol"` // tcp, udp or sctp
}

// rawPortMapping is what the runtime sends (CNI conventions: protocol in
// any case, empty meaning tcp; hostIP "" or 0.0.0.0 meaning any).
type rawPortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP"`
}

// PortMappings reads and checks runtimeConfig.portMappings of a netconf.
// Errors name the field (runtimeConfig.portMappings[i].hostPort ...).
// Two mappings of one host address, port and protocol are an error: they
// cannot both be served.
func PortMappings(config []byte) ([]PortMapping, error) {
	var nc struct {
		RuntimeConfig struct {
			PortMappings json.RawMessage `json:"portMappings"`
		} `json:"runtimeConfig"`
	}
	if err := json.Unmarshal(config, &nc); err != nil {
		return nil, fmt.Errorf("netconf: %w", describeJSONError(err))
	}
	if len(nc.RuntimeConfig.PortMappings) == 0 || string(nc.RuntimeConfig.PortMappings) == "null" {
		return nil, nil
	}
	var raw []rawPortMapping
	if err := json.Unmarshal(nc.RuntimeConfig.PortMappings, &raw); err != nil {
		return nil, fmt.Errorf("netconf: runtimeConfig.portMappings: %w", describeJSONError(err))
	}
	type key struct {
		ip    netip.Addr
		port  uint16
		proto string
	}
	seen := map[key]int{}
	var out []PortMapping
	for i, r := range raw {
		field := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
		if r.HostPort < 1 || r.HostPort > 65535 {
			return nil, fmt.Errorf("netconf: %s.hostPort = %d: must be between 1 and 65535", field, r.HostPort)
		}
		if r.ContainerPort < 1 || r.ContainerPort > 65535 {
			return nil, fmt.Errorf("netconf: %s.containerPort = %d: must be between 1 and 65535", field, r.ContainerPort)
		}
		m := PortMapping{HostPort: uint16(r.HostPort), ContainerPort: uint16(r.ContainerPort), Protocol: strings.ToLower(r.Protocol)}
		switch m.Protocol {
		case "":
			m.Protocol = "tcp"
		case "tcp", "udp", "sctp":
		default:
			return nil, fmt.Errorf("netconf: %s.protocol = %q: must be tcp, udp or sctp", field, r.Protocol)
		}
		if s := strings.TrimSpace(r.HostIP); s != "" {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("netconf: %s.hostIP = %q: not an IP address", field, r.HostIP)
			}
			if !a.IsUnspecified() {
				m.HostIP = a.Unmap()
			}
		}
		k := key{m.HostIP, m.HostPort, m.Protocol}
		if j, dup := seen[k]; dup {
			return nil, fmt.Errorf("netconf: %s: the same host address, port and protocol as runtimeConfig.portMappings[%d]", field, j)
		}
		seen[k] = i
		out = append(out, m)
	}
	return out, nil
}
