package fabric

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
)

const (
	// ReadyAnnotation = "true" marks a pod whose workload runs; only such
	// pods become endpoints (there is no kubelet to report readiness).
	ReadyAnnotation = "nsx-ujo.test/ready"
	// ManagedBy is the endpointslice.kubernetes.io/managed-by value of the
	// slices the controller owns.
	ManagedBy = "nsx-ujo-fabric-sim"
	// SliceSuffix is appended to a Service's name to name its slice (its
	// IPv4 slice, on a dual-stack fabric).
	SliceSuffix = "-nsx"
	// SliceSuffixIPv6 names a Service's IPv6 slice: a name no IPv4 slice
	// can have, as those end in SliceSuffix.
	SliceSuffixIPv6 = "-nsx-ipv6"
	podMTU          = 1500
)

// kind says what a queue key names.
type kind int

const (
	podKey kind = iota
	serviceKey
)

type key struct {
	kind            kind
	namespace, name string
}

// allocation is the address the controller gave a pod (by namespace/name),
// and on a dual-stack fabric its IPv6 address (invalid otherwise).
type allocation struct {
	uid types.UID
	ip  netip.Addr
	ip6 netip.Addr
}

// pool hands out the pod addresses of one namespace's subnet.
type pool struct {
	used map[netip.Addr]bool
	next int // host number to try first: round robin, so a freed address is not reused at once
}

// controller is the NCP stand-in. One worker goroutine runs every sync, so
// the allocation state (allocs, pools) needs no lock; only the trigger
// times, written by the informers' handlers, do.
type controller struct {
	f      *Fabric
	client kubernetes.Interface
	t      testing.TB
	queue  workqueue.TypedRateLimitingInterface[key]

	pods     corelisters.PodLister
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister

	allocs   map[key]allocation
	pools    map[string]*pool
	podsOnly bool // no EndpointSlices (a real controller-manager writes them)

	mu       sync.Mutex
	triggers map[key]time.Time // first unsynced change of each Service
}

// startController runs the controller until t's cleanup.
func startController(t testing.TB, f *Fabric, client kubernetes.Interface, podsOnly bool) {
	t.Helper()
	c := &controller{
		f: f, client: client, t: t,
		queue:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[key]()),
		allocs:   map[key]allocation{},
		pools:    map[string]*pool{},
		triggers: map[key]time.Time{},
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	// Only our own slices: others (the apiserver's, a real controller's)
	// are none of our business.
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = discoveryv1.LabelManagedBy + "=" + ManagedBy
	}))
	podInf := factory.Core().V1().Pods()
	svcInf := factory.Core().V1().Services()
	sliceInf := sliceFactory.Discovery().V1().EndpointSlices()
	c.pods, c.services, c.slices = podInf.Lister(), svcInf.Lister(), sliceInf.Lister()

	_, err := podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.podChanged,
		UpdateFunc: func(_, obj any) { c.podChanged(obj) },
		DeleteFunc: c.podChanged,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.podsOnly = podsOnly
	if !podsOnly {
		_, err = svcInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.enqueueObj(serviceKey, obj) },
			UpdateFunc: func(_, obj any) { c.enqueueObj(serviceKey, obj) },
			DeleteFunc: func(obj any) { c.enqueueObj(serviceKey, obj) },
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sliceChanged := func(obj any) {
		if m, err := meta(obj); err == nil {
			if svc := m.GetLabels()[discoveryv1.LabelServiceName]; svc != "" {
				c.enqueue(key{serviceKey, m.GetNamespace(), svc})
			}
		}
	}
	_, err = sliceInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    sliceChanged,
		UpdateFunc: func(_, obj any) { sliceChanged(obj) },
		DeleteFunc: sliceChanged,
	})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		c.queue.ShutDown()
		wg.Wait()
		factory.Shutdown()
		sliceFactory.Shutdown()
	})
	factory.Start(ctx.Done())
	sliceFactory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("fabric: cache of %v not synced", typ)
		}
	}
	for typ, ok := range sliceFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("fabric: cache of %v not synced", typ)
		}
	}
	wg.Go(func() {
		for c.processNext(ctx) {
		}
	})
}

// meta unwraps a tombstone of a delete event.
func meta(obj any) (metav1.Object, error) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T", obj)
	}
	return m, nil
}

func (c *controller) enqueueObj(k kind, obj any) {
	if m, err := meta(obj); err == nil {
		c.enqueue(key{k, m.GetNamespace(), m.GetName()})
	}
}

// enqueue queues k, remembering for a Service when its change was seen: the
// slice's last-change-trigger-time, from which latencies are measured.
func (c *controller) enqueue(k key) {
	if k.kind == serviceKey {
		c.mu.Lock()
		if _, ok := c.triggers[k]; !ok {
			c.triggers[k] = time.Now()
		}
		c.mu.Unlock()
	}
	c.queue.Add(k)
}

// podChanged queues the pod and every Service of its namespace: any of them
// may select it, before or after the change.
func (c *controller) podChanged(obj any) {
	m, err := meta(obj)
	if err != nil {
		return
	}
	c.enqueue(key{podKey, m.GetNamespace(), m.GetName()})
	if c.podsOnly {
		return
	}
	svcs, _ := c.services.Services(m.GetNamespace()).List(labels.Everything())
	for _, s := range svcs {
		c.enqueue(key{serviceKey, s.Namespace, s.Name})
	}
}

func (c *controller) processNext(ctx context.Context) bool {
	k, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(k)
	var err error
	if k.kind == podKey {
		err = c.syncPod(ctx, k)
	} else {
		err = c.syncService(ctx, k)
	}
	if err != nil && ctx.Err() == nil {
		// Conflicts and stale caches are expected; the retry converges.
		c.t.Logf("fabric: NCP stand-in: %s/%s: %v (retrying)", k.namespace, k.name, err)
		c.queue.AddRateLimited(k)
		return true
	}
	c.queue.Forget(k)
	return true
}

// syncPod gives a scheduled pod its network config, once per pod UID, and
// frees the address of a pod that is gone or was recreated.
func (c *controller) syncPod(ctx context.Context, k key) error {
	pod, err := c.pods.Pods(k.namespace).Get(k.name)
	if apierrors.IsNotFound(err) {
		c.release(k)
		return c.f.forgetPod(ctx, k.namespace, k.name)
	}
	if err != nil {
		return err
	}
	if pod.Spec.NodeName == "" {
		return nil
	}
	nw, err := c.f.network(pod.Namespace)
	if err != nil {
		return err
	}
	a, ok := c.allocs[k]
	if ok && a.uid != pod.UID {
		c.release(k)
		ok = false
	}
	if !ok {
		// Adopt a config already written for this very pod by this fabric
		// (the controller restarted); a config from another fabric that
		// shared the API server is replaced.
		if cfg, err := podconfig.Parse(pod.Annotations[podconfig.AnnotationKey], string(pod.UID)); err == nil {
			if ip, valid := netip.AddrFromSlice(cfg.IP.IP.To4()); valid && cfg.VLAN == nw.vlan && c.claim(pod.Namespace, nw, ip) {
				// Its IPv6 address (if any) follows from ip: a
				// config without the one wanted is rewritten below.
				a, ok = allocation{uid: pod.UID, ip: ip}, true
			}
		}
	}
	if !ok {
		ip, err := c.allocate(pod.Namespace, nw)
		if err != nil {
			return err
		}
		a = allocation{uid: pod.UID, ip: ip}
	}
	// Set on every sync: a fabric made dual-stack later adds it.
	a.ip6 = nw.addr6(a.ip)
	c.allocs[k] = a
	cfg := &podconfig.Config{
		PodUID:  string(pod.UID),
		IP:      &net.IPNet{IP: a.ip.AsSlice(), Mask: net.CIDRMask(nw.subnet.Bits(), 32)},
		MAC:     macFor(a.ip),
		Gateway: nw.gateway.AsSlice(),
		VLAN:    nw.vlan,
		MTU:     podMTU,
	}
	if a.ip6.IsValid() {
		cfg.IP6 = &net.IPNet{IP: a.ip6.AsSlice(), Mask: net.CIDRMask(nw.subnet6.Bits(), 128)}
		cfg.Gateway6 = nw.gateway6.AsSlice()
	}
	want := podconfig.Marshal(cfg)
	if ch := c.f.channel(pod.Spec.NodeName); ch != nil {
		// The node takes its configs from HyperBus: never an annotation.
		return ch.upsert(ctx, containerConfig(pod.Spec.NodeName, pod.Namespace, pod.Name, string(pod.UID), want))
	}
	if pod.Annotations[podconfig.AnnotationKey] == want {
		return nil
	}
	// metadata.uid makes the patch fail on a recreated pod of the same
	// name (uid is immutable) instead of giving it this pod's config.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         pod.UID,
		"annotations": map[string]string{podconfig.AnnotationKey: want},
	}})
	_, err = c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile: its delete event frees the address
	}
	return err
}

func (c *controller) pool(namespace string) *pool {
	p := c.pools[namespace]
	if p == nil {
		p = &pool{used: map[netip.Addr]bool{}, next: firstPodHost}
		c.pools[namespace] = p
	}
	return p
}

// allocate takes the next free pod address of the namespace's subnet.
func (c *controller) allocate(namespace string, nw network) (netip.Addr, error) {
	p := c.pool(namespace)
	last := 1<<(32-nw.subnet.Bits()) - 2 // the highest host number; the broadcast address stays free
	for range last - firstPodHost + 1 {
		host := p.next
		if p.next++; p.next > last {
			p.next = firstPodHost
		}
		if ip := nthAddr(nw.subnet, host); !p.used[ip] {
			p.used[ip] = true
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("namespace %s: subnet %s is full", namespace, nw.subnet)
}

// claim marks ip used if it is a free pod address of the namespace.
func (c *controller) claim(namespace string, nw network, ip netip.Addr) bool {
	p := c.pool(namespace)
	if !nw.subnet.Contains(ip) || ip.Compare(nthAddr(nw.subnet, firstPodHost)) < 0 || p.used[ip] {
		return false
	}
	p.used[ip] = true
	return true
}

func (c *controller) release(k key) {
	if a, ok := c.allocs[k]; ok {
		delete(c.pool(k.namespace).used, a.ip)
		delete(c.allocs, k)
	}
}

// macFor derives a locally administered unicast MAC from a pod address.
func macFor(ip netip.Addr) net.HardwareAddr {
	b := ip.As4()
	return net.HardwareAddr{0x02, 0x00, b[0], b[1], b[2], b[3]}
}

// syncService makes the Service's slices (one per family of its
// ipFamilies) list exactly its ready endpoints, or deletes a slice when the
// Service is gone, has no selector or no longer has that family.
func (c *controller) syncService(ctx context.Context, k key) error {
	c.mu.Lock()
	trigger, ok := c.triggers[k]
	delete(c.triggers, k)
	c.mu.Unlock()
	if !ok {
		trigger = time.Now()
	}
	var err error
	for _, family := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		if err = c.reconcileSlice(ctx, k, family, trigger); err != nil {
			break
		}
	}
	if err != nil {
		// The retry still reports the first change it covers.
		c.mu.Lock()
		if t, ok := c.triggers[k]; !ok || trigger.Before(t) {
			c.triggers[k] = trigger
		}
		c.mu.Unlock()
	}
	return err
}

// sliceName is the name of a Service's slice of a family.
func sliceName(service string, family discoveryv1.AddressType) string {
	if family == discoveryv1.AddressTypeIPv6 {
		return service + SliceSuffixIPv6
	}
	return service + SliceSuffix
}

// hasFamily: the Service is of the family. Without ipFamilies (the API
// server sets them on every Service with a cluster IP) it is IPv4, as
// before dual-stack.
func hasFamily(svc *corev1.Service, family discoveryv1.AddressType) bool {
	if len(svc.Spec.IPFamilies) == 0 {
		return family == discoveryv1.AddressTypeIPv4
	}
	return slices.Contains(svc.Spec.IPFamilies, corev1.IPFamily(family))
}

// reconcileSlice makes the Service's slice of one family what it should be.
func (c *controller) reconcileSlice(ctx context.Context, k key, family discoveryv1.AddressType, trigger time.Time) error {
	name := sliceName(k.name, family)
	existing, err := c.slices.EndpointSlices(k.namespace).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	svc, err := c.services.Services(k.namespace).Get(k.name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if svc == nil || !wantsSlice(svc) || !hasFamily(svc, family) {
		if existing == nil {
			return nil
		}
		err := c.client.DiscoveryV1().EndpointSlices(k.namespace).Delete(ctx, name, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	pods, err := c.pods.Pods(k.namespace).List(labels.SelectorFromSet(svc.Spec.Selector))
	if err != nil {
		return err
	}
	endpoints, ports := c.endpoints(svc, pods, family)
	want := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: k.namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   ManagedBy,
			},
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: trigger.UTC().Format(time.RFC3339Nano)},
		},
		AddressType: family,
		Endpoints:   endpoints,
		Ports:       ports,
	}
	slices := c.client.DiscoveryV1().EndpointSlices(k.namespace)
	if existing == nil {
		_, err := slices.Create(ctx, want, metav1.CreateOptions{})
		return err
	}
	if apiequality.Semantic.DeepEqual(existing.Endpoints, want.Endpoints) &&
		apiequality.Semantic.DeepEqual(existing.Ports, want.Ports) &&
		existing.Labels[discoveryv1.LabelServiceName] == svc.Name {
		return nil
	}
	// Update from the cached object: its resourceVersion turns a stale
	// cache into a conflict, retried once the cache has caught up.
	upd := existing.DeepCopy()
	upd.Labels, upd.Annotations = want.Labels, want.Annotations
	upd.Endpoints, upd.Ports = want.Endpoints, want.Ports
	_, err = slices.Update(ctx, upd, metav1.UpdateOptions{})
	return err
}

// wantsSlice: only Services whose endpoints come from a pod selector.
func wantsSlice(svc *corev1.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName &&
		svc.Spec.ClusterIP != corev1.ClusterIPNone &&
		len(svc.Spec.Selector) > 0
}

// endpoints lists the Service's endpoints of a family: pods with their
// network config (an address of the family) and the ready annotation,
// sorted by name. One slice carries one port list,
// so a named targetPort is resolved on the first such pod, and pods that
// resolve it differently are left out.
func (c *controller) endpoints(svc *corev1.Service, pods []*corev1.Pod, family discoveryv1.AddressType) ([]discoveryv1.Endpoint, []discoveryv1.EndpointPort) {
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	var eps []discoveryv1.Endpoint
	var ports []discoveryv1.EndpointPort
	for _, pod := range pods {
		if pod.Spec.NodeName == "" || pod.Annotations[ReadyAnnotation] != "true" {
			continue
		}
		// The address this controller gave the pod (annotation or
		// HyperBus alike): there is no kubelet to report status.podIP.
		a, ok := c.allocs[key{podKey, pod.Namespace, pod.Name}]
		if !ok || a.uid != pod.UID {
			continue
		}
		ip := a.ip
		if family == discoveryv1.AddressTypeIPv6 {
			ip = a.ip6
		}
		if !ip.IsValid() {
			continue
		}
		pp, ok := resolvePorts(svc, pod)
		if !ok {
			continue
		}
		if ports == nil {
			ports = pp
		} else if !apiequality.Semantic.DeepEqual(ports, pp) {
			continue
		}
		terminating := pod.DeletionTimestamp != nil
		eps = append(eps, discoveryv1.Endpoint{
			Addresses: []string{ip.String()},
			Conditions: discoveryv1.EndpointConditions{
				Ready:       new(!terminating),
				Serving:     new(true),
				Terminating: new(terminating),
			},
			NodeName:  new(pod.Spec.NodeName),
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		})
	}
	return eps, ports
}

// resolvePorts maps the Service's ports to the pod's: targetPort as a
// number (0: the port itself) or a container port name; false if a name
// is not found on the pod.
func resolvePorts(svc *corev1.Service, pod *corev1.Pod) ([]discoveryv1.EndpointPort, bool) {
	var out []discoveryv1.EndpointPort
	for _, sp := range svc.Spec.Ports {
		proto := sp.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		port := sp.Port
		switch tp := sp.TargetPort; {
		case tp.Type == intstr.String:
			var found bool
			port, found = namedPort(pod, tp.StrVal, proto)
			if !found {
				return nil, false
			}
		case tp.IntVal != 0:
			port = tp.IntVal
		}
		out = append(out, discoveryv1.EndpointPort{Name: new(sp.Name), Port: new(port), Protocol: new(proto)})
	}
	return out, true
}

func namedPort(pod *corev1.Pod, name string, proto corev1.Protocol) (int32, bool) {
	for _, ctr := range pod.Spec.Containers {
		for _, cp := range ctr.Ports {
			p := cp.Protocol
			if p == "" {
				p = corev1.ProtocolTCP
			}
			if cp.Name == name && p == proto {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}
