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

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/dataplane/backends"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/daemon"
	"github.com/nsx-ujo/nsx-ujo/pkg/proxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nsx-kube-proxy:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) > 1 && os.Args[1] == "cleanup" {
		return cleanup(os.Args[2:])
	}
	var dp, healthz, metrics string
	fs := flag.NewFlagSet("nsx-kube-proxy", flag.ExitOnError)
	fs.StringVar(&dp, "dataplane", "", "ovs or ebpf; overrides ncp.ini [nsx_kube_proxy] dataplane")
	fs.StringVar(&healthz, "healthz-bind-address", "", "host:port of /healthz and /livez, empty value disables; overrides [nsx_kube_proxy] healthz_bind_address")
	fs.StringVar(&metrics, "metrics-bind-address", "", "host:port of /metrics, empty value disables; overrides [nsx_kube_proxy] metrics_bind_address")
	env, err := daemon.Start(daemon.Options{Component: "nsx-kube-proxy", Flags: fs, Args: os.Args[1:],
		Override: func(cfg *config.Config) {
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
		}})
	if err != nil {
		return err
	}
	cfg, log := env.Config, env.Log
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	var backend dataplane.ServiceBackend
	err = daemon.WaitFor(ctx, log, "the dataplane", func() (err error) {
		backend, err = backends.New(cfg, env.NodeName, log.Named(cfg.KubeProxy.Dataplane))
		return err
	}, func(err error) bool { return errors.Is(err, backends.ErrUnknown) })
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if c, ok := backend.(io.Closer); ok {
		defer c.Close()
	}
	kp := cfg.KubeProxy
	p := proxy.New(env.Client, backend, proxy.Options{
		NodeName:          env.NodeName,
		ServiceProxyName:  kp.ServiceProxyName,
		SyncPeriod:        kp.SyncPeriod,
		MinSyncPeriod:     kp.MinSyncPeriod,
		HealthzBindAddr:   kp.HealthzBindAddr,
		MetricsBindAddr:   kp.MetricsBindAddr,
		NodePortAddresses: kp.NodePortAddresses,
		Log:               log,
	})
	log.Info("nsx-kube-proxy starting", zap.String("node", env.NodeName), zap.String("dataplane", backend.Name()))
	if err := p.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error("nsx-kube-proxy stopped", zap.Error(err))
		return err
	}
	return nil
}

// cleanup removes what the proxy left on the node (backends.CleanupNode):
// `nsx-kube-proxy cleanup [--config-file F]` after the DaemonSet is gone.
func cleanup(args []string) error {
	return daemon.RunWithConfig("nsx-kube-proxy cleanup", args, backends.CleanupNode)
}
