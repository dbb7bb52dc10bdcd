package rotate

import (
	"errors"
	"os"
	"path/filepath"
)

// OSFS returns the real FS rooted at dir (the hostpart mount point). Every
// mutating operation fsyncs what it changed and the directory holding it
// before returning; WriteFile writes a name+".tmp*" file of its own, fsyncs it and renames it
// into place, creating missing directories (.hnboot/) on the way. Errors are
// *os.PathError with the operation and the full path(s).
func OSFS(dir string) FS {
	return &osFS{dir: filepath.Clean(dir)}
}

type osFS struct {
	dir string
}

func (o *osFS) path(op, name string) (string, error) {
	if !filepath.IsLocal(filepath.FromSlash(name)) {
		return "", &os.PathError{Op: op, Path: name, Err: errors.New("name is not inside the hostpart root")}
	}
	return filepath.Join(o.dir, filepath.FromSlash(name)), nil
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

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (o *osFS) Exists(name string) (bool, error) {
	p, err := o.path("exists", name)
	if err != nil {
		return false, err
	}
	_, err = os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, wrap("exists", p, err)
}

func (o *osFS) ReadFile(name string) ([]byte, error) {
	p, err := o.path("read", name)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	return b, wrap("read", p, err)
}

// mkdirs creates dir and its missing parents below o.dir, fsyncing each
// parent so the new entries are durable.
func (o *osFS) mkdirs(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if dir == o.dir || filepath.Dir(dir) == dir {
		return wrap("mkdir", dir, os.ErrNotExist)
	}
	if err := o.mkdirs(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return wrap("mkdir", dir, err)
	}
	return wrap("fsync directory", filepath.Dir(dir), syncDir(filepath.Dir(dir)))
}

func (o *osFS) WriteFile(name string, data []byte) error {
	p, err := o.path("write", name)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if err := o.mkdirs(dir); err != nil {
		return err
	}
	// A temporary name of its own: the agent and `imaged status` may write
	// the same file at once on a running host, and a shared name.tmp would
	// be renamed away under one of them.
	f, err := os.CreateTemp(dir, filepath.Base(p)+".tmp*")
	if err != nil {
		return wrap("write", p, err)
	}
	tmp := f.Name()
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(tmp)
		return wrap("write", tmp, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return wrap("write", p, err)
	}
	return wrap("fsync directory", dir, syncDir(dir))
}

func (o *osFS) Rename(oldname, newname string) error {
	po, err := o.path("rename", oldname)
	if err != nil {
		return err
	}
	pn, err := o.path("rename", newname)
	if err != nil {
		return err
	}
	if err := os.Rename(po, pn); err != nil {
		return wrap("rename", po+" -> "+pn, err)
	}
	if err := syncDir(filepath.Dir(pn)); err != nil {
		return wrap("fsync directory", filepath.Dir(pn), err)
	}
	if filepath.Dir(po) != filepath.Dir(pn) {
		return wrap("fsync directory", filepath.Dir(po), syncDir(filepath.Dir(po)))
	}
	return nil
}

func (o *osFS) Link(oldname, newname string) error {
	po, err := o.path("link", oldname)
	if err != nil {
		return err
	}
	pn, err := o.path("link", newname)
	if err != nil {
		return err
	}
	if err := os.Link(po, pn); err != nil {
		return wrap("link", po+" -> "+pn, err)
	}
	return wrap("fsync directory", filepath.Dir(pn), syncDir(filepath.Dir(pn)))
}

func (o *osFS) Remove(name string) error {
	p, err := o.path("remove", name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return wrap("remove", p, err)
	}
	// Sync even if it was already gone: an earlier removal may not be
	// durable yet if that boot lost power before its directory fsync.
	err = syncDir(filepath.Dir(p))
	if errors.Is(err, os.ErrNotExist) {
		return nil // the directory itself is missing (.hnboot/ never made)
	}
	return wrap("fsync directory", filepath.Dir(p), err)
}

func (o *osFS) SameFile(a, b string) (bool, error) {
	pa, err := o.path("samefile", a)
	if err != nil {
		return false, err
	}
	pb, err := o.path("samefile", b)
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
