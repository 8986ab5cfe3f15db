// Package backends builds the ServiceBackend a node's ncp.ini names
// ([nsx_kube_proxy] dataplane) and removes what the other dataplane left
// when a node switches, so the proxy core and cmd/ stay dataplane-agnostic.
package backends

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ebpfdp "github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

// ErrUnknown is a dataplane name this build does not have.
var ErrUnknown = errors.New("unknown dataplane")

// EBPFOptions are the eBPF dataplane's options from ncp.ini.
func EBPFOptions(cfg *config.Config, log *zap.Logger) ebpfdp.Options {
	kp, na := cfg.KubeProxy, cfg.NodeAgent
	return ebpfdp.Options{
		PinDir: kp.BPFPinDir,
		Sizes: ebpfdp.MapSizes{Services: uint32(kp.BPFServicesMapSize), Backends: uint32(kp.BPFBackendsMapSize),
			Conntrack: uint32(kp.BPFConntrackMapSize), Affinity: uint32(kp.BPFAffinityMapSize)},
		Bridge: na.OVSBridge, OVSRunDir: na.OVSRunDir, Timeout: na.OVSOperationTimeout, Log: log,
	}
}

func ovsOptions(cfg *config.Config, nodeName string, log *zap.Logger) ovsdp.Options {
	na := cfg.NodeAgent
	return ovsdp.Options{Bridge: na.OVSBridge, Uplink: na.OVSUplinkPort, OVSRunDir: na.OVSRunDir, NodeName: nodeName,
		Timeout: na.OVSOperationTimeout, Log: log}
}

// New builds the dataplane named by [nsx_kube_proxy] dataplane.
func New(cfg *config.Config, nodeName string, log *zap.Logger) (dataplane.ServiceBackend, error) {
	switch dp := cfg.KubeProxy.Dataplane; dp {
	case "ovs":
		b, err := ovsdp.New(ovsOptions(cfg, nodeName, log))
		if err != nil {
			return nil, err
		}
		return b, nil
	case "ebpf":
		b, err := ebpfdp.New(EBPFOptions(cfg, log))
		if err != nil {
			return nil, err
		}
		return b, nil
	default:
		return nil, fmt.Errorf("ncp.ini [nsx_kube_proxy] dataplane = %q: %w", dp, ErrUnknown)
	}
}

// CleanupOthers removes the state of every dataplane but the configured
// one: the OVS backend's flows and groups (by cookie and group range) when
// the node runs eBPF, the pinned maps and links when it runs OVS. It is
// called at start, before the first Sync. Idempotent.
func CleanupOthers(ctx context.Context, cfg *config.Config, nodeName string, log *zap.Logger) error {
	switch cfg.KubeProxy.Dataplane {
	case "ebpf":
		b, err := ovsdp.New(ovsOptions(cfg, nodeName, log))
		if err != nil {
			return fmt.Errorf("remove the OVS dataplane's flows: %w", err)
		}
		defer b.Close()
		return b.Cleanup(ctx)
	case "ovs":
		pins := cfg.KubeProxy.BPFPinDir
		if _, err := os.Stat(filepath.Join(pins, "nsx_services")); errors.Is(err, os.ErrNotExist) {
			return nil // never ran eBPF here
		}
		log.Info("removing the eBPF dataplane's programs and maps", zap.String("pinDir", pins))
		return ebpfdp.CleanupPins(pins)
	}
	return nil
}
