#!/usr/bin/env bash
# Builds hnboot_VERSION_amd64.deb from built binaries with dpkg-deb alone
# (no debhelper: the package is three static binaries, two units and a
# few conffiles, and a plain tree keeps it buildable from the Makefile on
# any Debian without a debian/ source directory).
#   scripts/mkdeb.sh VERSION BINDIR OUTDIR
# BINDIR holds imaged, mkimage and hninit (make build). SOURCE_DATE_EPOCH
# (default: the last commit's time) dates the changelog and man pages and
# clamps file times, so the same tree gives the same package.
set -euo pipefail
[ $# = 3 ] || { echo "usage: $0 VERSION BINDIR OUTDIR" >&2; exit 2; }
version=$1 bin=$2 out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
src=$here/packaging/deb
GO=${GO:-go}
command -v dpkg-deb >/dev/null || { echo "mkdeb: dpkg-deb not found: apt-get install dpkg" >&2; exit 1; }
command -v strip >/dev/null || { echo "mkdeb: strip not found: apt-get install binutils" >&2; exit 1; }
for b in imaged mkimage hninit; do
  [ -x "$bin/$b" ] || { echo "mkdeb: $bin/$b missing: run make build" >&2; exit 1; }
done
commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)}

root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
umask 022
d() { install -d -m 0755 "$root/$1"; }
d DEBIAN; d usr/bin; d usr/sbin; d usr/lib/hnboot; d lib/systemd/system; d etc/hnboot/fleet
d usr/share/man/man1; d usr/share/man/man8; d usr/share/doc/hnboot; d usr/share/lintian/overrides

# mkimage finds hninit beside its own (resolved) path: both live in
# /usr/lib/hnboot, mkimage is linked into /usr/bin.
install -m 0755 "$bin/imaged" "$root/usr/sbin/imaged"   # a daemon and admin tool: sbin, section 8
install -m 0755 "$bin/mkimage" "$bin/hninit" "$root/usr/lib/hnboot/"
# Stripped as policy wants (make build keeps imaged's and mkimage's symbols).
strip --strip-unneeded "$root/usr/sbin/imaged" "$root/usr/lib/hnboot/mkimage" "$root/usr/lib/hnboot/hninit"
ln -s ../lib/hnboot/mkimage "$root/usr/bin/mkimage"
install -m 0644 "$src/hnboot-serve.service" "$src/hnboot-agent.service" "$root/lib/systemd/system/"
install -m 0644 "$src/serve.env" "$src/agent.yaml" "$root/etc/hnboot/"
install -m 0644 "$src/fleet.yaml" "$root/etc/hnboot/fleet/fleet.yaml"

# Man pages from the binaries' own --help (internal/manpage).
(cd "$here" && "$GO" run ./internal/manpage/gen --section 8 --version "$version" --out "$root/usr/share/man/man8/imaged.8" "$bin/imaged")
(cd "$here" && "$GO" run ./internal/manpage/gen --section 1 --version "$version" --out "$root/usr/share/man/man1/mkimage.1" "$bin/mkimage")
gzip -9n "$root/usr/share/man/man8/imaged.8" "$root/usr/share/man/man1/mkimage.1"

install -m 0644 "$src/copyright" "$root/usr/share/doc/hnboot/copyright"
sed -e "s/@VERSION@/$version/" -e "s/@COMMIT@/$commit/" -e "s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" \
  "$src/changelog.in" | gzip -9n >"$root/usr/share/doc/hnboot/changelog.gz"   # a native version: changelog.gz
install -m 0644 "$src/lintian-overrides" "$root/usr/share/lintian/overrides/hnboot"
gzip -9n <"$here/README.md" >"$root/usr/share/doc/hnboot/README.md.gz"

install -m 0755 "$src/postinst" "$src/prerm" "$src/postrm" "$root/DEBIAN/"
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" "$src/control" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb=$out/hnboot_${version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
