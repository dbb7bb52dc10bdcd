// Package diskcheck inspects the disk that holds hostpart for the seed
// layout: a GPT, an EFI-BOOT partition that is FAT and holds a GRUB config
// booting hn-root.img. It reports problems in plain words with the fix; it
// never writes to the disk and decides nothing fatal itself: a host whose
// loader partition is broken can still boot over PXE, so the init logs the
// report and carries on.
//
// Reading the disk (gather) is kept apart from judging it (judge) so the
// rules can be read, and tested, in one place.
package diskcheck

import (
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/partition"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/layout"
)

// GrubConfigs are where GRUB looks for its config on EFI-BOOT, in order:
// grub-install --boot-directory=/boot/loader puts it in /grub, a
// --removable install with an embedded prefix in /EFI/BOOT.
var GrubConfigs = []string{"/grub/grub.cfg", "/EFI/BOOT/grub.cfg"}

// Problem codes, stable for the init and tests to match on.
const (
	CodeUnreadable  = "unreadable"
	CodeNoTable     = "no-partition-table"
	CodeMBR         = "mbr"
	CodeGPTBackup   = "gpt-backup"
	CodeNoHostpart  = "hostpart-not-in-table"
	CodeNoESP       = "efi-boot-missing"
	CodeESPLabel    = "efi-boot-label"
	CodeESPType     = "efi-boot-type"
	CodeESPNotFAT   = "efi-boot-not-fat"
	CodeESPRead     = "efi-boot-unreadable"
	CodeNoGrubCfg   = "grub-cfg-missing"
	CodeGrubNoImage = "grub-cfg-no-image"
	CodeNoEFILoader = "efi-loader-missing"
)

// Problem is one finding. Msg names the disk and says how to fix it.
type Problem struct {
	Fatal bool
	Code  string
	Msg   string
}

// Report is the outcome of CheckImage.
type Report struct {
	Disk     string
	ESP      int // partition number of EFI-BOOT, 0 when not found
	Problems []Problem
}

// String gives one line per problem, ready for the console.
func (r Report) String() string {
	if len(r.Problems) == 0 {
		return fmt.Sprintf("disk %s: GPT, EFI-BOOT (partition %d) is FAT and its GRUB config boots the image: ok", r.Disk, r.ESP)
	}
	var b strings.Builder
	for i, p := range r.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		if p.Fatal {
			b.WriteString("FATAL: ")
		} else {
			b.WriteString("warning: ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// CheckImage inspects disk (a whole-disk device or an image file) whose
// partition hostpartIndex is hostpart (0 if hostpart is the whole disk or
// unknown), expecting the GRUB config to boot image (hn.image=, normally
// layout.Current).
func CheckImage(disk string, hostpartIndex int, image string) Report {
	return judge(gather(disk, hostpartIndex), hostpartIndex, image)
}

// part is what gather learned about one partition.
type part struct {
	Index       int
	Name        string // GPT partition name
	Type        string // GPT type GUID
	Start, Size int64  // bytes
	FS          blkid.Info
	FSErr       error
}

// facts is everything judge needs; gather fills it from the disk.
type facts struct {
	Disk       string
	OpenErr    error
	Table      string // "gpt", "mbr" or ""
	FromBackup bool
	Parts      []part
	ESP        *part             // chosen EFI-BOOT candidate
	ESPReadErr error             // opening its FAT with go-diskfs
	GrubCfg    map[string]string // path → contents, for the configs that exist
	HasEFIBoot bool              // /EFI/BOOT/BOOTX64.EFI present
}

// gather reads the disk through go-diskfs's partition and FAT packages
// only: its top-level Open brings every filesystem it knows (ext4,
// squashfs, ISO 9660 with their gzip, xz, lz4, lzo and zstd decoders),
// 1.13 MB of the init's binary (372 KB of the zstd archive) for a check
// that reads a partition table and one FAT.
func gather(disk string, hostpartIndex int) facts {
	f := facts{Disk: disk}
	fh, err := os.Open(disk)
	if err != nil {
		f.OpenErr = err
		return f
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		f.OpenErr = err
		return f
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		f.OpenErr = fmt.Errorf("%s is neither a block device nor a regular file", disk)
		return f
	}
	b := file.New(fh, true)
	sector := sectorSize(fh)
	table, err := partition.Read(b, sector, sector)
	if err != nil {
		return f
	}
	switch t := table.(type) {
	case *gpt.Table:
		f.Table = "gpt"
		f.FromBackup = t.RecoveredFromBackup
		for _, p := range t.Partitions {
			if p.Type == gpt.Unused || p.Size == 0 {
				continue
			}
			f.Parts = append(f.Parts, part{Index: p.Index, Name: p.Name, Type: string(p.Type), Start: p.GetStart(), Size: p.GetSize()})
		}
	case *mbr.Table:
		f.Table = "mbr"
		for _, p := range t.Partitions {
			if p.Type == mbr.Empty || p.GetSize() == 0 {
				continue
			}
			f.Parts = append(f.Parts, part{Index: p.GetIndex(), Start: p.GetStart(), Size: p.GetSize()})
		}
	}
	for i := range f.Parts {
		p := &f.Parts[i]
		p.FS, p.FSErr = blkid.Probe(io.NewSectionReader(fh, p.Start, p.Size))
	}

	f.ESP = chooseESP(f.Parts, hostpartIndex)
	if f.ESP == nil || f.ESP.FS.Type != "vfat" {
		return f
	}
	fs, err := readFAT(b, f.ESP.Start, f.ESP.Size, int64(sector))
	if err != nil {
		f.ESPReadErr = err
		return f
	}
	defer fs.Close()
	f.GrubCfg = map[string]string{}
	for _, path := range GrubConfigs {
		if b, err := fs.ReadFile(path); err == nil {
			f.GrubCfg[path] = string(b)
		}
	}
	// Open, not Stat: go-diskfs's Stat wants io/fs paths (no leading
	// slash) while its OpenFile wants absolute ones.
	if h, err := fs.Open("/EFI/BOOT/BOOTX64.EFI"); err == nil {
		h.Close()
		f.HasEFIBoot = true
	}
	return f
}

// sectorSize is the disk's logical sector size: 512 for an image file.
func sectorSize(f *os.File) int {
	if n, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET); err == nil && n > 0 {
		return n
	}
	return 512
}

// readFAT opens the FAT at start (FAT32 as mkfs.vfat -F 32 makes it, or
// FAT16 of a small ESP), as go-diskfs's Disk.GetFilesystem does.
func readFAT(b backend.Storage, start, size, sector int64) (filesystem.FileSystem, error) {
	fs32, err := fat32.Read(b, size, start, sector)
	if err == nil {
		return fs32, nil
	}
	fs16, err16 := fat16.Read(b, size, start, sector)
	if err16 == nil {
		return fs16, nil
	}
	return nil, fmt.Errorf("not FAT32 (%v) nor FAT16 (%v)", err, err16)
}

// chooseESP prefers a partition named EFI-BOOT (what the layout creates),
// then one whose filesystem is labelled EFI-BOOT (what fstab mounts).
// hostpart itself is never the loader partition.
func chooseESP(parts []part, hostpartIndex int) *part {
	for _, byName := range []bool{true, false} {
		for i := range parts {
			p := &parts[i]
			if p.Index == hostpartIndex && hostpartIndex != 0 {
				continue
			}
			if byName && p.Name == layout.ESPLabel || !byName && p.FS.Type != "" && p.FS.Label == layout.ESPLabel {
				return p
			}
		}
	}
	return nil
}

// judge turns facts into problems. Nothing here is fatal; see the package
// comment.
func judge(f facts, hostpartIndex int, image string) Report {
	r := Report{Disk: f.Disk}
	add := func(code, format string, a ...any) {
		r.Problems = append(r.Problems, Problem{Code: code, Msg: fmt.Sprintf(format, a...)})
	}
	disk := f.Disk
	if f.OpenErr != nil {
		add(CodeUnreadable, "disk %s: cannot read it to check the boot layout (%v); checks skipped", disk, f.OpenErr)
		return r
	}
	switch f.Table {
	case "gpt":
		if f.FromBackup {
			add(CodeGPTBackup, "disk %s: the primary GPT is damaged and was read from the backup copy at the end of the disk; rewrite both copies with: sgdisk -e %s", disk, disk)
		}
	case "mbr":
		add(CodeMBR, "disk %s has an MBR (msdos) partition table, not GPT: UEFI boot and disks over 2 TB need GPT; convert it in place with: sgdisk --mbrtogpt %s", disk, disk)
	default:
		add(CodeNoTable, "disk %s has no partition table; the layout needs GPT with an EFI-BOOT and a hostpart partition, so this disk can only boot over PXE (repartition it to boot locally)", disk)
		add(CodeNoESP, "disk %s: partition EFI-BOOT is missing; the disk cannot boot by itself", disk)
		return r
	}
	if hostpartIndex > 0 && !hasPart(f.Parts, hostpartIndex) {
		add(CodeNoHostpart, "disk %s: the partition table has no partition %d although hostpart was found there; the kernel's view and the table differ (check with: sgdisk -p %s)", disk, hostpartIndex, disk)
	}

	esp := f.ESP
	if esp == nil {
		add(CodeNoESP, "disk %s: partition EFI-BOOT is missing (no partition named or labelled EFI-BOOT), so the disk cannot boot by itself, only over PXE; create a ~128 MiB partition named EFI-BOOT, format it with mkfs.vfat -F 32 -n EFI-BOOT and install GRUB on it", disk)
		return r
	}
	r.ESP = esp.Index
	dev := PartitionDevice(disk, esp.Index)
	if f.Table == "gpt" && !strings.EqualFold(esp.Type, string(gpt.EFISystemPartition)) {
		add(CodeESPType, "disk %s: EFI-BOOT (partition %d) has type %s, not EFI System, so UEFI firmware may skip it; fix with: sgdisk -t %d:ef00 %s", disk, esp.Index, esp.Type, esp.Index, disk)
	}
	if esp.FS.Type != "vfat" {
		what := "no recognisable filesystem"
		if esp.FS.Type != "" {
			what = esp.FS.Type
		}
		add(CodeESPNotFAT, "disk %s: EFI-BOOT (%s) holds %s, not FAT, and UEFI firmware reads only FAT; reformat with mkfs.vfat -F 32 -n EFI-BOOT %s and reinstall GRUB", disk, dev, what, dev)
		return r
	}
	if esp.FS.Label != layout.ESPLabel {
		add(CodeESPLabel, "disk %s: partition %d is named EFI-BOOT but its FAT label is %q, and /boot/loader is mounted by LABEL=EFI-BOOT; fix with: fatlabel %s EFI-BOOT", disk, esp.Index, esp.FS.Label, dev)
	}
	if f.ESPReadErr != nil {
		add(CodeESPRead, "disk %s: cannot read the FAT filesystem on EFI-BOOT (%s): %v; check it with: fsck.vfat -n %s", disk, dev, f.ESPReadErr, dev)
		return r
	}
	if !f.HasEFIBoot {
		add(CodeNoEFILoader, "disk %s: EFI-BOOT (%s) has no /EFI/BOOT/BOOTX64.EFI, so UEFI firmware finds GRUB only through an NVRAM boot entry; reinstall GRUB with --removable", disk, dev)
	}
	if len(f.GrubCfg) == 0 {
		add(CodeNoGrubCfg, "disk %s: no GRUB config on EFI-BOOT (%s): looked for %s; a local boot stops at the GRUB prompt, reinstall the bootloader", disk, dev, strings.Join(GrubConfigs, " and "))
		return r
	}
	for _, path := range GrubConfigs {
		cfg, ok := f.GrubCfg[path]
		if !ok {
			continue
		}
		if !mentions(cfg, image) {
			add(CodeGrubNoImage, "disk %s: GRUB config %s on EFI-BOOT (%s) does not mention %s, so a local boot will not load the current image; regenerate it with the hnboot bootloader", disk, path, dev, image)
		}
		break // GRUB uses the first config it finds
	}
	return r
}

func hasPart(parts []part, index int) bool {
	for _, p := range parts {
		if p.Index == index {
			return true
		}
	}
	return false
}

// mentions reports whether cfg names image as a whole path component, so
// hn-root.img does not match hn-root.img.part or old-hn-root.img.
func mentions(cfg, image string) bool {
	for rest := cfg; ; {
		i := strings.Index(rest, image)
		if i < 0 {
			return false
		}
		before, after := rune(' '), rune(' ')
		if i > 0 {
			before = rune(rest[i-1])
		}
		if j := i + len(image); j < len(rest) {
			after = rune(rest[j])
		}
		if !isNameChar(before) && !isNameChar(after) {
			return true
		}
		rest = rest[i+1:]
	}
}

func isNameChar(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r) || r == '.' || r == '-' || r == '_'
}

// PartitionDevice names partition n of disk the way the kernel does:
// /dev/vda → /dev/vda2, /dev/nvme0n1 → /dev/nvme0n1p2 (a "p" when the disk
// name ends in a digit). Used only in messages.
func PartitionDevice(disk string, n int) string {
	if disk != "" && disk[len(disk)-1] >= '0' && disk[len(disk)-1] <= '9' {
		return fmt.Sprintf("%sp%d", disk, n)
	}
	return fmt.Sprintf("%s%d", disk, n)
}
