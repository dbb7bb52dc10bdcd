package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/chunkpack"
	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/dpkg"
	"github.com/hnboot/hnboot/internal/imagefs"

	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/rootfs"
)

const rootfsHelp = `Usage: mkimage rootfs --from DIR|TARBALL --out FILE [--fs ext4|squashfs]
                      [--name N] [--version V] [--sign-key KEY] [--keep PATH]... [--size SIZE]

Builds a root image of a directory tree or a tarball (.tar, .tar.gz/.tgz,
.tar.zst: debootstrap output, an exported container filesystem), without
root privileges, loop devices or mounts. Owners (numeric uid/gid), modes,
setuid bits, hard links, symlinks, device nodes, FIFOs, sparse files and
extended attributes (security.capability) are kept as the source has them,
also when not run as root: a tarball is never unpacked as such, only file
contents are staged. The image is written to a temporary file beside FILE
(.FILE<random>), fsynced and renamed to FILE.

  ext4      (default) mkfs.ext4 of an empty filesystem filled by one debugfs
            batch; label hn-root; size 1.3 times the tree plus 16 MiB unless
            --size is given
  squashfs  read-only, compressed (gzip), by tar2sqfs (squashfs-tools-ng)

The image is generalized, so each host can be instantiated from it at boot:
/etc/machine-id is emptied (kept, empty), and these are removed:
  ` + "GENERAL_RULES" + `
(log directories stay). Each change is printed; --keep PATH leaves PATH and
everything under it as it is.

When the tree ships a kernel (boot/vmlinuz-RELEASE and lib/modules/RELEASE),
/boot/vmlinuz (a copy of it) and /boot/initramfs (the hnboot init with that
kernel's modules, as "mkimage initramfs" makes it; --trust puts a public key
in it) are added, so GRUB can load both from the loop-mounted image.

Beside the image, FILE.json is its manifest: name, version, sha256, size, fs,
kernel_release, build_time. With --sign-key (from "mkimage keygen") it also
holds an ed25519 signature over the manifest; check it with "mkimage verify".
FILE.packages.json lists the installed packages (name, version,
architecture) from the tree's var/lib/dpkg/status, or says the tree has
none; it names the image's sha256 and is signed with the same key.

With SOURCE_DATE_EPOCH set, image and manifest are reproducible: the same
source gives the same bytes (UUID and hash seed are derived from the epoch
and the tree, times later than the epoch are clamped to it, build_time is
the epoch).

Examples:
  mkimage rootfs --from ./root --out hn-root.img
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) mkimage rootfs --from debian.tar.zst \
      --out web-2024.05.img --name web --version 2024.05 --sign-key fleet.key
  mkimage rootfs --from ./root --out hn-root.sqfs --fs squashfs --keep /var/log
`

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func defaultInit() string {
	if exe, err := os.Executable(); err == nil {
		return filepath.Join(filepath.Dir(exe), "hninit")
	}
	return "hninit"
}

func runRootfs(ctx context.Context, cmdName string, args []string, std cli.IO) error {
	stderr := std.Stderr
	defBusybox := ""
	if st, err := os.Stat("/bin/busybox"); err == nil && st.Mode().IsRegular() {
		defBusybox = "/bin/busybox"
	}
	help := strings.Replace(rootfsHelp, "GENERAL_RULES", strings.Join(rootfs.GeneralRules()[1:], "\n  "), 1)
	fs := cli.NewFlagSet(cmdName, help, std)
	from := fs.String("from", "", "directory or tarball to put in the image (required)")
	out := fs.String("out", "", "image file to write (required); the manifest is FILE.json")
	fsType := fs.String("fs", rootfs.Ext4, "filesystem: ext4 or squashfs")
	size := fs.String("size", "", "ext4 image size, e.g. 64M, 2G (default: from the tree size)")
	label := fs.String("label", rootfs.DefaultLabel, "ext4 filesystem label")
	name := fs.String("name", "", "image name for the manifest (default: FILE without extension)")
	version := fs.String("version", "", "image version for the manifest")
	signKey := fs.String("sign-key", "", "ed25519 private key (mkimage keygen) to sign the manifest with")
	var keep multiFlag
	fs.Var(&keep, "keep", "path to leave as it is when generalizing (repeatable), e.g. /etc/hostname")
	initPath := fs.String("init", defaultInit(), "the hnboot init for /boot/initramfs, when the tree ships a kernel")
	busybox := fs.String("busybox", defBusybox, "static busybox for /boot/initramfs's rescue shell; \"\" for none")
	modules := fs.String("modules", "", "comma-separated modules to add to /boot/initramfs's default set")
	trust := fs.String("trust", "", "public key (mkimage keygen) to install in /boot/initramfs as /etc/hnboot/trusted.pub")
	noBoot := fs.Bool("no-boot-files", false, "do not add /boot/vmlinuz and /boot/initramfs even when the tree ships a kernel")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *from == "" || *out == "" {
		return fs.Usagef("--from and --out are required")
	}
	o := rootfs.Options{From: *from, Out: *out, FS: *fsType, Label: *label, Keep: keep, Log: newLogger(stderr)}
	o.Boot = rootfs.BootOptions{Disabled: *noBoot, Init: *initPath, Busybox: *busybox}
	for _, m := range strings.Split(*modules, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.Boot.Modules = append(o.Boot.Modules, m)
		}
	}
	if *size != "" {
		n, err := parseSize(*size)
		if err != nil {
			return fs.Usagef("--size: %v", err)
		}
		o.Size = n
	}
	var signer *manifest.PrivateKey
	if *signKey != "" {
		k, err := manifest.ReadPrivateKey(*signKey)
		if err != nil {
			return fmt.Errorf("rootfs: --sign-key: %w", err)
		}
		signer = k
	}
	if *trust != "" {
		pub, err := manifest.ReadPublicKey(*trust)
		if err != nil {
			return fmt.Errorf("rootfs: --trust: %w", err)
		}
		o.Boot.Trust = pub.Marshal()
	}
	if _, err := os.Stat(o.Boot.Init); err != nil {
		// Only needed when the tree has a kernel; Build says so then.
		o.Boot.Init = ""
	}
	var err error
	if o.Epoch, o.HasEpoch, err = sourceDateEpoch(); err != nil {
		return err
	}
	return buildImage(ctx, o, manifest.Fields{Name: *name, Version: *version}, signer, std)
}

// buildImage writes the image o describes and its manifest (signed with
// signer when set), and prints what it did: the end of "mkimage rootfs"
// and of "mkimage build".
func buildImage(ctx context.Context, o rootfs.Options, fields manifest.Fields, signer *manifest.PrivateKey, std cli.IO) error {
	stdout := std.Stdout
	bar := newProgress(std.Stderr, "writing "+filepath.Base(o.Out))
	o.Progress = bar.update
	start := time.Now()
	res, err := rootfs.Build(ctx, o)
	bar.done()
	if err != nil {
		return err
	}
	for _, c := range res.Changes {
		fmt.Fprintf(stdout, "generalized: %s %s\n", c.Action, c.Path)
	}
	fields.FS, fields.KernelRelease, fields.BuildTime = res.FS, res.KernelRelease, buildTime(o)
	// One read of the image makes the chunk index, the pack (delta
	// updates) and the image's sha256 for the manifest.
	ix, ixSum, err := chunkpack.WriteFile(res.Path)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if ix.Size != res.Size {
		return fmt.Errorf("rootfs: %s: the chunk index covers %d bytes of its %d", res.Path, ix.Size, res.Size)
	}
	m := manifest.Of(res.Path, hex.EncodeToString(ix.SHA256[:]), ix.Size, fields)
	m.Chunks = ixSum
	if signer != nil {
		if err := m.Sign(signer); err != nil {
			return fmt.Errorf("rootfs: sign: %w", err)
		}
	}
	mpath := layout.ManifestFor(res.Path)
	if err := m.WriteFile(mpath); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	fmt.Fprintf(stdout, "%s: %s root image, %s (%d bytes), %d entries, tree %s", res.Path, res.FS, human(res.Size), res.Size, res.Entries, human(res.TreeBytes))
	if res.UUID != "" {
		fmt.Fprintf(stdout, ", uuid %s", res.UUID)
	}
	if res.KernelRelease != "" {
		fmt.Fprintf(stdout, ", kernel %s with /boot/initramfs %s", res.KernelRelease, human(res.Initramfs))
	}
	fmt.Fprintf(stdout, ", %s\n", elapsed(start))
	signed := "unsigned"
	if m.Signature != "" {
		signed = "signed by key " + m.KeyID
	}
	fmt.Fprintf(stdout, "%s: manifest, sha256 %s, %s\n", mpath, m.SHA256, signed)
	fmt.Fprintf(stdout, "%s: chunk index, %d chunks (delta updates)\n", res.Path+layout.ChunksSuffix, len(ix.Chunks))
	fmt.Fprintf(stdout, "%s: the chunks as zstd frames, %s (%.0f%% of the image; delta updates fetch from it)\n",
		res.Path+layout.PackSuffix, human(ix.PackSize), 100*float64(ix.PackSize)/float64(max(ix.Size, 1)))
	l, err := writePackages(res.Path, m.SHA256, signer)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if l.Source == manifest.SourceNone {
		fmt.Fprintf(stdout, "%s: no packages recorded: %s\n", manifest.PackagesFor(res.Path), l.Note)
	} else {
		fmt.Fprintf(stdout, "%s: %d packages (%s)\n", manifest.PackagesFor(res.Path), len(l.Packages), l.Source)
	}
	return nil
}

// writePackages records the image's installed packages beside it, read
// from the image itself (the tree may have been a tarball): Debian's
// var/lib/dpkg/status, or a list that says there is none.
func writePackages(image, sum string, signer *manifest.PrivateKey) (*manifest.PackageList, error) {
	pkgs, source, note, err := imagePackages(image)
	if err != nil {
		return nil, err
	}
	l := manifest.NewPackageList(sum, source, note, pkgs)
	if signer != nil {
		if err := l.Sign(signer); err != nil {
			return nil, fmt.Errorf("sign the package list: %w", err)
		}
	}
	return l, l.WriteFile(manifest.PackagesFor(image))
}

// imagePackages reads an image's package database.
func imagePackages(image string) ([]manifest.Package, string, string, error) {
	im, err := imagefs.Open(image)
	if err != nil {
		return nil, "", "", err
	}
	defer im.Close()
	ok, err := imagefs.Exists(im, dpkg.StatusFile)
	if err != nil {
		return nil, "", "", fmt.Errorf("%s: /%s: %w", image, dpkg.StatusFile, err)
	}
	if !ok {
		return nil, manifest.SourceNone, "the tree has no /" + dpkg.StatusFile + " (not a Debian tree, or dpkg's database was removed)", nil
	}
	f, err := im.Open(dpkg.StatusFile)
	if err != nil {
		return nil, "", "", fmt.Errorf("%s: /%s: %w", image, dpkg.StatusFile, err)
	}
	defer f.Close()
	pkgs, err := dpkg.Installed(f)
	if err != nil {
		return nil, "", "", fmt.Errorf("%s: /%s: %w", image, dpkg.StatusFile, err)
	}
	return pkgs, manifest.SourceDpkg, "", nil
}

func buildTime(o rootfs.Options) time.Time {
	if o.HasEpoch {
		return time.Unix(o.Epoch, 0).UTC()
	}
	return time.Now().UTC().Truncate(time.Second)
}
