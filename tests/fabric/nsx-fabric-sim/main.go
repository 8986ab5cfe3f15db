// Command nsx-fabric-sim runs the NSX fabric simulator of tests/fabric as a
// daemon: the Vagrant "fabric" VM runs it (systemd unit written by
// hack/vagrant/fabric.sh). Like the package, it is a TEST/DEV TOOL standing
// where NSX would, never part of a deployment: it lives under tests/, next
// to the package, and the product never imports either.
//
// What runs, all from tests/fabric:
//   - br-fabric, an OVS bridge in a network namespace of its own, with
//     --uplink (the VM's NIC on the nodes' private network) moved into that
//     namespace as a trunk port: the nodes' node-if trunks reach it through
//     the provider's private network, which switches between them as
//     br-fabric does between the netns nodes of the local cluster;
//   - the router namespace: --node-net's .1 (the nodes' gateway) and one
//     gateway per Kubernetes namespace (VLAN 101 + k, 10.100.k.1/24), each
//     behind an access port of its VLAN;
//   - the NCP stand-in (with --kubeconfig, or --apiserver and --token-file):
//     every scheduled pod's ncp/network_config annotation, and one
//     EndpointSlice "<service>-nsx" per selector Service listing the pods
//     annotated nsx-ujo.test/ready=true. On a kubeadm cluster no pod carries
//     that annotation, so those slices stay empty and the endpoint-slice
//     controller of kube-controller-manager keeps the real ones.
//
// SIGTERM or SIGINT tears everything down (OVS stopped, namespaces deleted,
// the uplink given back to the root namespace); a restart after a crash
// first removes what the dead process left (tests/harness's sweep).
//
// tests/fabric's API takes a testing.TB, so the daemon hands it a
// harness.Program: logs go to stderr, a fatal error ends the process with
// status 1 after the cleanups ran.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nsx-ujo/nsx-ujo/tests/fabric"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// options are the command line.
type options struct {
	uplink     string
	nodeNet    netip.Prefix
	datapath   string
	kubeconfig string
	apiserver  string
	tokenFile  string
	caFile     string
}

const usage = `nsx-fabric-sim --uplink IF [--node-net 192.168.56.0/24] [--datapath system|netdev]
               [--kubeconfig F | --apiserver https://H:P --token-file F [--ca-file F]]

Runs the NSX fabric simulator (tests/fabric) until SIGTERM. Without
--kubeconfig or --apiserver only the bridge and the router run (no NCP
stand-in: nobody annotates pods). Needs root, Open vSwitch (ovsdb-server,
ovs-vswitchd, ovs-vsctl), iproute2, ethtool and nsenter.
`

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("nsx-fabric-sim", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	var o options
	nodeNet := fs.String("node-net", "192.168.56.0/24", "the nodes' network; the router holds its .1")
	fs.StringVar(&o.uplink, "uplink", "", "NIC on the nodes' private network, moved into the fabric namespace as a trunk port of br-fabric (required)")
	fs.StringVar(&o.datapath, "datapath", "system", "br-fabric's OVS datapath: system (kernel module openvswitch) or netdev (userspace)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "API access of the NCP stand-in")
	fs.StringVar(&o.apiserver, "apiserver", "", "API server URL of the NCP stand-in (instead of --kubeconfig)")
	fs.StringVar(&o.tokenFile, "token-file", "", "bearer token for --apiserver")
	fs.StringVar(&o.caFile, "ca-file", "", "CA bundle for --apiserver; empty: the server certificate is not verified")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var errs []error
	if o.uplink == "" {
		errs = append(errs, errors.New("--uplink is required"))
	}
	p, err := netip.ParsePrefix(*nodeNet)
	if err != nil || !p.Addr().Is4() || p.Bits() > 28 {
		errs = append(errs, fmt.Errorf("--node-net %q: want an IPv4 prefix of /28 or larger", *nodeNet))
	}
	o.nodeNet = p.Masked()
	if o.datapath != "system" && o.datapath != "netdev" {
		errs = append(errs, fmt.Errorf("--datapath %q: want system or netdev", o.datapath))
	}
	if o.kubeconfig != "" && o.apiserver != "" {
		errs = append(errs, errors.New("--kubeconfig and --apiserver exclude each other"))
	}
	if (o.apiserver == "") != (o.tokenFile == "") {
		errs = append(errs, errors.New("--apiserver and --token-file go together"))
	}
	return o, errors.Join(errs...)
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsx-fabric-sim: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(run(ctx, o))
}

// run brings the fabric up, waits for ctx and tears it down: the exit status.
func run(ctx context.Context, o options) int {
	tb := harness.NewProgram("nsx-fabric-sim")
	// A Fatal in start (or later, in the fabric's goroutines) runs the
	// cleanups and exits 1.
	start(ctx, tb, o)
	if ctx.Err() != nil { // stopped while waiting for the API server
		tb.Interrupt()
		return 0
	}
	tb.Logf("nsx-fabric-sim: up: br-fabric (%s datapath) trunks %s; router %s on %s; NCP stand-in %s",
		o.datapath, o.uplink, firstHost(o.nodeNet), o.nodeNet, map[bool]string{true: "on", false: "off"}[o.kubeconfig != "" || o.apiserver != ""])
	<-ctx.Done()
	tb.Logf("nsx-fabric-sim: stopping")
	tb.Interrupt()
	return 0
}

func start(ctx context.Context, tb *harness.Program, o options) {
	var client kubernetes.Interface
	if o.kubeconfig != "" || o.apiserver != "" {
		cfg, err := restConfig(o)
		if err != nil {
			tb.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		// fabric.Start waits for the controller's caches, which never sync
		// while the API server is down or the token has no rights yet:
		// wait here, saying why.
		if !waitForAPI(ctx, tb, cs) {
			return
		}
		client = cs
	}
	if o.datapath == "system" {
		// The kernel datapath needs the module; the harness runs
		// ovs-vswitchd, which cannot load it from its namespace.
		if out, err := exec.Command("modprobe", "openvswitch").CombinedOutput(); err != nil {
			tb.Fatalf("modprobe openvswitch (or use --datapath netdev): %v: %s", err, out)
		}
	}
	f := fabric.Start(tb, fabric.Options{Client: client, NodeNet: o.nodeNet})
	if o.datapath != "netdev" {
		// harness.StartOVS makes netdev bridges; vswitchd re-creates the
		// bridge and its ports on the new datapath.
		f.OVS.Vsctl(tb, "set", "Bridge", fabric.Bridge, "datapath_type="+o.datapath)
	}
	attachUplink(ctx, tb, f, o.uplink)
}

// restConfig is the NCP stand-in's API access.
func restConfig(o options) (*rest.Config, error) {
	if o.kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", o.kubeconfig, err)
		}
		return cfg, nil
	}
	if _, err := os.Stat(o.tokenFile); err != nil {
		return nil, fmt.Errorf("--token-file: %w", err)
	}
	cfg := &rest.Config{Host: o.apiserver, BearerTokenFile: o.tokenFile}
	if o.caFile != "" {
		cfg.CAFile = o.caFile
	} else {
		cfg.Insecure = true
	}
	return cfg, nil
}

// waitForAPI polls until the client may list what the NCP stand-in
// watches, logging the reason at most every 30 s; false if ctx ended.
func waitForAPI(ctx context.Context, tb *harness.Program, cs kubernetes.Interface) bool {
	var last time.Time
	for {
		err := canList(ctx, cs)
		if err == nil {
			return true
		}
		if time.Since(last) > 30*time.Second {
			tb.Logf("nsx-fabric-sim: waiting for the API server: %v", err)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Second):
		}
	}
}

func canList(ctx context.Context, cs kubernetes.Interface) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	one := metav1.ListOptions{Limit: 1}
	if _, err := cs.CoreV1().Pods("").List(ctx, one); err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	if _, err := cs.CoreV1().Services("").List(ctx, one); err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("").List(ctx, one); err != nil {
		return fmt.Errorf("list endpointslices: %w", err)
	}
	return nil
}

// uplinkTimeout bounds the wait for the uplink to show up in the root
// namespace: after a crash it comes back only once the sweep deleted the
// dead process's fabric namespace, which the kernel does asynchronously.
const uplinkTimeout = 60 * time.Second

// attachUplink moves the NIC into the fabric namespace and makes it a trunk
// port of br-fabric. The cleanup gives it back to the root namespace (the
// kernel would too, once the namespace is deleted, but not at once).
func attachUplink(ctx context.Context, tb *harness.Program, f *fabric.Fabric, uplink string) {
	deadline := time.Now().Add(uplinkTimeout)
	for {
		if _, err := os.Stat(filepath.Join("/sys/class/net", uplink)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("uplink %s: no such interface in the root network namespace after %s", uplink, uplinkTimeout)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	if out, err := exec.Command("ip", "link", "set", "dev", uplink, "netns", f.NS.Name).CombinedOutput(); err != nil {
		tb.Fatalf("move %s into %s: %v: %s", uplink, f.NS.Name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "-n", f.NS.Name, "link", "set", "dev", uplink, "netns", "1").CombinedOutput(); err != nil {
			tb.Logf("nsx-fabric-sim: give %s back to the root namespace: %v: %s", uplink, err, strings.TrimSpace(string(out)))
		}
	})
	f.NS.Run(tb, "ip", "link", "set", "dev", uplink, "up", "promisc", "on")
	// The userspace datapath forwards what it reads from the NIC as is: an
	// aggregated (GRO/LRO) frame larger than the MTU would be dropped on
	// its way out, and a frame whose checksum was left to offload would
	// leave with a wrong one. Each feature on its own: a NIC that lacks
	// one refuses the whole command.
	for _, feature := range []string{"tx", "gro", "lro", "tso", "gso"} {
		_ = f.NS.Exec(ctx, "ethtool", "-K", uplink, feature, "off").Run()
	}
	f.OVS.Vsctl(tb, "--may-exist", "add-port", fabric.Bridge, uplink)
}

// firstHost is the router's address in the node network.
func firstHost(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }
