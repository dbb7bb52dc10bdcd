#!/usr/bin/env bash
# fetch-kernel.sh PKG DEST: downloads the Debian kernel package PKG (e.g.
# linux-image-6.1.0-55-amd64) with apt-get download and unpacks it (dpkg -x,
# not installed) into DEST, which then holds boot/vmlinuz-<release> and
# lib/modules/<release>. Idempotent: does nothing if DEST has a kernel.
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 PKG DEST" >&2; exit 2; }
pkg=$1 dest=$2
log() { echo "fetch-kernel: $*" >&2; }
if ls "$dest"/boot/vmlinuz-* >/dev/null 2>&1; then
  log "$pkg: already in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp"
  apt-get download -q "$pkg" 2>/dev/null || { apt-get update -q >/dev/null 2>&1 || true; apt-get download -q "$pkg"; } )
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"
dpkg -x "$tmp"/*.deb "$dest.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
log "$pkg: $(ls "$dest"/boot/vmlinuz-*)"
