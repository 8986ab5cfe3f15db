package nsxctl

import (
	"context"
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
)

// PodRow is one pod attachment the agent recorded in OVSDB.
type PodRow struct {
	Pod         string `json:"pod"` // namespace/name
	UID         string `json:"uid"`
	ContainerID string `json:"containerID"`
	Port        string `json:"port"`
	OFPort      int    `json:"ofport"`
	VLAN        int    `json:"vlan"`
	IP          string `json:"ip"`
	// IP6: a dual-stack pod's IPv6 address (CIDR), as recorded.
	IP6   string `json:"ip6,omitempty"`
	MAC   string `json:"mac"`
	Netns string `json:"netns"`
	// AttachedAt: when the ADD that created the attachment ran (RFC 3339;
	// empty for an attachment an earlier version made).
	AttachedAt string `json:"attachedAt,omitempty"`
	// EBPF: the eBPF programs are attached to the pod's interface (links
	// pinned for its port).
	EBPF bool `json:"ebpfAttached"`
	// Audit is the audit's view: "ok", or "stale" when the pod's netns is
	// gone and its UID unknown to the API (the audit removes such a port
	// after two sweeps), or "netns gone" without the API to ask.
	Audit string `json:"audit"`
}

// PodsReport is `nsxctl pods`.
type PodsReport struct {
	Node   string   `json:"node"`
	Bridge string   `json:"bridge"`
	Pods   []PodRow `json:"pods"`
}

// Stale says whether any attachment is a stale candidate.
func (r *PodsReport) Stale() bool {
	return slices.ContainsFunc(r.Pods, func(p PodRow) bool { return p.Audit != "ok" })
}

// Table prints one row per attachment.
func (r *PodsReport) Table() ([]string, [][]string) {
	header := []string{"POD", "PORT", "OFPORT", "VLAN", "IP", "MAC", "CONTAINER", "ATTACHED", "EBPF", "AUDIT"}
	var rows [][]string
	for _, p := range r.Pods {
		cid := p.ContainerID
		if len(cid) > 12 {
			cid = cid[:12]
		}
		ip := p.IP
		if p.IP6 != "" {
			ip += ", " + p.IP6 // one column per pod: both addresses side by side
		}
		rows = append(rows, []string{p.Pod, p.Port, fmt.Sprint(p.OFPort), fmt.Sprint(p.VLAN), ip, p.MAC, cid, p.AttachedAt,
			map[bool]string{true: "attached", false: "no"}[p.EBPF], p.Audit})
	}
	return header, rows
}

// podRow is the row of a recorded port, audit "ok" (Pods judges it).
func podRow(p *ports.PodPort, ebpf bool) PodRow {
	row := PodRow{Pod: p.PodNamespace + "/" + p.PodName, UID: p.PodUID, ContainerID: p.ContainerID, Port: p.Name,
		OFPort: p.OFPort, VLAN: p.VLAN, IP: p.IP, IP6: p.IP6, MAC: p.MAC, Netns: p.Netns, EBPF: ebpf, Audit: "ok"}
	if !p.AttachedAt.IsZero() {
		row.AttachedAt = p.AttachedAt.UTC().Format(time.RFC3339)
	}
	return row
}

// Pods is `nsxctl pods`: the attachments on the node's bridge.
func (n *Node) Pods(ctx context.Context) (*PodsReport, error) {
	db, err := n.ovsdb()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	na := n.Config.NodeAgent
	list, err := ports.New(db, na.OVSBridge).List(ctx)
	if err != nil {
		return nil, fmt.Errorf("pod ports on %s: %w", na.OVSBridge, err)
	}
	attached, err := ebpf.AttachedPods(n.Config.KubeProxy.BPFPinDir)
	if err != nil {
		return nil, fmt.Errorf("eBPF links in %s: %w", n.Config.KubeProxy.BPFPinDir, err)
	}
	var uids map[string]bool
	if n.Client != nil {
		pods, err := n.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("spec.nodeName", n.Name).String()})
		if err != nil {
			return nil, fmt.Errorf("pods of node %s: %w", n.Name, err)
		}
		uids = map[string]bool{}
		for _, p := range pods.Items {
			uids[string(p.UID)] = true
		}
	}
	r := &PodsReport{Node: n.Name, Bridge: na.OVSBridge, Pods: []PodRow{}}
	for _, p := range list {
		row := podRow(&p, slices.Contains(attached, p.Name))
		if p.Netns == "" || !podnet.NetnsExists(podnet.HostPath(na.ProcMountPathPrefix, p.Netns)) {
			switch {
			case uids == nil:
				row.Audit = "netns gone"
			case !uids[p.PodUID]:
				row.Audit = "stale"
			}
		}
		r.Pods = append(r.Pods, row)
	}
	slices.SortFunc(r.Pods, func(a, b PodRow) int {
		if a.Pod != b.Pod {
			if a.Pod < b.Pod {
				return -1
			}
			return 1
		}
		if a.Port < b.Port {
			return -1
		}
		return 1
	})
	return r, nil
}
