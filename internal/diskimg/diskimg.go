// Package diskimg builds bootable hnboot disks: a sparse GPT disk image
// with an EFI-BOOT partition (FAT32, holding GRUB's EFI binary and its
// configuration), a hostpart partition (ext4, holding the root images) and,
// for BIOS boot, a BIOS boot partition holding GRUB's core.img with GRUB's
// boot.img in the MBR, made without loop devices, mounts or grub-install.
package diskimg

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/bootloader"
	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/rootfs"
)

// Names and defaults of the layout (DESIGN.md §2).
const (
	DefaultEFISize = 128 * mib
	BIOSBootSize   = mib // GRUB's i386-pc core.img (~200 KiB) fits easily

	mib        = 1 << 20
	sectorSize = 512
	alignSect  = mib / sectorSize // partitions start on MiB boundaries
)

// Files the FAT partition gets the GRUB configuration at.
var GrubConfigPaths = []string{"/grub/grub.cfg", "/EFI/BOOT/grub.cfg"}

// Options says what disk to build.
type Options struct {
	Out        string // the disk image (a temporary file beside it until complete)
	Size       int64  // disk size in bytes
	EFISize    int64  // EFI-BOOT partition size; default 128 MiB
	Root       string // becomes hn-root.img
	New        string // optional, becomes hn-root-new.img
	Old        string // optional, becomes hn-root-old.img
	HostpartFS string // only "ext4" for now
	GrubConfig string // grub.cfg text
	// GRUB binaries, all optional: EFIBinary goes to EFI/BOOT/BOOTX64.EFI;
	// BIOSBootImg and BIOSCore (unpatched boot.img and core.img, see
	// bootloader.BIOSImages) add a BIOS boot partition and make the MBR
	// boot it.
	EFIBinary   []byte
	BIOSBootImg []byte
	BIOSCore    []byte
	// Files are more files for hostpart, by clean relative path
	// (".hnboot/host.conf", "data/x"): what a tool that prepares a disk
	// for a purpose puts there (mkimage test's probe).
	Files    map[string]File
	Epoch    int64 // SOURCE_DATE_EPOCH, used when HasEpoch
	HasEpoch bool  // derive GUIDs and UUIDs from Epoch
	Log      *slog.Logger
}

// File is one extra file on hostpart: Data, or a copy of the file Src.
type File struct {
	Data []byte
	Src  string
	Mode os.FileMode
}

// Partition is where one partition lies, in bytes.
type Partition struct {
	Name         string
	Offset, Size int64
}

// Result describes a built disk.
type Result struct {
	Path       string
	Size       int64
	Partitions []Partition
	Allocated  int64 // bytes the sparse file takes on disk
}

// LayoutBoot computes the partitions of a disk of size bytes: EFI-BOOT at
// 1 MiB, hostpart from the next MiB boundary to the last usable sector.
// With bios a third partition, BIOS-BOOT (GPT type EF02, 1 MiB), comes
// first on the disk at 1 MiB and EFI-BOOT follows it.
// The GPT numbers stay EFI-BOOT 1 and hostpart 2 (as in the seed's
// "hd0,gpt2"), BIOS-BOOT is 3; the result lists them in that order.
func LayoutBoot(size, efiSize int64, bios bool) ([]Partition, error) {
	if size%sectorSize != 0 {
		return nil, fmt.Errorf("disk size %d is not a multiple of %d bytes", size, sectorSize)
	}
	if efiSize%mib != 0 {
		return nil, fmt.Errorf("EFI partition size %d is not a whole number of MiB", efiSize)
	}
	if efiSize == 64*mib {
		return nil, errors.New("an EFI partition of exactly 64 MiB fails fsck.vfat: choose another --efi-size (128M is the default)")
	}
	if efiSize < 33*mib {
		return nil, fmt.Errorf("EFI partition size %d MiB too small for FAT32 (want at least 33M)", efiSize/mib)
	}
	sectors := size / sectorSize
	lastUsable := sectors - 34 // backup entries (32 sectors) and header
	efiStart := int64(alignSect)
	if bios {
		efiStart += BIOSBootSize / sectorSize
	}
	hostStart := efiStart + efiSize/sectorSize
	if hostStart+2*alignSect > lastUsable {
		return nil, fmt.Errorf("disk size %d MiB leaves no room for hostpart after the %d MiB EFI partition", size/mib, efiSize/mib)
	}
	// End hostpart on a MiB boundary too (sgdisk warns otherwise).
	hostEnd := (lastUsable+1)/alignSect*alignSect - 1
	parts := []Partition{
		{layout.ESPLabel, efiStart * sectorSize, efiSize},
		{layout.HostpartLabel, hostStart * sectorSize, (hostEnd - hostStart + 1) * sectorSize},
	}
	if bios {
		parts = append(parts, Partition{layout.BIOSBootLabel, alignSect * sectorSize, BIOSBootSize})
	}
	return parts, nil
}

func guid(o Options, what string) string {
	if !o.HasEpoch {
		return ""
	}
	s := sha256.Sum256([]byte("hnboot disk " + strconv.FormatInt(o.Epoch, 10) + " " + what))
	return strings.ToUpper(rootfs.UUIDFrom(s[:16]))
}

// Build makes the disk described by o.
func Build(ctx context.Context, o Options) (res *Result, err error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Out == "" {
		return nil, errors.New("disk: no output file given (--out)")
	}
	if o.EFISize == 0 {
		o.EFISize = DefaultEFISize
	}
	switch o.HostpartFS {
	case "", "ext4":
	default:
		return nil, fmt.Errorf("disk: --hostpart-fs %s: not supported yet; only ext4 can be filled without mounting (mkfs.ext4 -d)", o.HostpartFS)
	}
	mkfs, err := rootfs.Tool("mkfs.ext4")
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	bios := len(o.BIOSBootImg) > 0 || len(o.BIOSCore) > 0
	if bios && (len(o.BIOSBootImg) == 0 || len(o.BIOSCore) == 0) {
		return nil, errors.New("disk: BIOS boot needs both GRUB's boot.img and core.img")
	}
	parts, err := LayoutBoot(o.Size, o.EFISize, bios)
	if err != nil {
		return nil, fmt.Errorf("disk: %w (--size, --efi-size)", err)
	}

	images := []struct{ flag, src, name string }{
		{"--root", o.Root, layout.Current},
		{"--new", o.New, layout.New},
		{"--old", o.Old, layout.Old},
	}
	var need int64
	for _, im := range images {
		if im.src == "" {
			if im.flag == "--root" {
				return nil, errors.New("disk: no root image given (--root)")
			}
			continue
		}
		st, err := os.Stat(im.src)
		if err != nil {
			return nil, fmt.Errorf("disk: %s: %w", im.flag, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("disk: %s %s: not a regular file", im.flag, im.src)
		}
		// What the init would refuse to boot (build images with mkimage rootfs).
		if err := blkid.CheckImageFile(im.src); err != nil {
			return nil, fmt.Errorf("disk: %s: %w (build root images with mkimage rootfs)", im.flag, err)
		}
		if err := checkManifest(im.src); err != nil {
			return nil, fmt.Errorf("disk: %s: %w", im.flag, err)
		}
		need += st.Size()
	}
	// Images plus ext4 metadata, journal and some room to stage an update.
	if min := need + need/10 + 64*mib; parts[1].Size < min {
		return nil, fmt.Errorf("disk: hostpart would be %d MiB, the images need at least %d MiB: give a larger --size", parts[1].Size/mib, min/mib)
	}

	staging := o.Out + ".staging"
	if err := os.RemoveAll(staging); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	defer os.RemoveAll(staging)

	log.Info("staging hostpart contents", "dir", staging)
	for _, d := range []string{layout.DataDir, layout.StateDir} {
		if err := os.MkdirAll(filepath.Join(staging, d), 0o755); err != nil {
			return nil, fmt.Errorf("disk: staging: %w", err)
		}
	}
	if err := os.Chmod(filepath.Join(staging, layout.StateDir), 0o700); err != nil {
		return nil, fmt.Errorf("disk: staging: %w", err)
	}
	for _, im := range images {
		if im.src == "" {
			continue
		}
		how, err := stage(im.src, filepath.Join(staging, im.name))
		if err != nil {
			return nil, fmt.Errorf("disk: stage %s %s: %w", im.flag, im.src, err)
		}
		log.Info("staged image", "image", im.name, "from", im.src, "how", how)
		if b, err := os.ReadFile(layout.ManifestFor(im.src)); err == nil {
			if err := os.WriteFile(filepath.Join(staging, layout.ManifestFor(im.name)), b, 0o644); err != nil {
				return nil, fmt.Errorf("disk: stage the manifest of %s: %w", im.flag, err)
			}
			log.Info("staged manifest", "manifest", layout.ManifestFor(im.name), "from", layout.ManifestFor(im.src))
			// Its chunk index, where a host keeps those of its images
			// (internal/stage): the first delta update needs no other.
			m, merr := manifest.Parse(b)
			cb, cerr := os.ReadFile(im.src + layout.ChunksSuffix)
			if merr == nil && cerr == nil && m.Chunks != "" && chunkindex.Sum(cb) == m.Chunks {
				p := filepath.Join(staging, layout.ChunksDir, m.SHA256+layout.ChunksSuffix)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return nil, fmt.Errorf("disk: %w", err)
				}
				if err := os.WriteFile(p, cb, 0o644); err != nil {
					return nil, fmt.Errorf("disk: stage the chunk index of %s: %w", im.flag, err)
				}
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("disk: %s: %w", im.flag, err)
		}
	}

	for name, fl := range o.Files {
		if !filepath.IsLocal(name) || filepath.Clean(name) != name {
			return nil, fmt.Errorf("disk: extra file %q: want a clean path inside hostpart", name)
		}
		data := fl.Data
		if fl.Src != "" {
			if data, err = os.ReadFile(fl.Src); err != nil {
				return nil, fmt.Errorf("disk: extra file %s: %w", name, err)
			}
		}
		dst := filepath.Join(staging, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, fmt.Errorf("disk: staging: %w", err)
		}
		if err := os.WriteFile(dst, data, fl.Mode.Perm()); err != nil {
			return nil, fmt.Errorf("disk: staging: %w", err)
		}
		if err := os.Chmod(dst, fl.Mode.Perm()); err != nil {
			return nil, fmt.Errorf("disk: staging: %w", err)
		}
		need += int64(len(data))
	}

	// Every step below (go-diskfs, the FAT fix, GRUB's BIOS core,
	// mkfs.ext4 -E offset=) writes into durable's temporary file beside
	// Out by its path, in place: the inode durable fsyncs at Commit is the
	// one they wrote, and nothing appears under Out until the disk is
	// complete.
	f, err := durable.Create(o.Out, 0o644)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	defer f.Cleanup()
	tmp := f.Name()
	log.Info("creating sparse disk", "out", tmp, "size", o.Size)
	if err := f.Truncate(o.Size); err != nil {
		return nil, fmt.Errorf("disk: size %s: %w", tmp, err)
	}

	if err := writeGPTAndESP(tmp, o, parts, log); err != nil {
		return nil, err
	}
	if err := fixFAT32(tmp, parts[0].Offset); err != nil {
		return nil, fmt.Errorf("disk: EFI-BOOT of %s: %w", tmp, err)
	}
	if bios {
		if err := installBIOS(tmp, parts[2], o.BIOSBootImg, o.BIOSCore, log); err != nil {
			return nil, err
		}
	}

	log.Info("making hostpart ext4", "offset", parts[1].Offset, "size", parts[1].Size)
	start := time.Now()
	// mke2fs keeps only the last -E: every extended option goes in one.
	ext := "offset=" + strconv.FormatInt(parts[1].Offset, 10) + ",lazy_itable_init=1,lazy_journal_init=1"
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-L", layout.HostpartLabel}
	env := os.Environ()
	if o.HasEpoch {
		ext += ",hash_seed=" + strings.ToLower(guid(o, "hostpart hash"))
		args = append(args, "-U", strings.ToLower(guid(o, "hostpart fs")))
		env = append(env, "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(o.Epoch, 10))
	}
	args = append(args, "-E", ext, "-d", staging, tmp, strconv.FormatInt(parts[1].Size/1024, 10)+"k")
	cmd := exec.CommandContext(ctx, mkfs, args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("disk: mkfs.ext4 on hostpart of %s: %w: %s", tmp, err, strings.TrimSpace(string(out)))
	}
	log.Info("hostpart done", "took", time.Since(start).Round(time.Millisecond))

	if err := f.Commit(); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(o.Out, &st); err != nil {
		return nil, fmt.Errorf("disk: stat %s: %w", o.Out, err)
	}
	return &Result{Path: o.Out, Size: o.Size, Partitions: parts, Allocated: st.Blocks * 512}, nil
}

func writeGPTAndESP(p string, o Options, parts []Partition, log *slog.Logger) error {
	d, err := diskfs.Open(p)
	if err != nil {
		return fmt.Errorf("disk: open %s: %w", p, err)
	}
	defer d.Close()
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		GUID:               guid(o, "disk"),
	}
	types := []gpt.Type{gpt.EFISystemPartition, gpt.LinuxFilesystem, gpt.BIOSBoot}
	for i, pt := range parts {
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: i + 1,
			Start: uint64(pt.Offset / sectorSize),
			End:   uint64((pt.Offset+pt.Size)/sectorSize - 1),
			Size:  uint64(pt.Size),
			Type:  types[i],
			Name:  pt.Name,
			GUID:  guid(o, "partition "+pt.Name),
		})
	}
	log.Info("writing GPT")
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("disk: write GPT to %s: %w", p, err)
	}
	log.Info("making EFI-BOOT FAT32", "size", parts[0].Size)
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{
		Partition:    1,
		FSType:       filesystem.TypeFat32,
		VolumeLabel:  layout.ESPLabel,
		Reproducible: o.HasEpoch,
	})
	if err != nil {
		return fmt.Errorf("disk: FAT32 on %s partition 1: %w", p, err)
	}
	for _, cfg := range GrubConfigPaths {
		if err := writeFile(fs, cfg, []byte(o.GrubConfig)); err != nil {
			return fmt.Errorf("disk: %s on EFI-BOOT of %s: %w", cfg, p, err)
		}
	}
	if len(o.EFIBinary) > 0 {
		log.Info("installing GRUB for UEFI", "path", bootloader.EFIBinaryPath, "size", len(o.EFIBinary))
		if err := writeFile(fs, bootloader.EFIBinaryPath, o.EFIBinary); err != nil {
			return fmt.Errorf("disk: %s on EFI-BOOT of %s: %w", bootloader.EFIBinaryPath, p, err)
		}
	}
	if err := fs.Close(); err != nil {
		return fmt.Errorf("disk: close FAT32 of %s: %w", p, err)
	}
	return nil
}

func writeFile(fs filesystem.FileSystem, name string, data []byte) error {
	if err := fs.Mkdir(path.Dir(name)); err != nil {
		return err
	}
	f, err := fs.OpenFile(name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkManifest checks IMAGE.json beside an image, when there is one: it
// goes onto hostpart with the image, and the init refuses to promote a
// staged image whose manifest does not match it.
func checkManifest(img string) error {
	p := layout.ManifestFor(img)
	m, err := manifest.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w; rebuild it with mkimage rootfs or remove it", err)
	}
	if err := m.VerifyFile(img, nil); err != nil {
		return fmt.Errorf("%s does not match its manifest %s: %w; rebuild both with mkimage rootfs, or remove the stale manifest", img, p, err)
	}
	return nil
}

// stage puts src at dst: a hard link if they share a filesystem, else a
// reflink, else a copy that keeps holes. It says which it did.
func stage(src, dst string) (string, error) {
	if err := os.Link(src, dst); err == nil {
		return "hard link", nil
	}
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		return "reflink", out.Close()
	}
	if err := copySparse(out, in); err != nil {
		return "", err
	}
	return "sparse copy", out.Close()
}

// copySparse copies in to out, skipping the holes of in (SEEK_DATA /
// SEEK_HOLE) and blocks of zeros, so a sparse image stays sparse.
func copySparse(out, in *os.File) error {
	st, err := in.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	buf := make([]byte, 1<<20)
	zero := make([]byte, len(buf))
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) { // only a hole is left
				break
			}
			data = off // SEEK_DATA unsupported: read everything
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		for off = data; off < hole; {
			n, err := in.ReadAt(buf[:min(int64(len(buf)), hole-off)], off)
			if err != nil && err != io.EOF {
				return err
			}
			if n == 0 {
				break
			}
			if string(buf[:n]) != string(zero[:n]) {
				if _, err := out.WriteAt(buf[:n], off); err != nil {
					return err
				}
			}
			off += int64(n)
		}
		off = hole
	}
	return out.Truncate(size)
}

// installBIOS writes GRUB's core.img into the BIOS boot partition bp and
// GRUB's boot.img into the MBR of the disk at p, both patched as
// grub-bios-setup would (bootloader.PatchCore, bootloader.PatchBootSector);
// the protective MBR's partition table is kept.
func installBIOS(p string, bp Partition, bootImg, core []byte, log *slog.Logger) error {
	lba := uint64(bp.Offset / sectorSize)
	patched, err := bootloader.PatchCore(core, lba)
	if err != nil {
		return fmt.Errorf("disk: GRUB core.img: %w", err)
	}
	if int64(len(patched)) > bp.Size {
		return fmt.Errorf("disk: GRUB core.img is %d bytes, the BIOS boot partition %d", len(patched), bp.Size)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	defer f.Close()
	mbr := make([]byte, sectorSize)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		return fmt.Errorf("disk: read MBR of %s: %w", p, err)
	}
	sector, err := bootloader.PatchBootSector(bootImg, mbr, lba)
	if err != nil {
		return fmt.Errorf("disk: GRUB boot.img: %w", err)
	}
	log.Info("installing GRUB for BIOS", "core_sector", lba, "core_size", len(patched))
	if _, err := f.WriteAt(patched, bp.Offset); err != nil {
		return fmt.Errorf("disk: write core.img to %s: %w", p, err)
	}
	if _, err := f.WriteAt(sector, 0); err != nil {
		return fmt.Errorf("disk: write MBR of %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("disk: sync %s: %w", p, err)
	}
	return f.Close()
}
