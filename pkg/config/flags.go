package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// DefaultConfigFile is where the DaemonSet mounts ncp.ini.
const DefaultConfigFile = "/etc/nsx-ujo/ncp.ini"

// CommonFlags are the flags every nsx-ujo daemon takes, registered here so
// they are spelled and resolved the same way everywhere.
type CommonFlags struct {
	ConfigFile string
	Kubeconfig string
	NodeName   string
}

// Register adds --config-file, --kubeconfig and --node-name to fs.
func (f *CommonFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.ConfigFile, "config-file", DefaultConfigFile, "path to ncp.ini")
	fs.StringVar(&f.Kubeconfig, "kubeconfig", "", "kubeconfig file; overrides ncp.ini [k8s] (default: [k8s], else in-cluster)")
	fs.StringVar(&f.NodeName, "node-name", "", "this node's Kubernetes name (default: $NODE_NAME, else the host name)")
}

// Resolve returns the node name: --node-name, else $NODE_NAME (set from the
// downward API in the DaemonSet), else the host name lowercased as kubelet
// registers it.
func (f *CommonFlags) Resolve() (nodeName string, err error) {
	if f.NodeName != "" {
		return f.NodeName, nil
	}
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node name: no --node-name or $NODE_NAME, and host name: %w", err)
	}
	if h = strings.ToLower(strings.TrimSpace(h)); h == "" {
		return "", errors.New("node name: no --node-name or $NODE_NAME, and the host name is empty")
	}
	return h, nil
}

// ApplyKubeconfigFlag lets a non-empty --kubeconfig override [k8s] kubeconfig.
func (c *Config) ApplyKubeconfigFlag(path string) {
	if path != "" {
		c.K8s.Kubeconfig = path
	}
}
