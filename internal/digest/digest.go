// Package digest is the one spelling of an image's identity everywhere in
// hnboot: "sha256:" and 64 lowercase hex digits of the whole file, as
// manifests, the fleet YAML, check-ins, blob URLs and the digest cache
// write it. It has no dependencies beyond the standard library, so the
// init can use it.
package digest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
)

// Prefix starts every digest.
const Prefix = "sha256:"

// Valid reports whether s is "sha256:" and 64 lowercase hex digits.
func Valid(s string) bool {
	h, ok := strings.CutPrefix(s, Prefix)
	return ok && len(h) == 64 && strings.Trim(h, "0123456789abcdef") == ""
}

// Short is the first 12 hex digits of a digest, for tables and logs.
func Short(d string) string {
	s := strings.TrimPrefix(d, Prefix)
	if len(s) > 12 {
		s = s[:12]
	}
	return s
}

// Of formats the sum of a sha256 hash as a digest.
func Of(h hash.Hash) string { return Prefix + hex.EncodeToString(h.Sum(nil)) }

// Reader hashes r to its end.
func Reader(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.CopyBuffer(h, r, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return Of(h), nil
}

// File hashes the file at path; progress, if not nil, is called after
// every MiB read with the bytes read so far.
func File(path string, progress func(done int64)) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var r io.Reader = f
	if progress != nil {
		r = &progressReader{r: f, fn: progress}
	}
	d, err := Reader(r)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return d, nil
}

type progressReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if n > 0 {
		p.fn(p.n)
	}
	return n, err
}
