package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/stage"
)

// trust is the signing policy of this boot. The public keys staged images
// must be signed with are built into the initramfs (mkimage initramfs
// --trust KEY.pub, layout.TrustedKeyInitramfs) and on hostpart
// (layout.TrustedKey); both may be present, a signature by either is
// accepted. With no key, a manifest beside the staged image is still
// checked (size, sha256) but not required.
type trust struct {
	keys    []manifest.PublicKey
	sources []string // files the keys came from
	// err is set when a key file exists but cannot be read or parsed: the
	// policy then rejects every staged image rather than accept unsigned ones.
	err error
}

func (t trust) required() bool { return len(t.keys) > 0 || t.err != nil }

// loadTrust reads the trusted keys from the given files; missing files are
// not errors.
func loadTrust(paths ...string) trust {
	var t trust
	for _, p := range paths {
		k, err := manifest.ReadPublicKey(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.err = errors.Join(t.err, fmt.Errorf("trusted key %s: %w", p, err))
			continue
		}
		t.keys = append(t.keys, k)
		t.sources = append(t.sources, p+" (key "+k.ID()+")")
	}
	return t
}

func (t trust) describe() string {
	var s []string
	s = append(s, t.sources...)
	if t.err != nil {
		s = append(s, t.err.Error())
	}
	return strings.Join(s, ", ")
}

// stageKeys are the keys a download must be signed with: the
// initramfs's (stage adds hostpart's .hnboot/trusted.pub itself).
func (b *Boot) stageKeys() (stage.Keys, error) {
	var k stage.Keys
	p := filepath.Join(b.Paths.Initramfs, layout.TrustedKeyInitramfs)
	pk, err := manifest.ReadPublicKey(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return k, nil
	case err != nil:
		return k, fmt.Errorf("trusted key %s: %w", p, err)
	}
	k.Add(pk, p)
	return k, nil
}

// verifyStaged checks the staged image dir/name before promotion: the
// filesystem (superblock, size), then its manifest dir/name.json when
// present (size, sha256) and its signature when keys are trusted. With a
// trusted key, an image without a manifest, with an unsigned one or one
// signed by another key is refused. A digest the cache knows (the
// staging that just wrote the image put it there) is not computed again.
func verifyStaged(dir, name string, tr trust, cache *digestcache.Cache, log *slog.Logger) error {
	path := filepath.Join(dir, name)
	if err := blkid.CheckImageFile(path); err != nil {
		return err
	}
	mpath := layout.ManifestFor(path)
	m, err := manifest.ReadFile(mpath)
	if errors.Is(err, fs.ErrNotExist) {
		if tr.required() {
			return fmt.Errorf("%s has no manifest %s, and a signed one is required (trusted: %s): stage IMAGE.json from mkimage rootfs --sign-key beside it", name, filepath.Base(mpath), tr.describe())
		}
		log.Info("staged image has no manifest; checked its filesystem only", "image", name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(mpath), err)
	}
	if tr.err != nil {
		return fmt.Errorf("cannot check the signature of %s: %w; fix or remove the key file", name, tr.err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if d := cache.Lookup(name, fi); d != "" {
		if err := m.CheckSignature(tr.keys); err != nil {
			return fmt.Errorf("%s does not match its manifest %s: %w", name, filepath.Base(mpath), err)
		}
		switch {
		case "sha256:"+m.SHA256 != d:
			return fmt.Errorf("%s does not match its manifest %s: %w: it says sha256:%s, the image is %s", name, filepath.Base(mpath), manifest.ErrDigest, m.SHA256, d)
		case m.Size != fi.Size():
			return fmt.Errorf("%s does not match its manifest %s: %w: it says %d bytes, the image has %d", name, filepath.Base(mpath), manifest.ErrSize, m.Size, fi.Size())
		}
	} else {
		if err := m.VerifyFile(path, tr.keys); err != nil {
			return fmt.Errorf("%s does not match its manifest %s: %w", name, filepath.Base(mpath), err)
		}
		cache.Put(name, fi, "sha256:"+m.SHA256)
	}
	signed := "no trusted key configured: signature not required"
	if len(tr.keys) > 0 {
		signed = "signature valid, key " + m.KeyID
	}
	log.Info("staged image verified against its manifest", "image", name, "name", m.Name, "version", m.Version, "sha256", m.SHA256, "kernel", m.KernelRelease, "signature", signed)
	return nil
}

// completeImage is the rotation's Complete (rotate.Options): is the image
// dir/name complete, and does the manifest beside it describe it? The
// filesystem is blkid.CheckImageFile's (a known superblock, not shorter
// than it says). A manifest must parse, name the file's size, and name its
// sha256 where that is known without hashing a big image at boot: from
// the digest cache, or by hashing images up to checkin.HashLimit (cached,
// so once per image). Past that a manifest of the right size is trusted,
// as the check-in trusts it.
func completeImage(dir string, cache *digestcache.Cache) func(name string) error {
	return func(name string) error {
		path := filepath.Join(dir, name)
		if err := blkid.CheckImageFile(path); err != nil {
			if errors.Is(err, blkid.ErrNotImage) {
				return fmt.Errorf("%w: %w", rotate.ErrIncomplete, err)
			}
			return err
		}
		mname := filepath.Base(layout.ManifestFor(path))
		m, err := manifest.ReadFile(layout.ManifestFor(path))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil
		case errors.Is(err, manifest.ErrFormat):
			return fmt.Errorf("%w: %w", rotate.ErrStaleManifest, err)
		case err != nil:
			return err
		}
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		if m.Size != st.Size() {
			return fmt.Errorf("%w: %s says %d bytes, %s has %d", rotate.ErrStaleManifest, mname, m.Size, name, st.Size())
		}
		want := "sha256:" + m.SHA256
		got := cache.Lookup(name, st)
		if got == "" && st.Size() <= checkin.HashLimit {
			err := m.VerifyFile(path, nil) // size and sha256; no keys: the signature was checked at promotion
			if errors.Is(err, manifest.ErrDigest) {
				return fmt.Errorf("%w: %s: %w", rotate.ErrStaleManifest, mname, err)
			}
			if err != nil {
				return err
			}
			cache.Put(name, st, want)
			return nil
		}
		if got != "" && got != want {
			return fmt.Errorf("%w: %s says %s, %s is %s", rotate.ErrStaleManifest, mname, want, name, got)
		}
		return nil
	}
}
