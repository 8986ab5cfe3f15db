#!/usr/bin/env bash
# Vagrant provisioner "control" of the control VM, after node.sh:
#
#   - kubeadm init without the kube-proxy addon (nsx-kube-proxy replaces
#     it), the API server advertised on the private network (NODE_IP), a
#     service CIDR (SERVICE_CIDR) that does not overlap the fabric's pod
#     subnets 10.100.k.0/24, and the join token the workers use (JOIN_TOKEN);
#   - API access for the NCP stand-in on the fabric VM: a bootstrap token
#     (FABRIC_TOKEN, usage authentication) in the group that
#     hack/vagrant/fabric-rbac.yaml binds;
#   - nsx-ujo: `kubectl kustomize deploy/`, its ncp.ini rendered by
#     render-manifests.sh (DATAPLANE, the API server address, the uplink
#     NIC), applied; on a re-run the DaemonSets are restarted so they pick
#     up rebuilt images and a changed ncp.ini;
#   - it waits for this node to be Ready and for CoreDNS to serve: CoreDNS
#     pods get their network from nsx-node-agent and the fabric, reach the
#     API server through the kubernetes Service programmed by
#     nsx-kube-proxy, and pass kubelet's readiness probe through the fabric
#     router: the whole path, end to end.
#
# kubectl for the vagrant user: ~vagrant/.kube/config (the admin config).
set -euo pipefail
# shellcheck source=hack/vagrant/lib.sh
source "${NSX_SRC:-/vagrant}/hack/vagrant/lib.sh"
: "${NODE_IP:?}" "${JOIN_TOKEN:?}" "${FABRIC_TOKEN:?}" "${DATAPLANE:?}" "${SERVICE_CIDR:?}" "${K8S_VERSION:?}"
NSX_SRC=${NSX_SRC:-/vagrant}
export KUBECONFIG=/etc/kubernetes/admin.conf
node=$(hostname)

diagnose() {
  set +e
  log "diagnostics"
  kubectl get nodes -o wide
  kubectl get pods -A -o wide
  kubectl -n nsx-system describe pods | tail -n 60
  for c in nsx-ovs nsx-node-agent nsx-kube-proxy; do
    kubectl -n nsx-system logs -l app.kubernetes.io/name=nsx-node-agent -c "$c" --tail 30 --prefix
  done
  kubectl -n kube-system describe pods -l k8s-app=kube-dns | tail -n 40
}
trap 'rc=$?; ((rc == 0)) || diagnose' EXIT

if [[ ! -f "$KUBECONFIG" ]]; then
  log "kubeadm init (Kubernetes $K8S_VERSION, no kube-proxy addon)"
  kubeadm init --kubernetes-version "v${K8S_VERSION}" --node-name "$node" \
    --apiserver-advertise-address "$NODE_IP" --service-cidr "$SERVICE_CIDR" \
    --token "$JOIN_TOKEN" --token-ttl 0 --skip-phases=addon/kube-proxy
fi
install -d -o vagrant -g vagrant /home/vagrant/.kube
install -m 0600 -o vagrant -g vagrant "$KUBECONFIG" /home/vagrant/.kube/config
wait_until 300 "kube-apiserver ready" kubectl get --raw /readyz

log "API access of the fabric's NCP stand-in"
kubectl apply -f "$NSX_SRC/hack/vagrant/fabric-rbac.yaml"
if ! kubeadm token list 2>/dev/null | awk -v id="${FABRIC_TOKEN%%.*}." 'index($1, id) == 1 { found = 1 } END { exit !found }'; then
  kubeadm token create "$FABRIC_TOKEN" --ttl 0 --usages authentication \
    --groups system:bootstrappers:nsx-fabric-sim --description "nsx-fabric-sim: the NCP stand-in on the fabric VM"
fi

uplink=$(cat "$NSX_STATE/uplink")
log "nsx-ujo: deploy/ with dataplane=$DATAPLANE, ovs_uplink_port=$uplink, apiserver_host_ip=$NODE_IP"
kubectl kustomize "$NSX_SRC/deploy" |
  bash "$NSX_SRC/hack/vagrant/render-manifests.sh" --dataplane "$DATAPLANE" --apiserver-ip "$NODE_IP" --uplink "$uplink" \
    >"$NSX_STATE/nsx-ujo.yaml"
rerun=false
kubectl -n nsx-system get daemonset nsx-node-agent >/dev/null 2>&1 && rerun=true
kubectl apply -f "$NSX_STATE/nsx-ujo.yaml"
if $rerun; then
  kubectl -n nsx-system rollout restart daemonset/nsx-ncp-bootstrap daemonset/nsx-node-agent
fi
kubectl -n nsx-system rollout status daemonset/nsx-ncp-bootstrap --timeout=10m
kubectl -n nsx-system rollout status daemonset/nsx-node-agent --timeout=10m
kubectl wait --for=condition=Ready "node/$node" --timeout=10m

log "waiting for CoreDNS (pod network from the fabric VM, API through nsx-kube-proxy)"
kubectl -n kube-system rollout status deployment/coredns --timeout=15m
kubectl get nodes -o wide
log "control plane up; workers join next"
