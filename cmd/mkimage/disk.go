package main

import (
	"context"
	"fmt"
	"time"

	"github.com/hnboot/hnboot/internal/cli"

	"github.com/hnboot/hnboot/bootloader"
	"github.com/hnboot/hnboot/internal/diskimg"
)

const diskHelp = `Usage: mkimage disk --root IMG [--new IMG] [--old IMG] --out DISK --size SIZE [--boot both|uefi|bios|none] [--efi-size 128M] [--hostpart-fs ext4]

Builds a sparse, bootable GPT disk image without root privileges:
  partition 1 "EFI-BOOT"  EFI System, FAT32 labelled EFI-BOOT, --efi-size;
                          holds grub/grub.cfg, EFI/BOOT/grub.cfg and GRUB
                          for UEFI at EFI/BOOT/BOOTX64.EFI
  partition 2 "hostpart"  Linux filesystem, ext4 labelled hostpart, the rest;
                          holds hn-root.img (--root), hn-root-new.img (--new),
                          hn-root-old.img (--old), data/ and .hnboot/;
                          an IMG.json beside an image (mkimage rootfs's
                          manifest) is checked against it and copied as
                          hn-root*.img.json
  partition 3 "BIOS-BOOT" BIOS boot (EF02), 1 MiB at 1 MiB, before EFI-BOOT:
                          GRUB's i386-pc core.img; GRUB's boot.img is the MBR
                          code (the protective MBR's partition table is kept)

--boot chooses the firmware: both (default; the disk boots under UEFI and
BIOS), uefi (no BIOS-BOOT partition, EFI-BOOT at 1 MiB), bios, or none
(only grub.cfg: bring your own GRUB). GRUB is built with grub-mkimage from
Debian's grub-efi-amd64-bin and grub-pc-bin; nothing is loop-mounted.
GRUB's configuration loop-mounts hn-root.img from hostpart and boots its
/boot/vmlinuz and /boot/initramfs; more entries boot hn-root-old.img and
a rescue shell (hn.init=/bin/sh). The disk is written to a temporary
file beside DISK (.DISK<random>) and renamed when complete; images are
hard-linked (or copied, holes kept) into a staging directory DISK.staging
beside it. Disks over 2 TB work (3T takes seconds and little real space).

Examples:
  mkimage disk --root hn-root.img --out disk.raw --size 4G
  mkimage disk --root new.img --old prev.img --out /var/tmp/host.raw --size 3T --efi-size 256M
`

func runDisk(ctx context.Context, name string, args []string, std cli.IO) error {
	stdout, stderr := std.Stdout, std.Stderr
	fs := cli.NewFlagSet(name, diskHelp, std)
	root := fs.String("root", "", "root image, becomes hn-root.img (required)")
	newImg := fs.String("new", "", "staged image, becomes hn-root-new.img")
	oldImg := fs.String("old", "", "previous image, becomes hn-root-old.img")
	out := fs.String("out", "", "disk image to write (required)")
	size := fs.String("size", "", "disk size, e.g. 8G, 3T (required)")
	efiSize := fs.String("efi-size", "128M", "EFI-BOOT partition size (not exactly 64M: fsck.vfat rejects it)")
	hostFS := fs.String("hostpart-fs", "ext4", "hostpart filesystem (only ext4 for now)")
	cmdline := fs.String("cmdline", "", "extra kernel command line for the GRUB entries")
	bootMode := fs.String("boot", string(bootloader.BootBoth), "install GRUB for: both, uefi, bios or none")
	console := fs.String("console", bootloader.DefaultConsole, "kernel console= in the GRUB entries")
	timeout := fs.Int("timeout", bootloader.DefaultTimeout, "GRUB menu timeout in seconds (0: boot at once)")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *root == "" || *out == "" || *size == "" {
		return fs.Usagef("--root, --out and --size are required")
	}
	n, err := parseSize(*size)
	if err != nil {
		return fs.Usagef("--size: %v", err)
	}
	e, err := parseSize(*efiSize)
	if err != nil {
		return fs.Usagef("--efi-size: %v", err)
	}
	bm, err := bootloader.ParseBoot(*bootMode)
	if err != nil {
		return fs.Usagef("--boot: %v", err)
	}
	gto := *timeout
	if gto == 0 {
		gto = -1 // GrubConfig: negative means 0, zero means the default
	}
	o := diskimg.Options{
		Out: *out, Size: n, EFISize: e,
		Root: *root, New: *newImg, Old: *oldImg,
		HostpartFS: *hostFS,
		GrubConfig: bootloader.GrubConfig(bootloader.Options{Extra: *cmdline, Console: *console, Timeout: gto}),
		Log:        newLogger(stderr),
	}
	if o.Epoch, o.HasEpoch, err = sourceDateEpoch(); err != nil {
		return err
	}
	if bm.UEFI() {
		if o.EFIBinary, err = bootloader.EFIImage(ctx); err != nil {
			return fmt.Errorf("disk: --boot %s: %w", bm, err)
		}
	}
	if bm.BIOS() {
		if o.BIOSBootImg, o.BIOSCore, err = bootloader.BIOSImages(ctx); err != nil {
			return fmt.Errorf("disk: --boot %s: %w", bm, err)
		}
	}
	start := time.Now()
	res, err := diskimg.Build(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: GPT disk, %s (%d bytes), %s allocated, %s\n", res.Path, human(res.Size), res.Size, human(res.Allocated), elapsed(start))
	for i, p := range res.Partitions {
		fmt.Fprintf(stdout, "  partition %d %-8s offset %d size %s\n", i+1, p.Name, p.Offset, human(p.Size))
	}
	return nil
}
