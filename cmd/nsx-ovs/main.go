// Command nsx-ovs runs Open vSwitch on a node and moves the node's uplink
// (ovs_uplink_port, "node-if") onto the integration bridge:
//
//	nsx-ovs [--config-file F] [--allow-ovs-on-host] [--healthz-address H:P] [--resync-interval D]
//	    start ovsdb-server and ovs-vswitchd, ensure the bridge, migrate
//	    node-if, then keep both healthy until SIGTERM (flows are saved and
//	    restored across the restart)
//	nsx-ovs cleanup [--config-file F] [--allow-ovs-on-host]
//	    put node-if back as it was before the first migration
//	nsx-ovs health [--config-file F]
//	    print one JSON line on the node's OVS, bridge and uplink; exit 0 if healthy
//
// Everything comes from ncp.ini, so it runs the same in the DaemonSet's
// container and in a test's network namespace.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/logging"
	"github.com/nsx-ujo/nsx-ujo/pkg/nodeif"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsrun"
	"github.com/nsx-ujo/nsx-ujo/pkg/sysctl"
)

const component = "nsx-ovs"

// crashEnv names a step after which nsx-ovs kills itself, mid-migration
// or mid-cleanup, so tests can check that a re-run finishes the job.
const crashEnv = "NSX_OVS_CRASH_AFTER_STEP"

// stopTimeout bounds saving flows and stopping the daemons at exit.
const stopTimeout = 30 * time.Second

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, component+":", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cmd := "run"
	if len(args) > 0 && (args[0] == "cleanup" || args[0] == "health" || args[0] == "run") {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(component+" "+cmd, flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s [run | cleanup | health] [flags]\nflags of %s:\n", component, cmd)
		fs.PrintDefaults()
	}
	configFile := fs.String("config-file", config.DefaultConfigFile, "path to ncp.ini")
	var allowHost bool
	var healthzAddr string
	var resync time.Duration
	if cmd != "health" {
		fs.BoolVar(&allowHost, "allow-ovs-on-host", false, "use an Open vSwitch already running in ovs_run_dir instead of refusing to start")
	}
	if cmd == "run" {
		fs.StringVar(&healthzAddr, "healthz-address", "", "serve GET /healthz on this host:port (\"\": off)")
		fs.DurationVar(&resync, "resync-interval", 30*time.Second, "how often to check the bridge and node-if and repair them")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg, log, err := load(*configFile)
	if err != nil {
		return err
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	switch cmd {
	case "health":
		return health(ctx, cfg)
	case "cleanup":
		err = cleanup(ctx, cfg, log, allowHost)
	default:
		err = daemon(ctx, cfg, log, daemonOptions{allowHost: allowHost, healthzAddr: healthzAddr, resync: resync})
	}
	if err != nil {
		log.Error(cmd+" failed", zap.Error(err))
	}
	return err
}

// load reads ncp.ini and builds the logger, reporting unknown keys once
// the logger exists.
func load(path string) (*config.Config, *zap.Logger, error) {
	var warnings [][]any
	cfg, err := config.Load(path, func(msg string, kv ...any) { warnings = append(warnings, append([]any{msg}, kv...)) })
	if err != nil {
		return nil, nil, err
	}
	log, err := logging.New(cfg.Default, component, logging.Options{})
	if err != nil {
		return nil, nil, err
	}
	for _, w := range warnings {
		log.Sugar().Warnw(w[0].(string), w[1:]...)
	}
	return cfg, log, nil
}

func ovsOptions(cfg *config.Config, log *zap.Logger, allowHost bool) ovsrun.Options {
	na := cfg.NodeAgent
	return ovsrun.Options{RunDir: na.OVSRunDir, DBDir: na.OVSDBDir, StateDir: na.StateDir, LogDir: cfg.Default.LogDir,
		AllowExisting: allowHost, OpTimeout: na.OVSOperationTimeout, Log: log}
}

func migrator(cfg *config.Config, o *ovsrun.OVS, log *zap.Logger) *nodeif.Migrator {
	na := cfg.NodeAgent
	return nodeif.New(nodeif.Options{Bridge: na.OVSBridge, Uplink: na.OVSUplinkPort, DatapathType: na.OVSDatapathType,
		StateDir: na.StateDir, DHCP: na.IsDHCPConfiguredOnOVSUplinkPort, OVS: o.Client(), Log: log,
		StopAfter: os.Getenv(crashEnv), Sysctl: sysctl.FromPrefix(na.ProcMountPathPrefix)})
}

// crashIfAsked kills the process, OVS daemons included (Pdeathsig), when
// a step stopped because of crashEnv: a test's stand-in for a node crash.
func crashIfAsked(log *zap.Logger, err error) {
	if errors.Is(err, nodeif.ErrStopped) {
		log.Warn("killing myself as asked by "+crashEnv, zap.Error(err))
		log.Sync()
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// stopOVS saves the flows and stops the daemons, on a context of its own:
// the run's context is already cancelled by SIGTERM.
func stopOVS(o *ovsrun.OVS, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := o.Stop(ctx); err != nil {
		log.Error("stopping Open vSwitch", zap.Error(err))
	}
}

func cleanup(ctx context.Context, cfg *config.Config, log *zap.Logger, allowHost bool) error {
	na := cfg.NodeAgent
	unlock, err := nodeif.Lock(na.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	j, err := nodeif.LoadJournal(na.StateDir)
	if err != nil {
		return err
	}
	if j == nil {
		log.Info("no journal: node-if was never migrated, nothing to restore", zap.String("stateDir", na.StateDir))
	} else {
		o, err := ovsrun.Start(ctx, ovsOptions(cfg, log, allowHost))
		if err != nil {
			return err
		}
		err = migrator(cfg, o, log).Cleanup(ctx)
		crashIfAsked(log, err)
		stopOVS(o, log)
		if err != nil {
			return err
		}
	}
	// OVS is stopped for good: what it kept between runs goes too, and
	// the lock (held until we return, so no nsx-ovs starts meanwhile).
	if err := ovsrun.RemoveState(ovsOptions(cfg, log, allowHost)); err != nil {
		return err
	}
	if err := os.Remove(nodeif.LockPath(na.StateDir)); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}
