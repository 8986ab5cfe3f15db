// Package proxy is the dataplane-independent core of nsx-kube-proxy: it
// watches Services and EndpointSlices like kube-proxy, keeps the desired
// dataplane.Model up to date incrementally (only changed Services are
// recomputed) and hands it to one dataplane.ServiceBackend. It also serves
// kube-proxy's healthz and metrics endpoints.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// Defaults for zero Options fields.
const (
	DefaultSyncPeriod = 30 * time.Second
	// initialBackoff is the first retry delay after a failed Sync; it
	// doubles per consecutive failure up to SyncPeriod.
	initialBackoff = 100 * time.Millisecond
)

// Options configure a Proxier. Zero SyncPeriod means DefaultSyncPeriod; an
// empty bind address disables that server.
type Options struct {
	// NodeName is this node: endpoints on it are the local ones, and its
	// Node object decides /healthz eligibility.
	NodeName string
	// ServiceProxyName, when set, makes the proxy handle only Services
	// labelled service.kubernetes.io/service-proxy-name=<it>; when empty,
	// only Services without that label.
	ServiceProxyName string
	// SyncPeriod is the interval of full resyncs; also the cap of the retry
	// backoff, and half the delay after which a change not yet applied
	// makes the health endpoints fail.
	SyncPeriod time.Duration
	// MinSyncPeriod is the minimum interval between the starts of two syncs.
	MinSyncPeriod time.Duration
	// HealthzBindAddr serves /healthz and /livez (kube-proxy: :10256).
	HealthzBindAddr string
	// MetricsBindAddr serves /metrics (kube-proxy: 127.0.0.1:10249).
	MetricsBindAddr string
	// NodePortAddresses select the node addresses NodePorts are served on,
	// as kube-proxy's --nodeport-addresses: the node's interface addresses
	// within these prefixes. Empty: the node's primary addresses, its Node
	// object's first InternalIP of each family (kube-proxy's default in
	// nftables mode).
	NodePortAddresses []netip.Prefix
	// ServiceHealthHost is the address the per-Service health checks
	// (healthCheckNodePort) listen on; empty: every address of the node.
	ServiceHealthHost string
	Log               *zap.Logger
}

// Proxier is the proxy core. Create it with New, then call Run once.
type Proxier struct {
	client  kubernetes.Interface
	backend dataplane.ServiceBackend
	o       Options
	log     *zap.Logger
	m       *metrics

	// kick has one slot: a pending wake-up for the sync loop. Event
	// handlers fill it without blocking; any number of changes made
	// before the loop drains it coalesce into one sync.
	kick chan struct{}

	mu sync.Mutex
	// Guarded by mu: what event handlers write and the loop takes.
	dirty          map[types.NamespacedName]struct{}
	triggerTimes   map[types.NamespacedName][]time.Time // EndpointSlice last-change-trigger-times not yet applied
	queuedSince    time.Time                            // first change not yet taken by a sync (zero: none)
	inflightSince  time.Time                            // oldest change taken by the running sync (zero: none)
	lastSynced     time.Time
	pendingSvc     int
	pendingEP      int
	startTime      time.Time // trigger times before it belong to a previous process
	nodeChanged    bool      // our Node's addresses changed since the last sync took them
	nodeLister     corelisters.NodeLister
	healthzAddr    string // bound addresses, for tests
	metricsAddr    string
	servicesLister corelisters.ServiceLister

	// Set by Run before the informers start, then read-only.
	svcSel, sliceSel labels.Selector
	sliceIndexer     cache.Indexer

	// recorder writes Events on Services (set by Run).
	recorder record.EventRecorder

	// Owned by the sync loop goroutine.
	frontends    map[dataplane.FrontendKey]*dataplane.Frontend
	svcKeys      map[types.NamespacedName][]dataplane.FrontendKey // the frontends each Service contributes
	healthChecks map[types.NamespacedName]healthCheck
	svcHealth    *serviceHealth // set by Run
	node         Node           // Addresses resolved by the last sync
	backendStart time.Time      // when the last sync called the backend
	// unservable: the frontends last refused as ErrUnservable, as the
	// model had them, so each is reported once per version.
	unservable map[dataplane.FrontendKey]*dataplane.Frontend
}

// MetricsCollector is implemented by a backend with metrics of its own,
// served on /metrics beside kube-proxy's.
type MetricsCollector interface {
	Collectors() []prometheus.Collector
}

// New returns a Proxier that programs backend from the cluster client
// watches. It starts nothing: see Run.
func New(client kubernetes.Interface, backend dataplane.ServiceBackend, o Options) *Proxier {
	if o.SyncPeriod <= 0 {
		o.SyncPeriod = DefaultSyncPeriod
	}
	if o.MinSyncPeriod < 0 {
		o.MinSyncPeriod = 0
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	m := newMetrics()
	if c, ok := backend.(MetricsCollector); ok {
		m.reg.MustRegister(c.Collectors()...)
	}
	return &Proxier{
		client:       client,
		backend:      backend,
		o:            o,
		log:          o.Log,
		m:            m,
		kick:         make(chan struct{}, 1),
		dirty:        map[types.NamespacedName]struct{}{},
		triggerTimes: map[types.NamespacedName][]time.Time{},
		frontends:    map[dataplane.FrontendKey]*dataplane.Frontend{},
		svcKeys:      map[types.NamespacedName][]dataplane.FrontendKey{},
		healthChecks: map[types.NamespacedName]healthCheck{},
		node:         Node{Name: o.NodeName},
		nodeChanged:  true,
	}
}

// LastSynced is when the backend last accepted a Sync (zero before the
// first success).
func (p *Proxier) LastSynced() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastSynced
}

// selectors returns kube-proxy's informer label selectors: Services (and
// their slices) that are ours by service-proxy-name, and slices not of a
// headless Service.
func (p *Proxier) selectors() (services, slices labels.Selector, err error) {
	proxyName, err := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	if p.o.ServiceProxyName != "" {
		proxyName, err = labels.NewRequirement(LabelServiceProxyName, selection.Equals, []string{p.o.ServiceProxyName})
	}
	if err != nil {
		return nil, nil, fmt.Errorf("service proxy name %q: %w", p.o.ServiceProxyName, err)
	}
	noHeadless, err := labels.NewRequirement(v1.IsHeadlessService, selection.DoesNotExist, nil)
	if err != nil {
		return nil, nil, err
	}
	return labels.NewSelector().Add(*proxyName), labels.NewSelector().Add(*proxyName, *noHeadless), nil
}

const byServiceIndex = "service"

// sliceService is the Service an EndpointSlice belongs to, from its
// kubernetes.io/service-name label.
func sliceService(s *discovery.EndpointSlice) (types.NamespacedName, bool) {
	name := s.Labels[discovery.LabelServiceName]
	return types.NamespacedName{Namespace: s.Namespace, Name: name}, name != ""
}

// Run starts the informers, serves healthz and metrics (when their
// addresses are set), waits for the caches, and runs the sync loop until
// ctx ends. It returns nil when ctx ends, or an error if it cannot start.
// Call it once.
func (p *Proxier) Run(ctx context.Context) error {
	svcSel, sliceSel, err := p.selectors()
	if err != nil {
		return err
	}
	p.svcSel, p.sliceSel = svcSel, sliceSel
	p.mu.Lock()
	p.startTime = time.Now()
	p.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	svcFactory := informers.NewSharedInformerFactoryWithOptions(p.client, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.LabelSelector = svcSel.String() }))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(p.client, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.LabelSelector = sliceSel.String() }))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(p.client, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", p.o.NodeName).String()
		}))
	defer func() {
		cancel()
		svcFactory.Shutdown()
		sliceFactory.Shutdown()
		nodeFactory.Shutdown()
	}()

	bc := record.NewBroadcaster(record.WithContext(ctx))
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: p.client.CoreV1().Events("")})
	defer bc.Shutdown()
	p.recorder = bc.NewRecorder(scheme.Scheme, v1.EventSource{Component: "nsx-kube-proxy", Host: p.o.NodeName})

	svcInf := svcFactory.Core().V1().Services()
	sliceInf := sliceFactory.Discovery().V1().EndpointSlices()
	nodeInf := nodeFactory.Core().V1().Nodes()
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{byServiceIndex: func(obj any) ([]string, error) {
		if s, ok := obj.(*discovery.EndpointSlice); ok {
			if key, ok := sliceService(s); ok {
				return []string{key.String()}, nil
			}
		}
		return nil, nil
	}}); err != nil {
		return fmt.Errorf("EndpointSlice index: %w", err)
	}
	if _, err := svcInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.onService(obj) },
		UpdateFunc: func(_, obj any) { p.onService(obj) },
		DeleteFunc: func(obj any) { p.onService(obj) },
	}); err != nil {
		return fmt.Errorf("Service informer: %w", err)
	}
	if _, err := sliceInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.onSlice(obj, false) },
		UpdateFunc: func(_, obj any) { p.onSlice(obj, false) },
		DeleteFunc: func(obj any) { p.onSlice(obj, true) },
	}); err != nil {
		return fmt.Errorf("EndpointSlice informer: %w", err)
	}
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { p.onNode() },
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*v1.Node)
			n, ok2 := obj.(*v1.Node)
			if !ok1 || !ok2 || !slices.Equal(primaryAddresses(o), primaryAddresses(n)) {
				p.onNode()
			}
		},
	}); err != nil {
		return fmt.Errorf("Node informer: %w", err)
	}
	p.sliceIndexer = sliceInf.Informer().GetIndexer()
	p.mu.Lock()
	p.servicesLister = svcInf.Lister()
	p.nodeLister = nodeInf.Lister()
	p.mu.Unlock()

	// Probes answer while the caches fill, as kube-proxy's do.
	var servers sync.WaitGroup
	defer servers.Wait()
	defer cancel() // before servers.Wait: the servers stop on ctx
	if p.o.HealthzBindAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", p.serveHealthz)
		mux.HandleFunc("/livez", p.serveLivez)
		addr, err := serve(ctx, &servers, p.log, "healthz", p.o.HealthzBindAddr, mux)
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.healthzAddr = addr
		p.mu.Unlock()
	}
	if p.o.MetricsBindAddr != "" {
		addr, err := serve(ctx, &servers, p.log, "metrics", p.o.MetricsBindAddr, p.metricsMux())
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.metricsAddr = addr
		p.mu.Unlock()
	}

	p.svcHealth = newServiceHealth(p.o.ServiceHealthHost, func() bool { return p.health(time.Now()).Healthy }, p.log,
		p.healthCheckFailed)
	defer p.svcHealth.close()

	svcFactory.Start(ctx.Done())
	sliceFactory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
	p.log.Info("waiting for the Service, EndpointSlice and Node caches",
		zap.String("node", p.o.NodeName), zap.String("backend", p.backend.Name()),
		zap.Stringer("serviceSelector", svcSel))
	if !cache.WaitForCacheSync(ctx.Done(), svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced,
		nodeInf.Informer().HasSynced) {
		return nil // ctx ended
	}
	p.log.Info("caches synced, syncing the dataplane", zap.String("backend", p.backend.Name()),
		zap.Duration("syncPeriod", p.o.SyncPeriod), zap.Duration("minSyncPeriod", p.o.MinSyncPeriod))
	p.syncLoop(ctx)
	return nil
}

// onService handles any Service event (add, update, delete).
func (p *Proxier) onService(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	svc, ok := obj.(*v1.Service)
	if !ok {
		return
	}
	p.queue(types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, false, time.Time{})
}

// onSlice handles any EndpointSlice event.
func (p *Proxier) onSlice(obj any, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	s, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		return
	}
	key, ok := sliceService(s)
	if !ok {
		p.log.Debug("EndpointSlice without "+discovery.LabelServiceName+" label, ignored",
			zap.String("endpointSlice", s.Namespace+"/"+s.Name))
		return
	}
	var trigger time.Time
	// A deleted slice's trigger time is that of its last update, not of
	// this change (kube-proxy ignores it too).
	if !deleted {
		if v, ok := s.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				p.log.Debug("bad "+v1.EndpointsLastChangeTriggerTime+" annotation",
					zap.String("endpointSlice", s.Namespace+"/"+s.Name), zap.Error(err))
			}
			trigger = t
		}
	}
	p.queue(key, true, trigger)
}

// onNode notes that our Node's addresses may have changed: the next sync
// resolves the NodePort addresses again.
func (p *Proxier) onNode() {
	p.mu.Lock()
	p.nodeChanged = true
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// primaryAddresses are a Node's first InternalIP of each family.
func primaryAddresses(n *v1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		ip, err := netip.ParseAddr(a.Address)
		if a.Type != v1.NodeInternalIP || err != nil || slices.ContainsFunc(out, func(o netip.Addr) bool { return o.Is6() == ip.Is6() }) {
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out
}

// nodePortAddresses resolves Options.NodePortAddresses on this node,
// sorted. An error leaves the caller with the previous addresses.
func (p *Proxier) nodePortAddresses() ([]netip.Addr, error) {
	p.mu.Lock()
	lister := p.nodeLister
	p.mu.Unlock()
	return resolveNodePortAddresses(p.o.NodePortAddresses, func() (*v1.Node, error) {
		if lister == nil {
			return nil, nil
		}
		return lister.Get(p.o.NodeName)
	})
}

// resolveNodePortAddresses resolves nodeport_addresses, sorted: with
// prefixes, this host's interface addresses within them; without, the
// Node's primary addresses (node returns it; nil or not found: none yet).
func resolveNodePortAddresses(prefixes []netip.Prefix, node func() (*v1.Node, error)) ([]netip.Addr, error) {
	var out []netip.Addr
	if len(prefixes) == 0 {
		n, err := node()
		if apierrors.IsNotFound(err) || (err == nil && n == nil) {
			return nil, nil // kubelet has not registered the node yet
		}
		if err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		out = primaryAddresses(n)
	} else {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return nil, fmt.Errorf("listing the node's addresses for nodeport_addresses: %w", err)
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if slices.ContainsFunc(prefixes, func(pf netip.Prefix) bool { return pf.Contains(ip) }) &&
				!slices.Contains(out, ip) {
				out = append(out, ip)
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out, nil
}

// queue marks a Service dirty and wakes the sync loop.
func (p *Proxier) queue(key types.NamespacedName, endpoints bool, trigger time.Time) {
	now := time.Now()
	p.mu.Lock()
	p.dirty[key] = struct{}{}
	if p.queuedSince.IsZero() {
		p.queuedSince = now
	}
	if endpoints {
		p.m.endpointChanges.Inc()
		p.pendingEP++
		p.m.endpointPending.Set(float64(p.pendingEP))
		if !trigger.IsZero() && trigger.After(p.startTime) {
			p.triggerTimes[key] = append(p.triggerTimes[key], trigger)
		}
	} else {
		p.m.serviceChanges.Inc()
		p.pendingSvc++
		p.m.servicePending.Set(float64(p.pendingSvc))
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// backoff is the delay before the retry after the n-th consecutive failure
// (n >= 1): 100 ms doubling, at most limit.
func backoff(n int, limit time.Duration) time.Duration {
	d := initialBackoff
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// syncLoop runs syncs until ctx ends. A change starts a sync at once when
// none is running and MinSyncPeriod has passed since the last start;
// changes arriving during a sync coalesce into the next one. A full sync
// runs first and then every SyncPeriod. A failed sync is retried after
// backoff, keeping its changes.
func (p *Proxier) syncLoop(ctx context.Context) {
	need, full := true, true // the first sync is a full one
	failures := 0
	var notBefore time.Time
	fullTimer := time.NewTimer(p.o.SyncPeriod)
	defer fullTimer.Stop()
	wait := time.NewTimer(time.Hour)
	wait.Stop()
	defer wait.Stop()
	for {
		var waitC <-chan time.Time
		if need {
			if d := time.Until(notBefore); d > 0 {
				wait.Reset(d)
				waitC = wait.C
			} else {
				// Drain a wake-up already covered by this sync: changes
				// queued from here on send a new one.
				select {
				case <-p.kick:
				default:
				}
				err := p.sync(ctx, full)
				if ctx.Err() != nil {
					return
				}
				// From the backend call itself: the spacing is what the
				// dataplane sees.
				notBefore = p.backendStart.Add(p.o.MinSyncPeriod)
				need = false
				if err != nil {
					failures++
					retry := backoff(failures, p.o.SyncPeriod)
					if t := time.Now().Add(retry); t.After(notBefore) {
						notBefore = t
					}
					need = true
					p.log.Error("dataplane sync failed", zap.String("backend", p.backend.Name()), zap.Bool("full", full),
						zap.Int("failures", failures), zap.Duration("retryIn", retry), zap.Error(err))
				} else {
					failures = 0
					if full {
						full = false
						fullTimer.Reset(p.o.SyncPeriod)
					}
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
			// A wake-up whose changes the last sync already took is
			// spurious.
			need = need || p.pending()
		case <-fullTimer.C:
			need, full = true, true
		case <-waitC:
		}
		wait.Stop()
	}
}

// sync applies the queued changes to the model and calls the backend.
// On failure the changes go back into the queue.
func (p *Proxier) sync(ctx context.Context, full bool) error {
	start := time.Now()
	p.mu.Lock()
	dirty, triggers := p.dirty, p.triggerTimes
	p.dirty, p.triggerTimes = map[types.NamespacedName]struct{}{}, map[types.NamespacedName][]time.Time{}
	p.inflightSince, p.queuedSince = p.queuedSince, time.Time{}
	nSvc, nEP := p.pendingSvc, p.pendingEP
	p.pendingSvc, p.pendingEP = 0, 0
	nodeChanged := p.nodeChanged
	p.nodeChanged = false
	p.m.servicePending.Set(0)
	p.m.endpointPending.Set(0)
	lister := p.servicesLister
	p.mu.Unlock()

	recompute := dirty
	if nodeChanged {
		addrs, err := p.nodePortAddresses()
		if err != nil {
			p.log.Error("resolving the NodePort addresses; keeping the previous ones", zap.Error(err))
			p.mu.Lock()
			p.nodeChanged = true // retried by the next sync
			p.mu.Unlock()
		} else if !slices.Equal(addrs, p.node.Addresses) {
			p.log.Info("NodePort addresses", zap.Stringers("addresses", addrs))
			p.node.Addresses = addrs
			full = true // every NodePort and SNAT address changes
		}
	}
	if full {
		// Recompute everything: a cheap guard against a missed event, and
		// unchanged frontends keep their pointers anyway.
		recompute = maps.Clone(dirty)
		for key := range p.svcKeys {
			recompute[key] = struct{}{}
		}
		if svcs, err := lister.List(labels.Everything()); err == nil {
			for _, s := range svcs {
				recompute[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = struct{}{}
			}
		}
	}
	changed := 0
	for key := range recompute {
		changed += p.updateService(lister, key)
	}

	// The backend gets a snapshot: it may keep the map, and the next sync
	// edits ours.
	model := &dataplane.Model{Frontends: maps.Clone(p.frontends)}
	p.backendStart = time.Now()
	// A frontend neither dataplane serves is refused at every sync: it is
	// reported, but the sync succeeded for everything else, so it neither
	// retries nor makes the proxy unhealthy.
	err, unservable := dataplane.SplitUnservable(p.backend.Sync(ctx, model, dataplane.SyncOptions{Full: full}))
	p.reportUnservable(unservable, model)
	took := time.Since(start)
	p.m.syncDuration.Observe(took.Seconds())
	if full {
		p.m.fullSyncDuration.Observe(took.Seconds())
	} else {
		p.m.partialSyncDuration.Observe(took.Seconds())
	}

	// Load balancers probing a health check follow the dataplane, never
	// run ahead of it; a frontend the dataplane refused does not hold
	// back the other Services' checks. Outside mu: closing a server waits
	// for its probes, which read the proxy's health under mu.
	var refused *dataplane.FrontendErrors
	if err == nil || errors.As(err, &refused) {
		p.svcHealth.sync(p.healthChecks)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	since := p.inflightSince
	p.inflightSince = time.Time{}
	if err != nil {
		p.m.syncFailures.Inc()
		p.reportRefused(err, lister)
		for key := range dirty {
			p.dirty[key] = struct{}{}
		}
		for key, ts := range triggers {
			p.triggerTimes[key] = append(ts, p.triggerTimes[key]...)
		}
		p.pendingSvc += nSvc
		p.pendingEP += nEP
		p.m.servicePending.Set(float64(p.pendingSvc))
		p.m.endpointPending.Set(float64(p.pendingEP))
		// What failed is still to be applied, even a full resync without
		// changes: the health endpoints count from the oldest.
		if since.IsZero() {
			since = start
		}
		if p.queuedSince.IsZero() || since.Before(p.queuedSince) {
			p.queuedSince = since
		}
		return fmt.Errorf("%s dataplane: %w", p.backend.Name(), err)
	}
	now := time.Now()
	p.lastSynced = now
	p.m.lastSyncTimestamp.Set(float64(now.UnixNano()) / 1e9)
	for _, ts := range triggers {
		for _, t := range ts {
			p.m.networkProgramming.Observe(now.Sub(t).Seconds())
		}
	}
	lvl := zap.DebugLevel
	if full {
		lvl = zap.InfoLevel
	}
	p.log.Check(lvl, "dataplane synced").Write(zap.Bool("full", full), zap.Int("services", len(recompute)),
		zap.Int("frontendsChanged", changed), zap.Int("frontends", len(p.frontends)), zap.Duration("took", took))
	return nil
}

// healthCheckFailed reports a Service health check that cannot listen,
// as kube-proxy does (an Event on the Service); the next sync retries.
func (p *Proxier) healthCheckFailed(name types.NamespacedName, port int32, err error) {
	p.log.Error("cannot serve a Service health check", zap.Stringer("service", name), zap.Int32("port", port), zap.Error(err))
	if p.recorder == nil || p.servicesLister == nil {
		return
	}
	if svc, gerr := p.servicesLister.Services(name.Namespace).Get(name.Name); gerr == nil {
		p.recorder.Eventf(svc, v1.EventTypeWarning, "FailedToStartServiceHealthcheck",
			"node %s failed to start the health check of the Service on port %d: %v", p.o.NodeName, port, err)
	}
}

// reportUnservable reports each frontend refused as unservable (log,
// counter, Warning Event) when it is new or its Service changed, and
// forgets those no longer refused. Sync loop goroutine only.
func (p *Proxier) reportUnservable(refused []dataplane.FrontendError, model *dataplane.Model) {
	if len(refused) == 0 && len(p.unservable) == 0 {
		return
	}
	now := make(map[dataplane.FrontendKey]*dataplane.Frontend, len(refused))
	var report []dataplane.FrontendError
	for _, r := range refused {
		f := model.Frontends[r.Key]
		now[r.Key] = f
		if prev, ok := p.unservable[r.Key]; !ok || prev != f {
			report = append(report, r)
		}
	}
	p.unservable = now
	if len(report) > 0 {
		p.reportRefused(&dataplane.FrontendErrors{Failed: report}, p.servicesLister)
	}
}

// reportRefused counts each frontend the dataplane refused against its
// Service and records a Warning Event on it, so `kubectl describe svc`
// tells the operator; the whole sync is still retried with backoff.
func (p *Proxier) reportRefused(err error, lister corelisters.ServiceLister) {
	var fe *dataplane.FrontendErrors
	if !errors.As(err, &fe) {
		return
	}
	for _, f := range fe.Failed {
		p.m.frontendRefused.WithLabelValues(f.Name.Namespace, f.Name.Name).Inc()
		p.log.Warn("dataplane refused a Service frontend", zap.Stringer("frontend", f.Key), zap.Stringer("service", f.Name), zap.Error(f.Err))
		if p.recorder == nil || lister == nil {
			continue
		}
		if svc, gerr := lister.Services(f.Name.Namespace).Get(f.Name.Name); gerr == nil {
			p.recorder.Eventf(svc, v1.EventTypeWarning, "DataplaneRefused",
				"%s dataplane on node %s refused frontend %s: %v", p.backend.Name(), p.o.NodeName, f.Key, f.Err)
		}
	}
}

// updateService recomputes the frontends of one Service into p.frontends
// and returns how many were added, replaced or removed. A recomputed
// frontend equal to the one in the model keeps the old pointer.
func (p *Proxier) updateService(lister corelisters.ServiceLister, key types.NamespacedName) int {
	var fresh map[dataplane.FrontendKey]*dataplane.Frontend
	svc, err := lister.Services(key.Namespace).Get(key.Name)
	if err != nil && !apierrors.IsNotFound(err) {
		// Keep what is served (frontends, health check) until the cache
		// answers.
		p.log.Error("reading Service from the cache", zap.Stringer("service", key), zap.Error(err))
		return 0
	}
	delete(p.healthChecks, key)
	switch {
	case apierrors.IsNotFound(err):
	case !p.svcSel.Matches(labels.Set(svc.Labels)):
		// The API server filters watches by label; this also holds when
		// a cache was fed without that filter.
		p.log.Debug("Service skipped", zap.Stringer("service", key), zap.String("reason", "service-proxy-name"))
	default:
		if reason := skipReason(svc); reason != "" {
			p.log.Debug("Service skipped", zap.Stringer("service", key), zap.String("reason", reason))
		} else {
			slices := p.slicesOf(key)
			fresh = BuildFrontends(svc, slices, p.node)
			if hc, ok := serviceHealthCheck(svc, slices, p.o.NodeName); ok {
				p.healthChecks[key] = hc
			}
		}
	}

	changed := 0
	for _, k := range p.svcKeys[key] {
		if _, keep := fresh[k]; keep {
			continue
		}
		if old, ok := p.frontends[k]; ok && old.Name.Namespace == key.Namespace && old.Name.Name == key.Name {
			delete(p.frontends, k)
			changed++
			p.log.Debug("frontend removed", zap.Stringer("service", key), zap.Stringer("frontend", k))
		}
	}
	keys := make([]dataplane.FrontendKey, 0, len(fresh))
	for k, fe := range fresh {
		keys = append(keys, k)
		old, ok := p.frontends[k]
		if ok && frontendEqual(old, fe) {
			continue
		}
		if ok && (old.Name.Namespace != key.Namespace || old.Name.Name != key.Name) {
			// Two Services cannot hold one cluster IP; seeing it means
			// events are still arriving. The newest wins.
			p.log.Warn("frontend taken over from another Service", zap.Stringer("service", key),
				zap.Stringer("frontend", k), zap.Stringer("previous", old.Name))
		}
		p.frontends[k] = fe
		changed++
		p.log.Debug("frontend updated", zap.Stringer("service", key), zap.Stringer("frontend", k),
			zap.Int("endpoints", len(fe.Endpoints)))
	}
	if len(keys) == 0 {
		delete(p.svcKeys, key)
	} else {
		p.svcKeys[key] = keys
	}
	return changed
}

// slicesOf returns the cached EndpointSlices of a Service.
func (p *Proxier) slicesOf(key types.NamespacedName) []*discovery.EndpointSlice {
	objs, err := p.sliceIndexer.ByIndex(byServiceIndex, key.String())
	if err != nil {
		p.log.Error("EndpointSlice index", zap.Stringer("service", key), zap.Error(err))
		return nil
	}
	out := make([]*discovery.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discovery.EndpointSlice); ok && p.sliceSel.Matches(labels.Set(s.Labels)) {
			out = append(out, s)
		}
	}
	return out
}

// pending reports whether changes are queued.
func (p *Proxier) pending() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.dirty) > 0 || p.nodeChanged
}
