#!/usr/bin/env bash
# Installs the Debian tools Cistern's tests drive as real, independent clients and
# peers. Idempotent: does nothing when every tool is already present. Needs root
# (or sudo) when something is missing.
set -euo pipefail
# tgtd and tgtadm live in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

# package:command pairs — the command proves the package is installed.
needs=(
  qemu-utils:qemu-img
  libnbd-bin:nbdinfo
  nbdfuse:nbdfuse
  fio:fio
  libiscsi-bin:iscsi-ls
  libiscsi-bin:iscsi-test-cu
  tgt:tgtd
  etcd-server:etcd
  etcd-client:etcdctl
  nbdkit:nbdkit
  e2fsprogs:mkfs.ext4
  iproute2:ip
  fuse3:fusermount3
)

# Packages with no command of their own, proven by dpkg: qemu's iscsi:// block driver.
modules=(
  qemu-block-extra
)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

missing=()
for pair in "${needs[@]}"; do
  command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
done
for package in "${modules[@]}"; do
  installed "$package" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-test-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for pair in "${needs[@]}"; do
  command -v "${pair#*:}" >/dev/null 2>&1 || { echo "install-test-deps: ${pair%%:*} did not provide ${pair#*:}" >&2; exit 1; }
done
for package in "${modules[@]}"; do
  installed "$package" || { echo "install-test-deps: $package did not install" >&2; exit 1; }
done
