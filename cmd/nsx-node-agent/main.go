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
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/logging"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nsx-node-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	var cf config.CommonFlags
	fs := flag.NewFlagSet("nsx-node-agent", flag.ExitOnError)
	cf.Register(fs)
	_ = fs.Parse(os.Args[1:])

	var warnings [][]any
	cfg, err := config.Load(cf.ConfigFile, func(msg string, kv ...any) { warnings = append(warnings, append([]any{msg}, kv...)) })
	if err != nil {
		return err
	}
	cfg.ApplyKubeconfigFlag(cf.Kubeconfig)
	nodeName, err := cf.Resolve()
	if err != nil {
		return err
	}
	log, err := logging.New(cfg.Default, "nsx-node-agent", logging.Options{})
	if err != nil {
		return err
	}
	defer log.Sync()
	for _, w := range warnings {
		log.Sugar().Warnw(w[0].(string), w[1:]...)
	}
	rc, err := cfg.RESTConfig()
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err = agent.RunDaemon(ctx, agent.DaemonOptions{Config: cfg, NodeName: nodeName, Log: log, Client: client})
	if err != nil && ctx.Err() == nil {
		log.Error("nsx-node-agent stopped", zap.Error(err))
		return err
	}
	return nil
}
