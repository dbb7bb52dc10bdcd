package stage

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

// signedManifest returns the manifest of data (file form), signed with k
// when k is not nil.
func signedManifest(t *testing.T, data []byte, k *manifest.PrivateKey) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	os.WriteFile(p, data, 0o644)
	m, err := manifest.New(p, manifest.Fields{Name: "web", Version: "42", FS: "ext4", BuildTime: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if k != nil {
		if err := m.Sign(k); err != nil {
			t.Fatal(err)
		}
	}
	return m.Marshal()
}

func newKey(t *testing.T) *manifest.PrivateKey {
	t.Helper()
	k, err := manifest.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keysOf(ks ...*manifest.PrivateKey) Keys {
	var out Keys
	for _, k := range ks {
		out.Add(k.Public(), "test")
	}
	return out
}

func TestStageManifest(t *testing.T) {
	data, digest := testImage(t, 200000)
	other, _ := testImage(t, 7000)
	fleetKey, otherKey := newKey(t), newKey(t)
	signed := signedManifest(t, data, fleetKey)
	for _, tc := range []struct {
		name     string
		manifest []byte // served at URL.json; nil: 404
		keys     Keys
		hostKey  string // written to .hnboot/trusted.pub
		digest   string // Request.Digest; "-": none
		wantErr  error  // nil: staged
		download bool   // the image was downloaded
		want     string // Result.Manifest
	}{
		{"signed, key trusted", signed, keysOf(fleetKey), "", digest, nil, true, "signed, key " + fleetKey.Public().ID()},
		{"signed, key of hostpart trusted.pub", signed, Keys{}, string(fleetKey.Public().Marshal()), digest, nil, true, "signed, key " + fleetKey.Public().ID()},
		{"signed, one of two keys", signed, keysOf(otherKey, fleetKey), "", digest, nil, true, "signed, key " + fleetKey.Public().ID()},
		{"signed, no key", signed, Keys{}, "", digest, nil, true, "signed by key " + fleetKey.Public().ID() + ", not checked: no trusted key"},
		{"unsigned, no key", signedManifest(t, data, nil), Keys{}, "", digest, nil, true, "unsigned"},
		{"no manifest, no key", nil, Keys{}, "", digest, nil, true, ""},
		{"no manifest, key", nil, keysOf(fleetKey), "", digest, ErrNoManifest, false, ""},
		{"no manifest, hostpart key", nil, Keys{}, string(fleetKey.Public().Marshal()), digest, ErrNoManifest, false, ""},
		{"unsigned, key", signedManifest(t, data, nil), keysOf(fleetKey), "", digest, manifest.ErrUnsigned, false, ""},
		{"wrong key", signedManifest(t, data, otherKey), keysOf(fleetKey), "", digest, manifest.ErrUnknownKey, false, ""},
		{"tampered", bytes.Replace(signed, []byte(`"42"`), []byte(`"43"`), 1), keysOf(fleetKey), "", digest, manifest.ErrBadSignature, false, ""},
		{"digest mismatch", signedManifest(t, other, fleetKey), keysOf(fleetKey), "", digest, manifest.ErrDigest, false, ""},
		{"digest mismatch, no key", signedManifest(t, other, nil), Keys{}, "", digest, manifest.ErrDigest, false, ""},
		{"digest mismatch found after download", signedManifest(t, other, fleetKey), keysOf(fleetKey), "", "-", manifest.ErrDigest, true, ""},
		{"not a manifest", []byte("<html>"), Keys{}, "", digest, manifest.ErrFormat, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newBlobServer(t, data)
			srv.manifest = tc.manifest
			dir := newHostpart(t)
			if tc.hostKey != "" {
				os.MkdirAll(filepath.Join(dir, ".hnboot"), 0o755)
				os.WriteFile(filepath.Join(dir, layout.TrustedKey), []byte(tc.hostKey), 0o644)
			}
			// A manifest left by an earlier staging must never describe this image.
			os.WriteFile(filepath.Join(dir, layout.ManifestFor(layout.New)), []byte("stale"), 0o644)
			req := Request{Source: HTTPSource{URL: srv.URL + "/blobs/" + digest}, Digest: tc.digest, Keys: tc.keys, Reserve: 1}
			if tc.digest == "-" {
				req.Digest = ""
			}
			res, err := Stage(context.Background(), dir, req)
			staged, _ := os.ReadFile(filepath.Join(dir, layout.New))
			gotManifest, merr := os.ReadFile(filepath.Join(dir, layout.ManifestFor(layout.New)))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Stage = %v, want staged", err)
				}
				if !bytes.Equal(staged, data) {
					t.Errorf("%s is not the image", layout.New)
				}
				if tc.manifest == nil && merr == nil {
					t.Errorf("%s = %q, want none (the source has none; a stale one must go)", layout.ManifestFor(layout.New), gotManifest)
				}
				if tc.manifest != nil && !bytes.Equal(gotManifest, tc.manifest) {
					t.Errorf("%s = %q (%v), want the source's manifest", layout.ManifestFor(layout.New), gotManifest, merr)
				}
				if res.Manifest != tc.want {
					t.Errorf("Result.Manifest = %q, want %q", res.Manifest, tc.want)
				}
				return
			}
			var me *ManifestError
			if !errors.Is(err, tc.wantErr) || !errors.As(err, &me) {
				t.Fatalf("Stage = %v, want a ManifestError wrapping %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), ".json") || me.Fix == "" {
				t.Errorf("Stage error %q names no manifest file or fix", err)
			}
			if staged != nil {
				t.Errorf("%s staged despite the manifest error", layout.New)
			}
			if _, err := os.Stat(filepath.Join(dir, layout.NewPart)); err == nil && tc.download {
				t.Errorf("%s kept after the download failed its manifest", layout.NewPart)
			}
			if downloaded := srv.served > 0; downloaded != tc.download {
				t.Errorf("image downloaded = %v, want %v (a bad manifest is refused before downloading when it can be)", downloaded, tc.download)
			}
		})
	}
}

// A FILE source's manifest is FILE.json.
func TestStageFileManifest(t *testing.T) {
	data, digest := testImage(t, 5000)
	k := newKey(t)
	src := filepath.Join(t.TempDir(), "web.img")
	os.WriteFile(src, data, 0o644)
	os.WriteFile(src+".json", signedManifest(t, data, k), 0o644)
	dir := newHostpart(t)
	res, err := Stage(context.Background(), dir, Request{Source: FileSource{src}, Keys: keysOf(k), Reserve: 1})
	if err != nil || res.Digest != digest {
		t.Fatalf("Stage(FILE with FILE.json) = %v, %v; want %s staged", res.Digest, err, digest)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, layout.ManifestFor(layout.New))); !bytes.Equal(b, mustRead(t, src+".json")) {
		t.Errorf("%s = %q, want the bytes of %s.json", layout.ManifestFor(layout.New), b, src)
	}
	if err := Unstage(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{layout.New, layout.ManifestFor(layout.New)} {
		if exists(dir, f) {
			t.Errorf("Unstage left %s", f)
		}
	}
}

// A trusted.pub on hostpart that does not parse refuses everything, as in
// the init, rather than accept unsigned images.
func TestStageBrokenTrustedKey(t *testing.T) {
	data, _ := testImage(t, 5000)
	src := filepath.Join(t.TempDir(), "web.img")
	os.WriteFile(src, data, 0o644)
	dir := newHostpart(t)
	os.MkdirAll(filepath.Join(dir, ".hnboot"), 0o755)
	os.WriteFile(filepath.Join(dir, layout.TrustedKey), []byte("garbage\n"), 0o644)
	_, err := Stage(context.Background(), dir, Request{Source: FileSource{src}, Reserve: 1})
	if err == nil || !strings.Contains(err.Error(), layout.TrustedKey) || exists(dir, layout.New) {
		t.Fatalf("Stage with a broken %s = %v, staged %v; want an error naming it, nothing staged", layout.TrustedKey, err, exists(dir, layout.New))
	}
}

func TestReadKeys(t *testing.T) {
	k := newKey(t)
	pub := filepath.Join(t.TempDir(), "fleet.key.pub")
	os.WriteFile(pub, k.Public().Marshal(), 0o644)
	priv := filepath.Join(t.TempDir(), "fleet.key")
	os.WriteFile(priv, k.Marshal(), 0o600)
	for _, tc := range []struct {
		specs []string
		n     int
		err   string
	}{
		{nil, 0, ""},
		{[]string{pub}, 1, ""},
		{[]string{strings.TrimSpace(string(k.Public().Marshal())), pub, " "}, 2, ""},
		{[]string{filepath.Join(t.TempDir(), "missing.pub")}, 0, "missing.pub"},
		{[]string{priv}, 0, "private"},
		{[]string{"hnboot-ed25519-public AAAA"}, 0, "32 bytes"},
	} {
		got, err := ReadKeys(tc.specs...)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ReadKeys(%q) = %v, want an error containing %q", tc.specs, err, tc.err)
			}
			continue
		}
		if err != nil || len(got.Keys) != tc.n {
			t.Errorf("ReadKeys(%q) = %d keys, %v; want %d", tc.specs, len(got.Keys), err, tc.n)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
