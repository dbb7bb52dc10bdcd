// Package rootfs builds hnboot root images from a directory tree or a
// tarball, unprivileged (no loop devices, no mounts, no root needed to keep
// owners, devices or capabilities) and reproducibly when SOURCE_DATE_EPOCH
// is given. The source is read into a Tree (metadata in memory, contents by
// reference to local files), generalized, and written:
//
//   - ext4: mkfs.ext4 of an empty filesystem, then one debugfs session,
//     streamed, that creates every entry in a fixed order (sorted paths)
//     and sets what debugfs does not (owners, modes, mtimes, device
//     numbers, xattrs, hard link counts), with file data placed in
//     windows that keep unchanged files where they were (layout.go);
//   - squashfs: a PAX tarball of the tree piped into tar2sqfs
//     (squashfs-tools-ng).
package rootfs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/hnboot/hnboot/internal/durable"
)

// DefaultLabel is the filesystem label of root images.
const DefaultLabel = "hn-root"

const (
	mib       = 1 << 20
	blockSize = 4096
)

// Filesystem types Build writes.
const (
	Ext4     = "ext4"
	Squashfs = "squashfs"
)

// Options says what image to build.
type Options struct {
	From       string   // the source: a directory, or a .tar, .tar.gz/.tgz, .tar.zst tarball
	Dir        string   // the source directory, when From is empty (older name of From)
	Out        string   // the image to write (a temporary file beside it until complete)
	FS         string   // Ext4 (default) or Squashfs
	Size       int64    // ext4 image size in bytes; 0 computes it from the tree
	Label      string   // ext4 label; default DefaultLabel
	Compressor string   // squashfs compressor; default DefaultCompressor
	Keep       []string // paths Generalize must leave alone
	Epoch      int64    // SOURCE_DATE_EPOCH, used when HasEpoch
	HasEpoch   bool     // make the image reproducible
	Boot       BootOptions
	Log        *slog.Logger
	// Progress, when set, is called as the image fills: done of total
	// units (entries for ext4, content bytes for squashfs).
	Progress func(done, total int64)
}

// Result describes a built image.
type Result struct {
	Path          string
	FS            string
	Size          int64  // bytes of the image file
	UUID          string // "" when random (ext4 without SOURCE_DATE_EPOCH, squashfs)
	Entries       int    // entries in the image, the root included
	TreeBytes     int64  // space the tree's contents take, in 4 KiB blocks
	Changes       []Change
	KernelRelease string // "" when the tree ships no kernel
	Initramfs     int64  // bytes of /boot/initramfs, 0 without a kernel
}

// Tool finds an e2fsprogs (or other system) tool, also in the sbin
// directories an unprivileged PATH often lacks.
func Tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH, /usr/sbin or /sbin: install it (scripts/deps.sh installs e2fsprogs, dosfstools, gdisk)", name)
}

// DefaultSize is the image size for a tree taking treeBytes: 1.3× the
// tree plus 16 MiB for metadata and journal, rounded up to a MiB.
func DefaultSize(treeBytes int64) int64 {
	s := treeBytes + treeBytes*3/10 + 16*mib
	return (s + mib - 1) / mib * mib
}

// UUIDFrom makes an RFC 4122 (version 4 layout) UUID from a digest.
func UUIDFrom(b []byte) string {
	var u [16]byte
	copy(u[:], b)
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Build makes the image described by o.
func Build(ctx context.Context, o Options) (res *Result, err error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Label == "" {
		o.Label = DefaultLabel
	}
	if o.From == "" {
		o.From = o.Dir
	}
	if o.FS == "" {
		o.FS = Ext4
	}
	if o.FS != Ext4 && o.FS != Squashfs {
		return nil, fmt.Errorf("rootfs: filesystem %q: want ext4 or squashfs (--fs)", o.FS)
	}
	if len(o.Label) > 16 {
		return nil, fmt.Errorf("rootfs: label %q longer than ext4's 16 bytes", o.Label)
	}
	if o.Out == "" {
		return nil, errors.New("rootfs: no output file given (--out)")
	}
	st, err := os.Stat(o.From)
	if err != nil {
		return nil, fmt.Errorf("rootfs: source: %w (--from wants a directory or a .tar, .tar.gz, .tar.zst)", err)
	}
	tarball := !st.IsDir()
	if tarball && !IsTarball(o.From) {
		return nil, fmt.Errorf("rootfs: source %s is not a directory nor a tarball (.tar, .tar.gz, .tgz, .tar.zst) (--from wants a directory or a tarball)", o.From)
	}
	// Staging (unpacked tarball contents, the initramfs, debugfs input)
	// lives beside the output: same filesystem, room for the image anyway.
	start := time.Now()
	stage, err := os.MkdirTemp(filepath.Dir(o.Out), ".hnboot-rootfs-")
	if err != nil {
		return nil, fmt.Errorf("rootfs: staging directory: %w", err)
	}
	defer os.RemoveAll(stage)
	warn := func(p, msg string) { log.Warn(msg, "path", p) }

	var t *Tree
	local := o.From // where tree paths are on disk, for the kernel modules
	if tarball {
		log.Info("reading tarball", "file", o.From)
		local = filepath.Join(stage, "tree")
		if t, err = ReadTar(o.From, local, warn); err != nil {
			return nil, fmt.Errorf("rootfs: %w", err)
		}
	} else {
		log.Info("reading tree", "dir", o.From)
		if t, err = ReadDir(o.From, warn); err != nil {
			return nil, fmt.Errorf("rootfs: %w", err)
		}
		if os.Getuid() != 0 {
			if n := foreign(t); n > 0 {
				log.Warn("files keep their owners in the image, and some are not owned by root; build from a tree unpacked as root, or from a tarball, for a root filesystem", "entries", n, "dir", o.From)
			}
		}
	}
	res = &Result{Path: o.Out, FS: o.FS}
	res.Changes = Generalize(t, o.Keep)
	for _, c := range res.Changes {
		log.Info("generalized: "+c.Action, "path", c.Path)
	}
	if o.HasEpoch {
		ClampTimes(t, o.Epoch)
	}
	if !o.Boot.Disabled {
		k, err := addBootFiles(t, local, stage, o, log)
		if err != nil {
			return nil, fmt.Errorf("rootfs: %w", err)
		}
		res.KernelRelease, res.Initramfs = k.release, k.initramfs
	}
	if err := t.Finish(); err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	res.Entries, res.TreeBytes = t.Len(), t.ContentBytes()
	log.Info("tree ready", "entries", res.Entries, "content_bytes", res.TreeBytes, "took", time.Since(start).Round(time.Millisecond))
	start = time.Now()

	// The tools write the image by path into durable's temporary file
	// beside Out (mkfs.ext4, debugfs and tar2sqfs all open it in place, so
	// the inode durable fsyncs is the one they wrote); Commit renames it
	// over Out: nothing appears under Out until the image is complete.
	out, err := durable.Create(o.Out, 0o644)
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	defer out.Cleanup()
	tmp := out.Name()
	switch o.FS {
	case Ext4:
		size := o.Size
		if size == 0 {
			size = DefaultSize(res.TreeBytes)
		}
		size = size / blockSize * blockSize
		if size < 2*mib {
			return nil, fmt.Errorf("rootfs: size %d bytes too small for ext4 (want at least 2M)", size)
		}
		if size < res.TreeBytes {
			return nil, fmt.Errorf("rootfs: size %d MiB is smaller than the tree's %d MiB: give a larger --size, or omit --size", size/mib, res.TreeBytes/mib+1)
		}
		var uuid, seed string
		if o.HasEpoch {
			sum := sha256.Sum256(fmt.Appendf(nil, "hnboot rootfs %d %s %x", o.Epoch, o.Label, t.Digest()))
			uuid, seed = UUIDFrom(sum[:16]), UUIDFrom(sum[16:])
		}
		res.UUID = uuid
		log.Info("making ext4 image", "out", tmp, "size", size, "entries", res.Entries)
		if err := writeExt4(ctx, t, tmp, stage, &o, uuid, seed, size, o.Progress); err != nil {
			return nil, fmt.Errorf("rootfs: %w", err)
		}
	case Squashfs:
		log.Info("making squashfs image", "out", tmp, "entries", res.Entries)
		if err := writeSquashfs(ctx, t, tmp, &o, o.Progress); err != nil {
			return nil, fmt.Errorf("rootfs: %w", err)
		}
	}
	log.Info("image written", "fs", o.FS, "took", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	fi, err := out.Stat()
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	res.Size = fi.Size()
	if err := out.Commit(); err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	log.Info("image synced", "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// ClampTimes sets every mtime later than epoch to epoch (and negative
// ones to 0), as reproducible builds do with SOURCE_DATE_EPOCH.
func ClampTimes(t *Tree, epoch int64) {
	for _, e := range t.entries {
		e.MTime = min(max(e.MTime, 0), epoch)
	}
}

func foreign(t *Tree) int {
	n := 0
	for _, e := range t.entries {
		if e.UID != 0 {
			n++
		}
	}
	return n
}

// Digest is a digest of the tree's metadata (not its contents), stable
// across copies of the same tree.
func (t *Tree) Digest() [32]byte {
	h := sha256.New()
	t.Walk(func(e *Entry) error {
		fmt.Fprintf(h, "%q %o %d:%d %d %d %q %q %d,%d", e.Path, e.UnixMode(), e.UID, e.GID, e.MTime, e.Size, e.Target, e.Link, e.Major, e.Minor)
		for _, x := range e.Xattrs {
			fmt.Fprintf(h, " %q=%x", x.Name, x.Value)
		}
		h.Write([]byte{'\n'})
		return nil
	})
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}
