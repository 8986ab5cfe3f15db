package proxy

import (
	"context"
	"fmt"
	"sort"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// Desired is the model a Proxier with options o builds from what the API
// holds now (the Services and EndpointSlices it selects, listed once):
// what nsxctl compares a node's dataplane with. Services the proxy skips
// are left out, and of two Services claiming one frontend the newer wins,
// as in the proxy.
func Desired(ctx context.Context, client kubernetes.Interface, o Options) (*dataplane.Model, error) {
	p := New(client, nil, o)
	svcSel, sliceSel, err := p.selectors()
	if err != nil {
		return nil, err
	}
	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: svcSel.String()})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	sl, err := client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{LabelSelector: sliceSel.String()})
	if err != nil {
		return nil, fmt.Errorf("list endpointslices: %w", err)
	}
	bySvc := map[types.NamespacedName][]*discovery.EndpointSlice{}
	for i := range sl.Items {
		if key, ok := sliceService(&sl.Items[i]); ok {
			bySvc[key] = append(bySvc[key], &sl.Items[i])
		}
	}
	addrs, err := resolveNodePortAddresses(o.NodePortAddresses, func() (*v1.Node, error) {
		return client.CoreV1().Nodes().Get(ctx, o.NodeName, metav1.GetOptions{})
	})
	if err != nil {
		return nil, err
	}
	node := Node{Name: o.NodeName, Addresses: addrs}
	items := svcs.Items
	sort.SliceStable(items, func(i, j int) bool {
		a, b := items[i].CreationTimestamp, items[j].CreationTimestamp
		if !a.Equal(&b) {
			return a.Before(&b)
		}
		return items[i].Namespace+"/"+items[i].Name < items[j].Namespace+"/"+items[j].Name
	})
	m := &dataplane.Model{Frontends: map[dataplane.FrontendKey]*dataplane.Frontend{}}
	for i := range items {
		svc := &items[i]
		if skipReason(svc) != "" {
			continue
		}
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		for k, fe := range BuildFrontends(svc, bySvc[key], node) {
			m.Frontends[k] = fe
		}
	}
	return m, nil
}
