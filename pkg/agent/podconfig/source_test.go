package podconfig

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

func pod(name, uid, node, annotation string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: node},
	}
	if annotation != "" {
		p.Annotations = map[string]string{AnnotationKey: annotation}
	}
	return p
}

func cfgFor(uid string, vlan int) string {
	return Marshal(&Config{PodUID: uid, IP: &net.IPNet{IP: net.IPv4(10, 0, 1, 5).To4(), Mask: net.CIDRMask(24, 32)},
		MAC: net.HardwareAddr{2, 0, 0, 0, 0, 5}, Gateway: net.IPv4(10, 0, 1, 1).To4(), VLAN: vlan})
}

func startSource(t *testing.T, objs ...*corev1.Pod) (*AnnotationSource, *fake.Clientset) {
	t.Helper()
	cs := fake.NewClientset()
	for _, o := range objs {
		if _, err := cs.CoreV1().Pods(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := NewAnnotationSource(cs, "node1")
	go s.Run(ctx)
	if !s.WaitForSync(ctx) {
		t.Fatal("no sync")
	}
	return s, cs
}

func TestSourceWaitsForAnnotation(t *testing.T) {
	s, cs := startSource(t, pod("p", "uid-1", "node1", ""))
	go func() {
		time.Sleep(100 * time.Millisecond)
		p := pod("p", "uid-1", "node1", cfgFor("uid-1", 42))
		_, _ = cs.CoreV1().Pods("ns").Update(context.Background(), p, metav1.UpdateOptions{})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := s.Get(ctx, "ns", "p", "uid-1")
	if err != nil || cfg.VLAN != 42 {
		t.Fatalf("Get = %+v, %v", cfg, err)
	}
	if !s.PodExists("uid-1") || s.PodExists("uid-2") {
		t.Fatal("PodExists is wrong")
	}
}

func TestSourceNeverUsesAnotherPodsConfig(t *testing.T) {
	// The annotation was written for the pod's predecessor (uid-old).
	s, _ := startSource(t, pod("p", "uid-new", "node1", cfgFor("uid-old", 42)))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := s.Get(ctx, "ns", "p", "uid-new")
	var nr *NotReadyError
	if !errors.As(err, &nr) || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("Get = %v, want a NotReadyError after the timeout", err)
	}
	// The runtime asks for a pod whose object is not the one cached.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := s.Get(ctx2, "ns", "p", "uid-other"); !errors.As(err, &nr) {
		t.Fatalf("Get with foreign uid = %v", err)
	}
}

func TestSourceMalformedFailsFast(t *testing.T) {
	s, _ := startSource(t, pod("p", "uid-1", "node1", `{"version":1,"pod_uid":"uid-1","ip_address":"10.0.1.5/24","mac_address":"02:00:00:00:00:05","vlan_id":5000}`))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.Get(ctx, "ns", "p", "")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "vlan_id" || ctx.Err() != nil {
		t.Fatalf("Get = %v, want an immediate vlan_id FieldError", err)
	}
}

func TestSourceIgnoresOtherNodes(t *testing.T) {
	s, _ := startSource(t, pod("p", "uid-1", "node2", cfgFor("uid-1", 42)))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.Get(ctx, "ns", "p", ""); err == nil {
		t.Fatal("got the config of a pod bound to another node")
	}
}
