// Command nsx-kube-proxy programs ClusterIP Services on one node: it
// watches Services and EndpointSlices like kube-proxy and applies them
// through one dataplane (ncp.ini [nsx_kube_proxy] dataplane = ovs | ebpf).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/logging"
	"github.com/nsx-ujo/nsx-ujo/pkg/proxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nsx-kube-proxy:", err)
		os.Exit(1)
	}
}

// errNotInBuild is a configuration this binary can never serve: no retry.
var errNotInBuild = errors.New("not in this build")

// newBackend builds the dataplane named by [nsx_kube_proxy] dataplane.
func newBackend(cfg *config.Config, nodeName string, log *zap.Logger) (dataplane.ServiceBackend, error) {
	switch dp := cfg.KubeProxy.Dataplane; dp {
	case "ovs":
		return newOVSBackend(cfg, nodeName, log)
	case "ebpf":
		return nil, fmt.Errorf("ncp.ini [nsx_kube_proxy] dataplane = ebpf: the eBPF dataplane is %w yet; use ovs", errNotInBuild)
	default:
		return nil, fmt.Errorf("ncp.ini [nsx_kube_proxy] dataplane = %q: %w", dp, errNotInBuild)
	}
}

func run() error {
	var cf config.CommonFlags
	var dp, healthz, metrics string
	fs := flag.NewFlagSet("nsx-kube-proxy", flag.ExitOnError)
	cf.Register(fs)
	fs.StringVar(&dp, "dataplane", "", "ovs or ebpf; overrides ncp.ini [nsx_kube_proxy] dataplane")
	fs.StringVar(&healthz, "healthz-bind-address", "", "host:port of /healthz and /livez, empty value disables; overrides [nsx_kube_proxy] healthz_bind_address")
	fs.StringVar(&metrics, "metrics-bind-address", "", "host:port of /metrics, empty value disables; overrides [nsx_kube_proxy] metrics_bind_address")
	_ = fs.Parse(os.Args[1:])

	var warnings [][]any
	cfg, err := config.Load(cf.ConfigFile, func(msg string, kv ...any) { warnings = append(warnings, append([]any{msg}, kv...)) })
	if err != nil {
		return err
	}
	cfg.ApplyKubeconfigFlag(cf.Kubeconfig)
	// Only flags given on the command line override the file.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "dataplane":
			cfg.KubeProxy.Dataplane = dp
		case "healthz-bind-address":
			cfg.KubeProxy.HealthzBindAddr = healthz
		case "metrics-bind-address":
			cfg.KubeProxy.MetricsBindAddr = metrics
		}
	})
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("configuration (ncp.ini and flags): %w", err)
	}
	nodeName, err := cf.Resolve()
	if err != nil {
		return err
	}
	log, err := logging.New(cfg.Default, "nsx-kube-proxy", logging.Options{})
	if err != nil {
		return err
	}
	defer log.Sync()
	for _, w := range warnings {
		log.Sugar().Warnw(w[0].(string), w[1:]...)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	backend, err := waitForBackend(ctx, cfg, nodeName, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if c, ok := backend.(io.Closer); ok {
		defer c.Close()
	}
	rc, err := cfg.RESTConfig()
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	kp := cfg.KubeProxy
	p := proxy.New(client, backend, proxy.Options{
		NodeName:         nodeName,
		ServiceProxyName: kp.ServiceProxyName,
		SyncPeriod:       kp.SyncPeriod,
		MinSyncPeriod:    kp.MinSyncPeriod,
		HealthzBindAddr:  kp.HealthzBindAddr,
		MetricsBindAddr:  kp.MetricsBindAddr,
		Log:              log,
	})
	log.Info("nsx-kube-proxy starting", zap.String("node", nodeName), zap.String("dataplane", backend.Name()))
	if err := p.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error("nsx-kube-proxy stopped", zap.Error(err))
		return err
	}
	return nil
}

// waitForBackend retries newBackend while it fails for a reason that can
// pass: in the DaemonSet nsx-ovs starts OVS next to us.
func waitForBackend(ctx context.Context, cfg *config.Config, nodeName string, log *zap.Logger) (dataplane.ServiceBackend, error) {
	delay := 200 * time.Millisecond
	for {
		b, err := newBackend(cfg, nodeName, log.Named(cfg.KubeProxy.Dataplane))
		if err == nil || errors.Is(err, errNotInBuild) {
			return b, err
		}
		log.Info("waiting for the dataplane", zap.String("dataplane", cfg.KubeProxy.Dataplane), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		if delay < 5*time.Second {
			delay *= 2
		}
	}
}
