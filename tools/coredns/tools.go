//go:build tools

// Package coredns pins the cluster DNS of the real-node cluster: the
// upstream e2e tests reach Services by name (<svc>.<ns>.svc.cluster.local).
// Its own module: CoreDNS's dependencies need not agree with
// k8s.io/kubernetes' in ../go.mod.
package coredns

import (
	_ "github.com/coredns/coredns"
)
