// Command nsx-node-agent serves the CNI socket of one node: it wires pods
// onto the OVS integration bridge from their ncp/network_config annotation.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent"
	"github.com/nsx-ujo/nsx-ujo/pkg/daemon"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nsx-node-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) > 1 && os.Args[1] == "cleanup" {
		return cleanup(os.Args[2:])
	}
	env, err := daemon.Start(daemon.Options{Component: "nsx-node-agent",
		Flags: flag.NewFlagSet("nsx-node-agent", flag.ExitOnError), Args: os.Args[1:]})
	if err != nil {
		return err
	}
	defer env.Log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err = agent.RunDaemon(ctx, agent.DaemonOptions{Config: env.Config, NodeName: env.NodeName, Log: env.Log, Client: env.Client})
	if err != nil && ctx.Err() == nil {
		env.Log.Error("nsx-node-agent stopped", zap.Error(err))
		return err
	}
	return nil
}

// cleanup removes what the agent left on the node (agent.CleanupNode):
// `nsx-node-agent cleanup [--config-file F]` after the DaemonSet is gone.
func cleanup(args []string) error {
	return daemon.RunWithConfig("nsx-node-agent cleanup", args, agent.CleanupNode)
}
