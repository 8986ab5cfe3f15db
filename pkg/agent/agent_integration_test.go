package agent_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/audit"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
	"github.com/nsx-ujo/nsx-ujo/pkg/hyperbus"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// staticSource is a podconfig.Source from a map: these tests are about the
// node's network; the informer path is tested against a real kube-apiserver
// in tests/e2e.
type staticSource struct {
	mu   sync.Mutex
	cfgs map[string]string // ns/name -> annotation
	uids map[string]string // ns/name -> uid
}

func (s *staticSource) remove(ns, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.cfgs, ns+"/"+name)
	delete(s.uids, ns+"/"+name)
}

func (s *staticSource) Get(ctx context.Context, ns, name, uid string) (*podconfig.Config, error) {
	s.mu.Lock()
	a, ok := s.cfgs[ns+"/"+name]
	s.mu.Unlock()
	if !ok {
		return nil, &podconfig.NotReadyError{Pod: ns + "/" + name, Reason: "no annotation"}
	}
	return podconfig.Parse(a, uid)
}

func (s *staticSource) PodExists(uid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.uids {
		if u == uid {
			return true
		}
	}
	return false
}

func (s *staticSource) Synced() bool { return true }

// feed gives pods their configs: the annotation stand-in (staticSource),
// or the hypervisor's end of a HyperBus session.
type feed interface {
	// set publishes a pod's config; an error is the source refusing it.
	set(ns, name, uid, annotation string) error
	remove(ns, name string)
}

func (s *staticSource) set(ns, name, uid, annotation string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfgs[ns+"/"+name], s.uids[ns+"/"+name] = annotation, uid
	return nil
}

// Config source modes: every case of modeCases runs in each.
const (
	annotationMode = "annotation"
	hyperbusMode   = "hyperbus"
)

var modes = []string{annotationMode, hyperbusMode}

// forEachMode runs f as a subtest per config source mode.
func forEachMode(t *testing.T, f func(t *testing.T, mode string)) {
	for _, m := range modes {
		t.Run(m, func(t *testing.T) { f(t, m) })
	}
}

type node struct {
	ns     *harness.NetNS
	ovs    *harness.OVS
	db     *ovsdb.Client
	mode   string
	src    feed
	source podconfig.Source
	agent  *agent.Agent
	ports  *ports.Manager
	hb     *hbSession // HyperBus mode
}

func newNode(t *testing.T) *node { return newNodeIn(t, annotationMode) }

// newNodeIn is a node whose agent takes pod configs from mode's source.
func newNodeIn(t *testing.T, mode string) *node {
	t.Helper()
	n := harness.NewNetNS(t)
	o := harness.StartOVS(t, harness.OVSOptions{NetNS: n, Bridges: []string{"br-int"}})
	db, err := ovsdb.Dial(o.DBSock, ovsdb.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	pm := ports.New(db, "br-int")
	nd := &node{ns: n, ovs: o, db: db, ports: pm, mode: mode}
	switch mode {
	case annotationMode:
		src := &staticSource{cfgs: map[string]string{}, uids: map[string]string{}}
		nd.src, nd.source = src, src
	case hyperbusMode:
		nd.hb = startHyperBus(t, nd)
		nd.src, nd.source = nd.hb, nd.hb.srv
	}
	nd.agent = nd.newAgent(t)
	return nd
}

// newAgent is a fresh agent process on the node (as after a restart).
func (nd *node) newAgent(t *testing.T) *agent.Agent { return nd.newAgentLogging(zaptest.NewLogger(t)) }

// newAgentLogging is newAgent logging to log.
func (nd *node) newAgentLogging(log *zap.Logger) *agent.Agent {
	d := agent.Deps{Log: log, Pods: nd.source, Ports: nd.ports, PodNet: podnet.New(podnet.Options{HostNetNS: nd.ns.Path}),
		HostPorts: nftables.NewHostPorts(nftables.HostPortsOptions{NetNS: nd.ns.Path, LocalnetInterface: "br-int"})}
	if nd.hb != nil {
		d.Reporter = nd.hb.srv
	}
	a := agent.New(agent.Options{MTU: 1500, ConfigRetryTimeout: time.Second, OVSOperationTimeout: 2 * time.Second}, d)
	if nd.hb != nil {
		nd.hb.agent.Store(a)
	}
	return a
}

// hbSession is the HyperBus channel of a node: the agent's internal port on
// VLAN 4094 with the agent's Server listening on it, and the hypervisor, a
// namespace behind an access port on that VLAN, holding a session.
type hbSession struct {
	t     *testing.T
	srv   *hyperbus.Server
	hv    *harness.NetNS
	agent atomic.Pointer[agent.Agent] // the node's current agent, for OnSnapshot

	mu      sync.Mutex
	c       *hyperbus.Client
	configs map[string]hyperbus.ContainerConfig // what the hypervisor holds, by ns/name
}

const hbNode = "node-1"

func startHyperBus(t *testing.T, nd *node) *hbSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	po := agent.RPCPortOptions{Bridge: "br-int", VLAN: 4094, Addr: netip.MustParsePrefix("169.254.1.0/31"), NetNS: nd.ns.Path, TxChecksumOff: true}
	if err := agent.EnsureRPCPort(ctx, nd.db, po); err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	if err := nd.ns.Do(func() (err error) { l, err = net.Listen("tcp", "169.254.1.0:2345"); return err }); err != nil {
		t.Fatal(err)
	}
	h := &hbSession{t: t, configs: map[string]hyperbus.ContainerConfig{}}
	h.srv = hyperbus.NewServer(hyperbus.ServerOptions{Node: hbNode, Heartbeat: time.Second, Log: zaptest.NewLogger(t),
		OnSnapshot: func() {
			if a := h.agent.Load(); a != nil {
				if err := a.ReportAttachments(context.Background()); err != nil {
					t.Errorf("ReportAttachments: %v", err)
				}
			}
		}})
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(sctx, l) }()
	t.Cleanup(func() {
		h.drop()
		stop()
		if err := <-served; err != nil {
			t.Errorf("HyperBus Serve: %v", err)
		}
	})
	h.hv = nd.ovs.AccessPeer(t, nd.ns, "br-int", "hv0", 4094, "169.254.1.1/31")
	h.connect()
	return h
}

// connect opens a session from the hypervisor and sends its snapshot.
func (h *hbSession) connect() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c *hyperbus.Client
	if err := h.hv.Do(func() (err error) { c, err = hyperbus.Dial(ctx, "169.254.1.0:2345", hbNode, time.Second); return err }); err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.c = c
	snap := make([]hyperbus.ContainerConfig, 0, len(h.configs))
	for _, cc := range h.configs {
		snap = append(snap, cc)
	}
	h.mu.Unlock()
	if err := c.Snapshot(ctx, snap); err != nil {
		h.t.Fatal(err)
	}
}

// drop ends the session, as a lost link does.
func (h *hbSession) drop() {
	h.mu.Lock()
	c := h.c
	h.c = nil
	h.mu.Unlock()
	if c != nil {
		c.Close()
		<-c.Done()
	}
	// The agent sees the FIN a moment later.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if up, _ := h.srv.Connected(); !up {
			return
		}
	}
	h.t.Error("the agent still has a session after the hypervisor closed it")
}

func (h *hbSession) client() *hyperbus.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.c
}

// set upserts on the session when there is one; the config is held for
// the next snapshot either way (as the hypervisor's view changes while the
// session is down).
func (h *hbSession) set(ns, name, uid, annotation string) error {
	cc := hyperbus.ContainerConfig{Node: hbNode, Pod: hyperbus.PodRef{Namespace: ns, Name: name, UID: uid}, Config: json.RawMessage(annotation)}
	c := h.client()
	if c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Upsert(ctx, cc); err != nil {
			return err
		}
	}
	h.mu.Lock()
	h.configs[ns+"/"+name] = cc
	h.mu.Unlock()
	return nil
}

func (h *hbSession) remove(ns, name string) {
	h.mu.Lock()
	cc, ok := h.configs[ns+"/"+name]
	delete(h.configs, ns+"/"+name)
	h.mu.Unlock()
	if c := h.client(); c != nil && ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Delete(ctx, cc.Pod); err != nil {
			h.t.Errorf("HyperBus delete %s/%s: %v", ns, name, err)
		}
	}
}

// status waits for the agent's next status about pod name.
func (h *hbSession) status(t *testing.T, name string) hyperbus.Message {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-h.client().Statuses():
			if !ok {
				t.Fatalf("session ended waiting for the status of %s", name)
			}
			if m.Pod.Name == name {
				return m
			}
		case <-timeout:
			t.Fatalf("no status for %s", name)
		}
	}
}

type pod struct {
	name, uid, container string
	ns                   *harness.NetNS
	ip                   string
	mac                  string
	vlan                 int
}

func (nd *node) newPod(t *testing.T, i, vlan int) *pod {
	p := &pod{
		name: fmt.Sprintf("pod-%d", i), uid: fmt.Sprintf("uid-%d", i), container: fmt.Sprintf("container-%d-%d", i, time.Now().UnixNano()),
		ns: harness.NewNetNS(t), ip: fmt.Sprintf("10.0.1.%d", 10+i), mac: fmt.Sprintf("02:50:56:00:01:%02x", 10+i), vlan: vlan,
	}
	if err := nd.src.set("default", p.name, p.uid, p.annotation()); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pod) annotation() string {
	return fmt.Sprintf(`{"version":1,"pod_uid":%q,"ip_address":"%s/24","mac_address":%q,"gateway_ip":"10.0.1.1","vlan_id":%d}`,
		p.uid, p.ip, p.mac, p.vlan)
}

const netconf = `{"cniVersion":"1.1.0","name":"nsx","type":"nsx"}`

func (p *pod) req(cmd cniwire.Command) *cniwire.Request {
	return &cniwire.Request{Command: cmd, ContainerID: p.container, Netns: p.ns.Path, IfName: "eth0",
		PodNamespace: "default", PodName: p.name, PodUID: p.uid, Config: json.RawMessage(netconf)}
}

func (nd *node) do(t *testing.T, req *cniwire.Request) *cniwire.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return nd.agent.Handle(ctx, req)
}

func (nd *node) mustAdd(t *testing.T, p *pod) *types100.Result {
	t.Helper()
	resp := nd.do(t, p.req(cniwire.CmdAdd))
	if resp.Error != nil {
		t.Fatalf("ADD %s: %v", p.name, resp.Error)
	}
	res, err := types100.NewResult(resp.Result)
	if err != nil {
		t.Fatal(err)
	}
	return res.(*types100.Result)
}

// hostLinks lists the nsx* links in the node netns.
func (nd *node) hostLinks(t *testing.T) []string {
	var names []string
	err := nd.ns.Do(func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if n := l.Attrs().Name; strings.HasPrefix(n, "nsx") && n != agent.RPCPortName {
				names = append(names, l.Attrs().Name)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func (nd *node) portNames(t *testing.T) []string {
	// Every Port row but the bridge's own and the HyperBus channel's,
	// whether or not the bridge exists.
	var names []string
	for _, n := range strings.Fields(nd.ovs.Vsctl(t, "--bare", "--columns=name", "list", "Port")) {
		if n != "br-int" && n != agent.RPCPortName && n != "hv0" {
			names = append(names, n)
		}
	}
	return names
}

func (nd *node) assertEmpty(t *testing.T) {
	t.Helper()
	if l := nd.hostLinks(t); len(l) != 0 {
		t.Errorf("veths left in the node: %v", l)
	}
	if p := nd.portNames(t); len(p) != 0 {
		t.Errorf("OVS ports left: %v", p)
	}
}

func TestAddConfiguresPodAndPort(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		nd := newNodeIn(t, mode)
		p := nd.newPod(t, 1, 101)
		res := nd.mustAdd(t, p)
		host := podnet.HostIfName(p.container, "eth0")

		if len(res.IPs) != 1 || res.IPs[0].Address.String() != p.ip+"/24" || res.IPs[0].Gateway.String() != "10.0.1.1" ||
			len(res.Interfaces) != 2 || res.Interfaces[0].Name != host || res.Interfaces[1].Sandbox != p.ns.Path ||
			res.Interfaces[1].Mac != p.mac || len(res.Routes) != 1 {
			t.Fatalf("result %s", mustJSON(res))
		}
		// Pod side.
		addr := p.ns.Run(t, "ip", "-o", "addr", "show", "dev", "eth0")
		link := p.ns.Run(t, "ip", "-o", "link", "show", "dev", "eth0")
		route := p.ns.Run(t, "ip", "route", "show", "default")
		if !strings.Contains(addr, p.ip+"/24") || !strings.Contains(link, p.mac) || !strings.Contains(link, "mtu 1500") ||
			!strings.Contains(link, "state UP") || !strings.Contains(route, "default via 10.0.1.1 dev eth0") {
			t.Fatalf("pod interface:\n%s\n%s\n%s", addr, link, route)
		}
		// netdev datapath: TX checksum offload off on both ends.
		if out := p.ns.Run(t, "ethtool", "-k", "eth0"); !strings.Contains(out, "tx-checksumming: off") {
			t.Fatalf("pod tx checksumming not off:\n%s", out)
		}
		if out := nd.ns.Run(t, "ethtool", "-k", host); !strings.Contains(out, "tx-checksumming: off") {
			t.Fatalf("host tx checksumming not off:\n%s", out)
		}
		// OVS side.
		if tag := strings.TrimSpace(nd.ovs.Vsctl(t, "get", "Port", host, "tag")); tag != "101" {
			t.Fatalf("tag %q", tag)
		}
		for key, want := range map[string]string{"container-id": p.container, "pod-name": "pod-1", "pod-namespace": "default",
			"pod-uid": "uid-1", "netns": p.ns.Path, "ifname": "eth0", "attached-mac": p.mac, "ip-address": p.ip + "/24",
			"gateway-ip": "10.0.1.1", "mtu": "1500", "nsx-ujo-owner": "nsx-node-agent"} {
			got := strings.Trim(strings.TrimSpace(nd.ovs.Vsctl(t, "get", "Port", host, "external_ids:"+key)), `"`)
			if got != want {
				t.Errorf("external_ids:%s = %q, want %q", key, got, want)
			}
		}
		at := strings.Trim(strings.TrimSpace(nd.ovs.Vsctl(t, "get", "Port", host, "external_ids:attached-at")), `"`)
		if ts, err := time.Parse(time.RFC3339, at); err != nil || time.Since(ts) > 10*time.Minute {
			t.Errorf("external_ids:attached-at = %q (%v), want the time of the ADD", at, err)
		}
		if ofport := strings.TrimSpace(nd.ovs.Vsctl(t, "get", "Interface", host, "ofport")); ofport == "-1" || ofport == "[]" {
			t.Fatalf("ofport %s", ofport)
		}
		// CHECK passes, then fails once the pod's address is changed behind our back.
		if resp := nd.do(t, p.req(cniwire.CmdCheck)); resp.Error != nil {
			t.Fatalf("CHECK: %v", resp.Error)
		}
		p.ns.Run(t, "ip", "addr", "flush", "dev", "eth0")
		if resp := nd.do(t, p.req(cniwire.CmdCheck)); resp.Error == nil || !strings.Contains(resp.Error.Msg+resp.Error.Details, "address") {
			t.Fatalf("CHECK after flush: %+v", resp.Error)
		}
	})
}

func TestTwoPodsPingThroughBrInt(t *testing.T) {
	nd := newNode(t)
	a, b := nd.newPod(t, 1, 101), nd.newPod(t, 2, 101)
	nd.mustAdd(t, a)
	nd.mustAdd(t, b)
	a.ns.Run(t, "ping", "-c", "2", "-W", "2", b.ip)
	b.ns.Run(t, "ping", "-c", "1", "-W", "2", a.ip)

	// Another VLAN is another segment: the access ports must not leak.
	c := nd.newPod(t, 3, 202)
	nd.mustAdd(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := c.ns.Exec(ctx, "ping", "-c", "1", "-W", "1", a.ip).CombinedOutput(); err == nil {
		t.Fatalf("pod on VLAN 202 reached a pod on VLAN 101:\n%s", out)
	}
}

func TestDelRemovesEverythingAndIsIdempotent(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		nd := newNodeIn(t, mode)
		p := nd.newPod(t, 1, 101)
		nd.mustAdd(t, p)
		for i := 0; i < 2; i++ {
			if resp := nd.do(t, p.req(cniwire.CmdDel)); resp.Error != nil {
				t.Fatalf("DEL #%d: %v", i+1, resp.Error)
			}
		}
		nd.assertEmpty(t)
		if out := p.ns.Run(t, "ip", "-o", "link"); strings.Contains(out, "eth0") {
			t.Fatalf("eth0 still in the pod:\n%s", out)
		}
		// DEL for an attachment that never existed, with its netns gone.
		gone := p.req(cniwire.CmdDel)
		gone.ContainerID, gone.Netns = "never-added", "/var/run/netns/does-not-exist"
		if resp := nd.do(t, gone); resp.Error != nil {
			t.Fatalf("DEL of unknown attachment: %v", resp.Error)
		}
	})
}

// hostPorts follow ADD and DEL, come back after an agent restart from the
// port's record, and a bad portMappings entry is refused naming its field
// with nothing left behind.
func TestHostPortsFollowAddAndDel(t *testing.T) {
	nd := newNode(t)
	p := nd.newPod(t, 1, 101)
	add := p.req(cniwire.CmdAdd)
	add.Config = json.RawMessage(`{"cniVersion":"1.1.0","name":"nsx","type":"nsx","runtimeConfig":{"portMappings":[
		{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":8080,"containerPort":80,"protocol":"udp","hostIP":"10.0.100.2"}]}}`)
	table := func() string {
		out, _ := nd.ns.Exec(context.Background(), "nft", "list", "table", "ip", nftables.HostPortTable).CombinedOutput()
		return string(out)
	}
	const tcpRule, udpRule = "tcp dport 8080 dnat to 10.0.1.11:80", "udp dport 8080 dnat to 10.0.1.11:80"
	if resp := nd.do(t, add); resp.Error != nil {
		t.Fatalf("ADD: %v", resp.Error)
	}
	if tb := table(); !strings.Contains(tb, tcpRule) || !strings.Contains(tb, udpRule) || !strings.Contains(tb, "ip daddr 10.0.100.2") {
		t.Fatalf("hostPort table after ADD:\n%s", tb)
	}
	// Restart: the table is gone (say the node's nftables were flushed), a
	// new agent serves the hostPorts again from the OVS port's record.
	nd.ns.Run(t, "nft", "delete", "table", "ip", nftables.HostPortTable)
	nd.agent = nd.newAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nd.agent.RestoreHostPorts(ctx); err != nil {
		t.Fatal(err)
	}
	if tb := table(); !strings.Contains(tb, tcpRule) {
		t.Fatalf("hostPort table after a restart:\n%s", tb)
	}
	if resp := nd.do(t, p.req(cniwire.CmdDel)); resp.Error != nil {
		t.Fatalf("DEL: %v", resp.Error)
	}
	if tb := table(); strings.Contains(tb, "dnat") {
		t.Fatalf("hostPort table after DEL:\n%s", tb)
	}
	nd.assertEmpty(t)

	bad := nd.newPod(t, 2, 101).req(cniwire.CmdAdd)
	bad.Config = json.RawMessage(`{"cniVersion":"1.1.0","name":"nsx","type":"nsx","runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":80}]}}`)
	resp := nd.do(t, bad)
	if resp.Error == nil || !strings.Contains(resp.Error.Details, "runtimeConfig.portMappings[0].hostPort") {
		t.Fatalf("ADD with a bad portMappings entry: %+v", resp.Error)
	}
	nd.assertEmpty(t)
}

// HyperBus mode: the agent's internal port on VLAN 4094 carries a session
// from a hypervisor namespace on that VLAN; a pod's config pushed over it
// wires the pod and the agent reports the pod attached, then detached; a
// config pushed for an earlier pod of the same name is never used; the
// port is idempotent, never listed as a pod's, and removed when HyperBus
// is switched off.
func TestHyperBusMode(t *testing.T) {
	nd := newNodeIn(t, hyperbusMode)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	po := agent.RPCPortOptions{Bridge: "br-int", VLAN: 4094, Addr: netip.MustParsePrefix("169.254.1.0/31"), NetNS: nd.ns.Path, TxChecksumOff: true}
	uuid := nd.ovs.Vsctl(t, "get", "Port", agent.RPCPortName, "_uuid")
	if err := agent.EnsureRPCPort(ctx, nd.db, po); err != nil { // as after an agent restart
		t.Fatal(err)
	}
	if again := nd.ovs.Vsctl(t, "get", "Port", agent.RPCPortName, "_uuid"); again != uuid {
		t.Fatal("EnsureRPCPort recreated an intact port")
	}
	p := nd.newPod(t, 1, 101)
	nd.mustAdd(t, p)
	if tag := strings.TrimSpace(nd.ovs.Vsctl(t, "get", "Port", podnet.HostIfName(p.container, "eth0"), "tag")); tag != "101" {
		t.Fatalf("pod port tag %s, want 101 from the HyperBus config", tag)
	}
	if m := nd.hb.status(t, p.name); m.State != hyperbus.StateAttached || m.Pod.UID != p.uid || m.Error != "" {
		t.Fatalf("status after ADD: %+v", m)
	}
	// The same name, recreated (another uid): its predecessor's config is
	// never used; the ADD fails after config_retry_timeout, leaving nothing,
	// and is reported.
	again := nd.newPod(t, 1, 102)
	again.uid = "uid-recreated"
	if resp := nd.do(t, again.req(cniwire.CmdAdd)); resp.Error == nil || resp.Error.Code != types.ErrTryAgainLater ||
		!strings.Contains(resp.Error.Details+resp.Error.Msg, "uid") {
		t.Fatalf("ADD of a recreated pod with only its predecessor's config: %+v", resp.Error)
	}
	if m := nd.hb.status(t, p.name); m.State != hyperbus.StateDetached || m.Pod.UID != "uid-recreated" || !strings.Contains(m.Error, "uid") {
		t.Fatalf("status after the failed ADD: %+v", m)
	}
	if resp := nd.do(t, p.req(cniwire.CmdDel)); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	if m := nd.hb.status(t, p.name); m.State != hyperbus.StateDetached || m.Pod.UID != p.uid || m.Error != "" {
		t.Fatalf("status after DEL: %+v", m)
	}
	// The audit and GC list pod ports only: never the HyperBus port.
	if list, err := nd.ports.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("pod ports listed: %+v, %v", list, err)
	}
	if err := agent.RemoveRPCPort(ctx, nd.db, "br-int"); err != nil {
		t.Fatal(err)
	}
	if out := nd.ovs.Vsctl(t, "list-ports", "br-int"); strings.Contains(out, agent.RPCPortName) {
		t.Fatalf("HyperBus port left after RemoveRPCPort:\n%s", out)
	}
}

// The session drops while an ADD waits for its pod's config: the ADD
// completes with the config the reconnected session's snapshot brings;
// without a reconnect in config_retry_timeout it fails cleanly.
func TestHyperBusSessionDropDuringAdd(t *testing.T) {
	nd := newNodeIn(t, hyperbusMode)
	p := nd.newPod(t, 1, 101)
	nd.hb.remove("default", p.name) // the hypervisor has not sent it yet
	nd.hb.drop()
	done := make(chan *cniwire.Response, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done <- nd.agent.Handle(ctx, p.req(cniwire.CmdAdd))
	}()
	time.Sleep(200 * time.Millisecond) // the ADD is waiting (config_retry_timeout is 1 s)
	if err := nd.hb.set("default", p.name, p.uid, p.annotation()); err != nil {
		t.Fatal(err)
	}
	nd.hb.connect()
	if resp := <-done; resp.Error != nil {
		t.Fatalf("ADD across a session drop: %v", resp.Error)
	}
	p.ns.Run(t, "ip", "-o", "addr", "show", "dev", "eth0")

	q := nd.newPod(t, 2, 101)
	nd.hb.remove("default", q.name)
	nd.hb.drop()
	resp := nd.do(t, q.req(cniwire.CmdAdd))
	if resp.Error == nil || resp.Error.Code != types.ErrTryAgainLater || !strings.Contains(resp.Error.Details, "no HyperBus session") {
		t.Fatalf("ADD with no session and no config: %+v", resp.Error)
	}
	if names := nd.portNames(t); len(names) != 1 { // p's
		t.Fatalf("ports after the failed ADD: %v", names)
	}
}

// Configs that change while no session exists are reconciled by the next
// session's snapshot: a new pod gets the new config, a running pod keeps
// its attachment and the hypervisor is told how it differs, and a pod the
// hypervisor forgot is reported and found stale by the audit.
func TestHyperBusSnapshotReconciliation(t *testing.T) {
	nd := newNodeIn(t, hyperbusMode)
	running, forgotten, fresh := nd.newPod(t, 1, 101), nd.newPod(t, 2, 101), nd.newPod(t, 3, 101)
	nd.mustAdd(t, running)
	nd.mustAdd(t, forgotten)
	nd.hb.drop()
	moved := *running
	moved.vlan = 202
	for _, err := range []error{
		nd.hb.set("default", running.name, running.uid, moved.annotation()),
		nd.hb.set("default", fresh.name, fresh.uid, strings.Replace(fresh.annotation(), `"vlan_id":101`, `"vlan_id":303`, 1)),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	nd.hb.remove("default", forgotten.name)
	nd.hb.connect()

	got := map[string]hyperbus.Message{}
	for len(got) < 2 {
		m, ok := <-nd.hb.client().Statuses()
		if !ok {
			t.Fatal("session ended")
		}
		got[m.Pod.Name] = m
	}
	if m := got[running.name]; m.State != hyperbus.StateAttached || !strings.Contains(m.Error, "vlan 101") || !strings.Contains(m.Error, "vlan 202") {
		t.Errorf("status of the running pod whose config changed: %+v", m)
	}
	if m := got[forgotten.name]; m.State != hyperbus.StateAttached || !strings.Contains(m.Error, "no longer held") {
		t.Errorf("status of the pod the hypervisor forgot: %+v", m)
	}
	if tag := strings.TrimSpace(nd.ovs.Vsctl(t, "get", "Port", podnet.HostIfName(running.container, "eth0"), "tag")); tag != "101" {
		t.Errorf("a running pod's port moved to VLAN %s under it", tag)
	}
	nd.mustAdd(t, fresh)
	if tag := strings.TrimSpace(nd.ovs.Vsctl(t, "get", "Port", podnet.HostIfName(fresh.container, "eth0"), "tag")); tag != "303" {
		t.Errorf("a new pod's tag %s, want 303 from the snapshot", tag)
	}
	if nd.source.PodExists(forgotten.uid) || !nd.source.PodExists(running.uid) {
		t.Errorf("after the snapshot: forgotten held %v, running held %v", nd.source.PodExists(forgotten.uid), nd.source.PodExists(running.uid))
	}
}

// A malformed frame on the channel is answered with an ack naming what is
// wrong and ends that session; it changes nothing: the configs held still
// wire pods, and the next session's snapshot goes through.
func TestHyperBusMalformedFrame(t *testing.T) {
	nd := newNodeIn(t, hyperbusMode)
	p, q := nd.newPod(t, 1, 101), nd.newPod(t, 2, 101)
	nd.mustAdd(t, p)
	nd.hb.drop()
	var raw net.Conn
	if err := nd.hb.hv.Do(func() (err error) { raw, err = net.DialTimeout("tcp", "169.254.1.0:2345", 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, f := range []string{`{"type":"hello","versions":[1],"node":"` + hbNode + `"}`, `{"type":"upsert","seq":1,"config":{"node":`} {
		if _, err := raw.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(f))), f...)); err != nil {
			t.Fatal(err)
		}
	}
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []string
	for {
		m, err := hyperbus.ReadMessage(raw)
		if err != nil {
			break // the agent closed the session
		}
		got = append(got, string(m.Type)+":"+m.Error)
	}
	if len(got) != 2 || got[0] != "hello:" || !strings.HasPrefix(got[1], "ack:hyperbus: bad frame") {
		t.Fatalf("the agent answered %q; want its hello, then an ack naming the bad frame, then the end of the session", got)
	}
	nd.mustAdd(t, q) // its config, held from before, is intact
	nd.hb.connect()
	if err := nd.hb.set("default", "pod-3", "uid-3", strings.Replace(q.annotation(), q.uid, "uid-3", 1)); err != nil {
		t.Fatalf("upsert on the next session: %v", err)
	}
}

func TestAddTwiceIsIdempotent(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		nd := newNodeIn(t, mode)
		p := nd.newPod(t, 1, 101)
		first := nd.mustAdd(t, p)
		uuid1 := nd.ovs.Vsctl(t, "get", "Port", podnet.HostIfName(p.container, "eth0"), "_uuid")
		second := nd.mustAdd(t, p)
		uuid2 := nd.ovs.Vsctl(t, "get", "Port", podnet.HostIfName(p.container, "eth0"), "_uuid")
		if uuid1 != uuid2 {
			t.Fatal("repeated ADD recreated an intact port")
		}
		if first.IPs[0].Address.String() != second.IPs[0].Address.String() || first.Interfaces[1].Mac != second.Interfaces[1].Mac {
			t.Fatalf("results differ:\n%s\n%s", mustJSON(first), mustJSON(second))
		}
		if n := len(nd.portNames(t)); n != 1 {
			t.Fatalf("%d ports after two ADDs", n)
		}
		// A repeated ADD after the controller changed the config re-wires the pod.
		p.vlan = 202
		if err := nd.src.set("default", p.name, p.uid, p.annotation()); err != nil {
			t.Fatal(err)
		}
		nd.mustAdd(t, p)
		if tag := strings.TrimSpace(nd.ovs.Vsctl(t, "get", "Port", podnet.HostIfName(p.container, "eth0"), "tag")); tag != "202" {
			t.Fatalf("tag after re-ADD: %s", tag)
		}
	})
}

// A failed ADD leaves nothing behind, in either config source mode. A bad
// config is refused where it enters: by the ADD in annotation mode, on the
// session (the ack naming the field) in HyperBus mode, where the ADD then
// finds no config.
// TestPluginHangUpIsLogged: a runtime that kills the plugin mid-ADD
// closes the request's connection; the agent's log says so on its own
// line, since the ADD's outcome alone does not tell the cause.
func TestPluginHangUpIsLogged(t *testing.T) {
	nd := newNode(t)
	core, logs := observer.New(zapcore.InfoLevel)
	nd.agent = nd.newAgentLogging(zap.New(core))
	p := nd.newPod(t, 1, 101)
	ctx, hangUp := context.WithCancel(context.Background())
	hangUp()
	nd.agent.Handle(ctx, p.req(cniwire.CmdAdd))
	if n := logs.FilterMessageSnippet("the CNI plugin hung up before its answer").Len(); n != 1 {
		t.Errorf("the agent's log does not say the plugin hung up: %v", logs.All())
	}
	// The runtime's DEL then removes whatever the ADD did.
	if resp := nd.do(t, p.req(cniwire.CmdDel)); resp.Error != nil {
		t.Fatalf("DEL: %v", resp.Error)
	}
	nd.assertEmpty(t)
}

func TestFailedAddLeavesNothing(t *testing.T) {
	type want struct {
		code uint
		text string
	}
	// setBad publishes a bad config; in HyperBus mode its refusal must name
	// want.text.
	setBad := func(t *testing.T, nd *node, p *pod, uid, annotation, text string) {
		nd.src.remove("default", p.name)
		err := nd.src.set("default", p.name, uid, annotation)
		if nd.mode == hyperbusMode && (err == nil || !strings.Contains(err.Error(), text)) {
			t.Fatalf("HyperBus upsert of a bad config: %v, want a refusal naming %s", err, text)
		}
	}
	cases := []struct {
		name    string
		prepare func(t *testing.T, nd *node, p *pod)
		want    map[string]want // by mode
	}{
		{"bridge missing", func(t *testing.T, nd *node, p *pod) { nd.ovs.Vsctl(t, "del-br", "br-int") },
			map[string]want{annotationMode: {types.ErrInternal, "br-int"}, hyperbusMode: {types.ErrInternal, "br-int"}}},
		{"invalid config", func(t *testing.T, nd *node, p *pod) {
			setBad(t, nd, p, p.uid, strings.Replace(p.annotation(), `"vlan_id":101`, `"vlan_id":4095`, 1), "vlan_id")
		}, map[string]want{annotationMode: {agent.ErrCodeInvalidPodConfig, "vlan_id"}, hyperbusMode: {types.ErrTryAgainLater, "none received"}}},
		{"invalid IPv6 config", func(t *testing.T, nd *node, p *pod) {
			setBad(t, nd, p, p.uid, strings.Replace(p.annotation(), `"vlan_id"`, `"ipv6_address":"fd00:10:0:1::b/64","ipv6_gateway_ip":"fd00:99::1","vlan_id"`, 1), "ipv6_gateway_ip")
		}, map[string]want{annotationMode: {agent.ErrCodeInvalidPodConfig, "ipv6_gateway_ip"}, hyperbusMode: {types.ErrTryAgainLater, "none received"}}},
		{"config of another pod", func(t *testing.T, nd *node, p *pod) {
			// The hypervisor accepts it (it is the predecessor's, with its
			// uid); the ADD never uses it.
			nd.src.remove("default", p.name)
			if err := nd.src.set("default", p.name, "uid-of-predecessor", strings.Replace(p.annotation(), p.uid, "uid-of-predecessor", 1)); err != nil {
				t.Fatal(err)
			}
		}, map[string]want{annotationMode: {agent.ErrCodeInvalidPodConfig, "pod_uid"}, hyperbusMode: {types.ErrTryAgainLater, "uid-of-predecessor"}}},
		{"no config", func(t *testing.T, nd *node, p *pod) { nd.src.remove("default", p.name) },
			map[string]want{annotationMode: {types.ErrTryAgainLater, "annotation"}, hyperbusMode: {types.ErrTryAgainLater, "no usable HyperBus config"}}},
		{"ifname taken in the pod", func(t *testing.T, nd *node, p *pod) {
			harness.VethPair(t, p.ns, "eth0", p.ns, "eth0peer")
		}, map[string]want{annotationMode: {types.ErrInternal, "exists"}, hyperbusMode: {types.ErrInternal, "exists"}}},
		{"netns gone", func(t *testing.T, nd *node, p *pod) {
			p.ns = &harness.NetNS{Name: "x", Path: "/var/run/netns/nsxt-none"}
		}, map[string]want{annotationMode: {types.ErrInvalidNetNS, "netns"}, hyperbusMode: {types.ErrInvalidNetNS, "netns"}}},
		{"ovs-vswitchd down", func(t *testing.T, nd *node, p *pod) {
			// The veth is created, the port is committed to OVSDB, and
			// vswitchd never confirms it: both must be rolled back.
			nd.ovs.Appctl(t, "exit")
		}, map[string]want{annotationMode: {types.ErrInternal, "ovs-vswitchd did not apply"}, hyperbusMode: {types.ErrInternal, "ovs-vswitchd did not apply"}}},
	}
	forEachMode(t, func(t *testing.T, mode string) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				nd := newNodeIn(t, mode)
				p := nd.newPod(t, 1, 101)
				tc.prepare(t, nd, p)
				resp := nd.do(t, p.req(cniwire.CmdAdd))
				if resp.Error == nil {
					t.Fatal("ADD succeeded")
				}
				w := tc.want[mode]
				if resp.Error.Code != w.code || !strings.Contains(resp.Error.Msg+" "+resp.Error.Details, w.text) {
					t.Fatalf("ADD error %d %q %q, want code %d naming %q", resp.Error.Code, resp.Error.Msg, resp.Error.Details, w.code, w.text)
				}
				if l := nd.hostLinks(t); len(l) != 0 {
					t.Errorf("veths left: %v", l)
				}
				if names := nd.portNames(t); len(names) != 0 {
					t.Errorf("ports left: %v", names)
				}
			})
		}
	})
}

func TestAuditRemovesStaleKeepsLive(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		nd := newNodeIn(t, mode)
		live, stale := nd.newPod(t, 1, 101), nd.newPod(t, 2, 101)
		nd.mustAdd(t, live)
		nd.mustAdd(t, stale)
		// The stale pod vanished without a DEL: object gone, netns gone (its
		// veth went with it, the OVS port stayed).
		nd.src.remove("default", stale.name)
		if err := harnessDeleteNetNS(stale.ns); err != nil {
			t.Fatal(err)
		}
		aud := audit.New(audit.Options{Interval: time.Hour, NetnsExists: podnet.NetnsExists}, zaptest.NewLogger(t), nd.ports, nd.source, nd.agent)
		ctx := context.Background()
		if removed, err := aud.Sweep(ctx); err != nil || len(removed) != 0 {
			t.Fatalf("first sweep removed %v, %v: it must wait for a second sighting", removed, err)
		}
		removed, err := aud.Sweep(ctx)
		staleHost := podnet.HostIfName(stale.container, "eth0")
		if err != nil || len(removed) != 1 || removed[0] != staleHost {
			t.Fatalf("second sweep removed %v, %v; want [%s]", removed, err, staleHost)
		}
		if names := nd.portNames(t); len(names) != 1 || names[0] != podnet.HostIfName(live.container, "eth0") {
			t.Fatalf("ports after audit: %v", names)
		}
		// A port not created by the agent is never touched.
		nd.ovs.Vsctl(t, "add-port", "br-int", "uplink0", "--", "set", "Interface", "uplink0", "type=internal")
		for i := 0; i < 3; i++ {
			if removed, _ := aud.Sweep(ctx); len(removed) != 0 {
				t.Fatalf("audit removed %v", removed)
			}
		}
		if aud.RemovedTotal() != 1 {
			t.Fatalf("RemovedTotal %d", aud.RemovedTotal())
		}
	})
}

func TestGCRemovesInvalidAttachments(t *testing.T) {
	nd := newNode(t)
	keep, drop := nd.newPod(t, 1, 101), nd.newPod(t, 2, 101)
	nd.mustAdd(t, keep)
	nd.mustAdd(t, drop)
	gc := &cniwire.Request{Command: cniwire.CmdGC, Config: json.RawMessage(fmt.Sprintf(
		`{"cniVersion":"1.1.0","name":"nsx","type":"nsx","cni.dev/valid-attachments":[{"containerID":%q,"ifname":"eth0"}]}`, keep.container))}
	if resp := nd.do(t, gc); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	if names := nd.portNames(t); len(names) != 1 || names[0] != podnet.HostIfName(keep.container, "eth0") {
		t.Fatalf("ports after GC: %v", names)
	}
	if l := nd.hostLinks(t); len(l) != 1 {
		t.Fatalf("links after GC: %v", l)
	}
}

func TestParallelAdds(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		nd := newNodeIn(t, mode)
		const n = 8
		pods := make([]*pod, n)
		for i := range pods {
			pods[i] = nd.newPod(t, i+1, 101)
		}
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for _, p := range pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if resp := nd.do(t, p.req(cniwire.CmdAdd)); resp.Error != nil {
					errs <- fmt.Errorf("%s: %v", p.name, resp.Error)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if got := len(nd.portNames(t)); got != n {
			t.Fatalf("%d ports, want %d", got, n)
		}
		pods[0].ns.Run(t, "ping", "-c", "1", "-W", "2", pods[n-1].ip)
	})
}

func harnessDeleteNetNS(n *harness.NetNS) error {
	// Remove the namespace the way a runtime does (ip netns del); the
	// harness cleanup tolerates it being gone already.
	return runCmd("ip", "netns", "del", n.Name)
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
