package audit

import (
	"context"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
)

type fakePorts []ports.PodPort

func (f *fakePorts) List(context.Context) ([]ports.PodPort, error) { return *f, nil }

type fakePods struct {
	uids   map[string]bool
	synced bool
}

func (f *fakePods) PodExists(uid string) bool { return f.uids[uid] }
func (f *fakePods) Synced() bool              { return f.synced }

type fakeRemover struct {
	inFlight map[string]bool
	removed  []string
	ports    *fakePorts
}

func (f *fakeRemover) RemoveStale(_ context.Context, name string) (bool, error) {
	if f.inFlight[name] {
		return false, nil
	}
	f.removed = append(f.removed, name)
	kept := (*f.ports)[:0]
	for _, p := range *f.ports {
		if p.Name != name {
			kept = append(kept, p)
		}
	}
	*f.ports = kept
	return true, nil
}

func TestSweepRules(t *testing.T) {
	netns := map[string]bool{"/run/netns/alive": true}
	pl := &fakePorts{
		{Name: "live-pod", PodUID: "u1", Netns: "/run/netns/gone"},    // pod exists
		{Name: "live-netns", PodUID: "u2", Netns: "/run/netns/alive"}, // netns exists (DEL will come)
		{Name: "stale", PodUID: "u3", Netns: "/run/netns/gone"},
		{Name: "busy", PodUID: "u4", Netns: "/run/netns/gone"}, // stale but ADD/DEL in flight
	}
	pods := &fakePods{uids: map[string]bool{"u1": true}}
	rm := &fakeRemover{inFlight: map[string]bool{"busy": true}, ports: pl}
	a := New(Options{NetnsExists: func(p string) bool { return netns[p] }}, zaptest.NewLogger(t), pl, pods, rm)
	ctx := context.Background()

	// Unsynced pod cache: every pod would look gone, so nothing happens.
	for i := 0; i < 3; i++ {
		if r, _ := a.Sweep(ctx); len(r) != 0 {
			t.Fatalf("removed %v with an unsynced cache", r)
		}
	}
	pods.synced = true
	if r, _ := a.Sweep(ctx); len(r) != 0 {
		t.Fatalf("first synced sweep removed %v", r)
	}
	if r, _ := a.Sweep(ctx); len(r) != 1 || r[0] != "stale" {
		t.Fatalf("second sweep removed %v, want [stale]", r)
	}
	// The in-flight port stays until its request is over.
	rm.inFlight = nil
	if r, _ := a.Sweep(ctx); len(r) != 1 || r[0] != "busy" {
		t.Fatalf("third sweep removed %v, want [busy]", r)
	}
	if a.RemovedTotal() != 2 {
		t.Fatalf("RemovedTotal = %d", a.RemovedTotal())
	}
}

func TestSightingsMustBeConsecutive(t *testing.T) {
	pl := &fakePorts{{Name: "p", PodUID: "u", Netns: "/gone"}}
	pods := &fakePods{uids: map[string]bool{}, synced: true}
	rm := &fakeRemover{ports: pl}
	a := New(Options{NetnsExists: func(string) bool { return false }}, zaptest.NewLogger(t), pl, pods, rm)
	ctx := context.Background()
	a.Sweep(ctx)
	pods.uids["u"] = true // the pod shows up (cache lag): the count resets
	a.Sweep(ctx)
	delete(pods.uids, "u")
	if r, _ := a.Sweep(ctx); len(r) != 0 {
		t.Fatalf("removed %v after non-consecutive sightings", r)
	}
	if r, _ := a.Sweep(ctx); len(r) != 1 {
		t.Fatal("not removed after two consecutive sightings")
	}
}
