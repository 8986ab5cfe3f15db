package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/dataplane/backends"
	ebpfdp "github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/audit"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/cniserver"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/daemon"
	"github.com/nsx-ujo/nsx-ujo/pkg/hyperbus"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/pkg/sysctl"
)

// DaemonOptions is what nsx-node-agent runs with.
type DaemonOptions struct {
	Config   *config.Config
	NodeName string
	Log      *zap.Logger
	Client   kubernetes.Interface
}

// RunDaemon runs nsx-node-agent until ctx ends: it waits for OVS and the
// pod informer, serves the CNI socket and runs the audit. It returns an
// error for a configuration it cannot serve.
func RunDaemon(ctx context.Context, o DaemonOptions) error {
	na := o.Config.NodeAgent
	log := o.Log
	dbSock := filepath.Join(na.OVSRunDir, "db.sock")
	db, err := dialOVS(ctx, log, dbSock, na.OVSOperationTimeout)
	if err != nil {
		return err
	}
	defer db.Close()

	pm := ports.New(db, na.OVSBridge)
	// The HyperBus source asks the agent, made below, to report every
	// attachment after each snapshot.
	var agentRef atomic.Pointer[Agent]
	reportAll := func() {
		if a := agentRef.Load(); a != nil {
			if err := a.ReportAttachments(ctx); err != nil {
				log.Warn("reporting attachments to HyperBus", zap.Error(err))
			}
		}
	}
	pods, ready, err := configSource(ctx, o, db, pm, reportAll)
	if err != nil {
		return err
	}
	reporter, _ := pods.(podconfig.StatusReporter) // nil for the annotation

	var programs ProgramAttacher
	if o.Config.KubeProxy.Dataplane == "ebpf" {
		eo := backends.EBPFOptions(o.Config, log)
		objs, err := ebpfdp.Load(eo.LoadOptions())
		if err != nil {
			return err
		}
		defer objs.Close()
		programs = ebpfAttacher{objs}
	}
	a := New(Options{
		MTU:                 na.MTU,
		ConfigRetryTimeout:  na.ConfigRetryTimeout,
		OVSOperationTimeout: na.OVSOperationTimeout,
		ProcMountPathPrefix: na.ProcMountPathPrefix,
	}, Deps{
		Log:      log,
		Pods:     pods,
		Ports:    pm,
		PodNet:   podnet.New(podnet.Options{}),
		Programs: programs,
		Reporter: reporter,
		// hostPorts leave the node by the bridge's internal port.
		HostPorts: nftables.NewHostPorts(nftables.HostPortsOptions{LocalnetInterface: na.OVSBridge,
			Sysctl: sysctl.FromPrefix(na.ProcMountPathPrefix)}),
		Healthy: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, na.OVSOperationTimeout)
			defer cancel()
			if _, err := db.GetBridge(ctx, na.OVSBridge); err != nil {
				return fmt.Errorf("OVS: %w", err)
			}
			return ready(ctx)
		},
	})

	agentRef.Store(a)
	go reportAll() // a snapshot may have come before the agent existed

	rctx, cancel := context.WithTimeout(ctx, na.OVSOperationTimeout)
	if err := a.RestoreHostPorts(rctx); err != nil {
		// Pods without hostPorts are served all the same; the next ADD or
		// DEL of a pod with hostPorts writes the whole set again.
		log.Error("restoring the pods' hostPorts", zap.Error(err))
	}
	cancel()

	srv, err := cniserver.Listen(na.CNISocket, a)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	aud := audit.New(audit.Options{Interval: na.AuditInterval, NetnsExists: func(p string) bool {
		return podnet.NetnsExists(a.netnsPath(p))
	}}, log.Named("audit"), pm, pods, a)
	go aud.Run(ctx)

	// A restarted agent says what it found, for whoever reads the log
	// after a crash: those pods kept their network while it was away.
	lctx, cancel := context.WithTimeout(ctx, na.OVSOperationTimeout)
	found, err := pm.List(lctx)
	cancel()
	if err != nil {
		log.Warn("listing the pod ports on the bridge", zap.String("bridge", na.OVSBridge), zap.Error(err))
	} else if len(found) > 0 {
		log.Info("found the pod ports of an earlier nsx-node-agent on the bridge; they keep forwarding, the audit removes those of pods that are gone",
			zap.String("bridge", na.OVSBridge), zap.Int("pods", len(found)))
	}
	log.Info("nsx-node-agent serving", zap.String("socket", na.CNISocket), zap.String("bridge", na.OVSBridge),
		zap.String("node", o.NodeName))
	return srv.Serve()
}

// configSource starts the source of pod configs ncp.ini names: the pod
// annotation (its informer synced), or HyperBus (enable_hyperbus: the
// internal port on nsxrpc_vlan with nsxrpc_cip, and the session listener
// on it; onSnapshot runs after each snapshot). ready reports what the source needs to serve ADDs.
func configSource(ctx context.Context, o DaemonOptions, db *ovsdb.Client, pm *ports.Manager, onSnapshot func()) (podconfig.Source, func(context.Context) error, error) {
	na, log := o.Config.NodeAgent, o.Log
	octx, cancel := context.WithTimeout(ctx, na.OVSOperationTimeout)
	defer cancel()
	if !na.EnableHyperbus {
		if err := RemoveRPCPort(octx, db, na.OVSBridge); err != nil {
			log.Warn("removing the HyperBus port (enable_hyperbus is off)", zap.Error(err))
		}
		src := podconfig.NewAnnotationSource(o.Client, o.NodeName)
		go src.Run(ctx)
		log.Info("waiting for the pod informer to sync", zap.String("node", o.NodeName))
		if !src.WaitForSync(ctx) {
			return nil, nil, ctx.Err()
		}
		return src, func(ctx context.Context) error {
			if !src.Synced() {
				return errors.New("pod informer not synced")
			}
			if _, err := o.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
				return fmt.Errorf("kube-apiserver: %w", err)
			}
			return nil
		}, nil
	}
	cip, err := netip.ParsePrefix(na.NSXRPCCIP) // validated with ncp.ini
	if err != nil {
		return nil, nil, fmt.Errorf("ncp.ini [nsx_node_agent] nsxrpc_cip = %q: %w", na.NSXRPCCIP, err)
	}
	dpType, err := pm.BridgeDatapathType(octx)
	if err != nil {
		return nil, nil, err
	}
	if err := EnsureRPCPort(octx, db, RPCPortOptions{Bridge: na.OVSBridge, VLAN: na.NSXRPCVLAN, Addr: cip,
		TxChecksumOff: dpType == "netdev"}); err != nil {
		return nil, nil, err
	}
	addr := netip.AddrPortFrom(cip.Addr(), uint16(na.NSXRPCPort))
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, nil, fmt.Errorf("HyperBus listener on %s: %w", addr, err)
	}
	hb := hyperbus.NewServer(hyperbus.ServerOptions{Node: o.NodeName, Log: log.Named("hyperbus"), OnSnapshot: onSnapshot})
	go func() {
		if err := hb.Serve(ctx, l); err != nil {
			log.Error("HyperBus listener stopped", zap.Error(err))
		}
	}()
	started := time.Now()
	log.Info("pod configs come from HyperBus", zap.Stringer("listen", addr), zap.Int("vlan", na.NSXRPCVLAN))
	return hb, func(context.Context) error {
		up, lost := hb.Connected()
		if up {
			return nil
		}
		if lost.IsZero() {
			lost = started
		}
		if d := time.Since(lost); d > na.ConnectRetryTimeout {
			return fmt.Errorf("no HyperBus session for %s (connect_retry_timeout %s)", d.Round(time.Second), na.ConnectRetryTimeout)
		}
		return nil
	}, nil
}

// ebpfAttacher attaches the eBPF dataplane's programs (loaded by this
// process, sharing the pinned maps nsx-kube-proxy writes).
type ebpfAttacher struct{ objs *ebpfdp.Objects }

func (e ebpfAttacher) Attach(netns, ifName, port string) error {
	return e.objs.AttachPod(netns, ifName, port)
}
func (e ebpfAttacher) Detach(port string) error { return ebpfdp.DetachPod(e.objs.PinDir, port) }

// dialOVS waits for ovsdb-server: in the DaemonSet nsx-ovs starts it next
// to us.
func dialOVS(ctx context.Context, log *zap.Logger, sock string, timeout time.Duration) (*ovsdb.Client, error) {
	var db *ovsdb.Client
	err := daemon.WaitFor(ctx, log, "ovsdb-server", func() (err error) {
		db, err = ovsdb.Dial(sock, ovsdb.Options{Timeout: timeout, Logger: log})
		return err
	}, nil)
	return db, err
}
