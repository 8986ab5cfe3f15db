package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/pkg/hyperbus"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// The HyperBus channel of every node uses ncp.ini's defaults: the agent at
// nsxrpc_cip 169.254.1.0/31, port 2345, on VLAN 4094. Each node has its own
// channel (the same addresses on each), as each NSX hypervisor talks only
// to the VMs it hosts.
const (
	HyperBusVLAN  = 4094
	hbAgentAddr   = "169.254.1.0:2345"
	hbPeerCIDR    = "169.254.1.1/31"
	hbRetry       = 300 * time.Millisecond
	hbRequestWait = 10 * time.Second
	// hbCookie marks br-fabric's channel flows; the node index is added.
	hbCookie = 0x4b00
)

// Channel is the hypervisor's end of one node's HyperBus: a namespace
// behind its own port of br-fabric, whose traffic flows go only to and
// from that node's uplink on VLAN 4094. It keeps a session to the node's
// agent (reconnecting until Drop), pushes the configs the NCP stand-in
// computes for the node's pods (a snapshot on every connect, then upserts
// and deletes), and records the agent's statuses. Safe for concurrent use.
type Channel struct {
	Node string
	NS   *harness.NetNS // the hypervisor's namespace, 169.254.1.1/31 on eth0
	t    testing.TB

	// mu is held across sends, so a snapshot and the upserts after it
	// reach the agent in the order they were made.
	mu       sync.Mutex
	configs  map[podName]hyperbus.ContainerConfig
	client   *hyperbus.Client
	dropped  bool
	wake     chan struct{} // signalled by Restore
	statuses map[podName]hyperbus.Message
}

// podName is a pod by namespace and name.
type podName struct{ namespace, name string }

// ServeHyperBus plays HyperBus for node (connected by ConnectNode with
// index): from now on the node's pods get their configs over the channel,
// never as an annotation. The node's agent must run with enable_hyperbus =
// True and the default nsxrpc_* keys. Everything goes in t's cleanup.
func (f *Fabric) ServeHyperBus(t testing.TB, node string, index int) *Channel {
	t.Helper()
	ch := &Channel{Node: node, NS: harness.NewNetNS(t), t: t, configs: map[podName]hyperbus.ContainerConfig{},
		wake: make(chan struct{}, 1), statuses: map[podName]hyperbus.Message{}}
	port, uplink := fmt.Sprintf("hb%d", index), fmt.Sprintf("node%d", index)
	harness.VethPair(t, ch.NS, "eth0", f.NS, port)
	ch.NS.Run(t, "ethtool", "-K", "eth0", "tx", "off")
	f.NS.Run(t, "ethtool", "-K", port, "tx", "off")
	ch.NS.Run(t, "ip", "addr", "add", hbPeerCIDR, "dev", "eth0")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := f.db.EnsureAccessPort(ctx, Bridge, ovsdb.PortSpec{Name: port, Tag: HyperBusVLAN}); err != nil {
		t.Fatal(err)
	}
	// The channel is a point-to-point link: VLAN 4094 from this node's
	// uplink goes to this hypervisor port only, and back. Every other
	// 4094 frame is dropped (priority 90, Start), so NORMAL never floods
	// one node's channel to another.
	cookie := fmt.Sprintf("cookie=%#x", hbCookie+index)
	f.OVS.Ofctl(t, Bridge, "add-flow", fmt.Sprintf("%s,priority=100,in_port=%s,dl_vlan=%d,actions=strip_vlan,output:%s", cookie, uplink, HyperBusVLAN, port))
	f.OVS.Ofctl(t, Bridge, "add-flow", fmt.Sprintf("%s,priority=100,in_port=%s,actions=mod_vlan_vid:%d,output:%s", cookie, port, HyperBusVLAN, uplink))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		f.OVS.Ofctl(t, Bridge, "del-flows", cookie+"/-1")
		if err := f.db.DeletePort(ctx, Bridge, port); err != nil {
			t.Errorf("fabric: %v", err)
		}
	})

	f.mu.Lock()
	if f.hyperbus == nil {
		f.hyperbus = map[string]*Channel{}
	}
	f.hyperbus[node] = ch
	f.mu.Unlock()

	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ch.run(runCtx)
	}()
	t.Cleanup(func() {
		f.mu.Lock()
		delete(f.hyperbus, node)
		f.mu.Unlock()
		stop()
		ch.closeSession()
		<-done
	})
	return ch
}

// channel is node's HyperBus channel, nil when the node takes its configs
// from the annotation.
func (f *Fabric) channel(node string) *Channel {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hyperbus[node]
}

// forgetPod deletes a pod's config from whichever channel holds it.
func (f *Fabric) forgetPod(ctx context.Context, namespace, name string) error {
	f.mu.Lock()
	chs := make([]*Channel, 0, len(f.hyperbus))
	for _, ch := range f.hyperbus {
		chs = append(chs, ch)
	}
	f.mu.Unlock()
	for _, ch := range chs {
		if err := ch.delete(ctx, podName{namespace, name}); err != nil {
			return err
		}
	}
	return nil
}

// run keeps a session up until ctx ends, except while dropped.
func (ch *Channel) run(ctx context.Context) {
	for ctx.Err() == nil {
		ch.mu.Lock()
		dropped := ch.dropped
		ch.mu.Unlock()
		if dropped {
			select {
			case <-ctx.Done():
				return
			case <-ch.wake:
			}
			continue
		}
		c, err := ch.connect(ctx)
		if err != nil {
			// The agent is not up yet, or restarting: as HyperBus does,
			// try again.
			select {
			case <-ctx.Done():
				return
			case <-time.After(hbRetry):
			}
			continue
		}
		for m := range c.Statuses() {
			ch.mu.Lock()
			ch.statuses[podName{m.Pod.Namespace, m.Pod.Name}] = m
			ch.mu.Unlock()
		}
		ch.mu.Lock()
		if ch.client == c {
			ch.client = nil
		}
		ch.mu.Unlock()
	}
}

// connect dials the agent from the hypervisor's namespace and sends the
// snapshot of every config of the node.
func (ch *Channel) connect(ctx context.Context) (*hyperbus.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var c *hyperbus.Client
	if err := ch.NS.Do(func() (err error) { c, err = hyperbus.Dial(dctx, hbAgentAddr, ch.Node, time.Second); return err }); err != nil {
		return nil, err
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dropped { // Drop came while dialling
		c.Close()
		return nil, errors.New("dropped")
	}
	snap := make([]hyperbus.ContainerConfig, 0, len(ch.configs))
	for _, cc := range ch.configs {
		snap = append(snap, cc)
	}
	sctx, cancel := context.WithTimeout(ctx, hbRequestWait)
	defer cancel()
	if err := c.Snapshot(sctx, snap); err != nil {
		c.Close()
		return nil, err
	}
	ch.client = c
	return c, nil
}

// upsert holds a pod's config and pushes it when a session is up; without
// one, the next session's snapshot carries it.
func (ch *Channel) upsert(ctx context.Context, cc hyperbus.ContainerConfig) error {
	k := podName{cc.Pod.Namespace, cc.Pod.Name}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if old, ok := ch.configs[k]; ok && old.Pod == cc.Pod && string(old.Config) == string(cc.Config) {
		return nil
	}
	ch.configs[k] = cc
	if ch.client == nil {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, hbRequestWait)
	defer cancel()
	if err := ch.client.Upsert(rctx, cc); err != nil {
		return fmt.Errorf("HyperBus upsert for %s on %s: %w", cc.Pod, ch.Node, err)
	}
	return nil
}

func (ch *Channel) delete(ctx context.Context, k podName) error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	cc, ok := ch.configs[k]
	if !ok {
		return nil
	}
	delete(ch.configs, k)
	if ch.client == nil {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, hbRequestWait)
	defer cancel()
	if err := ch.client.Delete(rctx, cc.Pod); err != nil {
		return fmt.Errorf("HyperBus delete for %s on %s: %w", cc.Pod, ch.Node, err)
	}
	return nil
}

func (ch *Channel) closeSession() {
	ch.mu.Lock()
	c := ch.client
	ch.client = nil
	ch.mu.Unlock()
	if c != nil {
		c.Close()
		<-c.Done()
	}
}

// Drop ends the session and keeps it down until Restore, as a lost link
// between the node and its hypervisor does. Configs computed meanwhile
// are held for the snapshot of the next session.
func (ch *Channel) Drop() {
	ch.mu.Lock()
	ch.dropped = true
	ch.mu.Unlock()
	ch.closeSession()
}

// Restore lets the channel reconnect after Drop.
func (ch *Channel) Restore() {
	ch.mu.Lock()
	ch.dropped = false
	ch.mu.Unlock()
	select {
	case ch.wake <- struct{}{}:
	default:
	}
}

// Status is the last status the agent reported for a pod.
func (ch *Channel) Status(namespace, name string) (hyperbus.Message, bool) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	m, ok := ch.statuses[podName{namespace, name}]
	return m, ok
}

// containerConfig is a pod's config as HyperBus carries it.
func containerConfig(node, namespace, name, uid, config string) hyperbus.ContainerConfig {
	return hyperbus.ContainerConfig{Node: node, Pod: hyperbus.PodRef{Namespace: namespace, Name: name, UID: uid},
		Config: json.RawMessage(config)}
}
