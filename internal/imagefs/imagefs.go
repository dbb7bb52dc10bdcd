// Package imagefs reads the files inside a root image (ext4 or squashfs)
// without mounting it, through go-diskfs: the boot files the server
// extracts, the package database mkimage records, the trees mkimage diff
// compares.
package imagefs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
)

// Image is an open image; Close it.
type Image struct {
	filesystem.FileSystem
	close func()
}

func (im *Image) Close() error {
	im.close()
	return nil
}

// Open opens a whole-disk ext4 or squashfs image read-only.
// diskfs.GetFilesystem does not recognise every squashfs image (small
// ones), so squashfs is also tried directly. Paths inside are relative
// ("boot/vmlinuz").
func Open(image string) (*Image, error) {
	d, err := diskfs.Open(image, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", image, err)
	}
	if fsys, err := d.GetFilesystem(0); err == nil {
		return &Image{fsys, func() { d.Close() }}, nil
	}
	d.Close()
	f, err := os.Open(image)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	fsys, err := squashfs.Read(file.New(f, true), st.Size(), 0, 0)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: neither ext4 nor squashfs: %w", image, err)
	}
	return &Image{fsys, func() { f.Close() }}, nil
}

// Exists reports whether path (relative) is in fsys. go-diskfs's
// squashfs reports a missing directory as an error of its own, not
// fs.ErrNotExist, so each parent is listed instead.
func Exists(fsys fs.ReadDirFS, path string) (bool, error) {
	dir := "."
	for _, name := range strings.Split(path, "/") {
		ents, err := fsys.ReadDir(dir)
		if err != nil {
			return false, fmt.Errorf("%s: %w", dir, err)
		}
		found := false
		for _, e := range ents {
			if e.Name() == name {
				found = true
				break
			}
		}
		if !found {
			return false, nil
		}
		if dir == "." {
			dir = name
		} else {
			dir += "/" + name
		}
	}
	return true, nil
}

// Entry is one file of a tree, as a diff compares it.
type Entry struct {
	Mode fs.FileMode
	Size int64
	Sum  string // sha256 of a regular file's content
}

// Tree lists every file of fsys (paths relative, "etc/passwd") with its
// mode, size and, for regular files, sha256.
func Tree(fsys fs.FS) (map[string]Entry, error) {
	out := map[string]Entry{}
	buf := make([]byte, 1<<20)
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." || d.Name() == "lost+found" {
			if d.IsDir() && d.Name() == "lost+found" {
				return fs.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		e := Entry{Mode: info.Mode(), Size: info.Size()}
		if info.Mode().IsDir() {
			e.Size = 0
		}
		if info.Mode().IsRegular() && info.Size() > 0 {
			f, err := fsys.Open(p)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			h := sha256.New()
			_, err = io.CopyBuffer(h, f, buf)
			f.Close()
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("%s: %w", p, err)
			}
			e.Sum = hex.EncodeToString(h.Sum(nil))
		}
		out[p] = e
		return nil
	})
	return out, err
}
