package agent

import (
	"errors"
	"fmt"
	"os"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
)

// CleanupNode removes what the agent left on the node after it is gone for
// good (`nsx-node-agent cleanup`, run by deploy/cleanup): the hostPort
// nftables tables and the CNI socket file. Pods' ports and veths go with
// their pods (and br-int with nsx-ovs's cleanup). Idempotent; every part
// is tried, errors are joined.
func CleanupNode(cfg *config.Config) error {
	var errs []error
	if err := nftables.NewHostPorts(nftables.HostPortsOptions{}).Cleanup(); err != nil {
		errs = append(errs, fmt.Errorf("hostPort nftables tables: %w", err))
	}
	sock := cfg.NodeAgent.CNISocket
	if err := os.Remove(sock); err != nil && !os.IsNotExist(err) {
		errs = append(errs, fmt.Errorf("cni_socket %s: %w", sock, err))
	}
	return errors.Join(errs...)
}
