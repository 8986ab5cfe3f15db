package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/ini.v1"
)

// Section names, as NCP spells them.
const (
	SectionDefault   = "DEFAULT"
	SectionCoE       = "coe"
	SectionK8s       = "k8s"
	SectionNodeAgent = "nsx_node_agent"
	SectionKubeProxy = "nsx_kube_proxy"
)

// Defaults returns the configuration used for every key the file leaves out.
func Defaults() Config {
	return Config{
		CoE: CoE{Cluster: "k8scluster", NodeType: "HOSTVM"},
		NodeAgent: NodeAgent{
			OVSBridge:           "br-int",
			MTU:                 1500,
			NSXRPCCIP:           "169.254.1.0/31",
			NSXRPCPort:          2345,
			NSXRPCVLAN:          4094,
			ProcMountPathPrefix: "/host",
			ConfigRetryTimeout:  300 * time.Second,
			ConnectRetryTimeout: 30 * time.Second,
			OVSOperationTimeout: 5 * time.Second,
			OVSRunDir:           "/var/run/openvswitch",
			OVSDBDir:            "/etc/openvswitch",
			OVSDatapathType:     "system",
			StateDir:            "/var/lib/nsx-ujo",
			CNISocket:           "/var/run/nsx-ujo/cni.sock",
			AuditInterval:       60 * time.Second,
			CNIVersion:          CNIVersionAuto,
		},
		KubeProxy: KubeProxy{
			ConfigHandler:       "ovs",
			Dataplane:           "ovs",
			SyncPeriod:          30 * time.Second,
			SwitchDrainPeriod:   900 * time.Second,
			HealthzBindAddr:     "0.0.0.0:10256",
			MetricsBindAddr:     "127.0.0.1:10249",
			BPFPinDir:           "/sys/fs/bpf/nsx-ujo",
			BPFServicesMapSize:  65536,
			BPFBackendsMapSize:  1 << 20,
			BPFConntrackMapSize: 1 << 19,
			BPFAffinityMapSize:  1 << 17,
			// The IPv6 LRU maps are preallocated as the IPv4 ones: an
			// eighth of their size keeps an IPv4-only node's cost at
			// about 12 MiB instead of 95.
			BPFConntrack6MapSize: 1 << 16,
			BPFAffinity6MapSize:  1 << 14,
		},
	}
}

// Load reads and parses the ncp.ini at path; see Parse.
func Load(path string, log func(msg string, kv ...any)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ncp.ini: %w", err) // the *PathError names the path
	}
	c, err := Parse(data, log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse overlays the ncp.ini text on Defaults and validates the result.
// Every malformed or invalid value is reported, joined, as a *FieldError.
// Unknown sections and keys are passed to log (if non-nil) rather than
// failing, because the file is shared with NCP, which has many more keys.
func Parse(data []byte, log func(msg string, kv ...any)) (*Config, error) {
	// Keys are case-insensitive, as in Python's configparser. ini.v1 does not
	// copy [DEFAULT] keys into other sections; reading only each section's own
	// Keys() also skips its parent-section fallback, so a key counts only
	// in the section it is written in.
	f, err := ini.LoadSources(ini.LoadOptions{InsensitiveKeys: true}, data)
	if err != nil {
		return nil, fmt.Errorf("ncp.ini: %w", err)
	}
	f.BlockMode = false // read once, by one goroutine: no locking needed

	c := Defaults()
	known := map[string]map[string]field{}
	for _, fl := range c.fields() {
		if known[fl.section] == nil {
			known[fl.section] = map[string]field{}
		}
		known[fl.section][fl.key] = fl
	}
	var errs []error
	for _, sec := range f.Sections() {
		for _, k := range sec.Keys() {
			fl, ok := known[sec.Name()][k.Name()]
			if !ok {
				if log != nil {
					log("unknown ncp.ini key, ignored", "section", sec.Name(), "key", k.Name())
				}
				continue
			}
			if reason := set(fl.ptr, k.Value()); reason != "" {
				errs = append(errs, &FieldError{sec.Name(), k.Name(), k.Value(), reason})
			}
		}
	}
	c.CoE.NodeType = strings.ToUpper(c.CoE.NodeType)
	// A value that failed to parse kept its valid default, so Validate
	// reports only the other problems.
	if err := errors.Join(append(errs, c.Validate())...); err != nil {
		return nil, err
	}
	return &c, nil
}

// field binds one ncp.ini key to a Config field and its validity check.
type field struct {
	section, key string
	ptr          any           // *string, *int, *bool or *time.Duration
	check        func() string // the reason the value is invalid, or ""; nil accepts anything
}

// fields is the single table of keys, used by both Parse and Validate.
func (c *Config) fields() []field {
	d, coe, k, na, kp := &c.Default, &c.CoE, &c.K8s, &c.NodeAgent, &c.KubeProxy
	return []field{
		{SectionDefault, "debug", &d.Debug, nil},
		{SectionDefault, "log_dir", &d.LogDir, nil},
		{SectionDefault, "log_file", &d.LogFile, nil},

		{SectionCoE, "cluster", &coe.Cluster, nil},
		{SectionCoE, "node_type", &coe.NodeType, oneOf(&coe.NodeType, true, "HOSTVM", "BAREMETAL")},

		{SectionK8s, "kubeconfig", &k.Kubeconfig, nil},
		{SectionK8s, "apiserver_host_ip", &k.APIServerHostIP, nil},
		{SectionK8s, "apiserver_host_port", &k.APIServerHostPort, between(&k.APIServerHostPort, 0, 65535)},
		{SectionK8s, "ca_file", &k.CAFile, nil},
		{SectionK8s, "client_token_file", &k.ClientTokenFile, nil},
		{SectionK8s, "insecure", &k.Insecure, nil},

		{SectionNodeAgent, "ovs_bridge", &na.OVSBridge, ifName(&na.OVSBridge)},
		{SectionNodeAgent, "ovs_uplink_port", &na.OVSUplinkPort, nil},
		{SectionNodeAgent, "mtu", &na.MTU, between(&na.MTU, 576, 9216)},
		{SectionNodeAgent, "nsxrpc_cip", &na.NSXRPCCIP, cidr(&na.NSXRPCCIP)},
		{SectionNodeAgent, "nsxrpc_port", &na.NSXRPCPort, between(&na.NSXRPCPort, 1, 65535)},
		{SectionNodeAgent, "nsxrpc_vlan", &na.NSXRPCVLAN, between(&na.NSXRPCVLAN, 1, 4094)},
		{SectionNodeAgent, "enable_hyperbus", &na.EnableHyperbus, nil},
		{SectionNodeAgent, "proc_mount_path_prefix", &na.ProcMountPathPrefix, absPath(&na.ProcMountPathPrefix, true)},
		{SectionNodeAgent, "config_retry_timeout", &na.ConfigRetryTimeout, positive(&na.ConfigRetryTimeout)},
		{SectionNodeAgent, "connect_retry_timeout", &na.ConnectRetryTimeout, positive(&na.ConnectRetryTimeout)},
		{SectionNodeAgent, "ovs_operation_timeout", &na.OVSOperationTimeout, positive(&na.OVSOperationTimeout)},
		{SectionNodeAgent, "is_dhcp_configured_on_ovs_uplink_port", &na.IsDHCPConfiguredOnOVSUplinkPort, nil},
		{SectionNodeAgent, "ovs_run_dir", &na.OVSRunDir, absPath(&na.OVSRunDir, false)},
		{SectionNodeAgent, "ovs_db_dir", &na.OVSDBDir, absPath(&na.OVSDBDir, false)},
		{SectionNodeAgent, "ovs_datapath_type", &na.OVSDatapathType, oneOf(&na.OVSDatapathType, false, "system", "netdev")},
		{SectionNodeAgent, "state_dir", &na.StateDir, absPath(&na.StateDir, false)},
		{SectionNodeAgent, "cni_socket", &na.CNISocket, absPath(&na.CNISocket, false)},
		{SectionNodeAgent, "audit_interval", &na.AuditInterval, positive(&na.AuditInterval)},
		{SectionNodeAgent, "cni_version", &na.CNIVersion, oneOf(&na.CNIVersion, false, append([]string{CNIVersionAuto}, CNIVersions...)...)},

		{SectionKubeProxy, "config_handler", &kp.ConfigHandler, oneOf(&kp.ConfigHandler, false, "ovs")},
		{SectionKubeProxy, "dataplane", &kp.Dataplane, oneOf(&kp.Dataplane, false, "ovs", "ebpf")},
		{SectionKubeProxy, "service_proxy_name", &kp.ServiceProxyName, nil},
		{SectionKubeProxy, "sync_period", &kp.SyncPeriod, positive(&kp.SyncPeriod)},
		{SectionKubeProxy, "min_sync_period", &kp.MinSyncPeriod, nonNegative(&kp.MinSyncPeriod)},
		{SectionKubeProxy, "switch_drain_period", &kp.SwitchDrainPeriod, nonNegative(&kp.SwitchDrainPeriod)},
		{SectionKubeProxy, "healthz_bind_address", &kp.HealthzBindAddr, hostPort(&kp.HealthzBindAddr)},
		{SectionKubeProxy, "metrics_bind_address", &kp.MetricsBindAddr, hostPort(&kp.MetricsBindAddr)},
		{SectionKubeProxy, "nodeport_addresses", &kp.NodePortAddresses, nil},
		{SectionKubeProxy, "bpf_pin_dir", &kp.BPFPinDir, absPath(&kp.BPFPinDir, false)},
		{SectionKubeProxy, "bpf_services_map_size", &kp.BPFServicesMapSize, between(&kp.BPFServicesMapSize, 16, 1<<24)},
		{SectionKubeProxy, "bpf_backends_map_size", &kp.BPFBackendsMapSize, between(&kp.BPFBackendsMapSize, 16, 1<<26)},
		{SectionKubeProxy, "bpf_conntrack_map_size", &kp.BPFConntrackMapSize, between(&kp.BPFConntrackMapSize, 1024, 1<<26)},
		{SectionKubeProxy, "bpf_affinity_map_size", &kp.BPFAffinityMapSize, between(&kp.BPFAffinityMapSize, 16, 1<<26)},
		{SectionKubeProxy, "bpf_conntrack6_map_size", &kp.BPFConntrack6MapSize, between(&kp.BPFConntrack6MapSize, 1024, 1<<26)},
		{SectionKubeProxy, "bpf_affinity6_map_size", &kp.BPFAffinity6MapSize, between(&kp.BPFAffinity6MapSize, 16, 1<<26)},
	}
}

// parsePrefixes reads a comma-separated list of CIDRs; "" and "primary"
// are the empty list (kube-proxy's --nodeport-addresses spells its default
// "primary").
func parsePrefixes(v string) ([]netip.Prefix, string) {
	if v = strings.TrimSpace(v); v == "" || v == "primary" {
		return nil, ""
	}
	var out []netip.Prefix
	for _, s := range strings.Split(v, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Sprintf("%q is not a CIDR (a comma-separated list of CIDRs, or primary)", strings.TrimSpace(s))
		}
		out = append(out, p.Masked())
	}
	return out, ""
}

// maxSeconds keeps seconds*time.Second from overflowing.
const maxSeconds = math.MaxInt64 / int64(time.Second)

// set parses v into *ptr, returning the reason it cannot, or "".
func set(ptr any, v string) string {
	switch p := ptr.(type) {
	case *string:
		*p = v
	case *bool:
		b, ok := parseBool(v)
		if !ok {
			return "not a boolean (true/false, yes/no, on/off, 1/0)"
		}
		*p = b
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return numReason(err, "not an integer")
		}
		*p = n
	case *time.Duration:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return numReason(err, "not an integer number of seconds")
		}
		if n > maxSeconds || n < -maxSeconds {
			return "out of range"
		}
		*p = time.Duration(n) * time.Second
	case *[]netip.Prefix:
		ps, reason := parsePrefixes(v)
		if reason != "" {
			return reason
		}
		*p = ps
	default:
		panic(fmt.Sprintf("config: unsupported field type %T", ptr))
	}
	return ""
}

func numReason(err error, malformed string) string {
	if errors.Is(err, strconv.ErrRange) {
		return "out of range"
	}
	return malformed
}

// parseBool accepts what NCP's oslo.config does, in any case.
func parseBool(v string) (value, ok bool) {
	switch strings.ToLower(v) {
	case "true", "yes", "on", "1":
		return true, true
	case "false", "no", "off", "0":
		return false, true
	}
	return false, false
}
