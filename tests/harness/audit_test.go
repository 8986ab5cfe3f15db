package harness

import (
	"context"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The audit log holds the requests of the audited users, each once, with
// its verb, resource and status; a denied request shows its 403.
func TestAPIServerAudit(t *testing.T) {
	s := StartAPIServerWith(t, APIServerOptions{AuditUsers: []string{"admin"}})
	if _, err := s.Client(t).CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	reqs, err := s.AuditRequests()
	if err != nil {
		t.Fatal(err)
	}
	// A namespace is its own namespace in the object reference.
	want := AuditRequest{User: "admin", Verb: "get", Resource: "namespaces", Namespace: "default", Name: "default", Code: 200}
	if !slices.Contains(reqs, want) {
		t.Errorf("audit log: %+v\nwant %+v among them", reqs, want)
	}
}
