package main

import (
	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

// newOVSBackend builds the OpenFlow dataplane on [nsx_node_agent] ovs_bridge.
func newOVSBackend(cfg *config.Config, nodeName string, log *zap.Logger) (dataplane.ServiceBackend, error) {
	na := cfg.NodeAgent
	b, err := ovsdp.New(ovsdp.Options{
		Bridge:    na.OVSBridge,
		OVSRunDir: na.OVSRunDir,
		NodeName:  nodeName,
		Timeout:   na.OVSOperationTimeout,
		Log:       log,
	})
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return b, nil
}
