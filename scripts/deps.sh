#!/usr/bin/env bash
# Installs what hnboot's build, tests, demo and benchmarks need on a Debian
# machine, and fetches the test kernel into a cache that later runs reuse.
# Idempotent: a second run only checks.
set -euo pipefail

CACHE=${HNBOOT_CACHE:-/var/cache/hnboot}
PKGS=(qemu-system-x86 ovmf postgresql grub-efi-amd64-bin grub-pc-bin ipxe e2fsprogs
      squashfs-tools dosfstools mtools kmod busybox-static cpio debootstrap
      dnsmasq-base nginx tftpd-hpa gdisk iproute2 zstd xz-utils btrfs-progs xfsprogs
      squashfs-tools-ng)

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
resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
  pkg=$(resolve)
  [ -n "$pkg" ] || { apt-get update -q >/dev/null; pkg=$(resolve); }
  [ -n "$pkg" ] || { log "cannot resolve linux-image-amd64 to a kernel package"; exit 1; }
  "$(dirname "$0")/fetch-kernel.sh" "$pkg" "$kdir"
fi
log "test kernel: $(ls "$kdir"/boot/vmlinuz-*)"

# A second Debian kernel release, for the test that kexecs into an image's
# own kernel.
cur=$(basename "$(ls "$kdir"/boot/vmlinuz-* | tail -1)" | sed 's/^vmlinuz-//')
alt=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | grep -v "^linux-image-$cur\$" | sort -V | tail -1)
[ -n "$alt" ] || { log "no second linux-image-6.1.0-*-amd64 package found (apt-get update?)"; exit 1; }
"$(dirname "$0")/fetch-kernel.sh" "$alt" "$CACHE/kernel-alt"
log "second kernel: $(ls "$CACHE"/kernel-alt/boot/vmlinuz-*)"
