# shellcheck shell=bash
# Helpers sourced by the Vagrant provisioning scripts (hack/vagrant/*.sh),
# which Vagrant uploads to /tmp and runs as root: they find this file in the
# synced folder, ${NSX_SRC:-/vagrant}.

export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/go/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin

# Where a provisioned VM keeps what it builds (binaries, the image archive,
# rendered manifests): outside the synced folder, which may be the host's.
export NSX_STATE=/var/lib/nsx-ujo-vagrant

log() { printf '==> %s: %s\n' "$(hostname)" "$*" >&2; }
die() {
  printf '==> %s: ERROR: %s\n' "$(hostname)" "$*" >&2
  exit 1
}

# wait_until SECONDS WHAT CMD...: runs CMD every 2 s until it succeeds;
# dies after SECONDS, naming WHAT.
wait_until() {
  local limit=$1 what=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - start < limit)) || die "$what: not within ${limit}s"
    sleep 2
  done
}

# apt_install PKG...: installs what is missing, without recommends.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "${p%%=*}" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# install_go: the official Go tarball ($GO_URL) as /usr/local/go, unless
# go$GO_VERSION is there already.
install_go() {
  : "${GO_VERSION:?}" "${GO_URL:?}"
  if [[ "$(/usr/local/go/bin/go env GOVERSION 2>/dev/null)" == "go$GO_VERSION" ]]; then
    return 0
  fi
  log "installing Go $GO_VERSION from $GO_URL"
  local tgz
  tgz=$(mktemp)
  curl -fsSL --retry 3 -o "$tgz" "$GO_URL"
  rm -rf /usr/local/go
  tar -C /usr/local -xzf "$tgz"
  rm -f "$tgz"
  go version >&2
}

# iface_with_ip ADDR: the interface holding IPv4 address ADDR.
iface_with_ip() {
  ip -o -4 addr show | awk -v a="$1" '{ split($4, p, "/"); if (p[1] == a) { print $2; exit } }'
}

# pod_route NODE_GW: the route to the pod subnets (tests/fabric gives
# namespace k the subnet 10.100.k.0/24) through the fabric's router, for
# kubelet's probes and anything else on the node that talks to pods. A
# oneshot unit re-adds it at boot; it names no device because nsx-ovs moves
# the node address (and this route) from the NIC onto br-int.
pod_route() {
  local gw=$1
  cat >/etc/systemd/system/nsx-ujo-pod-route.service <<EOF
[Unit]
Description=Route to the nsx-ujo pod subnets through the fabric router
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip route replace 10.100.0.0/16 via $gw

[Install]
WantedBy=multi-user.target
EOF
  systemctl daemon-reload
  systemctl enable nsx-ujo-pod-route.service >/dev/null 2>&1
  systemctl restart nsx-ujo-pod-route.service
}
