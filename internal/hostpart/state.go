package hostpart

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
)

// Image is one image file on hostpart.
type Image struct {
	Slot    string    `json:"slot"`
	File    string    `json:"file"`
	Present bool      `json:"present"`
	Size    int64     `json:"size,omitempty"`
	ModTime time.Time `json:"mtime,omitzero"`
	Digest  string    `json:"digest,omitempty"` // sha256:<hex>; empty when absent or not hashed
	Name    string    `json:"name,omitempty"`   // from .hnboot/images/<hex>.json, when the image was staged with one
	Version string    `json:"version,omitempty"`
	Inode   uint64    `json:"inode,omitempty"`
}

// Label is "name version", or the short digest.
func (im Image) Label() string {
	switch {
	case im.Name != "" && im.Version != "":
		return im.Name + " " + im.Version
	case im.Name != "":
		return im.Name
	}
	return digest.Short(im.Digest)
}

// Part is a download in progress (*.img.part).
type Part struct {
	File string `json:"file"`
	Size int64  `json:"size"`
}

// State is what is on a hostpart.
type State struct {
	Dir           string  `json:"hostpart"`
	Images        []Image `json:"images"`             // always the four slots, in layout.Slots order
	Rejected      *Image  `json:"rejected,omitempty"` // hn-root-new.img.rejected
	Trial         bool    `json:"trial"`
	TriesLeft     int     `json:"tries_left"`
	TrialProblem  string  `json:"trial_problem,omitempty"` // hn-root.trial unreadable
	RevertPending bool    `json:"revert_pending"`          // system-revert present
	Parts         []Part  `json:"parts,omitempty"`
	Boots         []Boot  `json:"boots,omitempty"` // newest first
	// Notes are problems that did not stop the read (e.g. the digest
	// cache could not be saved).
	Notes []string `json:"notes,omitempty"`
}

// Slot returns the image in slot (current, old, new, broken).
func (s State) Slot(slot string) Image {
	for _, im := range s.Images {
		if im.Slot == slot {
			return im
		}
	}
	return Image{Slot: slot}
}

// Digests are the four slots' digests by slot name.
func (s State) Digests() map[string]string {
	m := map[string]string{}
	for _, im := range s.Images {
		m[im.Slot] = im.Digest
	}
	return m
}

// ReadOptions control Read.
type ReadOptions struct {
	// Hash computes digests missing from the cache (a multi-GiB image takes
	// a while); without it such digests stay empty.
	Hash bool
	// Boots is how many boot logs to read (0: none).
	Boots int
}

// Read looks at the hostpart in dir. Digests come from the cache in
// .hnboot/digests (package digestcache, shared with the init), and are
// hashed and cached when missing if o.Hash.
func Read(dir string, o ReadOptions) (State, error) {
	st := State{Dir: dir}
	cache := digestcache.Load(dir)
	for _, s := range layout.Slots {
		im, err := readImage(dir, s.Slot, s.File, cache, o.Hash)
		if err != nil {
			return st, err
		}
		st.Images = append(st.Images, im)
	}
	if im, err := readImage(dir, "rejected", layout.Rejected, cache, o.Hash); err != nil {
		return st, err
	} else if im.Present {
		st.Rejected = &im
	}
	if cache.Dirty() {
		// The cache only saves hashing next time: failing to write it
		// (a read-only hostpart, a full disk) must not fail the read.
		if err := cache.Save(dir); err != nil {
			st.Notes = append(st.Notes, "digest cache not saved: "+err.Error())
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, layout.Trial))
	switch {
	case err == nil:
		st.Trial = true
		n, perr := strconv.Atoi(strings.TrimSpace(string(b)))
		if perr != nil {
			st.TrialProblem = fmt.Sprintf("%s holds %q, not a number: the next boot reverts", layout.Trial, strings.TrimSpace(string(b)))
		}
		st.TriesLeft = n
	case !errors.Is(err, os.ErrNotExist):
		return st, err
	}
	if _, err := os.Lstat(filepath.Join(dir, layout.RevertTrigger)); err == nil {
		st.RevertPending = true
	}
	parts, _ := filepath.Glob(filepath.Join(dir, "*.img.part"))
	for _, p := range parts {
		if fi, err := os.Stat(p); err == nil {
			st.Parts = append(st.Parts, Part{File: filepath.Base(p), Size: fi.Size()})
		}
	}
	if o.Boots > 0 {
		st.Boots = ReadBoots(dir, o.Boots)
	}
	return st, nil
}

func readImage(dir, slot, file string, cache *digestcache.Cache, hash bool) (Image, error) {
	im := Image{Slot: slot, File: file}
	p := filepath.Join(dir, file)
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return im, nil
	}
	if err != nil {
		return im, err
	}
	im.Present, im.Size, im.ModTime = true, fi.Size(), fi.ModTime()
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		im.Inode = sys.Ino
	}
	im.Digest = cache.Lookup(file, fi)
	if im.Digest == "" && hash {
		d, err := digest.File(p, nil)
		if err != nil {
			return im, err
		}
		im.Digest = d
		cache.Put(file, fi, d)
	}
	if m, ok := ReadMeta(dir, im.Digest); ok {
		im.Name, im.Version = m.Name, m.Version
	}
	return im, nil
}

// Remember adds the digest of the file at hostpart/file to the cache, for
// a writer that just verified it (the agent after a download).
func Remember(dir, file, d string) error { return digestcache.Remember(dir, file, d) }

// Meta is what the agent knows about an image it staged: the server's
// name and version for a digest. Kept in .hnboot/images/<hex>.json so the
// name follows the image through the init's renames.
type Meta struct {
	Digest  string    `json:"digest"`
	Name    string    `json:"name,omitempty"`
	Version string    `json:"version,omitempty"`
	Source  string    `json:"source,omitempty"` // URL or file it was staged from
	Staged  time.Time `json:"staged,omitzero"`
}

// ReadMeta returns the metadata recorded for digest, if any.
func ReadMeta(dir, dg string) (Meta, bool) {
	var m Meta
	if !digest.Valid(dg) {
		return m, false
	}
	b, err := os.ReadFile(filepath.Join(dir, layout.ImageMeta(dg)))
	if err != nil || json.Unmarshal(b, &m) != nil {
		return m, false
	}
	return m, true
}

// WriteMeta records m (atomically).
func WriteMeta(dir string, m Meta) error {
	if !digest.Valid(m.Digest) {
		return fmt.Errorf("hostpart: image metadata with bad digest %q", m.Digest)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return durable.Root(dir).WriteFile(layout.ImageMeta(m.Digest), append(b, '\n'))
}
