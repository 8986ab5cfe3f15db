#!/usr/bin/env bash
# Vagrant provisioner "fabric" of the fabric VM: the NSX fabric simulator
# (tests/fabric) as the systemd service nsx-fabric-sim, built from the synced
# folder (tests/fabric/nsx-fabric-sim).
#
# The VM has two NICs on the nodes' private network: the trunk (no address;
# the daemon moves it into its fabric namespace as a port of br-fabric,
# where the router's gateways hang off VLAN access ports) and a management
# NIC with FABRIC_IP, over which the NCP stand-in reaches the API server on
# CONTROL_IP with FABRIC_TOKEN. Until control.sh has run, the daemon waits
# for the API server (journalctl -u nsx-fabric-sim says so).
set -euo pipefail
# shellcheck source=hack/vagrant/lib.sh
source "${NSX_SRC:-/vagrant}/hack/vagrant/lib.sh"
: "${NODE_NET:?}" "${CONTROL_IP:?}" "${FABRIC_TOKEN:?}" "${FABRIC_DATAPATH:?}"
NSX_SRC=${NSX_SRC:-/vagrant}
conf=/etc/default/nsx-fabric-sim

ovs=openvswitch-switch
[[ -z "${OVS_VERSION:-}" ]] || ovs="openvswitch-switch=$OVS_VERSION"
apt_install ca-certificates curl make iproute2 ethtool util-linux procps kmod iputils-ping tcpdump "$ovs"
# The daemon runs its own ovsdb-server and ovs-vswitchd in its namespace;
# the packaged service would only confuse whoever looks.
systemctl mask --now openvswitch-switch.service ovsdb-server.service ovs-vswitchd.service

# The trunk: the one physical NIC without an IPv4 address. Recorded the
# first time: while the daemon runs it lives in the fabric namespace.
if [[ -f "$conf" ]]; then
  uplink=$(sed -n 's/^UPLINK=//p' "$conf")
else
  candidates=()
  for dev in /sys/class/net/*; do
    name=${dev##*/}
    [[ -e "$dev/device" ]] || continue
    [[ -z "$(ip -o -4 addr show dev "$name")" ]] || continue
    candidates+=("$name")
  done
  ((${#candidates[@]} == 1)) ||
    die "want exactly one NIC without an IPv4 address (the trunk on the private network), found: ${candidates[*]:-none}"
  uplink=${candidates[0]}
fi
[[ -n "$uplink" ]] || die "no trunk NIC recorded in $conf"

install_go
log "building nsx-fabric-sim"
(cd "$NSX_SRC" && CGO_ENABLED=0 go build -buildvcs=false -o /usr/local/bin/nsx-fabric-sim.new ./tests/fabric/nsx-fabric-sim)
mv /usr/local/bin/nsx-fabric-sim.new /usr/local/bin/nsx-fabric-sim

install -d -m 0700 /etc/nsx-fabric-sim
(
  umask 077
  printf '%s' "$FABRIC_TOKEN" >/etc/nsx-fabric-sim/token
)
cat >"$conf" <<EOF
UPLINK=$uplink
NODE_NET=${NODE_NET}.0/24
DATAPATH=$FABRIC_DATAPATH
APISERVER=https://${CONTROL_IP}:6443
EOF
cat >/etc/systemd/system/nsx-fabric-sim.service <<'EOF'
[Unit]
Description=NSX fabric simulator (tests/fabric): br-fabric, router, NCP stand-in
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/default/nsx-fabric-sim
ExecStart=/usr/local/bin/nsx-fabric-sim --uplink ${UPLINK} --node-net ${NODE_NET} --datapath ${DATAPATH} --apiserver ${APISERVER} --token-file /etc/nsx-fabric-sim/token
# SIGTERM to the daemon, which stops its OVS and deletes its namespaces.
KillMode=mixed
TimeoutStopSec=60
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable nsx-fabric-sim.service >/dev/null 2>&1
systemctl restart nsx-fabric-sim.service
# From this VM too, for debugging (ping a pod, tcpdump on the router).
pod_route "${NODE_NET}.1"

sleep 5
if ! systemctl is-active --quiet nsx-fabric-sim.service; then
  journalctl -u nsx-fabric-sim.service -n 50 --no-pager >&2
  die "nsx-fabric-sim is not running"
fi
log "nsx-fabric-sim runs (trunk $uplink, node network ${NODE_NET}.0/24, router ${NODE_NET}.1); journalctl -u nsx-fabric-sim"
