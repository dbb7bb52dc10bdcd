#!/usr/bin/env bash
# Installs what hnboot's build, tests, demo and benchmarks need on a Debian
# machine, and fetches the test kernels into a cache that later runs reuse.
# `make test`, `make demo`, `make e2e` and `make bench` run it first.
# Idempotent and fast when everything is there: one dpkg-query call and a
# few file checks, no apt-cache look-up (about 20 ms).
set -euo pipefail

CACHE=${HNBOOT_CACHE:-/var/cache/hnboot}
PKGS=(qemu-system-x86 ovmf postgresql grub-efi-amd64-bin grub-pc-bin ipxe e2fsprogs
      squashfs-tools dosfstools mtools kmod busybox-static cpio debootstrap
      dnsmasq-base nginx tftpd-hpa gdisk iproute2 zstd xz-utils btrfs-progs xfsprogs
      squashfs-tools-ng mmdebstrap chromium rsync zsync casync curl)
# make deb and its test: strip and lintian.
PKGS+=(binutils lintian)

log() { echo "deps: $*" >&2; }

# One dpkg-query for all packages: "NAME ii" for each installed one.
declare -A have=()
while read -r name status; do
  [ "$status" = ii ] && have[$name]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PKGS[@]}" 2>/dev/null || true)
missing=()
for p in "${PKGS[@]}"; do
  [ -n "${have[$p]:-}" ] || missing+=("$p")
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
# own kernel. Looked up only when it is not there yet (apt-cache search
# takes most of a second).
adir="$CACHE/kernel-alt"
if ! ls "$adir"/boot/vmlinuz-* >/dev/null 2>&1; then
  cur=$(basename "$(ls "$kdir"/boot/vmlinuz-* | tail -1)" | sed 's/^vmlinuz-//')
  others() { apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | grep -v "^linux-image-$cur\$" | sort -V | tail -1; }
  alt=$(others)
  [ -n "$alt" ] || { apt-get update -q >/dev/null; alt=$(others); }
  [ -n "$alt" ] || { log "no second linux-image-6.1.0-*-amd64 package in the apt sources (see /etc/apt/sources.list)"; exit 1; }
  "$(dirname "$0")/fetch-kernel.sh" "$alt" "$adir"
fi
log "second kernel: $(ls "$adir"/boot/vmlinuz-*)"

# Go is the machine's (go.mod names the version); the Makefile also looks
# in /usr/local/go/bin.
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] ||
  log "warning: no go on PATH nor in /usr/local/go/bin: install Go $(awk '/^go /{print $2}' "$(dirname "$0")/../go.mod") to build"
