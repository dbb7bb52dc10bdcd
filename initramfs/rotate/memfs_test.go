package rotate

import (
	"io/fs"

	"slices"
	"strings"

	"github.com/hnboot/hnboot/internal/layout"
)

// memFS is an in-memory FS with inodes, so Link and SameFile behave as on a
// real filesystem. Every mutating operation is atomic and durable: a power
// cut (CrashAfter) between two operations leaves exactly the state after
// the first.
type memFS struct {
	files map[string]*inode
}

type inode struct{ data string }

func newMemFS(files map[string]string) *memFS {
	m := &memFS{files: map[string]*inode{}}
	for name, data := range files {
		m.files[name] = &inode{data}
	}
	return m
}

// clone copies m, keeping which names share an inode.
func (m *memFS) clone() *memFS {
	c := &memFS{files: make(map[string]*inode, len(m.files))}
	seen := map[*inode]*inode{}
	for name, ino := range m.files {
		if seen[ino] == nil {
			seen[ino] = &inode{ino.data}
		}
		c.files[name] = seen[ino]
	}
	return c
}

// snapshot returns name -> content.
func (m *memFS) snapshot() map[string]string {
	s := make(map[string]string, len(m.files))
	for name, ino := range m.files {
		s[name] = ino.data
	}
	return s
}

// content is the content of name, "" when absent.
func (m *memFS) content(name string) string {
	if ino, ok := m.files[name]; ok {
		return ino.data
	}
	return ""
}

// holdsAll reports whether every content in cs is held by one of the
// image files (an image elsewhere is as good as lost).
func (m *memFS) holdsAll(cs []string) bool {
	for _, c := range cs {
		found := false
		for _, img := range imageFiles {
			if ino, ok := m.files[img]; ok && ino.data == c {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

var imageFiles = []string{layout.Current, layout.New, layout.Old, layout.Broken, layout.Rejected}

// links describes which names share an inode, e.g. "hn-root-old.img=hn-root.img".
func (m *memFS) links() string {
	byInode := map[*inode][]string{}
	for name, ino := range m.files {
		byInode[ino] = append(byInode[ino], name)
	}
	var out []string
	for _, names := range byInode {
		if len(names) > 1 {
			slices.Sort(names)
			out = append(out, strings.Join(names, "="))
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func (m *memFS) Exists(name string) (bool, error) {
	_, ok := m.files[name]
	return ok, nil
}

func (m *memFS) ReadFile(name string) ([]byte, error) {
	ino, ok := m.files[name]
	if !ok {
		return nil, &fs.PathError{Op: "read", Path: name, Err: fs.ErrNotExist}
	}
	return []byte(ino.data), nil
}

func (m *memFS) WriteFile(name string, data []byte) error {
	m.files[name] = &inode{string(data)} // tmp + rename: a fresh inode
	return nil
}

func (m *memFS) Rename(oldname, newname string) error {
	ino, ok := m.files[oldname]
	if !ok {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	if m.files[newname] == ino {
		return nil // POSIX: renaming onto a link of the same inode does nothing
	}
	m.files[newname] = ino
	delete(m.files, oldname)
	return nil
}

func (m *memFS) Link(oldname, newname string) error {
	ino, ok := m.files[oldname]
	if !ok {
		return &fs.PathError{Op: "link", Path: oldname, Err: fs.ErrNotExist}
	}
	if _, ok := m.files[newname]; ok {
		return &fs.PathError{Op: "link", Path: newname, Err: fs.ErrExist}
	}
	m.files[newname] = ino
	return nil
}

func (m *memFS) Remove(name string) error {
	delete(m.files, name)
	return nil
}

func (m *memFS) SameFile(a, b string) (bool, error) {
	ia, oka := m.files[a]
	ib, okb := m.files[b]
	return oka && okb && ia == ib, nil
}

// countFS counts mutating operations and records the operation of each
// journal written.
type countFS struct {
	FS
	ops       int
	onJournal func(op string) // called before each journal is written; may be nil
}

func (c *countFS) WriteFile(name string, data []byte) error {
	c.ops++
	if name == layout.Journal && c.onJournal != nil {
		j, _ := decodeJournal(data)
		c.onJournal(j.op)
	}
	return c.FS.WriteFile(name, data)
}
func (c *countFS) Rename(o, n string) error { c.ops++; return c.FS.Rename(o, n) }
func (c *countFS) Link(o, n string) error   { c.ops++; return c.FS.Link(o, n) }
func (c *countFS) Remove(name string) error { c.ops++; return c.FS.Remove(name) }

// checkFS calls check after every mutating operation that reached the
// underlying memFS, with the operation (op(), to format only on failure)
// and the content hn-root.img had before it ("" when absent).
type checkFS struct {
	*memFS
	check func(m *memFS, op func() string, prevCurrent string)
}

func (c *checkFS) WriteFile(name string, data []byte) error {
	prev := c.memFS.content(layout.Current)
	err := c.memFS.WriteFile(name, data)
	c.check(c.memFS, func() string { return "write " + name }, prev)
	return err
}

func (c *checkFS) Rename(o, n string) error {
	prev := c.memFS.content(layout.Current)
	err := c.memFS.Rename(o, n)
	c.check(c.memFS, func() string { return "rename " + o + " " + n }, prev)
	return err
}

func (c *checkFS) Link(o, n string) error {
	prev := c.memFS.content(layout.Current)
	err := c.memFS.Link(o, n)
	c.check(c.memFS, func() string { return "link " + o + " " + n }, prev)
	return err
}

func (c *checkFS) Remove(name string) error {
	prev := c.memFS.content(layout.Current)
	err := c.memFS.Remove(name)
	c.check(c.memFS, func() string { return "remove " + name }, prev)
	return err
}
