#!/usr/bin/env bash
# Vagrant provisioner "worker" of the worker VMs, after node.sh: kubeadm join
# (with the shared JOIN_TOKEN: the VMs have no channel to pass a join
# command around, since the synced folder may be a one-way rsync; the CA is
# not pinned, acceptable on this private lab network only), then wait until
# the node is Ready, i.e. nsx-ujo's DaemonSets run on it and CNI STATUS
# passes. With libvirt the VMs come up in parallel: the join waits for the
# control VM's API server.
set -euo pipefail
# shellcheck source=hack/vagrant/lib.sh
source "${NSX_SRC:-/vagrant}/hack/vagrant/lib.sh"
: "${CONTROL_IP:?}" "${JOIN_TOKEN:?}"
node=$(hostname)

if [[ ! -f /etc/kubernetes/kubelet.conf ]]; then
  log "waiting for the API server on $CONTROL_IP:6443"
  wait_until 3600 "kube-apiserver on $CONTROL_IP:6443" curl -ksf "https://$CONTROL_IP:6443/readyz"
  kubeadm join "$CONTROL_IP:6443" --node-name "$node" --token "$JOIN_TOKEN" \
    --discovery-token-unsafe-skip-ca-verification
fi

# The node authorizer lets kubelet's own credentials read its Node.
node_ready() {
  [[ "$(kubectl --kubeconfig /etc/kubernetes/kubelet.conf get node "$node" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
log "waiting for node $node to be Ready (nsx-ujo DaemonSets, CNI STATUS)"
wait_until 900 "node $node Ready (see: vagrant ssh control -c 'kubectl get pods -A -o wide')" node_ready
log "joined"
