// Package durable makes file changes that survive a power cut: each
// function returns only once what it changed, and the directory entry
// naming it, are on disk. It is the one atomic writer of the project
// (hostpart state, manifests, images, archives and disks).
//
// Atomicity (never a half-written file under the final name) comes from
// github.com/google/renameio/v2: a temporary file of a name of its own in
// the same directory, fsynced, then renamed over the destination.
// Durability of the rename itself (the directory entry) needs an fsync of
// the directory, which renameio leaves to its caller; this package adds it.
//
// Errors are *os.PathError naming the operation and the full path.
package durable

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// SyncDir fsyncs a directory, making the entries created, renamed or
// removed in it durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return wrap("fsync directory", dir, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return wrap("fsync directory", dir, err)
}

// WriteFile replaces path with data, atomically and durably, with mode
// perm (not reduced by the umask). Concurrent writers of the same path
// each use a temporary name of their own; the last rename wins.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := Create(path, perm)
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := f.Write(data); err != nil {
		return wrap("write", path, err)
	}
	return f.Commit()
}

// File is a file being written under a temporary name; Commit puts it in
// place, Cleanup (safe to defer) removes it if Commit was not reached.
type File struct {
	*renameio.PendingFile
	path string
}

// Create starts writing path. Nothing appears under path until Commit.
func Create(path string, perm os.FileMode) (*File, error) {
	dir := filepath.Dir(path)
	pf, err := renameio.NewPendingFile(path, renameio.WithTempDir(dir), renameio.WithPermissions(perm), renameio.IgnoreUmask())
	if err != nil {
		return nil, wrap("create", path, err)
	}
	return &File{PendingFile: pf, path: path}, nil
}

// Commit fsyncs the file, renames it over the destination and fsyncs the
// directory.
func (f *File) Commit() error {
	if err := f.CloseAtomicallyReplace(); err != nil {
		return wrap("write", f.path, err)
	}
	return SyncDir(filepath.Dir(f.path))
}

// Cleanup removes the temporary file unless Commit succeeded.
func (f *File) Cleanup() { f.PendingFile.Cleanup() }

// Rename renames oldpath to newpath (replacing it) and fsyncs the
// directories of both.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return wrap("rename", oldpath+" -> "+newpath, err)
	}
	if err := SyncDir(filepath.Dir(newpath)); err != nil {
		return err
	}
	if filepath.Dir(oldpath) != filepath.Dir(newpath) {
		return SyncDir(filepath.Dir(oldpath))
	}
	return nil
}

// Link hard-links oldpath as newpath (which must not exist) and fsyncs
// newpath's directory.
func Link(oldpath, newpath string) error {
	if err := os.Link(oldpath, newpath); err != nil {
		return wrap("link", oldpath+" -> "+newpath, err)
	}
	return SyncDir(filepath.Dir(newpath))
}

// Remove removes path; a missing file is not an error. The directory is
// fsynced either way: an earlier removal may not be durable yet if that
// boot lost power before its directory fsync. A missing directory is not
// an error either.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return wrap("remove", path, err)
	}
	err := SyncDir(filepath.Dir(path))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// wrap returns err as an *os.PathError naming op and path, dropping the
// os package's own wrapper so the path is not printed twice.
func wrap(op, path string, err error) error {
	if err == nil {
		return nil
	}
	switch e := err.(type) {
	case *os.PathError:
		err = e.Err
	case *os.LinkError:
		err = e.Err
	case *os.SyscallError:
		err = e.Err
	}
	return &os.PathError{Op: op, Path: path, Err: err}
}
