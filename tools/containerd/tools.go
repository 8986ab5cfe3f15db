//go:build tools

// Package containerd pins the container runtime of the real-node cluster:
// containerd v2 (its CRI serves kubelet), its runc shim and ctr (image
// import). Its own module: containerd's dependencies (cri-api, otel,
// grpc) need not agree with k8s.io/kubernetes' in ../go.mod.
package containerd

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
