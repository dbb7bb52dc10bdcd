package boot

import (
	"crypto/rand"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/hostpart"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

// stagedImage writes a small ext4 image as dir/hn-root-new.img.
func stagedImage(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, layout.New)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 4<<20); err != nil {
		t.Fatal(err)
	}
	mkfs := "/sbin/mkfs.ext4"
	if out, err := exec.Command(mkfs, "-q", "-F", "-E", "root_owner=0:0", p).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s (apt-get install e2fsprogs)", mkfs, p, err, out)
	}
	return p
}

func TestVerifyStaged(t *testing.T) {
	key, err := manifest.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := manifest.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	for _, tt := range []struct {
		name     string
		manifest string // "", "unsigned", "signed", "other", "tampered-image", "garbage"
		keys     []*manifest.PrivateKey
		badKey   bool // a key file that does not parse
		want     string
	}{
		{"no manifest, no key", "", nil, false, ""},
		{"unsigned manifest, no key", "unsigned", nil, false, ""},
		{"signed manifest, no key", "signed", nil, false, ""},
		{"signed manifest, trusted key", "signed", []*manifest.PrivateKey{key}, false, ""},
		{"signed, one of two keys", "signed", []*manifest.PrivateKey{other, key}, false, ""},
		{"no manifest, key", "", []*manifest.PrivateKey{key}, false, "has no manifest"},
		{"unsigned manifest, key", "unsigned", []*manifest.PrivateKey{key}, false, "not signed"},
		{"signed by another key", "other", []*manifest.PrivateKey{key}, false, "not trusted"},
		{"image changed after signing", "tampered-image", []*manifest.PrivateKey{key}, false, "sha256 does not match"},
		{"image changed, no key", "tampered-image", nil, false, "sha256 does not match"},
		{"manifest is garbage", "garbage", nil, false, "not an hnboot manifest"},
		{"unreadable key file", "signed", nil, true, "trusted key"},
		{"unreadable key file, no manifest", "", nil, true, "has no manifest"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			img := stagedImage(t, dir)
			if tt.manifest != "" {
				m, err := manifest.New(img, manifest.Fields{FS: "ext4", BuildTime: time.Unix(0, 0)})
				if err != nil {
					t.Fatal(err)
				}
				switch tt.manifest {
				case "signed", "tampered-image":
					m.Sign(key)
				case "other":
					m.Sign(other)
				}
				body := m.Marshal()
				if tt.manifest == "garbage" {
					body = []byte("{not json")
				}
				if err := os.WriteFile(layout.ManifestFor(img), body, 0o644); err != nil {
					t.Fatal(err)
				}
				if tt.manifest == "tampered-image" {
					f, err := os.OpenFile(img, os.O_WRONLY, 0)
					if err != nil {
						t.Fatal(err)
					}
					f.WriteAt([]byte("evil"), 2<<20)
					f.Close()
				}
			}
			var paths []string
			for i, k := range tt.keys {
				p := filepath.Join(dir, "key"+string(rune('0'+i))+".pub")
				if err := os.WriteFile(p, k.Public().Marshal(), 0o644); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			if tt.badKey {
				p := filepath.Join(dir, "bad.pub")
				os.WriteFile(p, []byte("ssh-ed25519 AAAA"), 0o644)
				paths = append(paths, p)
			}
			paths = append(paths, filepath.Join(dir, "missing.pub"))
			err := verifyStaged(dir, layout.New, loadTrust(paths...), hostpart.LoadCache(dir), log)
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("verifyStaged(%s) = %v, want %q", tt.name, err, tt.want)
			}
		})
	}
}

func TestVerifyStagedFilesystem(t *testing.T) {
	dir := t.TempDir()
	img := stagedImage(t, dir)
	if err := os.Truncate(img, 1<<20); err != nil {
		t.Fatal(err)
	}
	err := verifyStaged(dir, layout.New, trust{}, hostpart.LoadCache(dir), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("verifyStaged(truncated image) = %v, want an error saying truncated", err)
	}
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := verifyStaged(dir, layout.New, trust{}, hostpart.LoadCache(dir), slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "not a root filesystem") {
		t.Errorf("verifyStaged(zeros) = %v, want an error saying not a root filesystem", err)
	}
}

// A digest the cache knows (the staging put it there when it wrote and
// hashed the image) is not computed again: verification compares the
// manifest with it.
func TestVerifyStagedCached(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name   string
		cached string // "right", "wrong"
		want   string
	}{
		{"cache agrees", "right", ""},
		{"cache disagrees", "wrong", "does not match its manifest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := stagedImage(t, dir)
			m, err := manifest.New(img, manifest.Fields{FS: "ext4", BuildTime: time.Unix(0, 0)})
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(layout.ManifestFor(img), m.Marshal(), 0o644)
			d := "sha256:" + m.SHA256
			if tc.cached == "wrong" {
				d = "sha256:" + strings.Repeat("0", 64)
			}
			if err := hostpart.Remember(dir, layout.New, d); err != nil {
				t.Fatal(err)
			}
			err = verifyStaged(dir, layout.New, trust{}, hostpart.LoadCache(dir), log)
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("verifyStaged = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestMoveManifests(t *testing.T) {
	for _, tt := range []struct {
		action rotate.Action
		before []string
		want   string
	}{
		{rotate.Promote, []string{"hn-root.img.json", "hn-root-new.img.json"}, "[hn-root-old.img.json:current hn-root.img.json:new]"},
		{rotate.Promote, []string{"hn-root-old.img.json", "hn-root-new.img.json"}, "[hn-root.img.json:new]"},
		{rotate.Revert, []string{"hn-root.img.json", "hn-root-old.img.json"}, "[hn-root-broken.img.json:current hn-root.img.json:old]"},
		{rotate.Reject, []string{"hn-root.img.json", "hn-root-new.img.json"}, "[hn-root-new.img.rejected.json:new hn-root.img.json:current]"},
		{rotate.Boot, []string{"hn-root.img.json"}, "[hn-root.img.json:current]"},
	} {
		dir := t.TempDir()
		label := map[string]string{"hn-root.img.json": "current", "hn-root-new.img.json": "new", "hn-root-old.img.json": "old"}
		for _, n := range tt.before {
			os.WriteFile(filepath.Join(dir, n), []byte(label[n]), 0o644)
		}
		moveManifests(dir, tt.action, slog.New(slog.DiscardHandler))
		ents, _ := os.ReadDir(dir)
		var got []string
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			got = append(got, e.Name()+":"+string(b))
		}
		sort.Strings(got)
		if s := "[" + strings.Join(got, " ") + "]"; s != tt.want {
			t.Errorf("moveManifests(%v, %v) left %s, want %s", tt.action, tt.before, s, tt.want)
		}
	}
}
