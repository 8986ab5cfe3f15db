#!/usr/bin/env bash
# Builds the test tools into _output/tools from the separate tools/ module
# (so the main module never requires all of Kubernetes): the real
# kube-apiserver the tests run, and the real kube-proxy the benchmarks use
# as their baseline. Idempotent: a binary newer than tools/go.mod is kept.
# A cold build takes ~12 minutes on 2 cores.
set -euo pipefail

KUBE_VERSION=v1.37.2
TOOLS=(kube-apiserver kube-proxy)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/_output/tools"

up_to_date() { [[ -x "$out/$1-$KUBE_VERSION" && "$out/$1-$KUBE_VERSION" -nt "$root/tools/go.mod" ]]; }
all_up_to_date() { for t in "${TOOLS[@]}"; do up_to_date "$t" || return 1; done; }

all_up_to_date && exit 0
mkdir -p "$out"
# Test packages run in parallel and each may ask for the binaries: one
# builds, the others wait here and then find them up to date.
exec 9>"$out/.build.lock"
flock 9

# The version stamp is what Kubernetes' own build sets; without it /version
# (and so client-go discovery) reports v0.0.0-master.
v=k8s.io/component-base/version
minor="${KUBE_VERSION#v1.}"
minor="${minor%%.*}"
ldflags="-X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
for t in "${TOOLS[@]}"; do
  up_to_date "$t" && continue
  bin="$out/$t-$KUBE_VERSION"
  echo "building $t $KUBE_VERSION into $bin (cold: ~12 minutes for the first)" >&2
  # Build to a temp name and rename: an interrupted build never leaves a
  # binary that looks complete.
  (cd "$root/tools" && go build -ldflags "$ldflags" -o "$bin.tmp" "k8s.io/kubernetes/cmd/$t")
  mv -f "$bin.tmp" "$bin"
done
