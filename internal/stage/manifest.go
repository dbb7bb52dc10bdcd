package stage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

// Manifests on hostpart. The init checks hn-root-new.img against
// hn-root-new.img.json before promoting it, and with a trusted key refuses
// a staged image without a valid signed manifest.
const (
	maxManifest = 64 << 10                                 // bytes; a manifest is about 400
	keyPrefix   = "hnboot-ed25519-public "                 // the KEY.pub line, given inline
	signHint    = "sign it with mkimage rootfs --sign-key" // how to make a manifest
)

// ErrNoManifest is returned (wrapped) by ManifestSource.Manifest when the
// source has no manifest, and by Stage when one is required.
var ErrNoManifest = errors.New("there is none")

// ManifestSource is a Source that can fetch the manifest published beside
// its image (IMAGE.json, written by mkimage rootfs).
type ManifestSource interface {
	// Manifest returns the manifest's bytes, or an error wrapping
	// ErrNoManifest when the source has none.
	Manifest(ctx context.Context) ([]byte, error)
	// ManifestName is where the manifest comes from, for messages.
	ManifestName() string
}

// ManifestError is a manifest that is missing while required, unsigned,
// badly signed, or not describing the downloaded image. Like a
// DigestError, nothing is staged and retrying soon will not help.
type ManifestError struct {
	Source string // where the manifest came (or should have come) from
	Err    error
	Fix    string
}

func (e *ManifestError) Error() string {
	return fmt.Sprintf("manifest %s: %v; nothing staged: %s", e.Source, e.Err, e.Fix)
}

func (e *ManifestError) Unwrap() error { return e.Err }

// ManifestName implements ManifestSource.
func (s HTTPSource) ManifestName() string { return s.URL + layout.ManifestSuffix }

// Manifest implements ManifestSource: GET URL.json; 404 is ErrNoManifest.
func (s HTTPSource) Manifest(ctx context.Context) ([]byte, error) {
	u := s.ManifestName()
	resp, err := s.client().Get(ctx, u, 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case 200:
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
		if err != nil {
			return nil, fmt.Errorf("GET %s: %w", u, err)
		}
		if len(b) > maxManifest {
			return nil, fmt.Errorf("GET %s: larger than %d bytes, not a manifest", u, maxManifest)
		}
		return b, nil
	case 404, 410:
		return nil, fmt.Errorf("GET %s: %s: %w", u, resp.Status, ErrNoManifest)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return nil, fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
}

// ManifestName implements ManifestSource.
func (s FileSource) ManifestName() string { return layout.ManifestFor(s.Path) }

// Manifest implements ManifestSource: FILE.json beside the image.
func (s FileSource) Manifest(context.Context) ([]byte, error) {
	p := s.ManifestName()
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", p, ErrNoManifest)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifest {
		return nil, fmt.Errorf("%s: larger than %d bytes, not a manifest", p, maxManifest)
	}
	return b, nil
}

// Keys are the public keys staged images must be signed with, and where
// each came from (for messages).
type Keys struct {
	Keys    []manifest.PublicKey
	Sources []string
}

// Add appends k, read from source.
func (k *Keys) Add(pk manifest.PublicKey, source string) {
	k.Keys = append(k.Keys, pk)
	k.Sources = append(k.Sources, source+" (key "+pk.ID()+")")
}

func (k Keys) String() string { return strings.Join(k.Sources, ", ") }

// ReadKeys reads trusted keys: each spec is a KEY.pub file (mkimage
// keygen) or the key's line itself ("hnboot-ed25519-public BASE64").
func ReadKeys(specs ...string) (Keys, error) {
	var k Keys
	for _, s := range specs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if strings.HasPrefix(s, keyPrefix) {
			pk, err := manifest.ParsePublicKey([]byte(s))
			if err != nil {
				return k, fmt.Errorf("trusted key %q: %w", s, err)
			}
			k.Add(pk, "inline key")
			continue
		}
		pk, err := manifest.ReadPublicKey(s)
		if err != nil {
			return k, fmt.Errorf("trusted key: %w (want a KEY.pub from mkimage keygen)", err)
		}
		k.Add(pk, s)
	}
	return k, nil
}

// trusted is req's keys plus hostpart's .hnboot/trusted.pub, which the init
// trusts too. A trusted.pub that exists but does not parse is an error:
// staging must not fall back to accepting unsigned images.
func trusted(dir string, k Keys) (Keys, error) {
	p := filepath.Join(dir, layout.TrustedKey)
	pk, err := manifest.ReadPublicKey(p)
	if errors.Is(err, fs.ErrNotExist) {
		return k, nil
	}
	if err != nil {
		return k, fmt.Errorf("stage: %w; fix or remove it (the init rejects every staged image while it is broken)", err)
	}
	out := Keys{Keys: append([]manifest.PublicKey(nil), k.Keys...), Sources: append([]string(nil), k.Sources...)}
	out.Add(pk, p)
	return out, nil
}

// fetchManifest gets and checks the manifest before anything is
// downloaded: present when keys are trusted, well-formed, signed by a
// trusted key, and naming the digest and size asked for. nil, nil: no
// manifest and none required.
func fetchManifest(ctx context.Context, req Request, keys Keys) (*manifest.Manifest, []byte, error) {
	ms, ok := req.Source.(ManifestSource)
	name := req.Source.String() + layout.ManifestSuffix
	if ok {
		name = ms.ManifestName()
	}
	merr := func(err error, fix string) error { return &ManifestError{Source: name, Err: err, Fix: fix} }
	var b []byte
	err := ErrNoManifest
	if ok {
		b, err = ms.Manifest(ctx)
	}
	if errors.Is(err, ErrNoManifest) {
		if len(keys.Keys) == 0 {
			return nil, nil, nil
		}
		return nil, nil, merr(fmt.Errorf("%w, and a signed manifest is required (trusted: %s)", ErrNoManifest, keys),
			"publish the IMAGE.json of mkimage rootfs --sign-key beside the image")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("stage: manifest: %w", err) // transient: retried
	}
	m, err := manifest.Parse(b)
	if err != nil {
		return nil, nil, merr(err, "publish the IMAGE.json written by mkimage rootfs beside the image")
	}
	if err := m.CheckSignature(keys.Keys); err != nil {
		return nil, nil, merr(fmt.Errorf("%w (trusted: %s)", err, keys),
			signHint+" and a trusted key, or trust its public key (agent trusted_keys:, imaged stage --key, mkimage initramfs --trust)")
	}
	if req.Digest != "" && "sha256:"+m.SHA256 != req.Digest {
		return nil, nil, merr(fmt.Errorf("%w: it describes sha256:%s, the image asked for is %s", manifest.ErrDigest, m.SHA256, req.Digest),
			"publish the IMAGE.json written with this image")
	}
	if req.Size > 0 && m.Size != req.Size {
		return nil, nil, merr(fmt.Errorf("%w: it says %d bytes, the server announced %d", manifest.ErrSize, m.Size, req.Size),
			"publish the IMAGE.json written with this image")
	}
	return m, b, nil
}

// checkManifest compares a manifest with the downloaded image.
func checkManifest(m *manifest.Manifest, name, digest string, size int64) error {
	fix := "publish the IMAGE.json written with this image"
	if "sha256:"+m.SHA256 != digest {
		return &ManifestError{Source: name, Err: fmt.Errorf("%w: it says sha256:%s, the download is %s", manifest.ErrDigest, m.SHA256, digest), Fix: fix}
	}
	if m.Size != size {
		return &ManifestError{Source: name, Err: fmt.Errorf("%w: it says %d bytes, the download is %d", manifest.ErrSize, m.Size, size), Fix: fix}
	}
	return nil
}
