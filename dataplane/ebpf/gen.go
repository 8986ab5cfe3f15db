// Package ebpf is the eBPF dataplane of nsx-kube-proxy: TC programs
// (bpf/nsx_svc.c, compiled with bpf2go; the generated Go and object files
// are committed so a build needs no clang) attached with TCX to every pod's
// interface inside the pod's namespace, and the pinned maps that hold the
// services, their backends, conntrack and affinity.
package ebpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -no-strip -type svc_key -type svc_val -type be_key -type be_val -type ct_key -type ct_val -type aff_key -type aff_val -type member_key -type range_key -type svc6_key -type svc6_val -type be6_val -type ct6_key -type ct6_val -type aff6_key -type aff6_val -type member6_key -type range6_key nsx ../../bpf/nsx_svc.c
