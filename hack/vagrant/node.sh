#!/usr/bin/env bash
# Vagrant provisioner "node" of the control and worker VMs: everything a
# Kubernetes node with nsx-ujo needs before kubeadm runs.
#
#   - containerd and runc from their release tarballs (CONTAINERD_VERSION,
#     RUNC_VERSION), kubelet, kubeadm and kubectl K8S_VERSION from
#     pkgs.k8s.io; kubelet's node IP is NODE_IP (the private network);
#   - the openvswitch kernel module (nsx-ovs runs br-int on the kernel
#     datapath: ovs_datapath_type = system), ip_forward, no swap;
#   - the route to the pod subnets through the fabric router (NODE_GW);
#   - the AppArmor profile node-agent-apparmor (deploy/apparmor), which the
#     node DaemonSet asks for: nsx-ncp-bootstrap loads it on Ubuntu only,
#     and these are Debian VMs;
#   - Go (GO_VERSION from GO_URL), our binaries built from the synced
#     folder with `make build` into /var/lib/nsx-ujo-vagrant/bin, and the
#     image nsx-ujo:latest (what deploy/ runs) assembled from them by buildah
#     (hack/vagrant/Containerfile) and imported into containerd's k8s.io
#     namespace, so no registry is involved.
#
# Idempotent: a re-run (vagrant provision --provision-with node) rebuilds
# the binaries and the image and leaves the rest as it is.
set -euo pipefail
# shellcheck source=hack/vagrant/lib.sh
source "${NSX_SRC:-/vagrant}/hack/vagrant/lib.sh"
: "${NODE_IP:?}" "${NODE_GW:?}" "${K8S_VERSION:?}" "${CONTAINERD_VERSION:?}" "${RUNC_VERSION:?}" "${NSX_VERSION:?}"
NSX_SRC=${NSX_SRC:-/vagrant}
arch=$(dpkg --print-architecture)

# The host must never run these: nsx-ovs (a container) owns
# /var/run/openvswitch and the kernel datapath, and kubeadm's etcd listens
# on 127.0.0.1:2379. Masked before their packages may arrive (make
# bench-cluster PERF_LOCAL=1 runs hack/install-deps.sh, which installs
# openvswitch-switch and etcd-server for the node-local benchmarks).
systemctl mask openvswitch-switch.service ovsdb-server.service ovs-vswitchd.service etcd.service

apt_install ca-certificates curl gnupg make buildah apparmor iproute2 ethtool conntrack socat kmod

# node-if: the NIC on the private network, recorded before nsx-ovs moves
# NODE_IP from it onto br-int (control.sh writes it into ncp.ini).
mkdir -p "$NSX_STATE"
if [[ ! -s "$NSX_STATE/uplink" ]]; then
  uplink=$(iface_with_ip "$NODE_IP")
  [[ -n "$uplink" && "$uplink" != br-int ]] || die "no interface holds $NODE_IP (the private network)"
  echo "$uplink" >"$NSX_STATE/uplink"
fi
log "node-if (ovs_uplink_port): $(cat "$NSX_STATE/uplink")"

log "kernel modules, sysctls, swap off"
cat >/etc/modules-load.d/nsx-ujo.conf <<'EOF'
openvswitch
overlay
EOF
modprobe openvswitch
modprobe overlay
echo 'net.ipv4.ip_forward = 1' >/etc/sysctl.d/90-nsx-ujo.conf
sysctl -q -p /etc/sysctl.d/90-nsx-ujo.conf
swapoff -a
sed -i -E '/^[^#].*[[:space:]]swap[[:space:]]/s/^/#/' /etc/fstab

pod_route "$NODE_GW"

log "containerd $CONTAINERD_VERSION, runc $RUNC_VERSION"
if ! /usr/local/bin/containerd --version 2>/dev/null | grep -q " v${CONTAINERD_VERSION} "; then
  curl -fsSL --retry 3 "https://github.com/containerd/containerd/releases/download/v${CONTAINERD_VERSION}/containerd-${CONTAINERD_VERSION}-linux-${arch}.tar.gz" |
    tar -C /usr/local -xz
fi
if ! /usr/local/sbin/runc --version 2>/dev/null | grep -qx "runc version ${RUNC_VERSION}"; then
  curl -fsSL --retry 3 -o /usr/local/sbin/runc "https://github.com/opencontainers/runc/releases/download/v${RUNC_VERSION}/runc.${arch}"
  chmod 0755 /usr/local/sbin/runc
fi
mkdir -p /etc/containerd
/usr/local/bin/containerd config default >/etc/containerd/config.toml.new
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml.new
# kubeadm configures kubelet for the systemd cgroup driver (and kubelet
# follows what the runtime reports where it can).
grep -q 'SystemdCgroup = true' /etc/containerd/config.toml.new ||
  log "warning: no SystemdCgroup key in containerd's default config; check the cgroup driver if pods fail"
mv /etc/containerd/config.toml.new /etc/containerd/config.toml
# The unit of containerd's repository (containerd.service).
cat >/etc/systemd/system/containerd.service <<'EOF'
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target dbus.service

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable containerd >/dev/null 2>&1
systemctl restart containerd
printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\nimage-endpoint: unix:///run/containerd/containerd.sock\n' >/etc/crictl.yaml

log "kubelet, kubeadm, kubectl $K8S_VERSION"
minor=${K8S_VERSION%.*}
install -d -m 0755 /etc/apt/keyrings
curl -fsSL --retry 3 "https://pkgs.k8s.io/core:/stable:/v${minor}/deb/Release.key" |
  gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v${minor}/deb/ /" \
  >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
pkgver=$(apt-cache madison kubeadm | awk -v v="$K8S_VERSION" '$3 ~ "^" v "-" { print $3; exit }')
[[ -n "$pkgver" ]] || die "pkgs.k8s.io v${minor} has no kubeadm ${K8S_VERSION}"
apt-get install -y -qq --allow-change-held-packages --allow-downgrades \
  "kubelet=$pkgver" "kubeadm=$pkgver" "kubectl=$pkgver" >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null
# Without it kubelet would pick the NAT interface of the default route.
echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" >/etc/default/kubelet
systemctl restart kubelet || true # crash-loops until kubeadm init/join; that is expected

log "AppArmor profile node-agent-apparmor"
[[ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" == Y ]] ||
  die "AppArmor is not enabled on this kernel; the nsx-node-agent DaemonSet asks for the Localhost profile node-agent-apparmor"
install -m 0644 "$NSX_SRC/deploy/apparmor/ncp-apparmor" /etc/apparmor.d/ncp-apparmor
apparmor_parser -r -W /etc/apparmor.d/ncp-apparmor

install_go

log "building the binaries (make build) from $NSX_SRC"
bin=$NSX_STATE/bin
rm -rf "$bin"
mkdir -p "$bin"
cd "$NSX_SRC"
# As the Dockerfile does: static, every cmd/ (the Makefile's BINARIES lags
# behind new commands), the version nsx-ncp-bootstrap writes and compares,
# the loopback plugin; plus tests/workload for the cluster benchmarks.
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -ldflags=-X=github.com/nsx-ujo/nsx-ujo/pkg/bootstrap.Version=${NSX_VERSION}"
make --no-print-directory build BIN="$bin" BINARIES="$(find cmd -mindepth 1 -maxdepth 1 -type d -printf '%f ')"
go build -o "$bin/loopback" github.com/containernetworking/plugins/plugins/main/loopback
go build -o "$bin/workload" ./tests/workload
"$bin/nsx-ncp-bootstrap" version >&2

log "image nsx-ujo:latest (buildah, hack/vagrant/Containerfile) into containerd"
image=docker.io/library/nsx-ujo:latest
archive=$NSX_STATE/nsx-ujo-image.tar
buildah bud --isolation chroot --quiet --build-arg "OVS_VERSION=${OVS_VERSION:-}" \
  -f "$NSX_SRC/hack/vagrant/Containerfile" -t "$image" "$bin" >/dev/null
rm -f "$archive"
buildah push --quiet "$image" "docker-archive:${archive}:${image}"
ctr -n k8s.io images import "$archive" >/dev/null
rm -f "$archive"
ctr -n k8s.io images ls -q | grep -qx "$image" || die "$image is not in containerd after the import"
log "node ready for kubeadm"
