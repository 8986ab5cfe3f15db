#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, test and demo
# nsx-ujo: Open vSwitch (userspace datapath), etcd, iproute2/ethtool, and the
# eBPF toolchain. Idempotent: skips apt when everything is there already.
# Used by .ci/run and `make deps` (and so by `make demo`).
set -euo pipefail

packages=(
  openvswitch-switch   # ovsdb-server, ovs-vswitchd, ovs-vsctl, ovs-ofctl
  etcd-server          # the real etcd behind the test kube-apiserver
  iproute2             # ip netns, ip link
  ethtool              # tests read the pods' offload settings
  iputils-ping         # connectivity checks between test netns
  util-linux           # nsenter
  clang llvm libbpf-dev bpftool  # eBPF programs (go generate) and inspection
  iptables nftables    # benchmark baselines: kube-proxy-style rules
  vagrant vagrant-libvirt  # tests/vagrant: vagrant validate of the Vagrantfile (libvirt's settings need the plugin)
  shellcheck               # tests/vagrant lints hack/vagrant/*.sh
  runc                     # the real-node cluster: containerd's OCI runtime
  busybox-static curl netcat-openbsd  # the e2e test images (tests/images) are built from these
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The packaged OVS service is not ours to run: tests and the demo start
# private ovsdb-server/ovs-vswitchd instances inside network namespaces.
command -v go >/dev/null || { echo "go not found on PATH (expected /usr/local/go/bin)" >&2; exit 1; }
