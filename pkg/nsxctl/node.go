// Package nsxctl is the logic of the nsxctl command: one node's Services,
// pods, connections and health, read from the dataplane itself (OVS flows
// and groups, or the pinned eBPF maps), OVSDB and the daemons' endpoints,
// named and checked against the API with the model code nsx-kube-proxy
// runs. Read-only but for `trace` on the eBPF dataplane, which removes the
// conntrack and affinity entries its test packet created.
package nsxctl

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/openflow"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsrun"
	"github.com/nsx-ujo/nsx-ujo/pkg/proxy"
)

// Node says where nsxctl finds one node's state.
type Node struct {
	Name   string
	Config *config.Config
	// Client reaches the API; nil leaves out what needs it (names, drift,
	// the audit's view of pod UIDs).
	Client kubernetes.Interface
}

// The dataplanes.
const (
	OVS  = "ovs"
	EBPF = "ebpf"
)

// ErrUnknownDataplane is returned for a dataplane name that is neither.
var ErrUnknownDataplane = errors.New("unknown dataplane: want ovs or ebpf")

// Held reads what dataplane dp holds on the node.
func (n *Node) Held(ctx context.Context, dp string) ([]dataplane.Held, error) {
	switch dp {
	case OVS:
		of, err := n.openflow()
		if err != nil {
			return nil, err
		}
		defer of.Close()
		return ovs.Inspect(ctx, of)
	case EBPF:
		return ebpf.Inspect(n.Config.KubeProxy.BPFPinDir)
	}
	return nil, fmt.Errorf("%q: %w", dp, ErrUnknownDataplane)
}

func (n *Node) openflow() (*openflow.Client, error) {
	na := n.Config.NodeAgent
	return openflow.New(openflow.Options{Socket: ovsrun.MgmtSocket(na.OVSRunDir, na.OVSBridge), Timeout: na.OVSOperationTimeout}), nil
}

func (n *Node) ovsdb() (*ovsdb.Client, error) {
	na := n.Config.NodeAgent
	return ovsdb.Dial(ovsrun.DBSocket(na.OVSRunDir), ovsdb.Options{Timeout: na.OVSOperationTimeout})
}

// Model is the model nsx-kube-proxy on this node builds from the API now.
func (n *Node) Model(ctx context.Context) (*dataplane.Model, error) {
	kp := n.Config.KubeProxy
	m, err := proxy.Desired(ctx, n.Client, proxy.Options{NodeName: n.Name, ServiceProxyName: kp.ServiceProxyName,
		NodePortAddresses: kp.NodePortAddresses})
	if err != nil {
		return nil, fmt.Errorf("the API's model: %w", err)
	}
	return m, nil
}

// Services is `nsxctl services [filter]` on dataplane dp.
func (n *Node) Services(ctx context.Context, dp, filter string) (*ServicesReport, error) {
	held, err := n.Held(ctx, dp)
	if err != nil {
		return nil, err
	}
	r := &ServicesReport{Node: n.Name, Dataplane: dp}
	var model *dataplane.Model
	if n.Client != nil {
		if model, err = n.Model(ctx); err != nil {
			return nil, err
		}
		r.APIChecked = true
	}
	r.Services = BuildServices(held, model, filter)
	return r, nil
}
