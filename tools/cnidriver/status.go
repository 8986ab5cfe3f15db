//go:build !libcni_v1_1

package main

import (
	"context"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func status(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
	return cni.GetStatusNetworkList(ctx, list)
}

func gc(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, valid [][2]string) error {
	args := &libcni.GCArgs{}
	for _, v := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: v[0], IfName: v[1]})
	}
	return cni.GCNetworkList(ctx, list, args)
}
