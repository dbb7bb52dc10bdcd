package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
)

// imageCache is the digest cache of the image files, path → fileDigest.
// It is this server's own (the files are local; servers sharing a
// database each have their own), kept in Options.ImageCache so a restart
// does not rehash either, and in memory only when that is "".
type imageCache struct {
	mu    sync.Mutex
	path  string
	files map[string]fileDigest
}

func (c *imageCache) load() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.files != nil {
		return
	}
	c.files = map[string]fileDigest{}
	if c.path == "" {
		return
	}
	if b, err := os.ReadFile(c.path); err == nil {
		json.Unmarshal(b, &c.files) // a damaged cache only costs a rehash
	}
}

func (c *imageCache) get(path string) (fileDigest, bool) {
	c.load()
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.files[path]
	return d, ok
}

func (c *imageCache) put(path string, d fileDigest) error {
	c.load()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.files[path] = d
	return c.saveLocked()
}

// keep forgets every file not in paths.
func (c *imageCache) keep(paths map[string]bool) error {
	c.load()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.files)
	for p := range c.files {
		if !paths[p] {
			delete(c.files, p)
		}
	}
	if len(c.files) == n {
		return nil
	}
	return c.saveLocked()
}

func (c *imageCache) saveLocked() error {
	if c.path == "" {
		return nil
	}
	b, err := json.MarshalIndent(c.files, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return err
	}
	return durable.WriteFile(c.path, append(b, '\n'), 0o600)
}

// fileDigest is a cached digest and the identity of the file it was
// computed from. The change time is part of the identity because
// `cp -p` over an existing image keeps inode, size and mtime.
type fileDigest struct {
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Size   int64  `json:"size"`
	MTime  int64  `json:"mtime_ns"`
	CTime  int64  `json:"ctime_ns"`
	Digest string `json:"digest"`
}

func identity(fi fs.FileInfo) fileDigest {
	id := fileDigest{Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.Dev, id.Ino = uint64(st.Dev), st.Ino
		id.CTime = st.Ctim.Nano()
	}
	return id
}

func (a fileDigest) sameFile(b fileDigest) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Size == b.Size && a.MTime == b.MTime && a.CTime == b.CTime
}

// Large images log their progress: 10 GiB take 7-10 s on a machine with
// SHA extensions, minutes on a slow disk.
const (
	progressSize  = 1 << 30
	progressEvery = 10 * time.Second
)

// hashFile is sha256 of a file as "sha256:<hex>"; progress (may be nil) is
// called every progressEvery with the bytes read so far. A variable so
// tests can count and hold hashing.
var hashFile = func(path string, progress func(done int64)) (string, error) {
	var every func(int64)
	if progress != nil {
		last := time.Now()
		every = func(n int64) {
			if now := time.Now(); now.Sub(last) >= progressEvery {
				progress(n)
				last = now
			}
		}
	}
	return digest.File(path, every)
}

// checkImages checks every declared image's digest against its file,
// hashing only files not in the cache. It takes no lock of the Fleet: the
// boot server keeps answering from the last good snapshot, and check-ins
// and admin calls go on, while a large image is hashed.
//
// A mismatch, or a file that is there but cannot be read, is a problem at
// the image's digest line. A missing file is a warning: the image may be
// served by another server, or not copied yet, and the agent can fetch it
// from a URL of its own.
func (f *Fleet) checkImages(d *Desired) error {
	type result struct {
		digest  string
		missing bool
		err     error
	}
	seen := map[string]result{}
	var problems, warnings []string
	for _, img := range d.Images {
		r, ok := seen[img.Path]
		if !ok {
			r.digest, r.err = f.imageDigest(img)
			r.missing = errors.Is(r.err, fs.ErrNotExist)
			seen[img.Path] = r
		}
		switch {
		case r.missing:
			warnings = append(warnings, fmt.Sprintf("image %s (%s): %s does not exist on this server: hosts assigned it cannot PXE-boot it or download it from here", img.Ref(), img.Pos, img.Path))
		case r.err != nil:
			problems = append(problems, fmt.Sprintf("%s: image %s: %v", img.digestPos, img.Ref(), r.err))
		case r.digest != img.Digest:
			problems = append(problems, fmt.Sprintf("%s: image %s: %s has digest %s, not the declared %s: "+
				"if the file is the image you mean, set digest: %s; otherwise put back the file built for the declared digest (see its IMAGE.json)",
				img.digestPos, img.Ref(), img.Path, r.digest, img.Digest, r.digest))
		}
	}
	d.imageWarnings = warnings
	if len(problems) > 0 {
		return &ValidationError{Problems: problems}
	}
	// Forget files no longer declared, only now: a failed reload keeps
	// serving the last good state, whose files stay cached.
	keep := map[string]bool{}
	for p := range seen {
		keep[p] = true
	}
	if err := f.images.keep(keep); err != nil {
		f.log.Warn("fleet: cannot save the image digest cache", "file", f.images.path, "err", err)
	}
	return nil
}

// imageDigest returns the digest of img's file, from the cache when the
// file is unchanged since it was last hashed.
func (f *Fleet) imageDigest(img *Image) (string, error) {
	fi, err := os.Stat(img.Path)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file: point path: at the image file", img.Path)
	}
	id := identity(fi)
	if cached, ok := f.images.get(img.Path); ok && cached.sameFile(id) && digest.Valid(cached.Digest) {
		return cached.Digest, nil
	}
	log := f.log.With("image", img.Ref(), "path", img.Path, "size", fi.Size())
	var progress func(int64)
	level := slog.LevelDebug
	if fi.Size() >= progressSize {
		level = slog.LevelInfo
		log.Info("fleet: hashing image; the last good state is served meanwhile")
		progress = func(done int64) {
			log.Info("fleet: hashing image", "done", fmt.Sprintf("%d%%", done*100/fi.Size()))
		}
	}
	start := time.Now()
	digest, err := hashFile(img.Path, progress)
	if err != nil {
		return "", fmt.Errorf("cannot hash %s: %w", img.Path, err)
	}
	el := time.Since(start)
	log.Log(context.Background(), level, "fleet: hashed image", "digest", digest, "took", el.Round(time.Millisecond),
		"MB/s", int(float64(fi.Size())/1e6/max(el.Seconds(), 1e-3)))
	after, err := os.Stat(img.Path)
	if err != nil {
		return "", err
	}
	if !identity(after).sameFile(id) {
		return "", fmt.Errorf("%s changed while it was being hashed (still being copied?); it is checked again at the next reload once it stops changing", img.Path)
	}
	id.Digest = digest
	if err := f.images.put(img.Path, id); err != nil {
		// Not fatal: the digest is right, only the next reload hashes again.
		log.Warn("fleet: cannot cache the image digest", "err", err)
	}
	return digest, nil
}

// imageSignature is the identity of every image file, so a reload follows
// an image that is replaced or finishes copying, not only YAML changes.
func imageSignature(paths []string) string {
	var b strings.Builder
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			fmt.Fprintf(&b, "image %s none\n", p)
			continue
		}
		id := identity(fi)
		fmt.Fprintf(&b, "image %s %d %d %d %d %d\n", p, id.Dev, id.Ino, id.Size, id.MTime, id.CTime)
	}
	return b.String()
}

func imagePaths(d *Desired) []string {
	var out []string
	for _, img := range d.Images {
		out = append(out, img.Path)
	}
	return out
}
