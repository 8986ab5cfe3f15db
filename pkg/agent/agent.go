// Package agent is nsx-node-agent's CNI logic: it turns CNI requests into
// a pod network config (podconfig), a veth pair (podnet) and an OVS access
// port (ports), and rolls back whatever a failed ADD created.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/ports"
	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
)

// ErrCodeInvalidPodConfig is the CNI error code (plugin-specific range)
// for a malformed ncp/network_config annotation.
const ErrCodeInvalidPodConfig uint = 101

// Options are the agent's settings (from ncp.ini).
type Options struct {
	MTU                 int           // [nsx_node_agent] mtu, when the annotation has none
	ConfigRetryTimeout  time.Duration // how long ADD waits for the annotation
	OVSOperationTimeout time.Duration // bound of each OVS step
	ProcMountPathPrefix string        // prefix for /proc/<pid>/ns/net paths
}

// ProgramAttacher attaches the eBPF dataplane's programs to a pod's
// interface, so the pod's very first packet to a Service is already NATed.
// Both methods are idempotent. The OVS dataplane needs nothing per pod.
type ProgramAttacher interface {
	Attach(netnsPath, ifName, portName string) error
	Detach(portName string) error
}

// HostPortServer serves the hostPorts of every pod on the node. Sync
// replaces the whole set; it is idempotent, and atomic for packets.
type HostPortServer interface {
	Sync([]nftables.HostPort) error
}

// Deps are the agent's collaborators.
type Deps struct {
	Log       *zap.Logger
	Pods      podconfig.Source
	Ports     *ports.Manager
	PodNet    *podnet.Manager
	Programs  ProgramAttacher                 // nil unless [nsx_kube_proxy] dataplane = ebpf
	HostPorts HostPortServer                  // nil: a pod with portMappings is refused
	Reporter  podconfig.StatusReporter        // nil: nobody hears of attachments
	Healthy   func(ctx context.Context) error // OVS and API server reachable
}

// Agent serves CNI requests. Safe for concurrent use: requests for one
// attachment are serialised, different attachments proceed in parallel.
type Agent struct {
	opts Options
	Deps

	mu       sync.Mutex
	locks    map[string]*attachLock // per host interface name
	inFlight map[string]int

	// hpMu guards hostPorts (by port name) and orders their Syncs.
	hpMu      sync.Mutex
	hostPorts map[string][]nftables.HostPort
}

type attachLock struct {
	sync.Mutex
	refs int
}

// New returns an Agent.
func New(opts Options, deps Deps) *Agent {
	return &Agent{opts: opts, Deps: deps, locks: map[string]*attachLock{}, inFlight: map[string]int{},
		hostPorts: map[string][]nftables.HostPort{}}
}

// RestoreHostPorts serves the hostPorts that the node's pod ports record
// (after a restart of the agent, or of the node's network stack).
func (a *Agent) RestoreHostPorts(ctx context.Context) error {
	if a.HostPorts == nil {
		return nil
	}
	list, err := a.Ports.List(ctx)
	if err != nil {
		return err
	}
	a.hpMu.Lock()
	defer a.hpMu.Unlock()
	for _, p := range list {
		if len(p.HostPorts) == 0 {
			continue
		}
		// A record whose address does not parse (mangled by hand) serves
		// nothing for that address; a repeated ADD rewrites it.
		var pods []netip.Addr
		for _, s := range []string{p.IP, p.IP6} {
			if ip, err := netip.ParsePrefix(s); err == nil {
				pods = append(pods, ip.Addr().Unmap())
			}
		}
		if len(pods) > 0 {
			a.hostPorts[p.Name] = toHostPorts(p.HostPorts, pods...)
		}
	}
	return a.syncHostPortsLocked()
}

// toHostPorts maps each portMapping to each of the pod's addresses (a
// dual-stack pod's hostPort answers over both families; the HostPortServer
// leaves out the pairs whose hostIP is of the other family).
func toHostPorts(ms []cniwire.PortMapping, pods ...netip.Addr) []nftables.HostPort {
	out := make([]nftables.HostPort, 0, len(ms)*len(pods))
	for _, pod := range pods {
		for _, m := range ms {
			out = append(out, nftables.HostPort{HostIP: m.HostIP, HostPort: m.HostPort, Protocol: m.Protocol, PodIP: pod, ContainerPort: m.ContainerPort})
		}
	}
	return out
}

// setHostPorts records the hostPorts of the port called host (none:
// forgets it) and serves the node's set when it changed. On error the
// previous record is kept.
func (a *Agent) setHostPorts(host string, hps []nftables.HostPort) error {
	if a.HostPorts == nil {
		return nil // Add refuses portMappings without a server
	}
	a.hpMu.Lock()
	defer a.hpMu.Unlock()
	old, had := a.hostPorts[host]
	if len(hps) == 0 && !had || slices.Equal(old, hps) {
		return nil
	}
	if len(hps) == 0 {
		delete(a.hostPorts, host)
	} else {
		a.hostPorts[host] = hps
	}
	if err := a.syncHostPortsLocked(); err != nil {
		if had {
			a.hostPorts[host] = old
		} else {
			delete(a.hostPorts, host)
		}
		return err
	}
	return nil
}

// syncHostPortsLocked serves the recorded set; hpMu is held. Two pods
// claiming one host address, port and protocol: the first by port name
// wins (the API server's scheduler keeps this from happening on a node).
func (a *Agent) syncHostPortsLocked() error {
	var all []nftables.HostPort
	for _, name := range slices.Sorted(maps.Keys(a.hostPorts)) {
		all = append(all, a.hostPorts[name]...)
	}
	return a.HostPorts.Sync(all)
}

// InFlight says whether a request for the port called name is running; the
// audit never removes such a port.
func (a *Agent) InFlight(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inFlight[name] > 0
}

func (a *Agent) lock(name string) func() {
	a.mu.Lock()
	l := a.locks[name]
	if l == nil {
		l = &attachLock{}
		a.locks[name] = l
	}
	l.refs++
	a.inFlight[name]++
	a.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		a.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(a.locks, name)
		}
		if a.inFlight[name]--; a.inFlight[name] == 0 {
			delete(a.inFlight, name)
		}
		a.mu.Unlock()
	}
}

// Handle runs one request and returns the response for the plugin.
func (a *Agent) Handle(ctx context.Context, req *cniwire.Request) *cniwire.Response {
	start := time.Now()
	log := a.Log.With(zap.String("cmd", string(req.Command)), zap.String("container", short(req.ContainerID)),
		zap.String("pod", req.PodNamespace+"/"+req.PodName), zap.String("ifname", req.IfName))
	if err := req.Validate(); err != nil {
		return errResponse(types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI request", err.Error()))
	}
	var (
		res *types100.Result
		err error
	)
	switch req.Command {
	case cniwire.CmdAdd:
		res, err = a.Add(ctx, req)
		a.report(podconfig.PodStatus{Namespace: req.PodNamespace, Name: req.PodName, UID: req.PodUID, Attached: err == nil, Err: err})
	case cniwire.CmdDel:
		err = a.Del(ctx, req)
	case cniwire.CmdCheck:
		err = a.Check(ctx, req)
	case cniwire.CmdStatus:
		err = a.Status(ctx)
	case cniwire.CmdGC:
		err = a.GC(ctx, req)
	}
	if ctx.Err() != nil {
		// The plugin's connection closed before the answer: the runtime
		// killed it or gave up. Said on its own line, because the ADD's
		// own outcome does not tell it.
		log.Warn("the CNI plugin hung up before its answer (killed, or the runtime timed out); the runtime tears the pod down with a DEL",
			zap.Error(context.Cause(ctx)), zap.Duration("took", time.Since(start)))
	}
	if err != nil {
		log.Warn("CNI request failed", zap.Error(err), zap.Duration("took", time.Since(start)))
		return errResponse(toCNIError(err))
	}
	log.Info("CNI request done", zap.Duration("took", time.Since(start)))
	if res == nil {
		return &cniwire.Response{}
	}
	raw, err := json.Marshal(res)
	if err != nil {
		return errResponse(types.NewError(types.ErrInternal, "encode result", err.Error()))
	}
	return &cniwire.Response{Result: raw}
}

func errResponse(e *types.Error) *cniwire.Response { return &cniwire.Response{Error: e} }

func toCNIError(err error) *types.Error {
	var te *types.Error
	var fe *podconfig.FieldError
	var nr *podconfig.NotReadyError
	switch {
	case errors.As(err, &te):
		return te
	case errors.Is(err, podnet.ErrNetnsGone):
		return types.NewError(types.ErrInvalidNetNS, "pod network namespace not found", err.Error())
	case errors.As(err, &fe), errors.Is(err, podconfig.ErrUIDMismatch):
		return types.NewError(ErrCodeInvalidPodConfig, "invalid pod network config", err.Error())
	case errors.As(err, &nr):
		return types.NewError(types.ErrTryAgainLater, "pod network config not available", err.Error())
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// netnsPath maps a netns path as the runtime sees it to the agent's view:
// in a container the host's /proc is mounted under proc_mount_path_prefix.
func (a *Agent) netnsPath(p string) string { return podnet.HostPath(a.opts.ProcMountPathPrefix, p) }

func (a *Agent) desiredPod(req *cniwire.Request, cfg *podconfig.Config, txOff bool) podnet.Pod {
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = a.opts.MTU
	}
	return podnet.Pod{
		ContainerID: req.ContainerID, Netns: a.netnsPath(req.Netns), IfName: req.IfName,
		IP: cfg.IP, Gateway: cfg.Gateway, IP6: cfg.IP6, Gateway6: cfg.Gateway6, MAC: cfg.MAC, MTU: mtu, TxChecksumOff: txOff,
	}
}

// Add wires the pod: config from the annotation, veth, OVS port. It is
// idempotent (a repeated ADD whose attachment is intact returns the same
// result) and atomic (on error nothing of this attempt remains).
func (a *Agent) Add(ctx context.Context, req *cniwire.Request) (*types100.Result, error) {
	if _, err := cniwire.ParseNetConf(req.Config); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", err.Error())
	}
	mappings, err := cniwire.PortMappings(req.Config)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", err.Error())
	}
	if len(mappings) > 0 && a.HostPorts == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "hostPort not served",
			"runtimeConfig.portMappings: this agent serves no hostPorts")
	}
	host := podnet.HostIfName(req.ContainerID, req.IfName)
	defer a.lock(host)()

	wctx, cancel := context.WithTimeout(ctx, a.opts.ConfigRetryTimeout)
	cfg, err := a.Pods.Get(wctx, req.PodNamespace, req.PodName, req.PodUID)
	cancel()
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, a.opts.OVSOperationTimeout)
	defer cancel()
	dpType, err := a.Ports.BridgeDatapathType(octx)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", req.PodNamespace, req.PodName, err)
	}
	pod := a.desiredPod(req, cfg, dpType == "netdev")
	want := &ports.PodPort{
		Name: host, VLAN: cfg.VLAN, ContainerID: req.ContainerID, PodNamespace: req.PodNamespace,
		PodName: req.PodName, PodUID: cfg.PodUID, Netns: req.Netns, IfName: req.IfName,
		MAC: cfg.MAC.String(), IP: cfg.IP.String(), MTU: pod.MTU, HostPorts: mappings,
		AttachedAt: time.Now(), // not compared: a repeated ADD keeps the first
	}
	podIPs := []netip.Addr{addrOf(cfg.IP)}
	if cfg.Gateway != nil {
		want.Gateway = cfg.Gateway.String()
	}
	// A dual-stack pod's IPv6 address is recorded too: a repeated ADD after
	// the config dropped or changed it finds the record different and
	// recreates the attachment (a fresh veth has no stale address), and a
	// restarted agent serves its hostPorts on it again.
	if cfg.IP6 != nil {
		want.IP6 = cfg.IP6.String()
		podIPs = append(podIPs, addrOf(cfg.IP6))
	}
	if cfg.Gateway6 != nil {
		want.Gateway6 = cfg.Gateway6.String()
	}
	hostPorts := toHostPorts(mappings, podIPs...)

	// A repeated ADD: keep an intact attachment as it is.
	if have, err := a.Ports.Get(octx, host); err != nil {
		return nil, err
	} else if have != nil && samePort(have, want) && a.PodNet.Check(pod) == nil {
		a.Log.Info("ADD repeated for an intact attachment", zap.String("port", host))
		if err := a.attachPrograms(pod, host); err != nil {
			return nil, err
		}
		if err := a.setHostPorts(host, hostPorts); err != nil {
			return nil, fmt.Errorf("pod %s/%s: hostPorts: %w", req.PodNamespace, req.PodName, err)
		}
		return a.result(pod, host, nil), nil
	} else if have != nil || a.hostLinkExists(host) {
		// Leftovers of an earlier, different or broken attempt.
		if err := a.remove(octx, host); err != nil {
			return nil, fmt.Errorf("clean up earlier attempt for %s: %w", host, err)
		}
	}

	link, err := a.PodNet.Setup(pod)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", req.PodNamespace, req.PodName, err)
	}
	if _, err := a.Ports.Ensure(octx, want); err != nil {
		if derr := a.PodNet.DeleteHostLink(host); derr != nil {
			err = fmt.Errorf("%w (rollback veth: %v)", err, derr)
		}
		return nil, fmt.Errorf("pod %s/%s: %w", req.PodNamespace, req.PodName, err)
	}
	err = a.attachPrograms(pod, host)
	if err == nil {
		if err = a.setHostPorts(host, hostPorts); err != nil {
			err = fmt.Errorf("hostPorts: %w", err)
		}
	}
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.OVSOperationTimeout)
		defer cancel()
		if rerr := a.remove(rctx, host); rerr != nil {
			err = fmt.Errorf("%w (rollback: %v)", err, rerr)
		}
		return nil, fmt.Errorf("pod %s/%s: %w", req.PodNamespace, req.PodName, err)
	}
	return a.result(pod, host, link.HostMAC), nil
}

func (a *Agent) attachPrograms(pod podnet.Pod, host string) error {
	if a.Programs == nil {
		return nil
	}
	return a.Programs.Attach(pod.Netns, pod.IfName, host)
}

func (a *Agent) hostLinkExists(name string) bool {
	ok, err := a.PodNet.HostLinkExists(name)
	return err == nil && ok
}

func samePort(a, b *ports.PodPort) bool {
	return a.VLAN == b.VLAN && a.ContainerID == b.ContainerID && a.PodUID == b.PodUID &&
		a.IfName == b.IfName && a.MAC == b.MAC && a.IP == b.IP && a.Gateway == b.Gateway &&
		a.IP6 == b.IP6 && a.Gateway6 == b.Gateway6 && a.MTU == b.MTU && a.Netns == b.Netns && slices.Equal(a.HostPorts, b.HostPorts)
}

// result is a CNI 1.1 result; the plugin converts it to the netconf's
// cniVersion.
func (a *Agent) result(pod podnet.Pod, host string, hostMAC net.HardwareAddr) *types100.Result {
	hostIf := &types100.Interface{Name: host}
	if hostMAC != nil {
		hostIf.Mac = hostMAC.String()
	}
	podIdx := 1
	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{hostIf, {Name: pod.IfName, Mac: pod.MAC.String(), Mtu: pod.MTU, Sandbox: pod.Netns}},
	}
	addIP := func(ip *net.IPNet, gw net.IP) {
		res.IPs = append(res.IPs, &types100.IPConfig{Interface: &podIdx, Address: *ip, Gateway: gw})
		if gw == nil {
			return
		}
		dst := net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if gw.To4() == nil {
			dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		res.Routes = append(res.Routes, &types.Route{Dst: dst, GW: gw})
	}
	addIP(pod.IP, pod.Gateway)
	if pod.IP6 != nil {
		// A dual-stack pod has an entry per family: the runtime reports
		// every address of ips to kubelet (the pod's status.podIPs).
		addIP(pod.IP6, pod.Gateway6)
	}
	return res
}

// remove deletes the hostPorts, the programs' links, the port and the
// veth of the attachment called host.
func (a *Agent) remove(ctx context.Context, host string) error {
	herr := a.setHostPorts(host, nil)
	var derr error
	if a.Programs != nil {
		derr = a.Programs.Detach(host)
	}
	perr := a.Ports.Delete(ctx, host)
	lerr := a.PodNet.DeleteHostLink(host)
	return errors.Join(herr, derr, perr, lerr)
}

// Del removes the attachment's port and veth. Idempotent; it needs neither
// the pod object nor its namespace.
func (a *Agent) Del(ctx context.Context, req *cniwire.Request) error {
	host := podnet.HostIfName(req.ContainerID, req.IfName)
	defer a.lock(host)()
	octx, cancel := context.WithTimeout(ctx, a.opts.OVSOperationTimeout)
	defer cancel()
	st := podconfig.PodStatus{Namespace: req.PodNamespace, Name: req.PodName, UID: req.PodUID}
	if a.Reporter != nil && st.UID == "" {
		// A runtime may leave the pod's UID out of a DEL: the port knows it.
		if have, err := a.Ports.Get(octx, host); err == nil && have != nil {
			st = podconfig.PodStatus{Namespace: have.PodNamespace, Name: have.PodName, UID: have.PodUID}
		}
	}
	if err := a.remove(octx, host); err != nil {
		return err
	}
	a.report(st)
	return nil
}

// report tells the Reporter of a pod's attachment, if there is one
// and the pod is named.
func (a *Agent) report(st podconfig.PodStatus) {
	if a.Reporter != nil && st.Name != "" {
		a.Reporter.ReportStatus(st)
	}
}

// ReportAttachments reports every pod attached on the node to the Reporter
// reporter, with an error where the attachment differs from the config the
// source now holds (it changed while the pod ran: it applies when the pod
// is recreated, as a running pod's address never changes under it).
func (a *Agent) ReportAttachments(ctx context.Context) error {
	if a.Reporter == nil {
		return nil
	}
	octx, cancel := context.WithTimeout(ctx, a.opts.OVSOperationTimeout)
	defer cancel()
	list, err := a.Ports.List(octx)
	if err != nil {
		return fmt.Errorf("report attachments: %w", err)
	}
	now, cancelNow := context.WithCancel(ctx)
	cancelNow() // Get answers from what it holds, without waiting
	for _, listed := range list {
		// Under the attachment's lock, read again: a DEL that ran since
		// the list reported the pod detached, and an "attached" sent
		// after it would stand until the next snapshot.
		unlock := a.lock(listed.Name)
		p, err := a.Ports.Get(octx, listed.Name)
		if err != nil || p == nil {
			unlock()
			continue
		}
		st := podconfig.PodStatus{Namespace: p.PodNamespace, Name: p.PodName, UID: p.PodUID, Attached: true}
		cfg, err := a.Pods.Get(now, p.PodNamespace, p.PodName, p.PodUID)
		switch {
		case err != nil:
			st.Err = fmt.Errorf("attached, but its config is no longer held: %w", err)
		case cfg.IP.String() != p.IP || cfg.MAC.String() != p.MAC || cfg.VLAN != p.VLAN || ipString(cfg.Gateway) != p.Gateway ||
			prefixString(cfg.IP6) != p.IP6 || ipString(cfg.Gateway6) != p.Gateway6:
			st.Err = fmt.Errorf("attached with ip %s mac %s vlan %d gateway %q ipv6 %q ipv6 gateway %q; "+
				"the config held now is ip %s mac %s vlan %d gateway %q ipv6 %q ipv6 gateway %q: it applies when the pod is recreated",
				p.IP, p.MAC, p.VLAN, p.Gateway, p.IP6, p.Gateway6,
				cfg.IP, cfg.MAC, cfg.VLAN, ipString(cfg.Gateway), prefixString(cfg.IP6), ipString(cfg.Gateway6))
		}
		a.report(st)
		unlock()
	}
	return nil
}

// ipString and prefixString are "" for an absent address, as the port
// record leaves it out (net's String says "<nil>").
func ipString(ip net.IP) string {
	if ip == nil {
		return ""
	}
	return ip.String()
}

func prefixString(n *net.IPNet) string {
	if n == nil {
		return ""
	}
	return n.String()
}

// addrOf is n's address as a netip.Addr (an IPv4 address unmapped).
func addrOf(n *net.IPNet) netip.Addr {
	a, _ := netip.AddrFromSlice(n.IP)
	return a.Unmap()
}

// Check verifies the attachment still matches the pod's config.
func (a *Agent) Check(ctx context.Context, req *cniwire.Request) error {
	host := podnet.HostIfName(req.ContainerID, req.IfName)
	defer a.lock(host)()
	octx, cancel := context.WithTimeout(ctx, a.opts.OVSOperationTimeout)
	defer cancel()
	cfg, err := a.Pods.Get(octx, req.PodNamespace, req.PodName, req.PodUID)
	if err != nil {
		return err
	}
	have, err := a.Ports.Get(octx, host)
	if err != nil {
		return err
	}
	if have == nil {
		return fmt.Errorf("OVS port %s of pod %s/%s is missing", host, req.PodNamespace, req.PodName)
	}
	if have.VLAN != cfg.VLAN {
		return fmt.Errorf("OVS port %s: tag %d, want %d", host, have.VLAN, cfg.VLAN)
	}
	if have.OFPort <= 0 {
		return fmt.Errorf("OVS port %s: not attached by ovs-vswitchd (ofport %d)", host, have.OFPort)
	}
	dpType, err := a.Ports.BridgeDatapathType(octx)
	if err != nil {
		return err
	}
	return a.PodNet.Check(a.desiredPod(req, cfg, dpType == "netdev"))
}

// Status reports whether the agent can serve ADDs.
func (a *Agent) Status(ctx context.Context) error {
	if a.Healthy == nil {
		return nil
	}
	if err := a.Healthy(ctx); err != nil {
		return types.NewError(types.ErrLimitedConnectivity, "nsx-node-agent not ready", err.Error())
	}
	return nil
}

// GC removes the pod ports (and veths) of attachments that the runtime no
// longer lists as valid. Ports with a request in flight are kept.
func (a *Agent) GC(ctx context.Context, req *cniwire.Request) error {
	nc, err := cniwire.ParseNetConf(req.Config)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", err.Error())
	}
	valid := map[string]bool{}
	for _, att := range nc.ValidAttachments {
		valid[podnet.HostIfName(att.ContainerID, att.IfName)] = true
	}
	octx, cancel := context.WithTimeout(ctx, a.opts.OVSOperationTimeout)
	defer cancel()
	list, err := a.Ports.List(octx)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range list {
		if valid[p.Name] || a.InFlight(p.Name) {
			continue
		}
		a.Log.Info("GC removes pod port", zap.String("port", p.Name), zap.String("pod", p.PodNamespace+"/"+p.PodName),
			zap.String("container", short(p.ContainerID)))
		errs = append(errs, a.gcOne(octx, p.Name))
	}
	return errors.Join(errs...)
}

func (a *Agent) gcOne(ctx context.Context, host string) error {
	defer a.lock(host)()
	return a.remove(ctx, host)
}

// RemoveStale removes a port the audit found stale, unless a request for it
// started meanwhile. It reports whether it removed it.
func (a *Agent) RemoveStale(ctx context.Context, host string) (bool, error) {
	if a.InFlight(host) {
		return false, nil
	}
	defer a.lock(host)()
	return true, a.remove(ctx, host)
}
