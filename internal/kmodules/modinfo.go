// Package kmodules reads Linux kernel modules (.ko, .ko.xz, .ko.zst, .ko.gz)
// from a lib/modules/<release> tree that has no modules.dep, computes the
// dependency closure of a set of modules from their .modinfo sections and
// writes a depmod-compatible modules.dep for it.
package kmodules

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Modinfo is the parsed .modinfo section of one module.
type Modinfo struct {
	Name    string   // name=, the module's canonical name
	Depends []string // depends=, hard dependencies
	SoftPre []string // softdep=pre: names (module names or aliases)
	Aliases []string // alias=
}

// compressedExt lists the module file suffixes this package understands.
var compressedExt = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

// isModule reports whether name is a kernel module file name.
func isModule(name string) bool {
	for _, e := range compressedExt {
		if strings.HasSuffix(name, e) {
			return true
		}
	}
	return false
}

// modName is the module name a file name stands for: base name without the
// suffix, with '-' normalized to '_' as the kernel does.
func modName(base string) string {
	for _, e := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(base, e) {
			base = strings.TrimSuffix(base, e)
			break
		}
	}
	return normalize(base)
}

// normalize maps a module name to its canonical form ('-' → '_').
func normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// ReadModinfo reads and parses the .modinfo section of the module file at
// path, decompressing .xz, .zst and .gz modules in memory.
func ReadModinfo(path string) (*Modinfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	var r io.ReaderAt = f
	if !strings.HasSuffix(path, ".ko") {
		var dr io.Reader
		switch {
		case strings.HasSuffix(path, ".xz"):
			dr, err = xz.NewReader(f)
		case strings.HasSuffix(path, ".zst"):
			var zr *zstd.Decoder
			zr, err = zstd.NewReader(f)
			if err == nil {
				defer zr.Close()
			}
			dr = zr
		case strings.HasSuffix(path, ".gz"):
			dr, err = gzip.NewReader(f)
		default:
			return nil, fmt.Errorf("%s: not a kernel module (want .ko, .ko.xz, .ko.zst or .ko.gz)", path)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: decompress: %w", path, err)
		}
		b, err := io.ReadAll(dr)
		if err != nil {
			return nil, fmt.Errorf("%s: decompress: %w", path, err)
		}
		r = bytes.NewReader(b)
	}

	ef, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%s: read ELF: %w", path, err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s: no .modinfo section: not a kernel module?", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: read .modinfo: %w", path, err)
	}
	return ParseModinfo(data), nil
}

// ParseModinfo parses the NUL-separated key=value strings of a .modinfo
// section.
func ParseModinfo(data []byte) *Modinfo {
	mi := &Modinfo{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			mi.Name = normalize(v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					mi.Depends = append(mi.Depends, normalize(d))
				}
			}
		case "softdep":
			mi.SoftPre = append(mi.SoftPre, parseSoftdep(v)...)
		case "alias":
			mi.Aliases = append(mi.Aliases, v)
		}
	}
	return mi
}

// parseSoftdep returns the "pre:" names of a softdep value such as
// "pre: crc32c sha256 post: foo".
func parseSoftdep(v string) []string {
	var pre []string
	inPre := false
	for _, w := range strings.Fields(v) {
		switch w {
		case "pre:":
			inPre = true
		case "post:":
			inPre = false
		default:
			if inPre {
				pre = append(pre, w)
			}
		}
	}
	return pre
}
