package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
)

// churn is the pod churn of the load: pods started and removed on one node
// in a loop, as kubelet does it (a failed ADD is torn down with a DEL,
// retried until it succeeds; every third pod's netns is gone before its
// DEL).
type churn struct {
	c    *cluster.Cluster
	node *cluster.Node
	ns   string
	next *int // pod name counter, kept across faults

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	mu     sync.Mutex
	res    churnResult
	errors []string
}

// churnResult is one fault's pod churn figures.
type churnResult struct {
	Adds, Failed int // ADDs tried and failed
	// Killed: ADDs whose plugin process was killed mid-way (the
	// plugin-killed fault).
	Killed int
	// Leftovers: what the node holds of pods that are gone (veths, OVS
	// ports, eBPF links), found once the churn stopped.
	Leftovers []string
}

func startChurn(c *cluster.Cluster, node *cluster.Node, ns string, next *int) *churn {
	ch := &churn{c: c, node: node, ns: ns, next: next, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ch.done)
		for {
			select {
			case <-ch.stop:
				return
			default:
			}
			ch.cycle(cluster.AddPodOptions{})
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return ch
}

// cycle starts one pod and removes it. o.Timeout bounds the ADD: when it
// ends first, libcni kills the plugin process mid-ADD, as a runtime's
// timeout does.
func (ch *churn) cycle(o cluster.AddPodOptions) {
	ch.mu.Lock()
	*ch.next++
	idx := *ch.next
	name := fmt.Sprintf("churn-%d", idx)
	ch.res.Adds++
	ch.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, err := ch.c.AddPod(ctx, ch.ns, name, ch.node, o)
	if err == nil {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		// Every third pod's netns is gone before its DEL (a sandbox lost
		// to a reboot or a runtime crash): nothing may stay behind.
		err = ch.c.RemovePod(rctx, p, cluster.RemovePodOptions{NetnsGone: idx%3 == 0})
		cancel()
		if err != nil {
			ch.record(fmt.Errorf("removing %s: %w", name, err))
		}
		return
	}
	killed := errors.Is(err, cluster.ErrADDTimedOut)
	ch.mu.Lock()
	ch.res.Failed++
	if killed {
		ch.res.Killed++
	}
	ch.mu.Unlock()
	if !killed {
		ch.record(err)
	}
}

func (ch *churn) record(err error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if len(ch.errors) < 10 {
		ch.errors = append(ch.errors, err.Error())
	}
}

// finish stops the churn, waits for its last pod to be removed and looks
// for leftovers of every pod that is gone: live are the pods that remain.
func (ch *churn) finish(live []*cluster.Pod) (churnResult, []string, error) {
	ch.halt()
	left, err := leftovers(ch.node, live)
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.res.Leftovers = left
	return ch.res, ch.errors, err
}

// halt stops the loop and waits for its last cycle; idempotent (also a
// test cleanup, for a fault that failed the test).
func (ch *churn) halt() {
	ch.stopOnce.Do(func() { close(ch.stop) })
	<-ch.done
}

// killPluginsMidAdd runs n pod starts whose plugin process is killed at a
// random point of the ADD (1-120 ms after it starts), each torn down as
// kubelet does; churnResult.Killed counts those killed before the ADD
// returned.
func (ch *churn) killPluginsMidAdd(rng *rand.Rand, n int) {
	for range n {
		ch.cycle(cluster.AddPodOptions{Timeout: time.Duration(1+rng.IntN(120)) * time.Millisecond})
	}
}

// leftovers lists what node holds for attachments of pods not in live:
// OVS ports the agent recorded, host veths of its naming, pinned eBPF
// links. A pod whose ADD or DEL was interrupted must leave none once its
// DEL succeeded.
func leftovers(n *cluster.Node, live []*cluster.Pod) ([]string, error) {
	var own []string
	for _, p := range live {
		own = append(own, podnet.HostIfName(p.ContainerID, "eth0"))
	}
	var left []string
	out, err := n.NS.Exec(context.Background(), "ovs-vsctl", "--db=unix:"+n.RunDir+"/db.sock", "--format=csv", "--no-headings",
		"--columns=name", "find", "Port", "external_ids:"+ports.OwnerKey+"="+ports.OwnerValue).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: ovs-vsctl find: %w: %s", n.Name, err, out)
	}
	for _, name := range strings.Fields(string(out)) {
		if name = strings.Trim(name, `"`); !slices.Contains(own, name) {
			left = append(left, "OVS port "+name)
		}
	}
	out, err = n.NS.Exec(context.Background(), "ip", "-o", "link", "show", "type", "veth").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: ip link: %w: %s", n.Name, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, "nsx") && !slices.Contains(own, name) {
			left = append(left, "veth "+name)
		}
	}
	attached, err := ebpf.AttachedPods(n.PinDir)
	if err != nil {
		return nil, fmt.Errorf("%s: eBPF links: %w", n.Name, err)
	}
	for _, name := range attached {
		// The node's own interfaces have programs too (node-br-int).
		if strings.HasPrefix(name, "nsx") && !slices.Contains(own, name) {
			left = append(left, "eBPF links of "+name)
		}
	}
	return left, nil
}
