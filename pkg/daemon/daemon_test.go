package daemon

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

func TestWaitFor(t *testing.T) {
	log := zaptest.NewLogger(t)
	n := 0
	err := WaitFor(context.Background(), log, "thing", func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}, nil)
	if err != nil || n != 3 {
		t.Fatalf("WaitFor = %v after %d tries", err, n)
	}
	final := errors.New("final")
	if err := WaitFor(context.Background(), log, "thing", func() error { return final }, func(e error) bool { return e == final }); err != final {
		t.Fatalf("a final error was retried: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := WaitFor(ctx, log, "thing", func() error { return errors.New("never") }, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor after ctx end = %v", err)
	}
}

func TestStartValidatesOverrides(t *testing.T) {
	dir := t.TempDir()
	ini := filepath.Join(dir, "ncp.ini")
	kc := filepath.Join(dir, "kubeconfig")
	os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: https://127.0.0.1:1}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {token: x}}]\n"), 0o600)
	os.WriteFile(ini, []byte("[k8s]\nkubeconfig = "+kc+"\n"), 0o600)
	env, err := Start(Options{Component: "test", Flags: flag.NewFlagSet("t", flag.ContinueOnError),
		Args: []string{"--config-file", ini, "--node-name", "n1"}})
	if err != nil || env.NodeName != "n1" || env.Client == nil {
		t.Fatalf("Start = %+v, %v", env, err)
	}
	_, err = Start(Options{Component: "test", Flags: flag.NewFlagSet("t", flag.ContinueOnError),
		Args:     []string{"--config-file", ini},
		Override: func(c *config.Config) { c.KubeProxy.Dataplane = "bogus" }})
	if err == nil || !strings.Contains(err.Error(), "dataplane") {
		t.Fatalf("a bad override was accepted: %v", err)
	}
}

func TestRunWithConfig(t *testing.T) {
	ini := filepath.Join(t.TempDir(), "ncp.ini")
	if err := os.WriteFile(ini, []byte("[nsx_kube_proxy]\nbpf_pin_dir = /x/y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var got string
	run := func(cfg *config.Config) error { got = cfg.KubeProxy.BPFPinDir; return nil }
	if err := RunWithConfig("x cleanup", []string{"--config-file", ini}, run); err != nil || got != "/x/y" {
		t.Fatalf("RunWithConfig: %v, ran with bpf_pin_dir %q; want nil, /x/y", err, got)
	}
	got = ""
	if err := RunWithConfig("x cleanup", []string{"--config-file", ini, "extra"}, run); err == nil || !strings.Contains(err.Error(), `"extra"`) || got != "" {
		t.Errorf("an extra argument: %v (ran: %v); want an error naming it, nothing run", err, got != "")
	}
	if err := RunWithConfig("x cleanup", []string{"--config-file", ini + ".missing"}, run); err == nil || got != "" {
		t.Errorf("a missing ncp.ini: %v (ran: %v); want an error, nothing run", err, got != "")
	}
}
