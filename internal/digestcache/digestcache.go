// Package digestcache remembers the sha256 of image files on hostpart, so
// a multi-GiB image is hashed once per host, not at every boot or status
// call. It is the one reader and writer of .hnboot/digests: the init (its
// check-in and its manifest checks during rotation), the agent after a
// download, and `imaged status` all use it.
//
// An entry is keyed by inode, size and modification time (ns). Images are
// never written in place, and the init's renames and hard links keep all
// three, so a promoted or reverted image is still known under its new
// name; a file rewritten under the same name gets a new inode or mtime.
//
// The file is JSON, a sorted array of {file, inode, size, mtime_ns,
// digest}, written atomically and durably (internal/durable). Load also
// reads the text lines "INODE SIZE MTIME_NS sha256:HEX" that inits before
// this package wrote, so a host upgrading keeps its cache.
//
// The package depends only on internal/durable and internal/layout: it is
// part of the init.
package digestcache

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
)

// Max is the number of entries Save keeps when more are known. Entries of
// files that exist on hostpart are always kept (a host has at most five
// images: the four slots and a rejected one); the room left holds entries
// of files that are gone, so an image moved away by hand and back keeps
// its digest, without the file growing for ever.
const Max = 16

// Key identifies a file's content without reading it.
type Key struct {
	Inode   uint64
	Size    int64
	MtimeNS int64
}

// KeyOf is the key of the file fi describes; false when the platform has
// no inode numbers.
func KeyOf(fi fs.FileInfo) (Key, bool) {
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Key{}, false
	}
	return Key{Inode: sys.Ino, Size: fi.Size(), MtimeNS: fi.ModTime().UnixNano()}, true
}

// entry is one line of the file.
type entry struct {
	File    string `json:"file"` // where it was last seen, relative to hostpart; for readers, not part of the key
	Inode   uint64 `json:"inode"`
	Size    int64  `json:"size"`
	MtimeNS int64  `json:"mtime_ns"`
	Digest  string `json:"digest"`
}

func (e entry) key() Key { return Key{e.Inode, e.Size, e.MtimeNS} }

// Cache is the digest cache of one hostpart. It is not safe for
// concurrent use; concurrent processes each Load their own and the last
// Save wins, after merging what the others saved.
type Cache struct {
	entries map[Key]entry
	dirty   bool
}

// Load reads the cache of the hostpart in dir. A missing or unreadable
// cache is empty: it only saves hashing.
func Load(dir string) *Cache {
	b, _ := os.ReadFile(filepath.Join(dir, layout.Digests))
	return Parse(b)
}

// Parse reads the cache file's bytes, JSON or the legacy text lines.
// Entries with an invalid digest are dropped; garbage reads as empty.
func Parse(b []byte) *Cache {
	c := &Cache{entries: map[Key]entry{}}
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var es []entry
		if json.Unmarshal(b, &es) == nil {
			for _, e := range es {
				c.add(e)
			}
		}
		return c
	}
	// The init's format before this package: "ino size mtime_ns sha256:hex".
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 {
			continue
		}
		ino, err1 := strconv.ParseUint(f[0], 10, 64)
		size, err2 := strconv.ParseInt(f[1], 10, 64)
		mtime, err3 := strconv.ParseInt(f[2], 10, 64)
		if err1 == nil && err2 == nil && err3 == nil {
			c.add(entry{Inode: ino, Size: size, MtimeNS: mtime, Digest: f[3]})
		}
	}
	return c
}

func (c *Cache) add(e entry) {
	if digest.Valid(e.Digest) && e.Size >= 0 {
		c.entries[e.key()] = e
	}
}

// Len is the number of entries.
func (c *Cache) Len() int { return len(c.entries) }

// Dirty reports whether Lookup or Put changed the cache since Load.
func (c *Cache) Dirty() bool { return c.dirty }

// Lookup returns the digest of the file name (relative to hostpart) that
// fi describes, or "" when it is not cached.
func (c *Cache) Lookup(name string, fi fs.FileInfo) string {
	k, ok := KeyOf(fi)
	if !ok {
		return ""
	}
	e, ok := c.entries[k]
	if !ok {
		return ""
	}
	if e.File != name {
		e.File = name
		c.entries[k] = e
		c.dirty = true
	}
	return e.Digest
}

// Put records the digest of the file name that fi describes, computed or
// verified by the caller. An invalid digest is ignored.
func (c *Cache) Put(name string, fi fs.FileInfo, dg string) {
	k, ok := KeyOf(fi)
	if !ok || !digest.Valid(dg) {
		return
	}
	e := entry{File: name, Inode: k.Inode, Size: k.Size, MtimeNS: k.MtimeNS, Digest: dg}
	if old, ok := c.entries[k]; ok && old == e {
		return
	}
	c.entries[k] = e
	c.dirty = true
}

// candidates are the names Save looks at to tell which entries describe a
// file that exists.
var candidates = []string{layout.Current, layout.New, layout.Old, layout.Broken, layout.Rejected}

// Save writes the cache to the hostpart in dir, atomically and durably.
// It first merges the entries saved by other writers since Load (ours win
// on the same key), then keeps every entry of a file that exists (under
// its entry's name or any image slot; the entry then names where it is),
// and fills the room left up to Max with entries of files that are gone,
// in sorted order, so the same inputs always give the same file.
func (c *Cache) Save(dir string) error {
	if b, err := os.ReadFile(filepath.Join(dir, layout.Digests)); err == nil {
		for k, e := range Parse(b).entries {
			if _, ok := c.entries[k]; !ok {
				c.entries[k] = e
			}
		}
	}
	live := map[Key]string{}
	names := slices.Clone(candidates)
	for _, e := range c.entries {
		if e.File != "" && filepath.IsLocal(e.File) {
			names = append(names, e.File)
		}
	}
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if k, ok := KeyOf(fi); ok {
			if _, seen := live[k]; !seen {
				live[k] = n
			}
		}
	}
	var keep, gone []entry
	for k, e := range c.entries {
		if n, ok := live[k]; ok {
			if e.File != n {
				if fi, err := os.Stat(filepath.Join(dir, e.File)); err != nil || !sameKey(fi, k) {
					e.File = n
				}
			}
			keep = append(keep, e)
		} else {
			gone = append(gone, e)
		}
	}
	sortEntries(gone)
	keep = append(keep, gone[:min(len(gone), max(0, Max-len(keep)))]...)
	sortEntries(keep)
	if keep == nil {
		keep = []entry{}
	}
	b, err := json.MarshalIndent(keep, "", "  ")
	if err != nil {
		return err
	}
	if err := durable.Root(dir).WriteFile(layout.Digests, append(b, '\n')); err != nil {
		return err
	}
	c.entries = map[Key]entry{}
	for _, e := range keep {
		c.entries[e.key()] = e
	}
	c.dirty = false
	return nil
}

func sameKey(fi fs.FileInfo, k Key) bool {
	got, ok := KeyOf(fi)
	return ok && got == k
}

func sortEntries(es []entry) {
	slices.SortFunc(es, func(a, b entry) int {
		return cmp.Or(strings.Compare(a.File, b.File), cmp.Compare(a.Inode, b.Inode),
			cmp.Compare(a.Size, b.Size), cmp.Compare(a.MtimeNS, b.MtimeNS))
	})
}

// Remember adds the digest of the file name on the hostpart in dir to the
// cache and saves it, for a writer that just verified the file (the agent
// after a download).
func Remember(dir, name, dg string) error {
	if !digest.Valid(dg) {
		return errors.New("digestcache: " + name + ": digest " + strconv.Quote(dg) + " is not sha256:<64 hex>")
	}
	fi, err := os.Stat(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	c := Load(dir)
	if c.Lookup(name, fi) == dg && !c.dirty {
		return nil
	}
	c.Put(name, fi, dg)
	return c.Save(dir)
}
