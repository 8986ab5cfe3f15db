// Command nsx-ncp-bootstrap installs the nsx CNI plugin, its network
// configuration and the node agent's AppArmor profile on the host it reaches
// through --host-root, and removes them again.
//
//	nsx-ncp-bootstrap [install] [flags]  install or upgrade (the init container)
//	nsx-ncp-bootstrap monitor [flags]    re-install removed files every --interval
//	nsx-ncp-bootstrap cleanup [flags]    remove what install installed
//	nsx-ncp-bootstrap version            print the build version
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/pkg/bootstrap"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/logging"
)

const component = "nsx-ncp-bootstrap"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, component+":", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cmd := "install"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(component+" "+cmd, flag.ExitOnError)
	var o bootstrap.Options
	fs.StringVar(&o.HostRoot, "host-root", "/host", "where the host's / is mounted")
	fs.BoolVar(&o.DryRun, "dry-run", false, "print what would change and change nothing")
	configFile := config.DefaultConfigFile
	interval := time.Minute
	switch cmd {
	case "install", "monitor":
		fs.StringVar(&configFile, "config-file", configFile, "ncp.ini (for [nsx_node_agent] cni_socket, mtu and cni_version, and logging)")
		fs.StringVar(&o.PluginSource, "cni-bin-source", "/usr/local/bin/nsx", "the nsx CNI plugin binary to install")
		fs.StringVar(&o.LoopbackSource, "loopback-bin-source", "/usr/local/bin/loopback", "the loopback CNI plugin binary to install where the host has none")
		if cmd == "monitor" {
			fs.DurationVar(&interval, "interval", interval, "time between checks of the installed files")
		}
	case "cleanup":
	case "version":
		fmt.Println(bootstrap.Version)
		return nil
	default:
		return fmt.Errorf("unknown command %q: want install, monitor, cleanup or version", cmd)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	// cleanup reads no ncp.ini: it must work on a node whose ConfigMap is
	// already gone, and needs only the manifest.
	cfg := config.Defaults()
	var warnings [][]any
	if cmd != "cleanup" {
		c, err := config.Load(configFile, func(msg string, kv ...any) { warnings = append(warnings, append([]any{msg}, kv...)) })
		if err != nil {
			return err
		}
		cfg = *c
	}
	log, err := logging.New(cfg.Default, component, logging.Options{})
	if err != nil {
		return err
	}
	defer log.Sync()
	for _, w := range warnings {
		log.Sugar().Warnw(w[0].(string), w[1:]...)
	}
	o.Socket, o.MTU, o.CNIVersion, o.ReloadProfile, o.Log = cfg.NodeAgent.CNISocket, cfg.NodeAgent.MTU, cfg.NodeAgent.CNIVersion, true, log

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var changes []bootstrap.Change
	switch cmd {
	case "install":
		changes, err = bootstrap.Install(ctx, o)
	case "cleanup":
		changes, err = bootstrap.Cleanup(ctx, o)
	case "monitor":
		err = bootstrap.Monitor(ctx, o, interval)
	}
	if o.DryRun {
		for _, c := range changes {
			fmt.Println("would", c)
		}
		if len(changes) == 0 && err == nil {
			fmt.Println("nothing to change")
		}
	}
	if err != nil {
		log.Error(cmd+" failed", zap.Error(err))
	}
	return err
}
