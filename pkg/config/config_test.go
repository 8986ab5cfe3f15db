package config

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	want := Config{
		CoE: CoE{Cluster: "k8scluster", NodeType: "HOSTVM"},
		NodeAgent: NodeAgent{
			OVSBridge: "br-int", MTU: 1500, NSXRPCCIP: "169.254.1.0/31", NSXRPCPort: 2345, NSXRPCVLAN: 4094,
			ProcMountPathPrefix: "/host", ConfigRetryTimeout: 300 * time.Second, ConnectRetryTimeout: 30 * time.Second, OVSOperationTimeout: 5 * time.Second,
			OVSRunDir: "/var/run/openvswitch", OVSDBDir: "/etc/openvswitch", OVSDatapathType: "system",
			StateDir: "/var/lib/nsx-ujo", CNISocket: "/var/run/nsx-ujo/cni.sock", AuditInterval: 60 * time.Second,
			CNIVersion: "auto",
		},
		KubeProxy: KubeProxy{
			ConfigHandler: "ovs", Dataplane: "ovs", SyncPeriod: 30 * time.Second, SwitchDrainPeriod: 900 * time.Second,
			HealthzBindAddr: "0.0.0.0:10256", MetricsBindAddr: "127.0.0.1:10249", BPFPinDir: "/sys/fs/bpf/nsx-ujo",
			BPFServicesMapSize: 65536, BPFBackendsMapSize: 1 << 20, BPFConntrackMapSize: 1 << 19, BPFAffinityMapSize: 1 << 17,
			BPFConntrack6MapSize: 1 << 16, BPFAffinity6MapSize: 1 << 14,
		},
	}
	if got := Defaults(); !reflect.DeepEqual(got, want) {
		t.Errorf("Defaults() =\n%+v\nwant\n%+v", got, want)
	}
	d := Defaults()
	if err := d.Validate(); err != nil {
		t.Errorf("Defaults().Validate() = %v", err)
	}
	c, err := Parse(nil, nil)
	if err != nil || !reflect.DeepEqual(*c, want) {
		t.Errorf("Parse(empty) = %+v, %v; want defaults", c, err)
	}
}

func TestParseEveryKey(t *testing.T) {
	const text = `
[DEFAULT]
debug = True
log_dir = /var/log/nsx-ujo
log_file = agent.log

[coe]
cluster = prod
node_type = baremetal

[k8s]
kubeconfig = /etc/kube/config
apiserver_host_ip = 10.0.0.1
apiserver_host_port = 6443
ca_file = /etc/ca.crt
client_token_file = /etc/token
insecure = yes

[nsx_node_agent]
ovs_bridge = br-nsx
ovs_uplink_port = eth1
MTU = 9000
nsxrpc_cip = 169.254.9.0/31
nsxrpc_port = 3456
nsxrpc_vlan = 100
enable_hyperbus = 1
proc_mount_path_prefix =
config_retry_timeout = 60
connect_retry_timeout = 45
ovs_operation_timeout = 10
is_dhcp_configured_on_ovs_uplink_port = on
ovs_run_dir = /run/ovs
ovs_db_dir = /etc/ovs
ovs_datapath_type = netdev
state_dir = /var/lib/x
cni_socket = /run/x/cni.sock
audit_interval = 120
cni_version = 0.4.0

[nsx_kube_proxy]
config_handler = ovs
dataplane = ebpf
service_proxy_name = nsx
sync_period = 15
min_sync_period = 1
switch_drain_period = 60
healthz_bind_address =
metrics_bind_address = [::1]:9000
bpf_pin_dir = /sys/fs/bpf/x
nodeport_addresses = 10.0.0.0/8, fd00::/64 ,192.168.1.7/24
bpf_services_map_size = 1000
bpf_backends_map_size = 20000
bpf_conntrack_map_size = 40000
bpf_affinity_map_size = 3000
bpf_conntrack6_map_size = 5000
bpf_affinity6_map_size = 300
`
	want := Config{
		Default: Default{Debug: true, LogDir: "/var/log/nsx-ujo", LogFile: "agent.log"},
		CoE:     CoE{Cluster: "prod", NodeType: "BAREMETAL"},
		K8s: K8s{Kubeconfig: "/etc/kube/config", APIServerHostIP: "10.0.0.1", APIServerHostPort: 6443,
			CAFile: "/etc/ca.crt", ClientTokenFile: "/etc/token", Insecure: true},
		NodeAgent: NodeAgent{
			OVSBridge: "br-nsx", OVSUplinkPort: "eth1", MTU: 9000, NSXRPCCIP: "169.254.9.0/31", NSXRPCPort: 3456,
			NSXRPCVLAN: 100, EnableHyperbus: true, ProcMountPathPrefix: "", ConfigRetryTimeout: time.Minute, ConnectRetryTimeout: 45 * time.Second,
			OVSOperationTimeout: 10 * time.Second, IsDHCPConfiguredOnOVSUplinkPort: true, OVSRunDir: "/run/ovs",
			OVSDBDir: "/etc/ovs", OVSDatapathType: "netdev", StateDir: "/var/lib/x", CNISocket: "/run/x/cni.sock",
			AuditInterval: 2 * time.Minute, CNIVersion: "0.4.0",
		},
		KubeProxy: KubeProxy{
			ConfigHandler: "ovs", Dataplane: "ebpf", ServiceProxyName: "nsx", SyncPeriod: 15 * time.Second,
			MinSyncPeriod: time.Second, SwitchDrainPeriod: time.Minute, HealthzBindAddr: "", MetricsBindAddr: "[::1]:9000", BPFPinDir: "/sys/fs/bpf/x",
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/64"),
				netip.MustParsePrefix("192.168.1.0/24")},
			BPFServicesMapSize: 1000, BPFBackendsMapSize: 20000, BPFConntrackMapSize: 40000, BPFAffinityMapSize: 3000,
			BPFConntrack6MapSize: 5000, BPFAffinity6MapSize: 300,
		},
	}
	c, err := Parse([]byte(text), func(msg string, kv ...any) { t.Errorf("unexpected %s %v", msg, kv) })
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", *c, want)
	}
	// Every table entry is exercised above.
	if n, keys := len(c.fields()), strings.Count(text, " ="); n != keys {
		t.Errorf("text sets %d keys, table has %d", keys, n)
	}
}

func TestBooleans(t *testing.T) {
	for v, want := range map[string]bool{
		"True": true, "true": true, "TRUE": true, "yes": true, "on": true, "1": true,
		"False": false, "false": false, "no": false, "off": false, "0": false,
	} {
		c, err := Parse([]byte("[DEFAULT]\ndebug = "+v+"\n"), nil)
		if err != nil || c.Default.Debug != want {
			t.Errorf("debug = %s: got %v, %v; want %v", v, c, err, want)
		}
	}
}

func TestInvalid(t *testing.T) {
	for _, tc := range []struct{ section, key, value, reason string }{
		{"DEFAULT", "debug", "maybe", "not a boolean"},
		{"DEFAULT", "debug", "", "not a boolean"},
		{"coe", "node_type", "VM", "one of"},
		{"k8s", "apiserver_host_port", "65536", "between"},
		{"k8s", "apiserver_host_port", "-1", "between"},
		{"k8s", "apiserver_host_port", "x", "not an integer"},
		{"k8s", "insecure", "2", "not a boolean"},
		{"nsx_node_agent", "mtu", "575", "between"},
		{"nsx_node_agent", "mtu", "9217", "between"},
		{"nsx_node_agent", "mtu", "1500.0", "not an integer"},
		{"nsx_node_agent", "mtu", "99999999999999999999", "out of range"},
		{"nsx_node_agent", "nsxrpc_port", "0", "between"},
		{"nsx_node_agent", "nsxrpc_port", "65536", "between"},
		{"nsx_node_agent", "nsxrpc_vlan", "0", "between"},
		{"nsx_node_agent", "nsxrpc_vlan", "4095", "between"},
		{"nsx_node_agent", "nsxrpc_cip", "169.254.1.0", "CIDR"},
		{"nsx_node_agent", "nsxrpc_cip", "", "CIDR"},
		{"nsx_node_agent", "ovs_bridge", "", "empty"},
		{"nsx_node_agent", "ovs_bridge", "br-int-very-long", "15"},
		{"nsx_node_agent", "ovs_bridge", "br/int", "'/'"},
		{"nsx_node_agent", "ovs_bridge", "br int", "whitespace"},
		{"nsx_node_agent", "ovs_datapath_type", "dpdk", "one of"},
		{"nsx_node_agent", "config_retry_timeout", "0", "positive"},
		{"nsx_node_agent", "connect_retry_timeout", "-3", "positive"},
		{"nsx_node_agent", "config_retry_timeout", "5s", "not an integer"},
		{"nsx_node_agent", "config_retry_timeout", "9999999999999", "out of range"},
		{"nsx_node_agent", "ovs_operation_timeout", "-1", "positive"},
		{"nsx_node_agent", "audit_interval", "0", "positive"},
		{"nsx_node_agent", "enable_hyperbus", "nope", "not a boolean"},
		{"nsx_node_agent", "is_dhcp_configured_on_ovs_uplink_port", "x", "not a boolean"},
		{"nsx_node_agent", "proc_mount_path_prefix", "host", "absolute"},
		{"nsx_node_agent", "ovs_run_dir", "run/ovs", "absolute"},
		{"nsx_node_agent", "ovs_db_dir", "", "absolute"},
		{"nsx_node_agent", "state_dir", "", "absolute"},
		{"nsx_node_agent", "cni_socket", "cni.sock", "absolute"},
		{"nsx_node_agent", "cni_version", "1.2.0", "one of auto, 0.3.0"},
		{"nsx_node_agent", "cni_version", "v1.0.0", "one of"},
		{"nsx_node_agent", "cni_version", "", "one of"},
		{"nsx_kube_proxy", "config_handler", "nsx", "one of"},
		{"nsx_kube_proxy", "dataplane", "iptables", "one of"},
		{"nsx_kube_proxy", "sync_period", "0", "positive"},
		{"nsx_kube_proxy", "min_sync_period", "-1", "negative"},
		{"nsx_kube_proxy", "healthz_bind_address", "10256", "host:port"},
		{"nsx_kube_proxy", "metrics_bind_address", "127.0.0.1:http", "port"},
		{"nsx_kube_proxy", "bpf_pin_dir", "bpf", "absolute"},
		{"nsx_kube_proxy", "bpf_conntrack_map_size", "10", "1024"},
		{"nsx_kube_proxy", "bpf_services_map_size", "many", "integer"},
		{"nsx_kube_proxy", "nodeport_addresses", "10.0.0.0/8,eth0", `"eth0" is not a CIDR`},
		{"nsx_kube_proxy", "nodeport_addresses", "10.0.0.1", "not a CIDR"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			c, err := Parse([]byte(fmt.Sprintf("[%s]\n%s = %s\n", tc.section, tc.key, tc.value)), nil)
			if err == nil {
				t.Fatalf("no error; got %+v", c)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Section != tc.section || fe.Key != tc.key || fe.Value != tc.value {
				t.Fatalf("error %v (%#v), want a FieldError for [%s] %s = %q", err, fe, tc.section, tc.key, tc.value)
			}
			if !strings.Contains(fe.Reason, tc.reason) {
				t.Errorf("reason %q does not contain %q", fe.Reason, tc.reason)
			}
			if prefix := fmt.Sprintf("ncp.ini [%s] %s = %q: ", tc.section, tc.key, tc.value); !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("message %q does not start with %q", err, prefix)
			}
		})
	}
}

func TestAllErrorsReported(t *testing.T) {
	_, err := Parse([]byte("[nsx_node_agent]\nmtu = x\nnsxrpc_vlan = 0\n[nsx_kube_proxy]\ndataplane = tc\n"), nil)
	for _, want := range []string{"[nsx_node_agent] mtu", "[nsx_node_agent] nsxrpc_vlan", "[nsx_kube_proxy] dataplane"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestSyntaxError(t *testing.T) {
	if _, err := Parse([]byte("[coe\ncluster = x\n"), nil); err == nil || !strings.Contains(err.Error(), "ncp.ini") {
		t.Errorf("Parse(bad syntax) error = %v", err)
	}
}

func TestValidateAfterFlags(t *testing.T) {
	c := Defaults()
	c.NodeAgent.MTU = 100
	c.NodeAgent.OVSOperationTimeout = 1500 * time.Millisecond
	c.KubeProxy.SyncPeriod = 0
	err := c.Validate()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Section != "nsx_node_agent" || fe.Key != "mtu" || fe.Value != "100" {
		t.Fatalf("Validate() = %v", err)
	}
	if !strings.Contains(err.Error(), `[nsx_kube_proxy] sync_period = "0"`) {
		t.Errorf("Validate() = %v, want sync_period too", err)
	}
	c.CoE.NodeType = "hostvm" // a flag may bypass Parse's upper-casing
	c.NodeAgent.MTU, c.KubeProxy.SyncPeriod = 1500, time.Second
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

type logged struct{ section, key string }

func capture(got *[]logged) func(string, ...any) {
	return func(msg string, kv ...any) {
		if msg != "unknown ncp.ini key, ignored" || len(kv) != 4 || kv[0] != "section" || kv[2] != "key" {
			panic(fmt.Sprintf("bad log call %q %v", msg, kv))
		}
		*got = append(*got, logged{kv[1].(string), kv[3].(string)})
	}
}

func TestUnknownKeysWarn(t *testing.T) {
	var got []logged
	c, err := Parse([]byte("[coe]\ncluster = c\nbogus = 1\n[nsx_v3]\nnsx_api_managers = 10.0.0.1\n"), capture(&got))
	if err != nil {
		t.Fatal(err)
	}
	want := []logged{{"coe", "bogus"}, {"nsx_v3", "nsx_api_managers"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings %v, want %v", got, want)
	}
	if c.CoE.Cluster != "c" {
		t.Errorf("cluster = %q", c.CoE.Cluster)
	}
}

func TestDefaultSectionDoesNotLeak(t *testing.T) {
	var got []logged
	text := "[DEFAULT]\nmtu = 9000\novs_bridge = br-x\ndebug = true\n[nsx_node_agent]\nstate_dir = /s\n[nsx_node_agent.sub]\nmtu = 1400\n"
	c, err := Parse([]byte(text), capture(&got))
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeAgent.MTU != 1500 || c.NodeAgent.OVSBridge != "br-int" || !c.Default.Debug || c.NodeAgent.StateDir != "/s" {
		t.Errorf("got %+v %+v", c.Default, c.NodeAgent)
	}
	want := []logged{{"DEFAULT", "mtu"}, {"DEFAULT", "ovs_bridge"}, {"nsx_node_agent.sub", "mtu"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings %v, want %v", got, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.ini")
	if _, err := Load(missing, nil); err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v", err)
	}
	path := filepath.Join(dir, "ncp.ini")
	if err := os.WriteFile(path, []byte("[nsx_node_agent]\nmtu = 1450\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := Load(path, nil); err != nil || c.NodeAgent.MTU != 1450 {
		t.Errorf("Load = %+v, %v", c, err)
	}
	if err := os.WriteFile(path, []byte("[nsx_node_agent]\nmtu = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "[nsx_node_agent] mtu") {
		t.Errorf("Load(invalid) = %v", err)
	}
}

func TestCommonFlags(t *testing.T) {
	var f CommonFlags
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f.Register(fs)
	if f.ConfigFile != "/etc/nsx-ujo/ncp.ini" || f.Kubeconfig != "" || f.NodeName != "" {
		t.Errorf("flag defaults %+v", f)
	}
	if err := fs.Parse([]string{"--config-file=/c.ini", "--kubeconfig", "/k", "--node-name=n1"}); err != nil {
		t.Fatal(err)
	}
	if f != (CommonFlags{"/c.ini", "/k", "n1"}) {
		t.Errorf("parsed %+v", f)
	}
	c := Defaults()
	c.K8s.Kubeconfig = "/from-ini"
	c.ApplyKubeconfigFlag("")
	if c.K8s.Kubeconfig != "/from-ini" {
		t.Errorf("empty flag overrode kubeconfig: %q", c.K8s.Kubeconfig)
	}
	c.ApplyKubeconfigFlag(f.Kubeconfig)
	if c.K8s.Kubeconfig != "/k" {
		t.Errorf("kubeconfig = %q", c.K8s.Kubeconfig)
	}
}

func TestResolveNodeName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	for _, tc := range []struct{ flag, env, want string }{
		{"flag-node", "env-node", "flag-node"},
		{"", "env-node", "env-node"},
		{"", "", strings.ToLower(host)},
	} {
		t.Setenv("NODE_NAME", tc.env)
		if got, err := (&CommonFlags{NodeName: tc.flag}).Resolve(); err != nil || got != tc.want {
			t.Errorf("Resolve(flag %q, env %q) = %q, %v; want %q", tc.flag, tc.env, got, err, tc.want)
		}
	}
}

func TestRESTConfig(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	token := filepath.Join(dir, "token")
	const kc = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://kc.example:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	for path, data := range map[string]string{kubeconfig: kc, token: "tok"} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")

	for _, tc := range []struct {
		name     string
		k8s      K8s
		wantHost string
		wantErr  string
	}{
		{"kubeconfig", K8s{Kubeconfig: kubeconfig, APIServerHostIP: "10.0.0.1"}, "https://kc.example:6443", ""},
		{"kubeconfig missing", K8s{Kubeconfig: filepath.Join(dir, "none")}, "", "kubeconfig " + filepath.Join(dir, "none")},
		{"host", K8s{APIServerHostIP: "10.0.0.1", APIServerHostPort: 6443, ClientTokenFile: token}, "https://10.0.0.1:6443", ""},
		{"host default port", K8s{APIServerHostIP: "fd00::1", Insecure: true, CAFile: "/ignored"}, "https://[fd00::1]:443", ""},
		{"token missing", K8s{APIServerHostIP: "10.0.0.1", ClientTokenFile: filepath.Join(dir, "none")}, "", "[k8s] client_token_file"},
		{"ca missing", K8s{APIServerHostIP: "10.0.0.1", CAFile: filepath.Join(dir, "none")}, "", "[k8s] ca_file"},
		{"in-cluster", K8s{}, "", "in-cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			c.K8s = tc.k8s
			rc, err := c.RESTConfig()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rc.Host != tc.wantHost {
				t.Errorf("Host = %q, want %q", rc.Host, tc.wantHost)
			}
			if tc.k8s.Insecure && (!rc.Insecure || rc.CAFile != "") {
				t.Errorf("insecure: TLS %+v", rc.TLSClientConfig)
			}
			if tc.k8s.ClientTokenFile != "" && rc.BearerTokenFile != tc.k8s.ClientTokenFile {
				t.Errorf("BearerTokenFile = %q", rc.BearerTokenFile)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"[DEFAULT]\ndebug = True\n[coe]\nnode_type = baremetal\n",
		"[nsx_node_agent]\nmtu = 9000\nnsxrpc_cip = 169.254.1.0/31\nconfig_retry_timeout = 300\n",
		"[nsx_kube_proxy]\ndataplane = ebpf\nmin_sync_period = 0\nhealthz_bind_address = :10256\n",
		"[k8s]\napiserver_host_port = 6443\ninsecure = no\n[unknown]\nx = %(y)s\n",
		"[nsx_node_agent]\novs_bridge = br/0\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, func(string, ...any) {})
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted %q but Validate() = %v", data, err)
		}
	})
}
