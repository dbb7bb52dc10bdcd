package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/hnboot/hnboot/hostpart"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/blkid"
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
func verifyStaged(dir, name string, tr trust, cache *hostpart.Cache, log *slog.Logger) error {
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

// manifestMoves are the renames of manifests that follow a rotation's
// renames of images, in order (each source is renamed only if present).
func manifestMoves(a rotate.Action) [][2]string {
	j := layout.ManifestFor
	switch a {
	case rotate.Promote:
		return [][2]string{{j(layout.Current), j(layout.Old)}, {j(layout.New), j(layout.Current)}}
	case rotate.Revert:
		return [][2]string{{j(layout.Current), j(layout.Broken)}, {j(layout.Old), j(layout.Current)}}
	case rotate.Reject:
		return [][2]string{{j(layout.New), j(layout.Rejected)}}
	}
	return nil
}

// moveManifests keeps each manifest beside its image after a rotation. It
// is not crash-critical: a manifest only describes an image, and the
// digest of any image can always be recomputed. A stale manifest of the
// destination name is removed first so it never describes another image.
func moveManifests(dir string, a rotate.Action, log *slog.Logger) {
	for _, mv := range manifestMoves(a) {
		src, dst := filepath.Join(dir, mv[0]), filepath.Join(dir, mv[1])
		if _, err := os.Stat(src); err != nil {
			if err := os.Remove(dst); err == nil {
				log.Info("removed a manifest that no longer describes its image", "file", mv[1])
			}
			continue
		}
		if err := os.Rename(src, dst); err != nil {
			log.Warn("cannot move manifest beside its image", "from", mv[0], "to", mv[1], "err", err)
		}
	}
}
