package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/cli"

	"github.com/hnboot/hnboot/internal/initrd"
	"github.com/hnboot/hnboot/internal/manifest"
)

const initramfsHelp = `Usage: mkimage initramfs --kernel-modules DIR --out FILE [--init PATH] [--busybox PATH] [--modules a,b,...] [--trust KEY.pub]

Builds a zstd-compressed newc cpio initramfs holding:
  /init                         the hnboot init (--init; default: hninit beside mkimage)
  /bin/busybox, /bin/sh         the rescue shell (--busybox; default /bin/busybox if present)
  /dev /proc /sys /run /tmp /newroot
  /lib/modules/RELEASE/         the modules below with their dependencies, a generated
                                modules.dep, modules.builtin, and modules.order (the archived modules)
  /etc/hnboot-modules           the top-level modules the init loads, in order
  /etc/hnboot/trusted.pub       with --trust: staged images must carry a manifest signed by this key

DIR is a lib/modules/RELEASE tree (it needs no modules.dep: dependencies
come from each module's .modinfo, soft dependencies included). The default
modules are storage (virtio, SCSI, AHCI, NVMe), filesystems (ext4, vfat,
btrfs, xfs, squashfs, overlay, loop), network (virtio_net, e1000,
e1000e) and algif_hash (the kernel's SHA-256, which the init verifies a
download with where it is faster than Go's); --modules adds more. Module files are stored with '-' in their
names turned into '_'. The archive is compressed by the zstd command at
level 19 when it is on PATH, else by the Go encoder (about 13% bigger).
Output is written to a temporary file beside FILE, fsynced, then renamed.
Entry times are SOURCE_DATE_EPOCH, or 0.

Examples:
  mkimage initramfs --kernel-modules /lib/modules/$(uname -r) --out initramfs
  mkimage initramfs --kernel-modules root/lib/modules/6.1.0-56-amd64 --out root/boot/initramfs \
      --init out/hninit --modules i40e,mlx5_core
  mkimage initramfs --kernel-modules DIR --out initramfs --busybox ""   # no rescue shell
`

func runInitramfs(ctx context.Context, name string, args []string, std cli.IO) error {
	stdout, stderr := std.Stdout, std.Stderr
	defBusybox := ""
	if st, err := os.Stat("/bin/busybox"); err == nil && st.Mode().IsRegular() {
		defBusybox = "/bin/busybox"
	}
	defInit := "hninit"
	if exe, err := os.Executable(); err == nil {
		defInit = filepath.Join(filepath.Dir(exe), "hninit")
	}
	fs := cli.NewFlagSet(name, initramfsHelp, std)
	kdir := fs.String("kernel-modules", "", "lib/modules/RELEASE directory to take modules from (required)")
	out := fs.String("out", "", "archive to write (required)")
	initPath := fs.String("init", defInit, "the init binary (static), installed as /init")
	busybox := fs.String("busybox", defBusybox, "static busybox for /bin/busybox and /bin/sh; \"\" for none")
	modules := fs.String("modules", "", "comma-separated modules to add to the default set")
	trust := fs.String("trust", "", "public key (mkimage keygen) installed as /etc/hnboot/trusted.pub: staged images must then be signed by it")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *kdir == "" || *out == "" {
		return fs.Usagef("--kernel-modules and --out are required")
	}
	if _, err := os.Stat(*initPath); err != nil {
		return fmt.Errorf("initramfs: --init %s: %w (build hninit next to mkimage, or give --init PATH)", *initPath, err)
	}
	var trustKey []byte
	if *trust != "" {
		pub, err := manifest.ReadPublicKey(*trust)
		if err != nil {
			return fmt.Errorf("initramfs: --trust: %w", err)
		}
		trustKey = pub.Marshal()
	}
	epoch, _, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	var extra []string
	for _, m := range strings.Split(*modules, ",") {
		if m = strings.TrimSpace(m); m != "" {
			extra = append(extra, m)
		}
	}
	start := time.Now()
	res, err := initrd.Build(initrd.Options{
		Out:        *out,
		Init:       *initPath,
		Busybox:    *busybox,
		ModulesDir: *kdir,
		Modules:    extra,
		Trust:      trustKey,
		MTime:      time.Unix(epoch, 0),
		Zstd:       initrd.ZstdCommand(),
		Log:        newLogger(stderr),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: initramfs for %s, %s compressed (%d bytes, %s), %s uncompressed, %d modules, %s\n",
		res.Path, res.Release, human(res.Compressed), res.Compressed, res.Compressor, human(res.Uncompressed), res.Modules, elapsed(start))
	fmt.Fprintf(stdout, "  loads at boot: %s\n", strings.Join(res.Top, " "))
	if len(res.Builtin) > 0 {
		fmt.Fprintf(stdout, "  built into the kernel: %s\n", strings.Join(res.Builtin, " "))
	}
	if len(res.Missing) > 0 {
		fmt.Fprintf(stdout, "  not in this kernel, skipped: %s\n", strings.Join(res.Missing, " "))
	}
	if res.Compressed > 8<<20 {
		fmt.Fprintf(stderr, "mkimage: warning: %s is %s, over the 8 MiB budget\n", res.Path, human(res.Compressed))
	}
	return nil
}
