#!/usr/bin/env bash
# `make bench-cluster`: the benchmarks of the Vagrant cluster, run on the
# control VM:
#
#   vagrant ssh control -c 'make -C /vagrant bench-cluster'
#
# 1. tests/vagrant/clusterbench against the real cluster
#    (KUBECONFIG=/etc/kubernetes/admin.conf), once per dataplane of
#    BENCH_DATAPLANES (default "ovs ebpf"): [nsx_kube_proxy] dataplane is set
#    in the ConfigMap, the nsx-node-agent DaemonSet restarted and waited for,
#    then BenchmarkClusterPodStartup (pods on the workers through kubelet,
#    containerd and the nsx CNI, beside hostNetwork pods) and
#    BenchmarkClusterService (connections per second from a pod to pods on
#    another node through the ClusterIP, beside the pod IP; Service create ->
#    first connection) run. CLUSTER_BENCH narrows them (a -bench regexp).
#    The dataplane the cluster had is restored at the end.
# 2. With PERF_LOCAL=1, also what `make bench` runs (tests/perf and the
#    eBPF per-packet benchmark), on this VM: those benchmarks are
#    node-local (network-namespace pods, a private OVS, their own
#    kube-apiserver), they do not touch the cluster, and they give the same
#    tables as on a development machine, measured on this VM's kernel. The
#    first run installs hack/install-deps.sh's packages (their services
#    stay off: node.sh masked them) and builds kube-apiserver (make tools,
#    ~10 minutes). PERF_BENCH narrows them (a -bench regexp).
#
# Everything printed is also kept in /var/lib/nsx-ujo-vagrant/bench/.
set -euo pipefail
if [[ "$(id -u)" != 0 ]]; then
  exec sudo -E bash "$0" "$@"
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NSX_SRC=$(cd "$here/../.." && pwd)
# shellcheck source=hack/vagrant/lib.sh
source "$here/lib.sh"

export KUBECONFIG=/etc/kubernetes/admin.conf
manifests=$NSX_STATE/nsx-ujo.yaml
[[ -f "$KUBECONFIG" && -f "$manifests" ]] ||
  die "run this on the control VM of the Vagrantfile (no $KUBECONFIG or $manifests here)"
command -v go >/dev/null || die "no go on PATH (node.sh installs it in /usr/local/go)"

mkdir -p "$NSX_STATE/bench"
out=$NSX_STATE/bench/$(date -u +%Y%m%dT%H%M%SZ).txt
exec > >(tee "$out") 2>&1

dataplane_now() {
  kubectl -n nsx-system get configmap nsx-node-agent-config -o jsonpath='{.data.ncp\.ini}' |
    awk -F= '/^[ \t]*dataplane[ \t]*=/ { gsub(/[ \t]/, "", $2); print $2 }'
}

# use_dataplane DP: ncp.ini's dataplane = DP (in the manifests control.sh
# rendered, so a re-provision keeps it), and every node running it.
use_dataplane() {
  local want=$1
  [[ "$(dataplane_now)" != "$want" ]] || return 0
  log "switching every node to the $want dataplane"
  sed -E "s/^([[:space:]]*)dataplane[[:space:]]*=.*/\1dataplane = $want/" "$manifests" >"$manifests.new"
  mv "$manifests.new" "$manifests"
  kubectl apply -f "$manifests" >/dev/null
  kubectl -n nsx-system rollout restart daemonset/nsx-node-agent
  kubectl -n nsx-system rollout status daemonset/nsx-node-agent --timeout=10m
  [[ "$(dataplane_now)" == "$want" ]] || die "the ConfigMap still says dataplane $(dataplane_now)"
}

original=$(dataplane_now)
[[ -n "$original" ]] || die "no dataplane key in the nsx-node-agent-config ConfigMap"
trap 'use_dataplane "$original"' EXIT

cd "$NSX_SRC"
log "cluster benchmarks ($(kubectl get nodes --no-headers | wc -l) nodes; results also in $out)"
kubectl get nodes -o wide
for dp in ${BENCH_DATAPLANES:-ovs ebpf}; do
  case "$dp" in ovs | ebpf) ;; *) die "BENCH_DATAPLANES: unknown dataplane $dp" ;; esac
  use_dataplane "$dp"
  log "tests/vagrant/clusterbench with the $dp dataplane"
  go test -count=1 -run='^$' -bench="${CLUSTER_BENCH:-.}" -benchtime=1x -timeout 60m ./tests/vagrant/clusterbench/
done

if [[ "${PERF_LOCAL:-0}" == 1 ]]; then
  log "node-local benchmarks (make bench's) on this VM"
  # No package may start a service meanwhile (openvswitch-switch and
  # etcd-server would take the cluster's OVS socket and etcd port).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d; use_dataplane "$original"' EXIT
  hack/install-deps.sh
  rm -f /usr/sbin/policy-rc.d
  make --no-print-directory tools
  go test -count=1 -run='^$' -bench="${PERF_BENCH:-.}" -benchtime=1x -timeout 90m ./tests/perf/
  go test -count=1 -run='^$' -bench=BenchmarkEgress ./dataplane/ebpf/
fi
log "done; results in $out"
