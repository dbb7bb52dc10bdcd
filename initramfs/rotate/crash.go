package rotate

import (
	"errors"
	"sync"
)

// ErrPowerCut is returned by the FS of CrashAfter once the power is "cut".
var ErrPowerCut = errors.New("rotate: simulated power cut")

// CrashAfter wraps fsys so that after n mutating operations (WriteFile,
// Rename, Link, Remove; each counts when issued, even a Remove of a missing
// file) every later operation, reads included, returns ErrPowerCut without
// touching fsys. onCut, if not nil, is called once, when the first operation
// is refused (the init's hn.crashtest=N hard-resets there). n = 0 refuses
// the very first operation; a negative n never cuts.
func CrashAfter(fsys FS, n int, onCut func()) FS {
	return &crashFS{fs: fsys, left: n, onCut: onCut}
}

type crashFS struct {
	fs    FS
	mu    sync.Mutex
	left  int // mutating operations still allowed; < 0: unlimited
	cut   bool
	onCut func()
}

// allow reports whether the next operation may run.
func (c *crashFS) allow(mutating bool) error {
	c.mu.Lock()
	if !c.cut && c.left != 0 {
		if mutating && c.left > 0 {
			c.left--
		}
		c.mu.Unlock()
		return nil
	}
	first := !c.cut
	c.cut = true
	c.mu.Unlock()
	if first && c.onCut != nil {
		c.onCut()
	}
	return ErrPowerCut
}

func (c *crashFS) Exists(name string) (bool, error) {
	if err := c.allow(false); err != nil {
		return false, err
	}
	return c.fs.Exists(name)
}

func (c *crashFS) ReadFile(name string) ([]byte, error) {
	if err := c.allow(false); err != nil {
		return nil, err
	}
	return c.fs.ReadFile(name)
}

func (c *crashFS) SameFile(a, b string) (bool, error) {
	if err := c.allow(false); err != nil {
		return false, err
	}
	return c.fs.SameFile(a, b)
}

func (c *crashFS) WriteFile(name string, data []byte) error {
	if err := c.allow(true); err != nil {
		return err
	}
	return c.fs.WriteFile(name, data)
}

func (c *crashFS) Rename(oldname, newname string) error {
	if err := c.allow(true); err != nil {
		return err
	}
	return c.fs.Rename(oldname, newname)
}

func (c *crashFS) Link(oldname, newname string) error {
	if err := c.allow(true); err != nil {
		return err
	}
	return c.fs.Link(oldname, newname)
}

func (c *crashFS) Remove(name string) error {
	if err := c.allow(true); err != nil {
		return err
	}
	return c.fs.Remove(name)
}
