// Package cniwire holds the types the CNI plugin and the node agent exchange
// over the agent's unix socket, and the parsing of what a container runtime
// hands the plugin (netconf, CNI_ARGS). It is the one definition both sides
// share, so the plugin and the agent cannot drift apart.
//
// The transport is HTTP over the unix socket: one POST of a Request to
// RequestPath, answered with a Response. HTTP gives timeouts, status codes and
// `curl --unix-socket` for free.
package cniwire

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultSocket is where the agent listens unless ncp.ini or the netconf's
// "socket" says otherwise.
const DefaultSocket = "/var/run/nsx-ujo/cni.sock"

// RequestPath is the HTTP path of every CNI request on the agent socket.
const RequestPath = "/cni"

// Command is a CNI verb as the agent understands it.
type Command string

// The CNI 1.1 verbs forwarded to the agent. VERSION is answered by the plugin
// itself.
const (
	CmdAdd    Command = "ADD"
	CmdDel    Command = "DEL"
	CmdCheck  Command = "CHECK"
	CmdStatus Command = "STATUS"
	CmdGC     Command = "GC"
)

// Request is one CNI invocation forwarded by the plugin.
type Request struct {
	Command     Command `json:"command"`
	ContainerID string  `json:"containerID,omitempty"`
	Netns       string  `json:"netns,omitempty"`
	IfName      string  `json:"ifName,omitempty"`
	// Pod identity from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME,
	// K8S_POD_UID). UID may be empty with runtimes that do not pass it.
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
	// Config is the netconf exactly as the runtime passed it on stdin
	// (cniVersion, prevResult, valid attachments for GC ...).
	Config json.RawMessage `json:"config"`
}

// Response is the agent's answer. Exactly one of Result and Error is set for
// ADD; the other verbs return only Error on failure.
type Response struct {
	// Result is a CNI result in the agent's version (1.1.0); the plugin
	// converts it to the netconf's cniVersion.
	Result json.RawMessage `json:"result,omitempty"`
	Error  *types.Error    `json:"error,omitempty"`
}

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.NetConf
	// Socket overrides the agent socket path.
	Socket string `json:"socket,omitempty"`
	// NSXBuildVersion is written by nsx-ncp-bootstrap at the top of the
	// conflist; the plugin ignores it (the runtime drops list-level keys),
	// it is parsed here only so a plugin-level copy is not an error.
	NSXBuildVersion string `json:"nsxBuildVersion,omitempty"`
}

// ParseNetConf decodes and checks the netconf the runtime gave the plugin.
// Errors name the offending field so an operator can fix the conflist.
func ParseNetConf(data []byte) (*NetConf, error) {
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, errors.New("netconf: empty network configuration on stdin")
	}
	var nc NetConf
	if err := json.Unmarshal(data, &nc); err != nil {
		return nil, fmt.Errorf("netconf: %w", describeJSONError(err))
	}
	if nc.CNIVersion == "" {
		return nil, errors.New(`netconf: field "cniVersion" is required`)
	}
	if nc.Name == "" {
		return nil, errors.New(`netconf: field "name" is required`)
	}
	if nc.Type == "" {
		return nil, errors.New(`netconf: field "type" is required`)
	}
	if nc.Socket != "" && !strings.HasPrefix(nc.Socket, "/") {
		return nil, fmt.Errorf(`netconf: field "socket" = %q: must be an absolute path`, nc.Socket)
	}
	return &nc, nil
}

// SocketPath is the agent socket this netconf points at.
func (nc *NetConf) SocketPath() string {
	if nc.Socket != "" {
		return nc.Socket
	}
	return DefaultSocket
}

func describeJSONError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q: expected %s, got JSON %s", te.Field, te.Type, te.Value)
	}
	return err
}

// PodArgs are the Kubernetes keys of CNI_ARGS.
type PodArgs struct {
	Namespace, Name, UID string
}

// ParseCNIArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K1=V1;K2=V2"). Unknown keys are ignored as the spec asks;
// a pair without '=' is an error naming it.
func ParseCNIArgs(s string) (PodArgs, error) {
	var pa PodArgs
	if s == "" {
		return pa, nil
	}
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return pa, fmt.Errorf("CNI_ARGS: %q is not KEY=VALUE", pair)
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			pa.Namespace = v
		case "K8S_POD_NAME":
			pa.Name = v
		case "K8S_POD_UID":
			pa.UID = v
		}
	}
	return pa, nil
}

// Validate checks what the agent needs for the request's command.
func (r *Request) Validate() error {
	switch r.Command {
	case CmdAdd, CmdCheck:
		if r.PodNamespace == "" || r.PodName == "" {
			return fmt.Errorf("CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME are required for %s", r.Command)
		}
		if r.Netns == "" {
			return fmt.Errorf("CNI_NETNS is required for %s", r.Command)
		}
		fallthrough
	case CmdDel:
		if r.ContainerID == "" {
			return fmt.Errorf("CNI_CONTAINERID is required for %s", r.Command)
		}
		if r.IfName == "" {
			return fmt.Errorf("CNI_IFNAME is required for %s", r.Command)
		}
		if len(r.IfName) > 15 || strings.ContainsAny(r.IfName, "/ \t\n:") {
			return fmt.Errorf("CNI_IFNAME %q: not a valid interface name", r.IfName)
		}
	case CmdStatus, CmdGC:
	default:
		return fmt.Errorf("command %q: unknown CNI command", r.Command)
	}
	return nil
}
