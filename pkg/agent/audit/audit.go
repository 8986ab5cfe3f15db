// Package audit removes the OVS ports of pods that are gone, for the cases
// where no CNI DEL ever reached the agent (agent down, node crash, runtime
// bug). It is deliberately slow to act: a port is removed only when its pod
// (by UID) is unknown AND its network namespace is gone, on two consecutive
// sweeps, and never while a CNI request for it is in flight.
package audit

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
)

// PortLister lists the pod ports the agent created.
type PortLister interface {
	List(ctx context.Context) ([]ports.PodPort, error)
}

// PodView answers from an informer cache.
type PodView interface {
	PodExists(uid string) bool
	Synced() bool
}

// Remover removes one port unless a request for it is in flight.
type Remover interface {
	RemoveStale(ctx context.Context, name string) (bool, error)
}

// Options tune the audit.
type Options struct {
	Interval time.Duration // between sweeps ([nsx_node_agent] audit_interval)
	Sweeps   int           // consecutive stale sightings before removal (default 2)
	// NetnsExists reports whether a pod's netns path (as recorded on the
	// port) still exists, mapped to the agent's view.
	NetnsExists func(path string) bool
}

// Auditor runs the sweeps. Sweep and Run must not be called concurrently.
type Auditor struct {
	opts    Options
	log     *zap.Logger
	ports   PortLister
	pods    PodView
	remover Remover

	suspects map[string]int // port -> consecutive stale sightings
	removed  int
}

// New returns an Auditor.
func New(opts Options, log *zap.Logger, pl PortLister, pods PodView, r Remover) *Auditor {
	if opts.Sweeps <= 0 {
		opts.Sweeps = 2
	}
	return &Auditor{opts: opts, log: log, ports: pl, pods: pods, remover: r, suspects: map[string]int{}}
}

// RemovedTotal is how many ports the audit has removed since start.
func (a *Auditor) RemovedTotal() int { return a.removed }

// Sweep does one pass and returns the ports it removed.
func (a *Auditor) Sweep(ctx context.Context) ([]string, error) {
	if !a.pods.Synced() {
		return nil, nil // an unsynced cache would make every pod look gone
	}
	// OVS first, pods second: a pod created between the two reads is in
	// the cache (its ADD waited for it), so it cannot look stale.
	list, err := a.ports.List(ctx)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(list))
	var removed []string
	for _, p := range list {
		seen[p.Name] = true
		if a.pods.PodExists(p.PodUID) || (p.Netns != "" && a.opts.NetnsExists(p.Netns)) {
			delete(a.suspects, p.Name)
			continue
		}
		a.suspects[p.Name]++
		if a.suspects[p.Name] < a.opts.Sweeps {
			a.log.Info("audit: pod port looks stale, will check again", zap.String("port", p.Name),
				zap.String("pod", p.PodNamespace+"/"+p.PodName), zap.String("podUID", p.PodUID))
			continue
		}
		ok, err := a.remover.RemoveStale(ctx, p.Name)
		if err != nil {
			a.log.Warn("audit: removing stale pod port failed", zap.String("port", p.Name), zap.Error(err))
			continue
		}
		if !ok {
			continue // a request is in flight: look again next sweep
		}
		delete(a.suspects, p.Name)
		a.removed++
		removed = append(removed, p.Name)
		a.log.Info("audit: removed stale pod port", zap.String("port", p.Name),
			zap.String("pod", p.PodNamespace+"/"+p.PodName), zap.String("podUID", p.PodUID),
			zap.String("container", p.ContainerID), zap.Int("removedTotal", a.removed))
	}
	for name := range a.suspects {
		if !seen[name] {
			delete(a.suspects, name) // removed by a DEL meanwhile
		}
	}
	return removed, nil
}

// Run sweeps at start and every Interval until ctx ends.
func (a *Auditor) Run(ctx context.Context) {
	t := time.NewTicker(a.opts.Interval)
	defer t.Stop()
	for {
		if _, err := a.Sweep(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("audit sweep failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
