#!/usr/bin/env bash
# Installs what hnboot's build, tests, demo and benchmarks need on a Debian
# machine, and fetches the test kernel into a cache that later runs reuse.
# Idempotent: a second run only checks.
set -euo pipefail

CACHE=${HNBOOT_CACHE:-/var/cache/hnboot}
PKGS=(qemu-system-x86 ovmf grub-efi-amd64-bin grub-pc-bin ipxe e2fsprogs
      squashfs-tools dosfstools mtools kmod busybox-static cpio debootstrap
      dnsmasq-base nginx tftpd-hpa gdisk iproute2 zstd xz-utils btrfs-progs xfsprogs)

log() { echo "deps: $*" >&2; }

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { log "need root to install: ${missing[*]} (run: sudo $0)"; exit 1; }
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

# The test kernel: Debian's linux-image-amd64, unpacked (not installed) so
# its modules can go into our initramfs.
kdir="$CACHE/kernel"
if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
  log "fetching test kernel into $kdir"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  ( cd "$tmp"
    apt-get update -q >/dev/null 2>&1 || true
    dep=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$dep" ] || { log "cannot resolve linux-image-amd64 (apt-get update?)"; exit 1; }
    apt-get download -q "$dep" )
  mkdir -p "$kdir.tmp"
  dpkg -x "$tmp"/linux-image-*.deb "$kdir.tmp"
  rm -rf "$kdir"
  mv "$kdir.tmp" "$kdir"
fi
log "test kernel: $(ls "$kdir"/boot/vmlinuz-*)"
