package pxe

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/diskfs/go-diskfs/filesystem"

	"github.com/hnboot/hnboot/internal/imagefs"

	"github.com/hnboot/hnboot/internal/durable"
)

// Boot files pulled out of an image's /boot, and the names the image may
// use for them (first match wins; versioned names are the Debian way).
var bootFileNames = map[string][]string{
	"vmlinuz":   {"vmlinuz", "vmlinuz-*", "bzImage"},
	"initramfs": {"initramfs", "initramfs-*", "initrd.img", "initrd.img-*", "initrd"},
}

// Extractor pulls the kernel and initramfs out of images (ext4 or
// squashfs, read with go-diskfs, no mounting) into a cache directory keyed
// by image digest, once per digest even under concurrent requests.
type Extractor struct {
	CacheDir string

	mu       sync.Mutex
	inflight map[string]*extraction
}

type extraction struct {
	done chan struct{}
	err  error
}

// NewExtractor caches into dir.
func NewExtractor(dir string) *Extractor {
	return &Extractor{CacheDir: dir, inflight: map[string]*extraction{}}
}

// Path returns the cached file ("vmlinuz" or "initramfs") of img,
// extracting both on first use.
func (e *Extractor) Path(img ImageRef, file string) (string, error) {
	if _, ok := bootFileNames[file]; !ok {
		return "", fmt.Errorf("extract: unknown boot file %q", file)
	}
	hex, err := digestHex(img.Digest)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(e.CacheDir, hex)
	out := filepath.Join(dir, file)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	e.mu.Lock()
	x, running := e.inflight[hex]
	if !running {
		x = &extraction{done: make(chan struct{})}
		e.inflight[hex] = x
	}
	e.mu.Unlock()
	if !running {
		x.err = extractBoot(img.Path, dir)
		close(x.done)
		e.mu.Lock()
		delete(e.inflight, hex)
		e.mu.Unlock()
	}
	<-x.done
	if x.err != nil {
		return "", x.err
	}
	return out, nil
}

// digestHex checks "sha256:<64 hex>" and returns the hex part.
func digestHex(d string) (string, error) {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 {
		return "", fmt.Errorf("bad digest %q: want sha256:<64 hex digits>", d)
	}
	for _, c := range hex {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("bad digest %q: want lowercase hex", d)
		}
	}
	return hex, nil
}

// extractBoot copies the image's kernel and initramfs into dir.
func extractBoot(image, dir string) error {
	fsys, closeFS, err := openImageFS(image)
	if err != nil {
		return err
	}
	defer closeFS()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	ents, err := fsys.ReadDir("boot") // go-diskfs paths are relative
	if err != nil {
		return fmt.Errorf("extract: %s: read /boot: %w", image, err)
	}
	for _, file := range []string{"vmlinuz", "initramfs"} {
		src := pickBootFile(ents, bootFileNames[file])
		if src == "" {
			return fmt.Errorf("extract: %s has no /boot/%s", image, file)
		}
		if err := copyOut(fsys, "boot/"+src, filepath.Join(dir, file)); err != nil {
			return fmt.Errorf("extract: %s: /boot/%s: %w", image, src, err)
		}
	}
	return nil
}

// openImageFS opens a whole-disk ext4 or squashfs image read-only.
func openImageFS(image string) (filesystem.FileSystem, func(), error) {
	im, err := imagefs.Open(image)
	if err != nil {
		return nil, nil, fmt.Errorf("extract: %w", err)
	}
	return im, func() { im.Close() }, nil
}

// pickBootFile returns the first regular file matching patterns, in order;
// among versioned names the highest sorts first.
func pickBootFile(ents []fs.DirEntry, patterns []string) string {
	for _, pat := range patterns {
		var m []string
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			if ok, _ := filepath.Match(pat, e.Name()); ok {
				m = append(m, e.Name())
			}
		}
		if len(m) > 0 {
			sort.Sort(sort.Reverse(sort.StringSlice(m)))
			return m[0]
		}
	}
	return ""
}

// copyOut copies src out of the image to dst durably: the cache is
// trusted on the next start (a file under its final name is served as is),
// so a crash must not leave a truncated kernel there.
func copyOut(fsys filesystem.FileSystem, src, dst string) error {
	in, err := fsys.OpenFile(src, os.O_RDONLY)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := durable.Create(dst, 0o644)
	if err != nil {
		return err
	}
	defer out.Cleanup()
	n, err := io.Copy(out, in)
	if err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	if n == 0 {
		return errors.New("empty file")
	}
	return out.Commit()
}
