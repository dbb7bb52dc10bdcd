package rootfs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// ReadDir reads the tree under dir: metadata (owners, modes, times, device
// numbers, xattrs, hard links) from lstat and the xattr calls, content by
// reference to the files themselves. Sockets are skipped (tar and images
// of a root do not carry them); each skip is reported by warn.
func ReadDir(dir string, warn func(path, msg string)) (*Tree, error) {
	t := NewTree()
	type key struct{ dev, ino uint64 }
	inodes := map[key]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("read tree: %w", err)
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("read tree: %w", err)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			rel = ""
		}
		rel = filepath.ToSlash(rel)
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("read tree: %s: no stat data", p)
		}
		e := &Entry{Path: rel, Mode: info.Mode(), UID: int(st.Uid), GID: int(st.Gid), MTime: st.Mtim.Sec}
		switch {
		case info.Mode().IsRegular():
			k := key{uint64(st.Dev), st.Ino}
			if first, ok := inodes[k]; ok && st.Nlink > 1 {
				t.Add(&Entry{Path: rel, Link: first, Mode: e.Mode})
				return nil
			}
			inodes[k] = rel
			e.Size, e.Data = info.Size(), p
			e.dataMode = e.UnixMode()
		case info.Mode()&fs.ModeSymlink != 0:
			if e.Target, err = os.Readlink(p); err != nil {
				return fmt.Errorf("read tree: %w", err)
			}
		case info.Mode()&fs.ModeDevice != 0:
			e.Major, e.Minor = unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
		case info.Mode()&fs.ModeSocket != 0:
			warn(p, "socket skipped")
			return nil
		}
		if e.Xattrs, err = readXattrs(p); err != nil {
			return fmt.Errorf("read tree: %w", err)
		}
		if rel == "" {
			*t.Get("") = *e
			return nil
		}
		t.Add(e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, t.Finish()
}

func readXattrs(p string) ([]Xattr, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = unix.Llistxattr(p, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Llistxattr(p, buf)
		}
	}
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	var xs []Xattr
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || strings.HasPrefix(name, "system.") {
			// system.* are ACLs and kernel-internal names the tools map
			// themselves; posix ACLs are not part of a root image here.
			continue
		}
		sz, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", p, name, err)
		}
		v := make([]byte, sz)
		if sz > 0 {
			if sz, err = unix.Lgetxattr(p, name, v); err != nil {
				return nil, fmt.Errorf("getxattr %s %s: %w", p, name, err)
			}
		}
		xs = append(xs, Xattr{Name: name, Value: v[:sz]})
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i].Name < xs[j].Name })
	return xs, nil
}

// IsTarball says whether p names a tarball mkimage can read, by its name.
func IsTarball(p string) bool {
	for _, s := range []string{".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tzst"} {
		if strings.HasSuffix(p, s) {
			return true
		}
	}
	return false
}

// openTar opens a tarball, decompressing gzip or zstd by their magic
// numbers (the name is only a hint).
func openTar(p string) (io.Reader, func() error, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(f, 1<<20)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: gzip: %w", p, err)
		}
		return zr, f.Close, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: zstd: %w", p, err)
		}
		return zr, func() error { zr.Close(); return f.Close() }, nil
	}
	return br, f.Close, nil
}

// ReadTar reads a tarball (.tar, .tar.gz, .tar.zst) into a tree. Regular
// file contents are unpacked into stage (a directory the caller removes),
// at their own paths, with runs of zero blocks left as holes; nothing else
// is created on disk, so owners, modes, devices and xattrs need no
// privileges. Owners are the numeric uid/gid of the archive.
func ReadTar(p, stage string, warn func(path, msg string)) (*Tree, error) {
	r, closeFn, err := openTar(p)
	if err != nil {
		return nil, fmt.Errorf("read tarball: %w", err)
	}
	defer closeFn()
	t := NewTree()
	tr := tar.NewReader(r)
	buf := make([]byte, 1<<20)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read tarball %s: %w", p, err)
		}
		rel, err := CleanPath(h.Name)
		if err != nil {
			return nil, fmt.Errorf("tarball %s: %w", p, err)
		}
		e := &Entry{Path: rel, Mode: h.FileInfo().Mode(), UID: h.Uid, GID: h.Gid, MTime: h.ModTime.Unix()}
		for k, v := range h.PAXRecords {
			for _, prefix := range []string{"SCHILY.xattr.", "LIBARCHIVE.xattr."} {
				if name, ok := strings.CutPrefix(k, prefix); ok && !strings.HasPrefix(name, "system.") {
					e.Xattrs = append(e.Xattrs, Xattr{Name: name, Value: []byte(v)})
				}
			}
		}
		sort.Slice(e.Xattrs, func(i, j int) bool { return e.Xattrs[i].Name < e.Xattrs[j].Name })
		switch h.Typeflag {
		case tar.TypeDir:
		case tar.TypeReg, tar.TypeGNUSparse:
			dst := filepath.Join(stage, filepath.FromSlash(rel))
			if e.Size, err = stageFile(dst, tr, buf); err != nil {
				return nil, fmt.Errorf("tarball %s: unpack /%s: %w", p, rel, err)
			}
			e.Data, e.dataMode = dst, 0o100600
		case tar.TypeLink:
			target, err := CleanPath(h.Linkname)
			if err != nil {
				return nil, fmt.Errorf("tarball %s: /%s: %w", p, rel, err)
			}
			e = &Entry{Path: rel, Link: target}
		case tar.TypeSymlink:
			// Linux symlinks are always 0777, whatever the archive says.
			e.Target, e.Mode = h.Linkname, fs.ModeSymlink|0o777
		case tar.TypeChar, tar.TypeBlock:
			e.Major, e.Minor = uint32(h.Devmajor), uint32(h.Devminor)
		case tar.TypeFifo:
		default:
			warn("/"+rel, fmt.Sprintf("tar entry type %q skipped", h.Typeflag))
			continue
		}
		if rel == "" {
			if e.Mode.IsDir() {
				*t.Get("") = *e
			}
			continue
		}
		t.Add(e)
	}
	return t, t.Finish()
}

// stageFile writes r to dst, seeking over 4 KiB blocks of zeros so the
// staged copy stays sparse, and returns the length.
func stageFile(dst string, r io.Reader, buf []byte) (int64, error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	var n int64
	zero := make([]byte, blockSize)
	for {
		m, rerr := io.ReadFull(r, buf)
		for off := 0; off < m; off += blockSize {
			end := min(off+blockSize, m)
			chunk := buf[off:end]
			if len(chunk) == blockSize && bytes.Equal(chunk, zero) {
				continue
			}
			if _, err := f.WriteAt(chunk, n+int64(off)); err != nil {
				f.Close()
				return 0, err
			}
		}
		n += int64(m)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			f.Close()
			return 0, rerr
		}
	}
	if err := f.Truncate(n); err != nil {
		f.Close()
		return 0, err
	}
	return n, f.Close()
}
