// Package config is the one place that parses, defaults and validates
// ncp.ini for every nsx-ujo daemon.
package config

import (
	"net/netip"
	"time"
)

// Config is ncp.ini. Field comments name the section and key.
type Config struct {
	Default   Default
	CoE       CoE
	K8s       K8s
	NodeAgent NodeAgent
	KubeProxy KubeProxy
}

// Default is [DEFAULT].
type Default struct {
	Debug   bool   // debug (False)
	LogDir  string // log_dir ("": no file)
	LogFile string // log_file ("": <binary>.log when log_dir is set)
}

// CoE is [coe].
type CoE struct {
	Cluster  string // cluster ("k8scluster")
	NodeType string // node_type: HOSTVM (default) | BAREMETAL
}

// K8s is [k8s]. The --kubeconfig flag overrides all of it.
type K8s struct {
	Kubeconfig        string // kubeconfig ("": in-cluster or the fields below)
	APIServerHostIP   string // apiserver_host_ip
	APIServerHostPort int    // apiserver_host_port
	CAFile            string // ca_file
	ClientTokenFile   string // client_token_file
	Insecure          bool   // insecure (False)
}

// NodeAgent is [nsx_node_agent].
type NodeAgent struct {
	OVSBridge                       string        // ovs_bridge (br-int)
	OVSUplinkPort                   string        // ovs_uplink_port ("": none; nsx-ovs only ensures the bridge)
	MTU                             int           // mtu (1500), 576..9216 // overridden per pod by the annotation
	NSXRPCCIP                       string        // nsxrpc_cip (169.254.1.0/31), a CIDR
	NSXRPCPort                      int           // nsxrpc_port (2345)
	NSXRPCVLAN                      int           // nsxrpc_vlan (4094)
	EnableHyperbus                  bool          // enable_hyperbus (False)
	ProcMountPathPrefix             string        // proc_mount_path_prefix (/host)
	ConfigRetryTimeout              time.Duration // config_retry_timeout, seconds (300)
	ConnectRetryTimeout             time.Duration // connect_retry_timeout, seconds (30): HyperBus mode, how long without a session before the agent reports itself not ready
	OVSOperationTimeout             time.Duration // ovs_operation_timeout, seconds (5)
	IsDHCPConfiguredOnOVSUplinkPort bool          // is_dhcp_configured_on_ovs_uplink_port (False)
	// Ours.
	OVSRunDir       string        // ovs_run_dir (/var/run/openvswitch)
	OVSDBDir        string        // ovs_db_dir (/etc/openvswitch)
	OVSDatapathType string        // ovs_datapath_type: system (default) | netdev
	StateDir        string        // state_dir (/var/lib/nsx-ujo)
	CNISocket       string        // cni_socket (/var/run/nsx-ujo/cni.sock)
	AuditInterval   time.Duration // audit_interval, seconds (60)
	// CNIVersion is what nsx-ncp-bootstrap writes into the conflist:
	// CNIVersionAuto, or one of CNIVersions to pin it.
	CNIVersion string // cni_version (auto)
}

// CNIVersionAuto lets nsx-ncp-bootstrap choose the conflist's CNI version
// (see pkg/bootstrap.Conflist).
const CNIVersionAuto = "auto"

// CNIVersions are the CNI spec versions the nsx plugin answers, oldest
// first; cni_version may pin any of them.
var CNIVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// KubeProxy is [nsx_kube_proxy].
type KubeProxy struct {
	ConfigHandler    string        // config_handler (ovs): NCP's key, kept for compatibility
	Dataplane        string        // dataplane: ovs (default) | ebpf
	ServiceProxyName string        // service_proxy_name ("")
	SyncPeriod       time.Duration // sync_period, seconds (30)
	MinSyncPeriod    time.Duration // min_sync_period, seconds (0)
	// switch_drain_period, seconds (900): after a switch from eBPF to OVS,
	// how long the eBPF programs keep carrying the connections they NATed
	// (new ones go through OVS at once) before they are removed.
	SwitchDrainPeriod time.Duration
	HealthzBindAddr   string // healthz_bind_address (0.0.0.0:10256)
	MetricsBindAddr   string // metrics_bind_address (127.0.0.1:10249)
	BPFPinDir         string // bpf_pin_dir (/sys/fs/bpf/nsx-ujo)
	// nodeport_addresses (primary): CIDRs selecting the node addresses
	// NodePorts are served on, as kube-proxy's --nodeport-addresses; empty
	// ("primary") is the Node's first InternalIP of each family.
	NodePortAddresses []netip.Prefix
	// eBPF map sizes (entries); changing one needs `Cleanup` of the pinned
	// maps (switching dataplane and back does it).
	BPFServicesMapSize  int // bpf_services_map_size (65536): frontends
	BPFBackendsMapSize  int // bpf_backends_map_size (1048576): endpoint slots of all frontends
	BPFConntrackMapSize int // bpf_conntrack_map_size (524288): LRU, two entries a connection
	BPFAffinityMapSize  int // bpf_affinity_map_size (131072): LRU, one per client and frontend
	// The IPv6 LRU maps, sized apart: preallocated, they cost their full
	// size on every node, IPv6 or not.
	BPFConntrack6MapSize int // bpf_conntrack6_map_size (65536)
	BPFAffinity6MapSize  int // bpf_affinity6_map_size (16384)
}
