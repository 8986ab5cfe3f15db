#!/usr/bin/env bash
# render-manifests.sh --dataplane ovs|ebpf --apiserver-ip IP [--apiserver-port 6443] --uplink IF
#
# Filters the manifests of deploy/ (`kubectl kustomize deploy/`, stdin to
# stdout) for the Vagrant cluster. Only the ncp.ini of the ConfigMap
# nsx-node-agent-config changes:
#   [k8s]             apiserver_host_ip/_port, with the pod's service account
#                     token and CA: there is no kube-proxy, so nothing serves
#                     the kubernetes Service before nsx-kube-proxy does
#   [nsx_node_agent]  ovs_uplink_port = IF, the NIC on the private network
#                     (the same name on every VM: same box, same provider)
#   [nsx_kube_proxy]  dataplane = ovs|ebpf
# Keys it sets are removed where the input had them. It fails unless each
# section and the dataplane key appear exactly once.
set -euo pipefail

dataplane='' api_ip='' api_port=6443 uplink=''
while (($#)); do
  case "$1" in
  --dataplane) dataplane=$2 ;;
  --apiserver-ip) api_ip=$2 ;;
  --apiserver-port) api_port=$2 ;;
  --uplink) uplink=$2 ;;
  *)
    echo "render-manifests.sh: unknown argument $1" >&2
    exit 2
    ;;
  esac
  shift 2
done
case "$dataplane" in ovs | ebpf) ;; *)
  echo "render-manifests.sh: --dataplane must be ovs or ebpf, not '$dataplane'" >&2
  exit 2
  ;;
esac
if [[ -z "$api_ip" || -z "$uplink" ]]; then
  echo "render-manifests.sh: --apiserver-ip and --uplink are required" >&2
  exit 2
fi

awk -v dp="$dataplane" -v ip="$api_ip" -v port="$api_port" -v uplink="$uplink" '
function indent(line) { match(line, /^[ \t]*/); return substr(line, 1, RLENGTH) }
/^[ \t]*(apiserver_host_ip|apiserver_host_port|ca_file|client_token_file|ovs_uplink_port)[ \t]*=/ { next }
/^[ \t]*\[k8s\][ \t]*$/ {
  print; ind = indent($0); k8s++
  print ind "apiserver_host_ip = " ip
  print ind "apiserver_host_port = " port
  print ind "ca_file = /var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
  print ind "client_token_file = /var/run/secrets/kubernetes.io/serviceaccount/token"
  next
}
/^[ \t]*\[nsx_node_agent\][ \t]*$/ {
  print; agent++
  print indent($0) "ovs_uplink_port = " uplink
  next
}
/^[ \t]*dataplane[ \t]*=/ { print indent($0) "dataplane = " dp; dataplanes++; next }
{ print }
END {
  if (k8s != 1 || agent != 1 || dataplanes != 1) {
    printf "render-manifests.sh: want one [k8s], one [nsx_node_agent] and one dataplane key in the input, found %d, %d, %d\n", k8s, agent, dataplanes > "/dev/stderr"
    exit 1
  }
}'
