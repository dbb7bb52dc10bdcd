// Package rootfs builds hnboot root images: an ext4 filesystem image of a
// directory tree, made unprivileged (no loop devices, no mount) with
// e2fsprogs' mkfs.ext4 -d on a regular file, reproducibly when
// SOURCE_DATE_EPOCH is given.
package rootfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DefaultLabel is the filesystem label of root images.
const DefaultLabel = "hn-root"

const (
	mib       = 1 << 20
	blockSize = 4096
)

// Options says what image to build.
type Options struct {
	Dir      string // the tree to copy
	Out      string // the image to write (Out.tmp, then renamed)
	Size     int64  // image size in bytes; 0 computes it from the tree
	Label    string // filesystem label; default DefaultLabel
	Epoch    int64  // SOURCE_DATE_EPOCH, used when HasEpoch
	HasEpoch bool   // make the image reproducible
	Log      *slog.Logger
}

// Result describes a built image.
type Result struct {
	Path      string
	Size      int64
	UUID      string // "" when mkfs.ext4 chose a random one
	Entries   int    // files, directories and links in the tree
	TreeBytes int64  // space the tree's contents take, in 4 KiB blocks
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

// tree is what a walk of the source learns.
type tree struct {
	entries int
	bytes   int64
	digest  [32]byte
	foreign int // entries not owned by root
}

func scan(dir string, epoch int64, hasEpoch bool) (*tree, error) {
	t := &tree{}
	h := sha256.New()
	seen := map[uint64]bool{} // hard-linked inodes count once
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		t.entries++
		mt := info.ModTime().Unix()
		if hasEpoch && mt > epoch {
			mt = epoch
		}
		fmt.Fprintf(h, "%q %o %d %d", rel, info.Mode(), info.Size(), mt)
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			fmt.Fprintf(h, " %d:%d", st.Uid, st.Gid)
			if st.Uid != 0 {
				t.foreign++
			}
			if info.Mode().IsRegular() && st.Nlink > 1 {
				if seen[st.Ino] {
					h.Write([]byte("\n"))
					return nil
				}
				seen[st.Ino] = true
			}
		}
		switch {
		case info.Mode().IsRegular():
			t.bytes += (info.Size() + blockSize - 1) / blockSize * blockSize
		case info.IsDir():
			t.bytes += blockSize
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, " -> %q", target)
			if len(target) >= 60 {
				t.bytes += blockSize
			}
		}
		h.Write([]byte("\n"))
		return nil
	})
	if err != nil {
		return nil, err
	}
	copy(t.digest[:], h.Sum(nil))
	return t, nil
}

// DefaultSize is the image size for a tree taking treeBytes: 1.3× the
// tree plus 16 MiB for metadata and journal, rounded up to a MiB.
func DefaultSize(treeBytes int64) int64 {
	s := treeBytes + treeBytes*3/10 + 16*mib
	return (s + mib - 1) / mib * mib
}

// uuidFrom makes an RFC 4122 (version 4 layout) UUID from a digest.
func uuidFrom(b []byte) string {
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
	if len(o.Label) > 16 {
		return nil, fmt.Errorf("rootfs: label %q longer than ext4's 16 bytes", o.Label)
	}
	if o.Out == "" {
		return nil, errors.New("rootfs: no output file given (--out)")
	}
	st, err := os.Stat(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("rootfs: source tree: %w (--from wants a directory)", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("rootfs: source tree %s is not a directory (--from wants a directory)", o.Dir)
	}
	mkfs, err := Tool("mkfs.ext4")
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}

	log.Info("scanning source tree", "dir", o.Dir)
	t, err := scan(o.Dir, o.Epoch, o.HasEpoch)
	if err != nil {
		return nil, fmt.Errorf("rootfs: scan %w", err)
	}
	if t.foreign > 0 && os.Getuid() != 0 {
		log.Warn("files keep their owners in the image, and some are not owned by root; build from a tree unpacked as root for a root filesystem", "entries", t.foreign, "dir", o.Dir)
	}
	size := o.Size
	if size == 0 {
		size = DefaultSize(t.bytes)
	}
	size = size / blockSize * blockSize
	if size < 2*mib {
		return nil, fmt.Errorf("rootfs: size %d bytes too small for ext4 (want at least 2M)", size)
	}
	res = &Result{Path: o.Out, Size: size, Entries: t.entries, TreeBytes: t.bytes}

	args := []string{"-q", "-F", "-t", "ext4", "-b", strconv.Itoa(blockSize), "-m", "0", "-L", o.Label}
	// The default of one inode per 16 KiB can be too few for trees of
	// many small files.
	if need := int64(t.entries)*5/4 + 256; need > size/16384 {
		args = append(args, "-N", strconv.FormatInt(need, 10))
	}
	env := os.Environ()
	if o.HasEpoch {
		sum := sha256.Sum256(fmt.Appendf(nil, "hnboot rootfs %d %s %x", o.Epoch, o.Label, t.digest))
		res.UUID = uuidFrom(sum[:16])
		seed := uuidFrom(sum[16:])
		args = append(args, "-U", res.UUID, "-E", "hash_seed="+seed)
		env = append(env, "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(o.Epoch, 10))
	}
	tmp := o.Out + ".tmp"
	args = append(args, "-d", o.Dir, tmp)

	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("rootfs: size %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}

	log.Info("making ext4 image", "out", tmp, "size", size, "entries", t.entries)
	if out, err := run(ctx, env, mkfs, args...); err != nil {
		hint := ""
		if strings.Contains(out, "No space left") || strings.Contains(out, "Could not allocate") || strings.Contains(out, "ould not allocate") {
			hint = fmt.Sprintf(" (the tree needs about %d MiB plus metadata: give a larger --size, or omit --size)", t.bytes/mib+1)
		}
		return nil, fmt.Errorf("rootfs: mkfs.ext4 -d %s %s: %w: %s%s", o.Dir, tmp, err, strings.TrimSpace(out), hint)
	}
	if o.HasEpoch {
		log.Info("normalizing inode times", "epoch", o.Epoch)
		if err := normalizeTimes(ctx, env, o.Dir, tmp, o.Epoch, log); err != nil {
			return nil, err
		}
	}
	if err := syncFile(tmp); err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	if err := os.Rename(tmp, o.Out); err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	return res, nil
}

// normalizeTimes sets every inode's times to its mtime clamped to epoch:
// mkfs.ext4 -d copies atime and ctime from the source, which differ
// between two copies of the same tree.
func normalizeTimes(ctx context.Context, env []string, dir, img string, epoch int64, log *slog.Logger) error {
	debugfs, err := Tool("debugfs")
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	var cmds bytes.Buffer
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := "/" + filepath.ToSlash(rel)
		if rel == "." {
			name = "/"
		}
		if strings.ContainsAny(name, "\"\n") {
			log.Warn("path not representable in debugfs, times left as copied", "path", p)
			return nil
		}
		mt := info.ModTime().Unix()
		if mt > epoch {
			mt = epoch
		}
		if mt < 0 {
			mt = 0
		}
		for _, field := range []string{"atime", "ctime", "mtime"} {
			fmt.Fprintf(&cmds, "sif \"%s\" %s @%d\n", name, field, mt)
		}
		fmt.Fprintf(&cmds, "sif \"%s\" crtime @%d\n", name, epoch)
		return nil
	})
	if err != nil {
		return fmt.Errorf("rootfs: scan %w", err)
	}
	cf, err := os.CreateTemp("", "hnboot-debugfs-*")
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer os.Remove(cf.Name())
	if _, err := cf.Write(cmds.Bytes()); err != nil {
		cf.Close()
		return fmt.Errorf("rootfs: %w", err)
	}
	if err := cf.Close(); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	out, err := run(ctx, env, debugfs, "-w", "-f", cf.Name(), img)
	if err != nil {
		return fmt.Errorf("rootfs: debugfs -w %s: %w: %s", img, err, strings.TrimSpace(out))
	}
	// debugfs reports command errors on stderr but exits 0.
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "sif:") || strings.Contains(l, "not found") {
			return fmt.Errorf("rootfs: debugfs -w %s: %s", img, l)
		}
	}
	return nil
}

func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", p, err)
	}
	return f.Close()
}
