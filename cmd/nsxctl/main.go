// Command nsxctl inspects nsx-ujo on one node, the same way on both
// dataplanes: the Services the dataplane holds (checked against the API),
// the pods' attachments, a trace of one packet, the Service connections,
// and the health of the node's daemons. It runs on the node (kubectl exec
// into the DaemonSet's containers) and reads ncp.ini for its paths; the
// read-only views need no daemon running.
//
// Exit status: 0 done (and, for services, pods and status: nothing
// wrong), 1 error, 2 usage, 3 found something wrong (drift between the
// dataplane and the API, a stale pod attachment, an unhealthy component),
// 4 trace: the packet is rejected or dropped.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/nsxctl"
)

const usage = `nsxctl [flags] COMMAND [args]

Commands:
  services [NAMESPACE/NAME | NAMESPACE/]   what the dataplane holds for Services, and its drift from the API
  pods                                    the node's pod attachments (OVSDB) and the audit's view
  trace --from NAMESPACE/POD --to IP:PORT [--proto tcp|udp] [--src-port N] [--raw]
                                          what the dataplane does with one packet of the pod
  conntrack [--service NAMESPACE/NAME] [--frontend IP:PORT]
                                          the Service connections the dataplane tracks
  status                                  health of OVS, nsx-ovs, nsx-node-agent, nsx-kube-proxy

Flags (before the command):
`

// Exit statuses.
const (
	exitOK    = 0
	exitErr   = 1
	exitUsage = 2
	exitFound = 3
	exitBlock = 4
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// cli is the parsed common part of the command line.
type cli struct {
	cf        config.CommonFlags
	output    string
	dataplane string
	noAPI     bool
	timeout   time.Duration
}

func run(args []string, stdout, stderr io.Writer) int {
	var c cli
	fs := flag.NewFlagSet("nsxctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	c.cf.Register(fs)
	fs.StringVar(&c.output, "o", "table", "output: table, json or yaml")
	fs.StringVar(&c.dataplane, "dataplane", "", "ovs or ebpf (default: ncp.ini [nsx_kube_proxy] dataplane)")
	fs.BoolVar(&c.noAPI, "no-api", false, "do not ask the API server (no Service names, no drift)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	format, err := nsxctl.ParseFormat(c.output)
	if err != nil {
		fmt.Fprintln(stderr, "nsxctl:", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	node, err := c.node()
	if err != nil {
		fmt.Fprintln(stderr, "nsxctl:", err)
		return exitErr
	}
	dp := c.dataplane
	if dp == "" {
		dp = node.Config.KubeProxy.Dataplane
	}
	if dp != nsxctl.OVS && dp != nsxctl.EBPF {
		fmt.Fprintf(stderr, "nsxctl: --dataplane %q: want ovs or ebpf\n", dp)
		return exitUsage
	}
	code, err := dispatch(ctx, node, cmd, rest, dp, format, stdout, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "nsxctl:", err)
	}
	return code
}

// node reads ncp.ini and builds the API client (unless --no-api).
func (c *cli) node() (*nsxctl.Node, error) {
	cfg, err := config.Load(c.cf.ConfigFile, func(string, ...any) {})
	if err != nil {
		return nil, err
	}
	cfg.ApplyKubeconfigFlag(c.cf.Kubeconfig)
	name, err := c.cf.Resolve()
	if err != nil {
		return nil, err
	}
	n := &nsxctl.Node{Name: name, Config: cfg}
	if !c.noAPI {
		rc, err := cfg.RESTConfig()
		if err != nil {
			return nil, fmt.Errorf("%w (or run with --no-api)", err)
		}
		rc.Timeout = c.timeout
		if n.Client, err = kubernetes.NewForConfig(rc); err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
	}
	return n, nil
}

func dispatch(ctx context.Context, node *nsxctl.Node, cmd string, args []string, dp string, format nsxctl.Format, stdout, stderr io.Writer) (int, error) {
	sub := flag.NewFlagSet("nsxctl "+cmd, flag.ContinueOnError)
	sub.SetOutput(stderr)
	switch cmd {
	case "services":
		if err := sub.Parse(args); err != nil || sub.NArg() > 1 {
			return exitUsage, errors.New("usage: nsxctl services [NAMESPACE/NAME | NAMESPACE/]")
		}
		filter := sub.Arg(0)
		if filter != "" && !strings.Contains(filter, "/") {
			return exitUsage, fmt.Errorf("services %q: want NAMESPACE/NAME or NAMESPACE/", filter)
		}
		if filter != "" && node.Client == nil {
			return exitUsage, errors.New("services NAMESPACE/NAME names Services from the API: drop --no-api")
		}
		r, err := node.Services(ctx, dp, filter)
		return report(stdout, format, r, err, func(r *nsxctl.ServicesReport) bool { return r.Drifted() })
	case "pods":
		if err := sub.Parse(args); err != nil || sub.NArg() > 0 {
			return exitUsage, errors.New("usage: nsxctl pods")
		}
		r, err := node.Pods(ctx)
		return report(stdout, format, r, err, func(r *nsxctl.PodsReport) bool { return r.Stale() })
	case "status":
		if err := sub.Parse(args); err != nil || sub.NArg() > 0 {
			return exitUsage, errors.New("usage: nsxctl status")
		}
		return report(stdout, format, node.Status(ctx), nil, func(r *nsxctl.StatusReport) bool { return !r.Healthy() })
	case "trace":
		var from, to, proto string
		var srcPort uint
		var raw bool
		sub.StringVar(&from, "from", "", "the pod sending the packet: NAMESPACE/NAME (on this node)")
		sub.StringVar(&to, "to", "", "destination IP:PORT")
		sub.StringVar(&proto, "proto", "tcp", "tcp or udp")
		sub.UintVar(&srcPort, "src-port", 0, "source port (default: one in 61000-61999, unlikely to be in use)")
		sub.BoolVar(&raw, "raw", false, "also print the dataplane's own account (ofproto/trace, the program's result)")
		if err := sub.Parse(args); err != nil || sub.NArg() > 0 {
			return exitUsage, errors.New("usage: nsxctl trace --from NAMESPACE/POD --to IP:PORT [--proto tcp|udp] [--src-port N] [--raw]")
		}
		req, err := traceRequest(from, to, proto, srcPort)
		if err != nil {
			return exitUsage, err
		}
		req.Raw = raw
		r, err := node.Trace(ctx, dp, req)
		code, err := report(stdout, format, r, err, func(*nsxctl.TraceReport) bool { return false })
		if err == nil && (r.Verdict == string(dataplane.VerdictReject) || r.Verdict == string(dataplane.VerdictDrop)) {
			code = exitBlock
		}
		return code, err
	case "conntrack":
		var service, frontend string
		sub.StringVar(&service, "service", "", "only this Service's connections: NAMESPACE/NAME")
		sub.StringVar(&frontend, "frontend", "", "only this frontend's connections: IP:PORT")
		if err := sub.Parse(args); err != nil || sub.NArg() > 0 {
			return exitUsage, errors.New("usage: nsxctl conntrack [--service NAMESPACE/NAME] [--frontend IP:PORT]")
		}
		f := nsxctl.ConntrackFilter{Service: service}
		if frontend != "" {
			ap, err := netip.ParseAddrPort(frontend)
			if err != nil {
				return exitUsage, fmt.Errorf("--frontend %q: want IP:PORT", frontend)
			}
			f.Frontend = ap
		}
		if service != "" && node.Client == nil {
			return exitUsage, errors.New("--service names a Service from the API: drop --no-api")
		}
		r, err := node.Conntrack(ctx, dp, f)
		return report(stdout, format, r, err, func(*nsxctl.ConntrackReport) bool { return false })
	}
	return exitUsage, fmt.Errorf("unknown command %q (services, pods, trace, conntrack, status)", cmd)
}

// report prints r (unless err) and returns the exit status: exitFound
// when wrong says the report found something wrong.
func report[R nsxctl.Tabler](stdout io.Writer, format nsxctl.Format, r R, err error, wrong func(R) bool) (int, error) {
	if err != nil {
		return exitErr, err
	}
	if err := nsxctl.Print(stdout, format, r); err != nil {
		return exitErr, err
	}
	if wrong(r) {
		return exitFound, nil
	}
	return exitOK, nil
}

// traceRequest checks trace's flags, naming the one that is wrong.
func traceRequest(from, to, proto string, srcPort uint) (nsxctl.TraceRequest, error) {
	var r nsxctl.TraceRequest
	ns, name, ok := strings.Cut(from, "/")
	if !ok || ns == "" || name == "" {
		return r, fmt.Errorf("--from %q: want NAMESPACE/POD", from)
	}
	dst, err := netip.ParseAddrPort(to)
	if err != nil {
		return r, fmt.Errorf("--to %q: want IP:PORT", to)
	}
	p, ok := map[string]dataplane.Protocol{"tcp": dataplane.TCP, "udp": dataplane.UDP}[strings.ToLower(proto)]
	if !ok {
		return r, fmt.Errorf("--proto %q: want tcp or udp", proto)
	}
	if srcPort > 65535 {
		return r, fmt.Errorf("--src-port %d: want 1-65535", srcPort)
	}
	return nsxctl.TraceRequest{PodNamespace: ns, PodName: name, To: netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), Protocol: p, SrcPort: uint16(srcPort)}, nil
}
