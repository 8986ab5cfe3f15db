#!/usr/bin/env bash
# Vagrant provisioner "kernel" of the Kubernetes nodes: the eBPF dataplane
# attaches its programs with TCX, which needs Linux 6.6 or later. Debian 12
# ships 6.1, so this installs the kernel of <release>-backports (6.12 for
# bookworm) when the running one is older. The Vagrantfile reboots the VM
# after this script (provisioner option reboot: true), so the next
# provisioners run on the new kernel.
set -euo pipefail
# shellcheck source=hack/vagrant/lib.sh
source "${NSX_SRC:-/vagrant}/hack/vagrant/lib.sh"

min_major=6 min_minor=6
IFS=. read -r major minor _ <<<"$(uname -r)"
if ((major > min_major || (major == min_major && minor >= min_minor))); then
  log "kernel $(uname -r) has TCX; nothing to do"
  exit 0
fi

# shellcheck source=/dev/null
. /etc/os-release
[[ -n "${VERSION_CODENAME:-}" ]] || die "no VERSION_CODENAME in /etc/os-release"
backports="${VERSION_CODENAME}-backports"
if ! grep -rqs "^deb .* ${backports} " /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian ${backports} main" >/etc/apt/sources.list.d/nsx-ujo-backports.list
fi
apt-get update -qq
arch=$(dpkg --print-architecture)
log "kernel $(uname -r) lacks TCX (needs ${min_major}.${min_minor}+): installing linux-image-${arch} from ${backports}; the VM reboots next"
apt-get install -y -qq -t "$backports" "linux-image-${arch}" >/dev/null
