#!/usr/bin/env bash
# Builds the test tools into _output/tools from the separate tools/ modules
# (so the main module never requires all of Kubernetes):
#   Kubernetes v1.37.2 (tools/): kube-apiserver, kube-controller-manager,
#     kube-scheduler and kubelet (the real-node cluster), kube-proxy (the
#     benchmarks' baseline), the upstream e2e.test (make test, make conformance) and
#     agnhost (the e2e workload image);
#   kubectl (make cluster users, and the e2e tests that run it);
#   containerd v2.4.2 (tools/containerd/): containerd, its runc shim, ctr;
#   CoreDNS v1.13.2 (tools/coredns/): the real-node cluster's DNS.
# Idempotent: a binary newer than its go.mod is kept. A cold build takes
# ~25 minutes on 2 cores (e2e.test alone ~8); `hack/build-tools.sh NAME...`
# builds only those.
set -euo pipefail

KUBE_VERSION=v1.37.2
CONTAINERD_VERSION=v2.4.2
COREDNS_VERSION=v1.13.2
KUBE_TOOLS=(kube-apiserver kube-proxy kube-controller-manager kube-scheduler kubelet kubectl)
CONTAINERD_TOOLS=(containerd containerd-shim-runc-v2 ctr)
# e2e.test is not in the default set (make demo and make cluster do not
# need its ~8 minutes): make test and make conformance build it with
# `hack/build-tools.sh e2e.test`.
ALL=("${KUBE_TOOLS[@]}" agnhost "${CONTAINERD_TOOLS[@]}" coredns)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/_output/tools"

version_of() {
  [[ $1 == coredns ]] && { echo "$COREDNS_VERSION"; return; }
  case " ${CONTAINERD_TOOLS[*]} " in *" $1 "*) echo "$CONTAINERD_VERSION" ;; *) echo "$KUBE_VERSION" ;; esac
}
modfile_of() {
  [[ $1 == coredns ]] && { echo "$root/tools/coredns/go.mod"; return; }
  case " ${CONTAINERD_TOOLS[*]} " in *" $1 "*) echo "$root/tools/containerd/go.mod" ;; *) echo "$root/tools/go.mod" ;; esac
}
bin_of() { echo "$out/$1-$(version_of "$1")"; }
up_to_date() { [[ -x "$(bin_of "$1")" && "$(bin_of "$1")" -nt "$(modfile_of "$1")" ]]; }

want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=("${ALL[@]}")
todo=()
for t in "${want[@]}"; do up_to_date "$t" || todo+=("$t"); done
[[ ${#todo[@]} -gt 0 ]] || exit 0
mkdir -p "$out"
# Test packages run in parallel and each may ask for the binaries: one
# builds, the others wait here and then find them up to date.
exec 9>"$out/.build.lock"
flock 9

# The version stamp is what Kubernetes' own build sets; without it /version
# (and so client-go discovery, and kubelet's node status) reports
# v0.0.0-master.
v=k8s.io/component-base/version
minor="${KUBE_VERSION#v1.}"
minor="${minor%%.*}"
kube_ldflags="-X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
ctrd_ldflags="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
for t in "${todo[@]}"; do
  up_to_date "$t" && continue
  bin="$(bin_of "$t")"
  echo "building $t $(version_of "$t") into $bin" >&2
  # Build to a temp name and rename: an interrupted build never leaves a
  # binary that looks complete. Static (CGO off): agnhost goes into an
  # image without a libc; the rest need none.
  case "$t" in
    e2e.test) (cd "$root/tools" && CGO_ENABLED=0 go test -c -vet=off -ldflags "$kube_ldflags" -o "$bin.tmp" k8s.io/kubernetes/test/e2e) ;;
    agnhost) (cd "$root/tools" && CGO_ENABLED=0 go build -ldflags "$kube_ldflags" -o "$bin.tmp" k8s.io/kubernetes/test/images/agnhost) ;;
    containerd|containerd-shim-runc-v2|ctr)
      # no_btrfs: the btrfs snapshotter needs cgo headers and we use
      # overlayfs/native.
      (cd "$root/tools/containerd" && CGO_ENABLED=0 go build -tags no_btrfs -ldflags "$ctrd_ldflags" -o "$bin.tmp" "github.com/containerd/containerd/v2/cmd/$t") ;;
    coredns) (cd "$root/tools/coredns" && CGO_ENABLED=0 go build -o "$bin.tmp" github.com/coredns/coredns) ;;
    *) (cd "$root/tools" && go build -ldflags "$kube_ldflags" -o "$bin.tmp" "k8s.io/kubernetes/cmd/$t") ;;
  esac
  mv -f "$bin.tmp" "$bin"
done
