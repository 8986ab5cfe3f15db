package harness

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The front forwards (watches included), answers 500s in FrontErrors and
// cuts a watch open across the switch; back in FrontPass all works again.
func TestAPIFront(t *testing.T) {
	s := StartAPIServer(t)
	f := s.StartFront(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", f.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list through the front: %v", err)
	}
	w, err := client.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("watch through the front: %v", err)
	}
	defer w.Stop()
	f.SetMode(FrontErrors)
	_, err = client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if !apierrors.IsInternalError(err) {
		t.Fatalf("list with the front in %s: %v, want an InternalError", FrontErrors, err)
	}
	select {
	case _, open := <-w.ResultChan():
		for open { // events of existing namespaces may come first
			_, open = <-w.ResultChan()
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a watch open across the switch to 500s was not cut")
	}
	f.SetMode(FrontPass)
	if _, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list with the front back in %s: %v", FrontPass, err)
	}
}
