// Package backends builds the ServiceBackend a node's ncp.ini names
// ([nsx_kube_proxy] dataplane) and takes over from the other dataplane
// when a node switches (takeover.go), so the proxy core and cmd/ stay
// dataplane-agnostic.
package backends

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ebpfdp "github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
)

// ErrUnknown is a dataplane name this build does not have.
var ErrUnknown = errors.New("unknown dataplane")

// EBPFOptions are the eBPF dataplane's options from ncp.ini.
func EBPFOptions(cfg *config.Config, log *zap.Logger) ebpfdp.Options {
	kp, na := cfg.KubeProxy, cfg.NodeAgent
	return ebpfdp.Options{
		PinDir: kp.BPFPinDir,
		Sizes: ebpfdp.MapSizes{Services: uint32(kp.BPFServicesMapSize), Backends: uint32(kp.BPFBackendsMapSize),
			Conntrack: uint32(kp.BPFConntrackMapSize), Affinity: uint32(kp.BPFAffinityMapSize),
			Conntrack6: uint32(kp.BPFConntrack6MapSize), Affinity6: uint32(kp.BPFAffinity6MapSize)},
		Bridge: na.OVSBridge, OVSRunDir: na.OVSRunDir, Timeout: na.OVSOperationTimeout, Log: log,
	}
}

func ovsOptions(cfg *config.Config, nodeName string, log *zap.Logger) ovsdp.Options {
	na := cfg.NodeAgent
	return ovsdp.Options{Bridge: na.OVSBridge, Uplink: na.OVSUplinkPort, OVSRunDir: na.OVSRunDir, NodeName: nodeName,
		Timeout: na.OVSOperationTimeout, Log: log}
}

// New builds the dataplane named by [nsx_kube_proxy] dataplane, with the
// node's own connections to its NodePorts served beside it (see
// WithLocalNodePorts). Its first Sync takes over from the other dataplane
// if the node ran it (see takeover): no gap for new connections, and
// established ones keep their backend.
func New(cfg *config.Config, nodeName string, log *zap.Logger) (dataplane.ServiceBackend, error) {
	switch dp := cfg.KubeProxy.Dataplane; dp {
	case "ovs":
		b, err := ovsdp.New(ovsOptions(cfg, nodeName, log))
		if err != nil {
			return nil, err
		}
		t := fromEBPF(cfg.KubeProxy.BPFPinDir, cfg.KubeProxy.SwitchDrainPeriod, log)
		t.wrapped = wrapped{b}
		return WithLocalNodePorts(t, nftables.New(nftables.Options{})), nil
	case "ebpf":
		b, err := ebpfdp.New(EBPFOptions(cfg, log))
		if err != nil {
			return nil, err
		}
		t := fromOVS(b, func() (*ovsdp.Backend, error) { return ovsdp.New(ovsOptions(cfg, nodeName, log)) }, log)
		t.wrapped = wrapped{b}
		return WithLocalNodePorts(t, nftables.New(nftables.Options{})), nil
	default:
		return nil, fmt.Errorf("ncp.ini [nsx_kube_proxy] dataplane = %q: %w", dp, ErrUnknown)
	}
}

// WithLocalNodePorts adds to b what no dataplane sees: the node's own
// connections to a NodePort on its own addresses, which the kernel
// delivers over loopback. After each Sync of b, np redirects them to the
// Service's cluster IP (nftables, output hook), which b serves like any
// connection from the node. Sync's error joins both (a FrontendErrors of b
// stays visible to errors.As); Cleanup removes both. The result forwards
// b's optional Collectors and Close.
func WithLocalNodePorts(b dataplane.ServiceBackend, np *nftables.NodePorts) dataplane.ServiceBackend {
	return &localNodePorts{wrapped: wrapped{b}, np: np}
}

// wrapped is a backend inside a wrapper of this package: it forwards the
// backend's optional Collectors and Close.
type wrapped struct{ dataplane.ServiceBackend }

type localNodePorts struct {
	wrapped
	np *nftables.NodePorts
}

func (l *localNodePorts) Sync(ctx context.Context, m *dataplane.Model, opts dataplane.SyncOptions) error {
	err := l.ServiceBackend.Sync(ctx, m, opts)
	if nerr := l.np.Sync(nftables.FromModel(m)); nerr != nil {
		err = errors.Join(err, fmt.Errorf("NodePorts from the node itself: %w", nerr))
	}
	return err
}

func (l *localNodePorts) Cleanup(ctx context.Context) error {
	return errors.Join(l.ServiceBackend.Cleanup(ctx), l.np.Cleanup())
}

// Collectors forwards the backend's metrics (see proxy.MetricsCollector).
func (w wrapped) Collectors() []prometheus.Collector {
	if c, ok := w.ServiceBackend.(interface{ Collectors() []prometheus.Collector }); ok {
		return c.Collectors()
	}
	return nil
}

// Close closes the backend.
func (w wrapped) Close() error {
	if c, ok := w.ServiceBackend.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// CleanupNode removes what nsx-kube-proxy left on the node after it is
// gone for good (`nsx-kube-proxy cleanup`, run by deploy/cleanup): the
// eBPF programs, links and pinned maps under bpf_pin_dir and that
// directory, and the nftables table of the node's own NodePort
// connections. The OVS dataplane's flows live on br-int, which goes with
// nsx-ovs's cleanup. Idempotent; every part is tried, errors are joined.
func CleanupNode(cfg *config.Config) error {
	pinDir := cfg.KubeProxy.BPFPinDir
	var errs []error
	if err := ebpfdp.CleanupPins(pinDir); err != nil {
		errs = append(errs, fmt.Errorf("eBPF pins under %s: %w", pinDir, err))
	}
	if err := os.Remove(pinDir); err != nil && !os.IsNotExist(err) {
		errs = append(errs, fmt.Errorf("bpf_pin_dir %s: %w", pinDir, err))
	}
	if err := nftables.New(nftables.Options{}).Cleanup(); err != nil {
		errs = append(errs, fmt.Errorf("NodePort nftables table: %w", err))
	}
	return errors.Join(errs...)
}
