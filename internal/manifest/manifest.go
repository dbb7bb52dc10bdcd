// Package manifest describes a root image in a small JSON file beside it
// (IMAGE.json): name, version, sha256, size, filesystem type, kernel
// release, build time and the digest of its chunk index, optionally
// signed with ed25519.
//
// The signature is inside the manifest (key_id, signature). It covers the
// canonical bytes: the domain string "hnboot-manifest-v1\n" followed by
// the compact JSON encoding of the manifest with the signature field
// empty (fields in the fixed order of the Manifest struct). The file
// itself is indented JSON of the whole manifest; whitespace in it does
// not matter, unknown fields are ignored and not signed.
package manifest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
)

// Format is the value of the format field this package writes and reads.
const Format = "hnboot-manifest-1"

const domain = "hnboot-manifest-v1\n"

// Errors a verification can fail with (wrapped, with details).
var (
	ErrSize         = errors.New("image size does not match the manifest")
	ErrDigest       = errors.New("image sha256 does not match the manifest")
	ErrUnsigned     = errors.New("manifest is not signed, and a trusted key requires a signature")
	ErrBadSignature = errors.New("manifest signature is not valid")
	ErrUnknownKey   = errors.New("manifest is signed by a key that is not trusted")
	ErrFormat       = errors.New("not an hnboot manifest")
)

// Manifest describes one image file.
type Manifest struct {
	Format        string `json:"format"`
	Name          string `json:"name"`
	Version       string `json:"version"`
	SHA256        string `json:"sha256"` // lower-case hex of the whole image file
	Size          int64  `json:"size"`   // bytes of the image file
	FS            string `json:"fs"`     // ext4 or squashfs
	KernelRelease string `json:"kernel_release"`
	BuildTime     string `json:"build_time"` // RFC 3339, UTC; SOURCE_DATE_EPOCH when set
	// Chunks is the sha256 of IMAGE.chunks, the image's chunk index
	// (package chunkindex), "sha256:<hex>": signed with the rest, so the
	// index a host builds a delta update from is as trusted as the image.
	// Empty in manifests from before delta updates (their canonical bytes,
	// and so their signatures, are unchanged: the field is omitted).
	Chunks    string `json:"chunks,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
	Signature string `json:"signature,omitempty"` // base64 ed25519 over domain + Canonical()
}

// Fields are what the builder knows beyond the image's bytes.
type Fields struct {
	Name, Version, FS, KernelRelease string
	BuildTime                        time.Time
}

// Digest returns the lower-case hex sha256 and the length of r's bytes.
func Digest(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// zeros feeds holes of sparse files to the hash without reading them.
var zeros = make([]byte, 1<<20)

// digestFile is Digest for a file of the given size: the holes of a sparse
// file (SEEK_DATA/SEEK_HOLE) are hashed as the zeros they read as, without
// reading them. Filesystems without hole support report one data region.
func digestFile(f *os.File, size int64) (string, int64, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		data, err := f.Seek(off, seekData)
		if err != nil || data > size {
			data = size // ENXIO: only a hole is left
		}
		for z := data - off; z > 0; {
			n := min(z, int64(len(zeros)))
			h.Write(zeros[:n])
			z -= n
		}
		if data >= size {
			off = size
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil || hole > size {
			hole = size
		}
		if _, err := f.Seek(data, io.SeekStart); err != nil {
			return "", 0, err
		}
		n, err := io.CopyBuffer(h, io.LimitReader(f, hole-data), buf)
		if err != nil {
			return "", 0, err
		}
		if n != hole-data {
			return "", 0, fmt.Errorf("file shrank while hashing: %w", io.ErrUnexpectedEOF)
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil)), off, nil
}

// Whence values of lseek(2) for sparse files (Linux).
const (
	seekData = 3
	seekHole = 4
)

// New hashes the image at path and returns its (unsigned) manifest. An
// empty Name becomes the image's file name without its extension.
func New(path string, f Fields) (*Manifest, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return nil, err
	}
	sum, n, err := digestFile(file, st.Size())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return Of(path, sum, n, f), nil
}

// Of is the manifest of the image at path whose sha256 (hex) and size
// the caller already has, from a pass over the image it made anyway
// (mkimage rootfs: the chunk index's); New reads the image for them.
func Of(path, sha256Hex string, size int64, f Fields) *Manifest {
	if f.Name == "" {
		f.Name = baseName(path)
	}
	return &Manifest{
		Format: Format, Name: f.Name, Version: f.Version, SHA256: sha256Hex, Size: size,
		FS: f.FS, KernelRelease: f.KernelRelease, BuildTime: f.BuildTime.UTC().Format(time.RFC3339),
	}
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			p = p[i+1:]
			break
		}
	}
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '.' {
			return p[:i]
		}
	}
	return p
}

// Canonical returns the bytes a signature covers (without the domain).
func (m *Manifest) Canonical() []byte {
	c := *m
	c.Signature = ""
	b, err := json.Marshal(&c)
	if err != nil {
		panic(err) // a struct of strings and an int always encodes
	}
	return b
}

func signed(m *Manifest) []byte { return append([]byte(domain), m.Canonical()...) }

// Sign sets KeyID and Signature.
func (m *Manifest) Sign(k *PrivateKey) error {
	if k == nil || len(k.key) != ed25519.PrivateKeySize {
		return errors.New("no private key")
	}
	m.KeyID = k.Public().ID()
	m.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(k.key, signed(m)))
	return nil
}

// Marshal returns the file form: indented JSON and a newline.
func (m *Manifest) Marshal() []byte {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// WriteFile writes the manifest to path, atomically and durably: a
// manifest beside an image is what the init checks the image against.
func (m *Manifest) WriteFile(path string) error {
	if err := durable.WriteFile(path, m.Marshal(), 0o644); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// Parse reads a manifest file's bytes.
func Parse(b []byte) (*Manifest, error) {
	var m Manifest
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if m.Format != Format {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrFormat, m.Format, Format)
	}
	if len(m.SHA256) != 64 {
		return nil, fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrFormat, m.SHA256)
	}
	if _, err := hex.DecodeString(m.SHA256); err != nil {
		return nil, fmt.Errorf("%w: sha256 %q: %v", ErrFormat, m.SHA256, err)
	}
	if m.Size <= 0 {
		return nil, fmt.Errorf("%w: size %d", ErrFormat, m.Size)
	}
	if m.Chunks != "" && !digest.Valid(m.Chunks) {
		return nil, fmt.Errorf("%w: chunks %q is not sha256:<64 hex>", ErrFormat, m.Chunks)
	}
	return &m, nil
}

// ReadFile reads and parses the manifest at path.
func ReadFile(path string) (*Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// CheckSignature checks m's signature against the trusted keys. With no
// keys it checks nothing. With keys, an unsigned manifest, one signed by
// another key, and a signature that does not verify are errors.
func (m *Manifest) CheckSignature(trusted []PublicKey) error {
	if len(trusted) == 0 {
		return nil
	}
	if m.Signature == "" {
		return ErrUnsigned
	}
	sig, err := base64.StdEncoding.DecodeString(m.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: signature is not %d bytes of base64", ErrBadSignature, ed25519.SignatureSize)
	}
	var ids []string
	for _, k := range trusted {
		if k.ID() != m.KeyID {
			ids = append(ids, k.ID())
			continue
		}
		if ed25519.Verify(k.key, signed(m), sig) {
			return nil
		}
		return fmt.Errorf("%w (key %s): the manifest was changed after signing, or signed with another key of the same id", ErrBadSignature, m.KeyID)
	}
	return fmt.Errorf("%w: signed by key %q, trusted: %v", ErrUnknownKey, m.KeyID, ids)
}

// CheckImage reads the image and compares its size and sha256 with m.
// size is the file's size (from stat), checked first so a truncated copy
// fails without hashing it.
func (m *Manifest) CheckImage(r io.Reader, size int64) error {
	if size != m.Size {
		return fmt.Errorf("%w: %d bytes, manifest says %d", ErrSize, size, m.Size)
	}
	sum, n, err := Digest(r)
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	if n != m.Size {
		return fmt.Errorf("%w: read %d bytes, manifest says %d", ErrSize, n, m.Size)
	}
	if sum != m.SHA256 {
		return fmt.Errorf("%w: sha256 %s, manifest says %s", ErrDigest, sum, m.SHA256)
	}
	return nil
}

// VerifyFile checks the image at path against m: signature first (cheap,
// and an untrusted manifest says nothing about the image), then size and
// sha256.
func (m *Manifest) VerifyFile(path string, trusted []PublicKey) error {
	if err := m.CheckSignature(trusted); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != m.Size {
		return fmt.Errorf("%w: %d bytes, manifest says %d", ErrSize, st.Size(), m.Size)
	}
	sum, _, err := digestFile(f, st.Size())
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	if sum != m.SHA256 {
		return fmt.Errorf("%w: sha256 %s, manifest says %s", ErrDigest, sum, m.SHA256)
	}
	return nil
}
