package podconfig

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Source waits for pod network configurations and answers whether a pod
// still exists. Safe for concurrent use.
type Source interface {
	// Get returns the config of pod namespace/name. uid, when set, is the
	// pod's UID from the runtime: a pod object with another UID is an older
	// or newer pod of the same name and its config is not used. Get waits
	// until a valid config appears or ctx ends; a malformed annotation is
	// returned at once as an error naming the field.
	Get(ctx context.Context, namespace, name, uid string) (*Config, error)
	// PodExists says whether a pod with this UID is known on this node.
	PodExists(uid string) bool
	// Synced says whether the pod view has caught up with the API server.
	Synced() bool
}

// AnnotationSource reads configs from the annotations of the pods bound to
// one node, through an informer: an ADD costs no API round-trip and is
// woken by the update that adds the annotation.
type AnnotationSource struct {
	informer cache.SharedIndexInformer
	lister   listersv1.PodLister
	nodeName string

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every pod event
}

const uidIndex = "uid"

// NewAnnotationSource watches the pods whose spec.nodeName is nodeName.
// Call Run before Get.
func NewAnnotationSource(client kubernetes.Interface, nodeName string) *AnnotationSource {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
		}))
	inf := f.Core().V1().Pods().Informer()
	s := &AnnotationSource{informer: inf, lister: f.Core().V1().Pods().Lister(), nodeName: nodeName, changed: make(chan struct{})}
	_ = inf.AddIndexers(cache.Indexers{uidIndex: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			return []string{string(p.UID)}, nil
		}
		return nil, nil
	}})
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.notify() },
		UpdateFunc: func(any, any) { s.notify() },
		DeleteFunc: func(any) { s.notify() },
	})
	return s
}

// Run runs the informer until ctx ends.
func (s *AnnotationSource) Run(ctx context.Context) { s.informer.Run(ctx.Done()) }

// WaitForSync blocks until the informer has listed the node's pods.
func (s *AnnotationSource) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced)
}

// Synced implements Source.
func (s *AnnotationSource) Synced() bool { return s.informer.HasSynced() }

func (s *AnnotationSource) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *AnnotationSource) waitChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// PodExists implements Source.
func (s *AnnotationSource) PodExists(uid string) bool {
	objs, err := s.informer.GetIndexer().ByIndex(uidIndex, uid)
	return err == nil && len(objs) > 0
}

// NotReadyError says why Get is still waiting; it is what Get returns when
// ctx ends first.
type NotReadyError struct {
	Pod    string
	Source string // where the config comes from; "" is the annotation
	Reason string
}

func (e *NotReadyError) Error() string {
	src := e.Source
	if src == "" {
		src = AnnotationKey + " annotation"
	}
	return fmt.Sprintf("pod %s: no usable %s yet: %s", e.Pod, src, e.Reason)
}

// PodStatus is a pod's attachment on this node as an ADD, a DEL or a
// reconciliation left it.
type PodStatus struct {
	Namespace, Name, UID string
	Attached             bool
	// Err says why an ADD failed, or how the attachment differs from the
	// config the source now holds.
	Err error
}

// StatusReporter is a Source that hears of attachments (HyperBus reports
// them to the hypervisor). ReportStatus is called concurrently, must not
// block, and may drop a report it cannot deliver: a later reconciliation
// reports every attachment again.
type StatusReporter interface {
	ReportStatus(PodStatus)
}

// Get implements Source.
func (s *AnnotationSource) Get(ctx context.Context, namespace, name, uid string) (*Config, error) {
	key := namespace + "/" + name
	for {
		wait := s.waitChan() // before reading, so no event is missed
		cfg, reason, err := s.lookup(namespace, name, uid)
		if err != nil || cfg != nil {
			return cfg, err
		}
		select {
		case <-ctx.Done():
			return nil, &NotReadyError{Pod: key, Reason: reason}
		case <-wait:
		}
	}
}

// lookup returns a config, or a reason to keep waiting, or a final error.
func (s *AnnotationSource) lookup(namespace, name, uid string) (*Config, string, error) {
	pod, err := s.lister.Pods(namespace).Get(name)
	if err != nil {
		if !s.informer.HasSynced() {
			return nil, "pod list not synced from the API server", nil
		}
		return nil, "pod not found on this node", nil
	}
	if pod.Spec.NodeName != s.nodeName {
		// The field selector already filters; this guards a pod rebound
		// in a cache that has not seen the delete yet.
		return nil, fmt.Sprintf("pod is bound to node %q, not %q", pod.Spec.NodeName, s.nodeName), nil
	}
	if uid != "" && string(pod.UID) != uid {
		return nil, fmt.Sprintf("pod object has uid %s, the runtime asked for %s", pod.UID, uid), nil
	}
	value, ok := pod.Annotations[AnnotationKey]
	if !ok {
		return nil, "annotation not set", nil
	}
	cfg, err := Parse(value, string(pod.UID))
	if errors.Is(err, ErrUIDMismatch) {
		// Written for an earlier pod of this name: the controller has not
		// caught up yet. Never use it; wait for the new one.
		return nil, err.Error(), nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	return cfg, "", nil
}
