package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/pkg/nodeif"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsrun"
)

type daemonOptions struct {
	allowHost   bool
	healthzAddr string
	resync      time.Duration
}

// daemon is `nsx-ovs`: OVS up, bridge and uplink migrated, then kept so
// until ctx ends or a daemon we started dies (the container then restarts
// and everything runs again, idempotently).
func daemon(ctx context.Context, cfg *config.Config, log *zap.Logger, o daemonOptions) error {
	na := cfg.NodeAgent
	unlock, err := nodeif.Lock(na.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	sw, err := ovsrun.Start(ctx, ovsOptions(cfg, log, o.allowHost))
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopping before Open vSwitch was up", zap.Error(err))
			return nil
		}
		return err
	}
	defer stopOVS(sw, log)
	m := migrator(cfg, sw, log)
	if err := m.Migrate(ctx); err != nil {
		crashIfAsked(log, err)
		if ctx.Err() != nil {
			// SIGTERM during start-up is a normal stop: the journal lets
			// the next start finish the migration.
			log.Info("stopping before the migration finished", zap.Error(err))
			return nil
		}
		return err
	}
	ensureNormalFlow(ctx, cfg, log)

	if o.healthzAddr != "" {
		srv, err := serveHealthz(o.healthzAddr, cfg, m, log)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	log.Info("node ready", zap.String("bridge", na.OVSBridge), zap.String("uplink", na.OVSUplinkPort))

	tick := time.NewTicker(o.resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping", zap.Error(context.Cause(ctx)))
			return nil
		case <-sw.Exited():
			return fmt.Errorf("open vswitch died: %w", sw.ExitErr())
		case <-tick.C:
			if st := m.Status(ctx); !st.OK() {
				log.Warn("bridge or node-if drifted, migrating again", zap.Strings("problems", st.Problems))
				if err := m.Migrate(ctx); err != nil {
					log.Error("repair failed, retrying at the next resync", zap.Error(err))
				}
			}
			ensureNormalFlow(ctx, cfg, log)
		}
	}
}

func ensureNormalFlow(ctx context.Context, cfg *config.Config, log *zap.Logger) {
	added, err := ovsrun.EnsureNormalFlow(ctx, cfg.NodeAgent.OVSRunDir, cfg.NodeAgent.OVSBridge)
	switch {
	case err != nil:
		log.Error("checking the bridge's NORMAL flow", zap.Error(err))
	case added:
		log.Info("added the bridge's default flow", zap.String("flow", "table=0,priority=0,actions=NORMAL"))
	}
}

// healthReport is what `nsx-ovs health` prints and /healthz serves.
type healthReport struct {
	OK  bool   `json:"ok"`
	OVS string `json:"ovs"` // "ok" or why not
	*nodeif.Status
}

func check(ctx context.Context, cfg *config.Config, m *nodeif.Migrator) healthReport {
	na := cfg.NodeAgent
	r := healthReport{OVS: "ok", Status: &nodeif.Status{Bridge: na.OVSBridge, Uplink: na.OVSUplinkPort}}
	if err := ovsrun.Probe(ctx, na.OVSRunDir, na.OVSOperationTimeout); err != nil {
		r.OVS = err.Error()
		return r
	}
	r.Status = m.Status(ctx)
	r.OK = r.Status.OK()
	return r
}

// health is `nsx-ovs health`: one JSON line, exit status 0 when healthy.
func health(ctx context.Context, cfg *config.Config) error {
	na := cfg.NodeAgent
	var m *nodeif.Migrator
	db, err := ovsdb.Dial(ovsrun.DBSocket(na.OVSRunDir), ovsdb.Options{Timeout: na.OVSOperationTimeout})
	if err == nil {
		defer db.Close()
		m = nodeif.New(nodeif.Options{Bridge: na.OVSBridge, Uplink: na.OVSUplinkPort, StateDir: na.StateDir,
			DHCP: na.IsDHCPConfiguredOnOVSUplinkPort, OVS: db})
	}
	r := healthReport{OVS: fmt.Sprint(err), Status: &nodeif.Status{Bridge: na.OVSBridge, Uplink: na.OVSUplinkPort}}
	if m != nil {
		r = check(ctx, cfg, m)
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return err
	}
	if !r.OK {
		return errors.New("unhealthy")
	}
	return nil
}

// serveHealthz serves GET /healthz: 200 with the report when healthy,
// 503 with it otherwise.
func serveHealthz(addr string, cfg *config.Config, m *nodeif.Migrator, log *zap.Logger) (*http.Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--healthz-address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, req *http.Request) {
		r := check(req.Context(), cfg, m)
		w.Header().Set("Content-Type", "application/json")
		if !r.OK {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(r)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("healthz server", zap.Error(err))
		}
	}()
	log.Info("serving /healthz", zap.String("address", l.Addr().String()))
	return srv, nil
}
