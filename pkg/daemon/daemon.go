// Package daemon is the start-up every nsx-ujo daemon shares: the common
// flags, ncp.ini, the node name, the logger and the Kubernetes client, and
// the wait-with-backoff for a dependency that starts next to us.
package daemon

import (
	"context"
	"flag"
	"fmt"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/logging"
)

// Env is what a daemon runs with.
type Env struct {
	Config   *config.Config
	NodeName string
	Log      *zap.Logger
	Client   kubernetes.Interface
}

// Options describe one daemon's start.
type Options struct {
	Component string        // binary name, in logs
	Flags     *flag.FlagSet // with the daemon's own flags registered
	Args      []string
	// Override applies the daemon's own flags to the loaded file, before
	// validation. Use Flags.Visit so only flags given on the command line
	// override.
	Override func(cfg *config.Config)
}

// Start registers and parses the common flags, loads and validates
// ncp.ini, resolves the node name and builds the logger and the client.
func Start(o Options) (*Env, error) {
	var cf config.CommonFlags
	cf.Register(o.Flags)
	if err := o.Flags.Parse(o.Args); err != nil {
		return nil, err
	}
	var warnings [][]any
	cfg, err := config.Load(cf.ConfigFile, func(msg string, kv ...any) { warnings = append(warnings, append([]any{msg}, kv...)) })
	if err != nil {
		return nil, err
	}
	cfg.ApplyKubeconfigFlag(cf.Kubeconfig)
	if o.Override != nil {
		o.Override(cfg)
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("configuration (ncp.ini and flags): %w", err)
		}
	}
	nodeName, err := cf.Resolve()
	if err != nil {
		return nil, err
	}
	log, err := logging.New(cfg.Default, o.Component, logging.Options{})
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		log.Sugar().Warnw(w[0].(string), w[1:]...)
	}
	logging.RouteKlog(log)
	rc, err := cfg.RESTConfig()
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Env{Config: cfg, NodeName: nodeName, Log: log, Client: client}, nil
}

// WaitFor calls try until it succeeds, stop says its error is final, or
// ctx ends, backing off from 200 ms to 5 s and logging each miss. In the
// DaemonSet OVS and the API server come up next to us, so their absence
// at start is normal for a while.
func WaitFor(ctx context.Context, log *zap.Logger, what string, try func() error, stop func(error) bool) error {
	delay := 200 * time.Millisecond
	for {
		err := try()
		if err == nil || (stop != nil && stop(err)) {
			return err
		}
		log.Info("waiting for "+what, zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		if delay < 5*time.Second {
			delay *= 2
		}
	}
}

// RunWithConfig is a one-shot subcommand that needs only ncp.ini (a
// node's cleanup): `<name> [--config-file F]`, no other arguments.
func RunWithConfig(name string, args []string, run func(*config.Config) error) error {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	configFile := fs.String("config-file", config.DefaultConfigFile, "ncp.ini")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", name, fs.Args())
	}
	cfg, err := config.Load(*configFile, nil)
	if err != nil {
		return err
	}
	return run(cfg)
}
