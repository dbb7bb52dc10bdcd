package bootloader

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Boot says which firmware a disk boots from.
type Boot string

// Boot modes of mkimage disk --boot.
const (
	BootNone Boot = "none" // only grub.cfg, no GRUB binary (bring your own)
	BootUEFI Boot = "uefi" // EFI/BOOT/BOOTX64.EFI on EFI-BOOT
	BootBIOS Boot = "bios" // boot.img in the MBR, core.img in a BIOS boot partition
	BootBoth Boot = "both" // both of the above; the default
)

// ParseBoot reads a --boot value.
func ParseBoot(s string) (Boot, error) {
	switch b := Boot(strings.ToLower(s)); b {
	case BootNone, BootUEFI, BootBIOS, BootBoth:
		return b, nil
	}
	return "", fmt.Errorf("boot mode %q: want uefi, bios, both or none", s)
}

// UEFI and BIOS say whether the mode installs that half.
func (b Boot) UEFI() bool { return b == BootUEFI || b == BootBoth }
func (b Boot) BIOS() bool { return b == BootBIOS || b == BootBoth }

// Where the GRUB binaries go and where they look for grub.cfg.
const (
	EFIBinaryPath = "/EFI/BOOT/BOOTX64.EFI"
	// EFIPrefix: GRUB's root is the partition BOOTX64.EFI came from; it
	// reads /EFI/BOOT/grub.cfg there.
	EFIPrefix = "/EFI/BOOT"
	// BIOSPrefix: partition 1 (EFI-BOOT) of the disk the BIOS booted from;
	// "(,gpt1)" takes the boot drive from the firmware.
	BIOSPrefix = "(,gpt1)/grub"
)

// Modules are built into both GRUB images, so nothing is loaded from disk:
// partition table, the FAT of EFI-BOOT, ext4 (ext2) and squashfs (squash4)
// images on a loop device, the Linux loader, the menu, the serial console.
var Modules = []string{
	"part_gpt", "fat", "ext2", "squash4", "loopback", "linux",
	"normal", "configfile", "search", "search_label", "search_fs_uuid",
	"echo", "test", "serial", "terminal", "reboot", "halt",
}

// GrubDir is where Debian's grub-efi-amd64-bin and grub-pc-bin put GRUB's
// modules and images; HNBOOT_GRUB_DIR overrides it.
func GrubDir() string {
	if d := os.Getenv("HNBOOT_GRUB_DIR"); d != "" {
		return d
	}
	return "/usr/lib/grub"
}

const installHint = "apt-get install grub-efi-amd64-bin grub-pc-bin (or run scripts/deps.sh)"

// EFIImage builds GRUB for x86_64 UEFI with grub-mkimage: a single
// BOOTX64.EFI holding Modules, reading grub.cfg from EFIPrefix.
func EFIImage(ctx context.Context) ([]byte, error) {
	return mkimage(ctx, "x86_64-efi", EFIPrefix, nil)
}

// BIOSImages builds GRUB for BIOS: boot.img (the MBR code) and core.img
// (grub-mkimage -O i386-pc with biosdisk and Modules), neither patched yet:
// see PatchBootSector and PatchCore.
func BIOSImages(ctx context.Context) (bootImg, core []byte, err error) {
	p := filepath.Join(GrubDir(), "i386-pc", "boot.img")
	bootImg, err = os.ReadFile(p)
	if err != nil {
		return nil, nil, fmt.Errorf("GRUB BIOS boot.img: %w (%s)", err, installHint)
	}
	core, err = mkimage(ctx, "i386-pc", BIOSPrefix, []string{"biosdisk"})
	return bootImg, core, err
}

func mkimage(ctx context.Context, format, prefix string, extra []string) ([]byte, error) {
	tool, err := exec.LookPath("grub-mkimage")
	if err != nil {
		return nil, fmt.Errorf("grub-mkimage not found: %s", installHint)
	}
	dir := filepath.Join(GrubDir(), format)
	if _, err := os.Stat(filepath.Join(dir, "moddep.lst")); err != nil {
		return nil, fmt.Errorf("GRUB %s modules: %w (%s)", format, err, installHint)
	}
	tmp, err := os.MkdirTemp("", "hnboot-grub-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "grub.img")
	args := []string{"-O", format, "-d", dir, "-p", prefix, "-o", out}
	args = append(args, extra...)
	args = append(args, Modules...)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("grub-mkimage %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("grub-mkimage -O %s: %w", format, err)
	}
	return b, nil
}
