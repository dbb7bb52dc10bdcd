package rootfs

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// Entry is one file of a root tree, with everything an image keeps about
// it. Paths are slash-separated and relative to the root ("" is the root,
// "etc/passwd" a file in /etc).
type Entry struct {
	Path   string
	Mode   fs.FileMode // Go type bits, permissions, setuid/setgid/sticky
	UID    int
	GID    int
	MTime  int64  // seconds since 1970
	Size   int64  // regular files: length of the content
	Target string // symlinks: the target
	Link   string // hard links: the path of the entry holding the inode
	Major  uint32 // device nodes
	Minor  uint32
	Xattrs []Xattr // sorted by name
	Data   string  // regular files: a local file holding the content
	Nlink  int     // regular files holding an inode: number of names (1 + links)

	dataMode uint32 // st_mode of Data: what debugfs's write gives the inode
}

// Xattr is an extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Type names the kind of entry for messages and listings.
func (e *Entry) Type() string {
	switch {
	case e.Link != "":
		return "hardlink"
	case e.Mode.IsDir():
		return "dir"
	case e.Mode&fs.ModeSymlink != 0:
		return "symlink"
	case e.Mode&fs.ModeCharDevice != 0:
		return "chardev"
	case e.Mode&fs.ModeDevice != 0:
		return "blockdev"
	case e.Mode&fs.ModeNamedPipe != 0:
		return "fifo"
	case e.Mode&fs.ModeSocket != 0:
		return "socket"
	}
	return "file"
}

// UnixMode returns the st_mode bits (type and permissions) of e.
func (e *Entry) UnixMode() uint32 {
	m := uint32(e.Mode.Perm())
	if e.Mode&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if e.Mode&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if e.Mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	switch {
	case e.Mode.IsDir():
		m |= 0o040000
	case e.Mode&fs.ModeSymlink != 0:
		m |= 0o120000
	case e.Mode&fs.ModeCharDevice != 0:
		m |= 0o020000
	case e.Mode&fs.ModeDevice != 0:
		m |= 0o060000
	case e.Mode&fs.ModeNamedPipe != 0:
		m |= 0o010000
	case e.Mode&fs.ModeSocket != 0:
		m |= 0o140000
	default:
		m |= 0o100000
	}
	return m
}

// Tree is a root tree held in memory: metadata for every entry, content
// by reference to local files.
type Tree struct {
	entries  map[string]*Entry
	children map[string][]string // dir path -> child names, sorted by Finish
}

// NewTree returns a tree holding only a root directory owned by 0:0, 0755.
func NewTree() *Tree {
	t := &Tree{entries: map[string]*Entry{}}
	t.entries[""] = &Entry{Path: "", Mode: fs.ModeDir | 0o755}
	return t
}

// CleanPath turns a tar or walk name ("./usr/bin/", "/etc") into the
// form Tree uses ("usr/bin", "etc"); it refuses names escaping the root.
func CleanPath(name string) (string, error) {
	p := path.Clean("/" + name)
	if strings.Contains(name, "\x00") {
		return "", fmt.Errorf("name %q contains a NUL byte", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("name %q leaves the root (..)", name)
		}
	}
	return strings.TrimPrefix(p, "/"), nil
}

// Add puts e in the tree, replacing an entry of the same path (a later tar
// member wins, as with tar -x). Missing parent directories are created
// with mode 0755, owner 0:0 and e's mtime.
func (t *Tree) Add(e *Entry) {
	t.children = nil
	if old, ok := t.entries[e.Path]; ok && old.Mode.IsDir() && e.Mode.IsDir() {
		// A directory seen twice keeps its children; take the new metadata.
		*old = *e
		return
	}
	t.entries[e.Path] = e
	for p := e.Path; p != ""; {
		p = parent(p)
		if _, ok := t.entries[p]; ok {
			break
		}
		t.entries[p] = &Entry{Path: p, Mode: fs.ModeDir | 0o755, MTime: e.MTime}
	}
}

// Get returns the entry at p, or nil.
func (t *Tree) Get(p string) *Entry { return t.entries[p] }

// Len is the number of entries, the root included.
func (t *Tree) Len() int { return len(t.entries) }

func parent(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// Remove deletes p and everything under it.
func (t *Tree) Remove(p string) {
	t.children = nil
	delete(t.entries, p)
	prefix := p + "/"
	for q := range t.entries {
		if strings.HasPrefix(q, prefix) {
			delete(t.entries, q)
		}
	}
}

// Finish checks the tree and makes its hard links canonical: in every
// group of names for one inode, the first name in walk order holds the
// inode (and the data) and the others link to it. It fails on an entry
// under a non-directory and on a link to nothing.
func (t *Tree) Finish() error {
	t.children = map[string][]string{}
	for p, e := range t.entries {
		if p == "" {
			continue
		}
		par := t.entries[parent(p)]
		if par == nil || !par.Mode.IsDir() {
			return fmt.Errorf("/%s: its parent is not a directory", p)
		}
		t.children[parent(p)] = append(t.children[parent(p)], p)
		_ = e
	}
	for _, c := range t.children {
		sort.Strings(c)
	}
	// Group names by the inode they share.
	groups := map[string][]*Entry{}
	var order []*Entry
	t.Walk(func(e *Entry) error { order = append(order, e); return nil })
	pos := map[string]int{}
	for i, e := range order {
		pos[e.Path] = i
	}
	for _, e := range order {
		if e.Link == "" {
			continue
		}
		// Follow chains (a link to a link) to the name holding the data.
		root, seen := e.Link, map[string]bool{e.Path: true}
		for {
			r := t.entries[root]
			if r == nil {
				return fmt.Errorf("/%s: hard link to /%s, which is not in the tree", e.Path, e.Link)
			}
			if seen[root] {
				return fmt.Errorf("/%s: hard link loop through /%s", e.Path, root)
			}
			seen[root] = true
			if r.Link == "" {
				break
			}
			root = r.Link
		}
		if !t.entries[root].Mode.IsRegular() {
			return fmt.Errorf("/%s: hard link to /%s, which is a %s (only regular files can be linked)", e.Path, root, t.entries[root].Type())
		}
		groups[root] = append(groups[root], e)
	}
	for root, links := range groups {
		holder := t.entries[root]
		all := append([]*Entry{holder}, links...)
		sort.Slice(all, func(i, j int) bool { return pos[all[i].Path] < pos[all[j].Path] })
		first := all[0]
		if first != holder {
			// The first name in walk order takes over the inode.
			data := *holder
			data.Path, data.Link = first.Path, ""
			*first = data
		}
		first.Nlink = len(all)
		for _, e := range all[1:] {
			*e = Entry{Path: e.Path, Link: first.Path, Mode: first.Mode}
		}
	}
	for _, e := range t.entries {
		if e.Mode.IsRegular() && e.Link == "" && e.Nlink == 0 {
			e.Nlink = 1
		}
	}
	return nil
}

// Walk calls fn for every entry, parents before children, siblings sorted
// by name (byte order): the order images are written in. Finish must
// have been called.
func (t *Tree) Walk(fn func(e *Entry) error) error {
	if t.children == nil {
		if err := t.Finish(); err != nil {
			return err
		}
	}
	var walk func(p string) error
	walk = func(p string) error {
		if err := fn(t.entries[p]); err != nil {
			return err
		}
		for _, c := range t.children[p] {
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	return walk("")
}

// Children returns the sorted child paths of dir (after Finish).
func (t *Tree) Children(dir string) []string { return t.children[dir] }

// ContentBytes is the space the tree's contents take in 4 KiB blocks: what
// an image needs before metadata.
func (t *Tree) ContentBytes() int64 {
	var n int64
	for _, e := range t.entries {
		switch {
		case e.Link != "":
		case e.Mode.IsRegular():
			n += (e.Size + blockSize - 1) / blockSize * blockSize
		case e.Mode.IsDir():
			n += blockSize * (1 + int64(len(t.children[e.Path]))/100)
		case e.Mode&fs.ModeSymlink != 0 && len(e.Target) >= 60:
			n += blockSize
		}
		if len(e.Xattrs) > 0 {
			n += blockSize
		}
	}
	return n
}
