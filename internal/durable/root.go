package durable

import (
	"errors"
	"os"
	"path/filepath"
)

// Root is a directory tree (a hostpart) whose files are changed durably.
// Names are relative to Dir, use forward slashes and must stay inside it.
// It is the real filesystem behind the init's rotation (rotate.FS) and the
// agent's and host commands' writes to hostpart.
type Root string

func (r Root) path(op, name string) (string, error) {
	if !filepath.IsLocal(filepath.FromSlash(name)) {
		return "", &os.PathError{Op: op, Path: name, Err: errors.New("name is not inside the hostpart root " + string(r))}
	}
	return filepath.Join(string(r), filepath.FromSlash(name)), nil
}

// Path is the full path of name.
func (r Root) Path(name string) string { return filepath.Join(string(r), filepath.FromSlash(name)) }

// Exists reports whether name exists (a dangling symlink counts).
func (r Root) Exists(name string) (bool, error) {
	p, err := r.path("exists", name)
	if err != nil {
		return false, err
	}
	_, err = os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, wrap("exists", p, err)
}

// ReadFile reads name.
func (r Root) ReadFile(name string) ([]byte, error) {
	p, err := r.path("read", name)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	return b, wrap("read", p, err)
}

// WriteFile replaces name with data (mode 0644), creating missing
// directories below the root (.hnboot/) durably on the way.
func (r Root) WriteFile(name string, data []byte) error {
	p, err := r.path("write", name)
	if err != nil {
		return err
	}
	if err := r.mkdirs(filepath.Dir(p)); err != nil {
		return err
	}
	return WriteFile(p, data, 0o644)
}

// mkdirs is MkdirAll that refuses to create the root itself: a hostpart
// that is not mounted must not be replaced by an empty directory.
func (r Root) mkdirs(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if dir == filepath.Clean(string(r)) || filepath.Dir(dir) == dir {
		return wrap("mkdir", dir, os.ErrNotExist)
	}
	if err := r.mkdirs(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return wrap("mkdir", dir, err)
	}
	return SyncDir(filepath.Dir(dir))
}

// Rename renames oldname to newname, replacing it.
func (r Root) Rename(oldname, newname string) error {
	po, err := r.path("rename", oldname)
	if err != nil {
		return err
	}
	pn, err := r.path("rename", newname)
	if err != nil {
		return err
	}
	return Rename(po, pn)
}

// Link hard-links oldname as newname, which must not exist.
func (r Root) Link(oldname, newname string) error {
	po, err := r.path("link", oldname)
	if err != nil {
		return err
	}
	pn, err := r.path("link", newname)
	if err != nil {
		return err
	}
	return Link(po, pn)
}

// Remove removes name; a missing file is not an error.
func (r Root) Remove(name string) error {
	p, err := r.path("remove", name)
	if err != nil {
		return err
	}
	return Remove(p)
}

// SameFile reports whether a and b are the same inode; false if either is
// missing.
func (r Root) SameFile(a, b string) (bool, error) {
	pa, err := r.path("samefile", a)
	if err != nil {
		return false, err
	}
	pb, err := r.path("samefile", b)
	if err != nil {
		return false, err
	}
	fa, err := os.Lstat(pa)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, wrap("samefile", pa, err)
	}
	fb, err := os.Lstat(pb)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, wrap("samefile", pb, err)
	}
	return os.SameFile(fa, fb), nil
}
