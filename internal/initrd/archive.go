// Package initrd writes hnboot's initramfs: a zstd-compressed newc cpio
// archive with the init, a busybox for the rescue shell and the kernel
// modules the init loads, with a generated modules.dep.
package initrd

import (
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"
)

// Archive writes a deterministic newc archive: every entry owned by 0:0,
// with one modification time, inode numbers in write order, and parent
// directories created on demand.
type Archive struct {
	w     *cpio.Writer
	mtime time.Time
	ino   int64
	dirs  map[string]bool
}

// NewArchive returns an Archive writing to w with all times set to mtime.
func NewArchive(w io.Writer, mtime time.Time) *Archive {
	return &Archive{w: cpio.NewWriter(w), mtime: mtime, dirs: map[string]bool{"": true, ".": true}}
}

// clean turns "/lib/x" into "lib/x", the form the kernel's unpacker and
// most tools use.
func clean(name string) string { return strings.TrimPrefix(path.Clean("/"+name), "/") }

func (a *Archive) header(name string, mode cpio.FileMode, size int64) *cpio.Header {
	a.ino++
	links := 1
	if mode&cpio.ModeType == cpio.TypeDir {
		links = 2
	}
	return &cpio.Header{Name: name, Mode: mode, Size: size, ModTime: a.mtime, Inode: a.ino, Links: links}
}

func (a *Archive) parents(name string) error {
	dir := path.Dir(name)
	if a.dirs[dir] {
		return nil
	}
	return a.Dir(dir, 0o755)
}

// Dir adds a directory (and its missing parents).
func (a *Archive) Dir(name string, perm cpio.FileMode) error {
	name = clean(name)
	if a.dirs[name] {
		return nil
	}
	if err := a.parents(name); err != nil {
		return err
	}
	a.dirs[name] = true
	if err := a.w.WriteHeader(a.header(name, cpio.TypeDir|perm, 0)); err != nil {
		return fmt.Errorf("cpio: write %s: %w", name, err)
	}
	return nil
}

// File adds a regular file with the given contents.
func (a *Archive) File(name string, perm cpio.FileMode, data []byte) error {
	name = clean(name)
	if err := a.parents(name); err != nil {
		return err
	}
	if err := a.w.WriteHeader(a.header(name, cpio.TypeReg|perm, int64(len(data)))); err != nil {
		return fmt.Errorf("cpio: write %s: %w", name, err)
	}
	if _, err := a.w.Write(data); err != nil {
		return fmt.Errorf("cpio: write %s: %w", name, err)
	}
	return nil
}

// Symlink adds a symbolic link name → target. The library ignores
// Linkname on write: the target is the entry's body.
func (a *Archive) Symlink(name, target string) error {
	name = clean(name)
	if err := a.parents(name); err != nil {
		return err
	}
	if err := a.w.WriteHeader(a.header(name, cpio.TypeSymlink|0o777, int64(len(target)))); err != nil {
		return fmt.Errorf("cpio: write %s: %w", name, err)
	}
	if _, err := io.WriteString(a.w, target); err != nil {
		return fmt.Errorf("cpio: write %s: %w", name, err)
	}
	return nil
}

// Close writes the trailer.
func (a *Archive) Close() error {
	if err := a.w.Close(); err != nil {
		return fmt.Errorf("cpio: close: %w", err)
	}
	return nil
}
