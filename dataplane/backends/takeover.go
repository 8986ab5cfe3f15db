package backends

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	ebpfdp "github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
)

// A node switches dataplane without a gap: the new one is installed first
// (its first Sync), then traffic moves, then the old one goes.
//
//   - OVS -> eBPF: before the first Sync the eBPF programs are told a
//     take-over is under way (a mid-stream TCP packet they hold no
//     conntrack entry for is left to OVS); after it, the OVS service
//     zone's open connections from pods to ClusterIPs are written into the
//     eBPF conntrack map, the OVS flows and conntrack zones are removed,
//     and the take-over ends. Those connections keep their backend; new
//     ones are NATed by eBPF from the moment its programs are attached.
//     Hairpin connections and connections from outside the node are not
//     handed over.
//   - eBPF -> OVS: after the first Sync of the OVS flows, the eBPF
//     services map is emptied (new connections fall through to OVS) while
//     the programs keep carrying the connections they NATed, for
//     switch_drain_period; then the programs and maps are removed.
//
// The take-over follows the first Sync that succeeded, also in part (some
// frontends refused: one bad Service never holds the switch back); one
// that fails is tried again after the next Sync.

// takeover wraps the configured backend (inside WithLocalNodePorts, so it
// sees the backend's own errors).
type takeover struct {
	wrapped
	log    *zap.Logger
	before func(context.Context) error                   // ahead of the first Sync
	after  func(context.Context, *dataplane.Model) error // after it; nil error: done
	began  bool
	done   bool
}

// Sync implements dataplane.ServiceBackend. Like every backend's, it is
// called by one goroutine at a time (the proxy's sync loop).
func (t *takeover) Sync(ctx context.Context, m *dataplane.Model, opts dataplane.SyncOptions) error {
	if !t.began {
		t.began = true
		if t.before != nil {
			if err := t.before(ctx); err != nil {
				t.log.Warn("preparing to take over from the other dataplane", zap.Error(err))
			}
		}
	}
	err := t.wrapped.Sync(ctx, m, opts)
	var fe *dataplane.FrontendErrors
	if !t.done && (err == nil || errors.As(err, &fe)) {
		start := time.Now()
		if terr := t.after(ctx, m); terr != nil {
			t.log.Error("taking over from the other dataplane; tried again after the next sync", zap.Error(terr))
		} else {
			t.done = true
			t.log.Info("took over from the other dataplane", zap.Duration("took", time.Since(start)))
		}
	}
	return err
}

// fromOVS is the take-over of the eBPF dataplane b from OVS.
func fromOVS(b *ebpfdp.Backend, ovs func() (*ovsdp.Backend, error), log *zap.Logger) *takeover {
	return &takeover{log: log,
		before: func(context.Context) error { return b.SetHandover(true) },
		after: func(ctx context.Context, _ *dataplane.Model) (err error) {
			// Whatever happens, the take-over flag goes: left on, it would
			// send every mid-stream TCP packet without an entry to OVS.
			defer func() { err = errors.Join(err, b.SetHandover(false)) }()
			o, err := ovs()
			if err != nil {
				return err
			}
			defer o.Close()
			conns, err := o.Connections(ctx)
			if err != nil {
				// ovs-vswitchd unreachable: nothing it NATed can be
				// forwarded anyway.
				log.Warn("reading the OVS dataplane's connections", zap.Error(err))
			}
			n, aerr := b.AdoptConnections(conns)
			if len(conns) > 0 {
				log.Info("adopted the OVS dataplane's established connections", zap.Int("connections", n), zap.Int("seen", len(conns)))
			}
			return errors.Join(aerr, o.Cleanup(ctx))
		},
	}
}

// fromEBPF is the take-over of the OVS dataplane from eBPF: drain, then
// remove. The drain runs in the background for the life of the process
// (one that exits earlier leaves it to the next start, which drains
// again).
func fromEBPF(pinDir string, drain time.Duration, log *zap.Logger) *takeover {
	var once sync.Once
	return &takeover{log: log,
		after: func(context.Context, *dataplane.Model) error {
			if !ebpfdp.Pinned(pinDir) {
				return nil // never ran eBPF here, or already removed
			}
			if err := ebpfdp.Drain(pinDir); err != nil {
				return err
			}
			log.Info("the eBPF dataplane takes no new connections; removing it after the drain period",
				zap.String("pinDir", pinDir), zap.Duration("drain", drain))
			once.Do(func() {
				go func() {
					time.Sleep(drain)
					if err := ebpfdp.CleanupPins(pinDir); err != nil {
						log.Error("removing the eBPF dataplane after its drain", zap.Error(err))
						return
					}
					log.Info("removed the eBPF dataplane's programs and maps", zap.String("pinDir", pinDir))
				}()
			})
			return nil
		},
	}
}
