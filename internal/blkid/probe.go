// Package blkid identifies filesystems by their superblocks and finds block
// devices by LABEL=, UUID=, PARTLABEL= or path, like util-linux blkid but
// small, static and without udev: the initramfs has only /sys and /dev.
//
// Probing is pure (an io.ReaderAt in, Info out); Find and Parent take the
// sysfs and /dev directories as parameters so tests run on fake trees.
package blkid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Info describes the filesystem found on a device or image.
type Info struct {
	Type  string // ext2, ext3, ext4, vfat, btrfs, xfs, squashfs, iso9660
	Label string
	UUID  string // as blkid prints it: 8-4-4-4-12 lowercase, or XXXX-XXXX for FAT
	Size  int64  // filesystem size in bytes according to its superblock, 0 when unknown
}

// ErrUnknown is returned (wrapped) by Probe when no known superblock is found.
var ErrUnknown = errors.New("no known filesystem")

// Probe identifies the filesystem at the start of r.
func Probe(r io.ReaderAt) (Info, error) {
	// Order matters only where signatures could both match; FAT goes last
	// because its boot sector has the weakest signature (a partition table's
	// MBR ends in 55 AA too).
	probers := []func(io.ReaderAt) (Info, bool, error){
		probeSquashfs, probeXFS, probeExt, probeBtrfs, probeISO9660, probeFAT,
	}
	for _, p := range probers {
		info, ok, err := p(r)
		if err != nil {
			return Info{}, err
		}
		if ok {
			return info, nil
		}
	}
	return Info{}, ErrUnknown
}

// ImageSize reports the filesystem type of a root image and how many bytes
// the image must have for that filesystem to be complete, so a truncated
// download can be rejected before it is ever booted.
func ImageSize(r io.ReaderAt) (fstype string, need int64, err error) {
	info, err := Probe(r)
	if err != nil {
		return "", 0, err
	}
	if info.Size <= 0 {
		return info.Type, 0, fmt.Errorf("%s superblock does not give the filesystem size", info.Type)
	}
	return info.Type, info.Size, nil
}

// readAt reads len(b) bytes at off. A short device is not an error: it
// simply cannot hold that superblock, so ok is false.
func readAt(r io.ReaderAt, off int64, n int) (b []byte, ok bool, err error) {
	b = make([]byte, n)
	got, err := r.ReadAt(b, off)
	if got == n {
		return b, true, nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("read %d bytes at offset %d: %w", n, off, err)
}

var (
	le = binary.LittleEndian
	be = binary.BigEndian
)

func uuidString(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// cString returns b up to the first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// ext2/3/4: superblock at 1024 (struct ext4_super_block in the kernel).
func probeExt(r io.ReaderAt) (Info, bool, error) {
	sb, ok, err := readAt(r, 1024, 1024)
	if !ok || err != nil {
		return Info{}, false, err
	}
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		return Info{}, false, nil
	}
	const (
		compatHasJournal   = 0x4
		incompatJournalDev = 0x8
		incompat64bit      = 0x80
		// What ext3 understands; anything else in incompat/ro_compat makes
		// it an ext4 (the same rule blkid uses).
		ext3Incompat = 0x2 | 0x4 | 0x10
		ext3RoCompat = 0x1 | 0x2 | 0x4
	)
	compat, incompat, roCompat := le.Uint32(sb[0x5C:]), le.Uint32(sb[0x60:]), le.Uint32(sb[0x64:])
	if incompat&incompatJournalDev != 0 {
		return Info{}, false, nil // an external journal, not a mountable filesystem
	}
	typ := "ext2"
	switch {
	case incompat&^ext3Incompat != 0 || roCompat&^ext3RoCompat != 0:
		typ = "ext4"
	case compat&compatHasJournal != 0:
		typ = "ext3"
	}
	logBlock := le.Uint32(sb[0x18:])
	if logBlock > 6 { // block sizes are 1 KiB .. 64 KiB
		return Info{}, false, nil
	}
	blocks := uint64(le.Uint32(sb[0x4:]))
	if incompat&incompat64bit != 0 {
		blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	return Info{
		Type:  typ,
		Label: cString(sb[0x78:0x88]),
		UUID:  uuidString(sb[0x68:0x78]),
		Size:  int64(blocks) << (10 + logBlock),
	}, true, nil
}

// squashfs: superblock at 0, no label or UUID.
func probeSquashfs(r io.ReaderAt) (Info, bool, error) {
	sb, ok, err := readAt(r, 0, 96)
	if !ok || err != nil {
		return Info{}, false, err
	}
	if string(sb[0:4]) != "hsqs" {
		return Info{}, false, nil
	}
	return Info{Type: "squashfs", Size: int64(le.Uint64(sb[40:]))}, true, nil
}

// xfs: big-endian superblock at 0.
func probeXFS(r io.ReaderAt) (Info, bool, error) {
	sb, ok, err := readAt(r, 0, 512)
	if !ok || err != nil {
		return Info{}, false, err
	}
	if string(sb[0:4]) != "XFSB" {
		return Info{}, false, nil
	}
	blockSize := int64(be.Uint32(sb[4:]))
	dblocks := int64(be.Uint64(sb[8:]))
	return Info{
		Type:  "xfs",
		Label: cString(sb[108:120]),
		UUID:  uuidString(sb[32:48]),
		Size:  dblocks * blockSize,
	}, true, nil
}

// btrfs: superblock at 64 KiB.
func probeBtrfs(r io.ReaderAt) (Info, bool, error) {
	sb, ok, err := readAt(r, 0x10000, 0x1000)
	if !ok || err != nil {
		return Info{}, false, err
	}
	if string(sb[0x40:0x48]) != "_BHRfS_M" {
		return Info{}, false, nil
	}
	return Info{
		Type:  "btrfs",
		Label: cString(sb[0x12b : 0x12b+256]),
		UUID:  uuidString(sb[0x20:0x30]),
		Size:  int64(le.Uint64(sb[0x70:])), // total_bytes
	}, true, nil
}

// iso9660: primary volume descriptor at 32 KiB.
func probeISO9660(r io.ReaderAt) (Info, bool, error) {
	vd, ok, err := readAt(r, 0x8000, 2048)
	if !ok || err != nil {
		return Info{}, false, err
	}
	if vd[0] != 1 || string(vd[1:6]) != "CD001" {
		return Info{}, false, nil
	}
	return Info{
		Type:  "iso9660",
		Label: strings.TrimRight(string(vd[40:72]), " "),
		Size:  int64(le.Uint32(vd[80:])) * int64(le.Uint16(vd[128:])),
	}, true, nil
}

// ErrNotImage is wrapped by CheckImageFile's errors about a file's content
// (no known filesystem, or shorter than its superblock says), as opposed
// to failures to read it: the init's rotation replaces such an image.
var ErrNotImage = errors.New("not a complete root image")

// notImage is a content error of CheckImageFile; its message is msg alone.
type notImage struct {
	msg string
	err error
}

func (e *notImage) Error() string        { return e.msg }
func (e *notImage) Unwrap() error        { return e.err }
func (e *notImage) Is(target error) bool { return target == ErrNotImage }

// CheckImageFile refuses a file that could not boot as a root image: not
// an ext4 or squashfs filesystem, or shorter than its superblock says (an
// interrupted copy); those errors wrap ErrNotImage. The init checks a
// staged image and the images it rotates with it, and mkimage disk every
// image it puts on a disk.
func CheckImageFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	typ, need, err := ImageSize(f)
	switch {
	case errors.Is(err, ErrUnknown) || (err != nil && typ != ""): // no superblock, or one without a size
		return &notImage{fmt.Sprintf("%s is not a root filesystem image: %v", path, err), err}
	case err != nil: // reading failed
		return fmt.Errorf("%s: %w", path, err)
	case st.Size() < need:
		return &notImage{fmt.Sprintf("%s is truncated: %d bytes, its %s superblock needs %d", path, st.Size(), typ, need), nil}
	}
	return nil
}
