#!/usr/bin/env bash
# Builds the test tools (the real kube-apiserver) into _output/tools from the
# separate tools/ module, so the main module never requires all of Kubernetes.
# Idempotent: does nothing while the binary is newer than tools/go.mod. A cold
# build takes ~12 minutes on 2 cores.
set -euo pipefail

KUBE_VERSION=v1.37.2

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/_output/tools"
bin="$out/kube-apiserver-$KUBE_VERSION"

up_to_date() { [[ -x "$bin" && "$bin" -nt "$root/tools/go.mod" ]]; }

up_to_date && exit 0
mkdir -p "$out"
# Test packages run in parallel and each may ask for the binary: one builds,
# the others wait here and then find it up to date.
exec 9>"$out/.build.lock"
flock 9
up_to_date && exit 0

echo "building kube-apiserver $KUBE_VERSION into $bin (cold: ~12 minutes)" >&2
# Build to a temp name and rename: an interrupted build never leaves a
# binary that looks complete.
# The version stamp is what Kubernetes' own build sets; without it /version
# (and so client-go discovery) reports v0.0.0-master.
v=k8s.io/component-base/version
minor="${KUBE_VERSION#v1.}"
minor="${minor%%.*}"
ldflags="-X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
(cd "$root/tools" && go build -ldflags "$ldflags" -o "$bin.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
mv -f "$bin.tmp" "$bin"
