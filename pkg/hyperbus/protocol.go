// Package hyperbus is nsx-ujo's open HyperBus protocol: the hypervisor side
// (the fabric, NSX's HyperBus daemon in the reference product) pushes the
// network config of each container on a node to that node's nsx-node-agent
// over a TCP session on the agent's internal OVS port (VLAN nsxrpc_vlan).
// NSX's own nsx-rpc is not public; this protocol keeps its shape (a
// session, a snapshot, per-container configs keyed by pod, status back)
// and is specified in docs/hyperbus.md.
//
// Framing: each message is a 4-byte big-endian length, then that many
// bytes of one JSON object (at most MaxFrame). JSON because the configs are
// small and rare (a pod start), a human can read a capture, and both sides
// need no generated code; the length prefix because a JSON stream has no
// other safe resynchronisation point.
package hyperbus

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
)

// Version is the protocol version this package speaks; hello negotiates
// the highest both sides list.
const Version = 1

// MaxFrame bounds one message: a snapshot of a node's pods (about 300 bytes
// each) fits many thousand pods.
const MaxFrame = 4 << 20

// Type names a message.
type Type string

// The message types. Hypervisor -> agent: Hello, Snapshot, Upsert, Delete,
// Heartbeat. Agent -> hypervisor: Hello (the answer), Ack, Status,
// Heartbeat.
const (
	TypeHello     Type = "hello"
	TypeSnapshot  Type = "snapshot"
	TypeUpsert    Type = "upsert"
	TypeDelete    Type = "delete"
	TypeAck       Type = "ack"
	TypeStatus    Type = "status"
	TypeHeartbeat Type = "heartbeat"
)

// PodRef names a pod: a recreated pod of the same name has another UID.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

func (p PodRef) String() string { return p.Namespace + "/" + p.Name + " (uid " + p.UID + ")" }

// ContainerConfig is one pod's network config on one node. Config is in
// the schema of the ncp/network_config annotation (version, pod_uid,
// ip_address, mac_address, gateway_ip, vlan_id, mtu), validated the same
// way; its pod_uid must be Pod.UID.
type ContainerConfig struct {
	Node   string          `json:"node"`
	Pod    PodRef          `json:"pod"`
	Config json.RawMessage `json:"config"`
}

// Message is the one envelope of every frame; which fields are set
// depends on Type (docs/hyperbus.md).
type Message struct {
	Type Type   `json:"type"`
	Seq  uint64 `json:"seq,omitempty"` // set by the sender of snapshot/upsert/delete; echoed by its ack

	// hello
	Versions []int  `json:"versions,omitempty"` // offered (hypervisor) or chosen, one (agent)
	Node     string `json:"node,omitempty"`
	// snapshot: every config of the node (replaces the agent's view)
	Configs []ContainerConfig `json:"configs,omitempty"`
	// upsert
	Config *ContainerConfig `json:"config,omitempty"`
	// delete, status
	Pod *PodRef `json:"pod,omitempty"`
	// status: "attached" or "detached"; ack, status and a refused hello:
	// what went wrong, naming the field
	State string `json:"state,omitempty"`
	Error string `json:"error,omitempty"`
}

// Pod states a status reports.
const (
	StateAttached = "attached"
	StateDetached = "detached"
)

// WriteMessage frames m onto w.
func WriteMessage(w io.Writer, m *Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("hyperbus: encode %s: %w", m.Type, err)
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("hyperbus: %s message of %d bytes exceeds the %d-byte frame limit", m.Type, len(b), MaxFrame)
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err = w.Write(append(frame, b...))
	return err
}

// ErrFrame is a frame that cannot be read as a message: the session
// cannot continue (the stream has no other resynchronisation point).
var ErrFrame = errors.New("hyperbus: bad frame")

// ReadMessage reads one frame from r and decodes it (Decode).
func ReadMessage(r io.Reader) (*Message, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxFrame {
		return nil, fmt.Errorf("%w: length %d (1..%d)", ErrFrame, n, MaxFrame)
	}
	b := make([]byte, n)
	if got, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: %d of %d bytes: %v", ErrFrame, got, n, err)
	}
	return Decode(b)
}

// Decode parses one frame's JSON and checks the envelope: a known type
// with the fields it needs. Errors name the field. It does not validate
// configs (Validate does, against the receiving node).
func Decode(b []byte) (*Message, error) {
	var m Message
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("%w: field %q: expected %s, got JSON %s", ErrFrame, te.Field, te.Type, te.Value)
		}
		return nil, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: more than one JSON value", ErrFrame)
	}
	switch m.Type {
	case TypeHello:
		if len(m.Versions) == 0 && m.Error == "" { // a refusal carries only its error
			return nil, fmt.Errorf("%w: hello: field \"versions\" is required", ErrFrame)
		}
	case TypeSnapshot:
	case TypeUpsert:
		if m.Config == nil {
			return nil, fmt.Errorf("%w: upsert: field \"config\" is required", ErrFrame)
		}
	case TypeDelete:
		if m.Pod == nil {
			return nil, fmt.Errorf("%w: delete: field \"pod\" is required", ErrFrame)
		}
	case TypeStatus:
		if m.Pod == nil || (m.State != StateAttached && m.State != StateDetached) {
			return nil, fmt.Errorf("%w: status: fields \"pod\" and \"state\" (attached or detached) are required", ErrFrame)
		}
	case TypeAck, TypeHeartbeat:
	case "":
		return nil, fmt.Errorf("%w: field \"type\" is required", ErrFrame)
	default:
		return nil, fmt.Errorf("%w: field \"type\" = %q: unknown message type", ErrFrame, m.Type)
	}
	if m.Type == TypeSnapshot || m.Type == TypeUpsert || m.Type == TypeDelete {
		if m.Seq == 0 {
			return nil, fmt.Errorf("%w: %s: field \"seq\" is required (1 or more)", ErrFrame, m.Type)
		}
	}
	return &m, nil
}

// Validate checks one config for node and returns it parsed. Errors name
// the field ("configs[3].pod.uid", "config.vlan_id", ...) after prefix.
func (c *ContainerConfig) Validate(node, prefix string) (*podconfig.Config, error) {
	switch {
	case c.Node != node:
		return nil, fmt.Errorf("%s.node = %q: this is node %q", prefix, c.Node, node)
	case c.Pod.Namespace == "" || c.Pod.Name == "":
		return nil, fmt.Errorf("%s.pod: namespace and name are required", prefix)
	case c.Pod.UID == "":
		return nil, fmt.Errorf("%s.pod.uid is required", prefix)
	case len(c.Config) == 0:
		return nil, fmt.Errorf("%s.config is required", prefix)
	}
	cfg, err := podconfig.ParseFrom(prefix+".config", string(c.Config), c.Pod.UID)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", c.Pod, err)
	}
	return cfg, nil
}
