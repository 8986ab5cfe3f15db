//go:build libcni_v1_1

package main

import (
	"context"

	"github.com/containernetworking/cni/libcni"
)

// libcni v1.1.x (containerd 1.6/1.7) knows neither STATUS nor GC.

func status(context.Context, *libcni.CNIConfig, *libcni.NetworkConfigList) error {
	return errUnsupported
}

func gc(context.Context, *libcni.CNIConfig, *libcni.NetworkConfigList, [][2]string) error {
	return errUnsupported
}
