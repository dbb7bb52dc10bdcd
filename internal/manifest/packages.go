package manifest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/hnboot/hnboot/internal/durable"
)

// The package list of an image is a signed companion of its manifest,
// IMAGE.packages.json beside IMAGE.json, not a field of it: the init and
// the agent of hosts already in the field verify manifests by their
// canonical bytes (the Manifest struct they know), and read at most 64
// KiB of one; a list of two thousand packages inside the manifest would
// fail both. The list names the image's sha256 and is signed by the same
// key over its own domain, so it cannot be passed off for another image.
const (
	PackagesFormat = "hnboot-packages-1"
	packagesDomain = "hnboot-packages-v1\n"
)

// Package sources.
const (
	SourceDpkg = "dpkg" // var/lib/dpkg/status of the tree
	SourceNone = "none" // the tree has no package database mkimage knows
)

// Package is one installed package.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
}

// PackageList is an image's installed packages.
type PackageList struct {
	Format    string    `json:"format"`
	SHA256    string    `json:"sha256"` // of the image, as in its manifest
	Source    string    `json:"source"`
	Note      string    `json:"note,omitempty"`
	Packages  []Package `json:"packages"`
	KeyID     string    `json:"key_id,omitempty"`
	Signature string    `json:"signature,omitempty"`
}

// PackagesFor is the package list's path for the image at path.
func PackagesFor(image string) string { return image + ".packages.json" }

// NewPackageList lists pkgs (sorted by name and architecture) for the
// image with hex sha256 sum.
func NewPackageList(sum, source, note string, pkgs []Package) *PackageList {
	p := append([]Package{}, pkgs...)
	sort.Slice(p, func(i, j int) bool {
		if p[i].Name != p[j].Name {
			return p[i].Name < p[j].Name
		}
		return p[i].Arch < p[j].Arch
	})
	return &PackageList{Format: PackagesFormat, SHA256: sum, Source: source, Note: note, Packages: p}
}

func (l *PackageList) signed() []byte {
	c := *l
	c.Signature = ""
	b, err := json.Marshal(&c)
	if err != nil {
		panic(err)
	}
	return append([]byte(packagesDomain), b...)
}

// Sign sets KeyID and Signature.
func (l *PackageList) Sign(k *PrivateKey) error {
	if k == nil || len(k.key) != ed25519.PrivateKeySize {
		return errors.New("no private key")
	}
	l.KeyID = k.Public().ID()
	l.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(k.key, l.signed()))
	return nil
}

// CheckSignature is Manifest.CheckSignature for a package list.
func (l *PackageList) CheckSignature(trusted []PublicKey) error {
	if len(trusted) == 0 {
		return nil
	}
	if l.Signature == "" {
		return ErrUnsigned
	}
	sig, err := base64.StdEncoding.DecodeString(l.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: signature is not %d bytes of base64", ErrBadSignature, ed25519.SignatureSize)
	}
	for _, k := range trusted {
		if k.ID() == l.KeyID {
			if ed25519.Verify(k.key, l.signed(), sig) {
				return nil
			}
			return fmt.Errorf("%w (key %s): the package list was changed after signing", ErrBadSignature, l.KeyID)
		}
	}
	return fmt.Errorf("%w: signed by key %q", ErrUnknownKey, l.KeyID)
}

// Marshal is the file form: indented JSON.
func (l *PackageList) Marshal() []byte {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// WriteFile writes the list atomically and durably.
func (l *PackageList) WriteFile(path string) error {
	if err := durable.WriteFile(path, l.Marshal(), 0o644); err != nil {
		return fmt.Errorf("write package list: %w", err)
	}
	return nil
}

// ParsePackages reads a package list's bytes.
func ParsePackages(b []byte) (*PackageList, error) {
	var l PackageList
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&l); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if l.Format != PackagesFormat {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrFormat, l.Format, PackagesFormat)
	}
	if _, err := hex.DecodeString(l.SHA256); err != nil || len(l.SHA256) != 64 {
		return nil, fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrFormat, l.SHA256)
	}
	return &l, nil
}

// ReadPackages reads and parses the package list at path.
func ReadPackages(path string) (*PackageList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	l, err := ParsePackages(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// PackageChange is a package in both lists with another version.
type PackageChange struct {
	Name, Arch, From, To string
}

// DiffPackages compares two package lists (by name and architecture).
func DiffPackages(a, b []Package) (added, removed []Package, changed []PackageChange) {
	type key struct{ n, a string }
	am, bm := map[key]Package{}, map[key]Package{}
	for _, p := range a {
		am[key{p.Name, p.Arch}] = p
	}
	for _, p := range b {
		bm[key{p.Name, p.Arch}] = p
		if o, ok := am[key{p.Name, p.Arch}]; !ok {
			added = append(added, p)
		} else if o.Version != p.Version {
			changed = append(changed, PackageChange{Name: p.Name, Arch: p.Arch, From: o.Version, To: p.Version})
		}
	}
	for _, p := range a {
		if _, ok := bm[key{p.Name, p.Arch}]; !ok {
			removed = append(removed, p)
		}
	}
	sort.Slice(added, func(i, j int) bool { return added[i].Name < added[j].Name })
	sort.Slice(removed, func(i, j int) bool { return removed[i].Name < removed[j].Name })
	sort.Slice(changed, func(i, j int) bool { return changed[i].Name < changed[j].Name })
	return added, removed, changed
}
