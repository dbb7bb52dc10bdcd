package main

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

func hostDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestHostCommands(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string
		args    []string
		errHas  string
		outHas  []string
		present map[string]bool // files after the command
	}{
		{"revert without old", map[string]string{layout.Current: "a"}, []string{"revert"}, "no hn-root-old.img", nil, map[string]bool{layout.RevertTrigger: false}},
		{"revert", map[string]string{layout.Current: "b", layout.Old: "a"}, []string{"revert"}, "", []string{"wrote system-revert", "Reboot to apply"}, map[string]bool{layout.RevertTrigger: true}},
		{"mark-good", map[string]string{layout.Current: "b", layout.Trial: "2\n"}, []string{"mark-good"}, "", []string{"confirmed hn-root.img", "2 tries left"}, map[string]bool{layout.Trial: false}},
		{"mark-good not on trial", map[string]string{layout.Current: "b"}, []string{"mark-good"}, "", []string{"not on trial"}, nil},
		{"status", map[string]string{layout.Current: "b", layout.New: "c", layout.Trial: "1\n"}, []string{"status"}, "",
			[]string{"SLOT", "current  hn-root.img", "new      hn-root-new.img", "1 tries left", "promote at the next boot"}, nil},
		{"stage a file", map[string]string{layout.Current: "b"}, []string{"stage"}, "", []string{"staged hn-root-new.img: sha256:"}, map[string]bool{layout.New: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := hostDir(t, tc.files)
			args := append([]string{tc.args[0], "--hostpart", dir}, tc.args[1:]...)
			if tc.args[0] == "stage" {
				src := filepath.Join(t.TempDir(), "img")
				os.WriteFile(src, []byte("new image"), 0o644)
				args = append(args, src)
			}
			out, stderr, code := imaged(args...)
			if (code != 0) != (tc.errHas != "") || !strings.Contains(stderr, tc.errHas) {
				t.Fatalf("imaged %v = status %d, %q; want an error containing %q", tc.args, code, stderr, tc.errHas)
			}
			for _, s := range tc.outHas {
				if !strings.Contains(out, s) {
					t.Errorf("imaged %v output lacks %q:\n%s", tc.args, s, out)
				}
			}
			for name, want := range tc.present {
				_, serr := os.Stat(filepath.Join(dir, name))
				if got := serr == nil; got != want {
					t.Errorf("after imaged %v, %s present = %v, want %v", tc.args, name, got, want)
				}
			}
		})
	}
}

func TestStatusJSON(t *testing.T) {
	dir := hostDir(t, map[string]string{layout.Current: "b", layout.Old: "a"})
	out, stderr, code := imaged("status", "--json", "--hostpart", dir)
	if code != 0 {
		t.Fatal(stderr)
	}
	var s Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if len(s.Images) != 4 || !s.Images[0].Present || !strings.HasPrefix(s.Images[0].Digest, "sha256:") || !s.Images[1].Present {
		t.Errorf("status --json images = %+v", s.Images)
	}
}

func TestHostCommandsNeedHostpart(t *testing.T) {
	_, stderr, code := imaged("status", "--hostpart", filepath.Join(t.TempDir(), "missing"))
	if code != 1 || !strings.Contains(stderr, "--hostpart") {
		t.Errorf("status with a missing --hostpart = status %d, %q; want 1 and an error naming it", code, stderr)
	}
}

// imaged stage --key requires FILE.json signed by that key.
func TestStageKey(t *testing.T) {
	src := t.TempDir()
	k, err := manifest.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(src, "fleet.key.pub")
	os.WriteFile(pub, k.Public().Marshal(), 0o644)
	signedImg, bareImg := filepath.Join(src, "signed.img"), filepath.Join(src, "bare.img")
	os.WriteFile(signedImg, []byte("signed image"), 0o644)
	os.WriteFile(bareImg, []byte("bare image"), 0o644)
	m, err := manifest.New(signedImg, manifest.Fields{Name: "web", Version: "42"})
	if err != nil {
		t.Fatal(err)
	}
	m.Sign(k)
	m.WriteFile(signedImg + ".json")
	for _, tc := range []struct {
		name   string
		args   []string
		errHas string
		outHas string
		staged bool
	}{
		{"signed", []string{"--key", pub, signedImg}, "", "manifest hn-root-new.img.json (signed, key " + k.Public().ID() + ")", true},
		{"no manifest", []string{"--key", pub, bareImg}, bareImg + ".json: there is none, and a signed manifest is required", "", false},
		{"no manifest, no key", []string{bareImg}, "", "staged hn-root-new.img", true},
		{"bad key file", []string{"--key", signedImg, signedImg}, "--key", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := hostDir(t, map[string]string{layout.Current: "b"})
			out, stderr, code := imaged(append([]string{"stage", "--hostpart", dir}, tc.args...)...)
			if (code != 0) != (tc.errHas != "") || !strings.Contains(stderr, tc.errHas) {
				t.Fatalf("imaged stage %v = status %d, %q; want an error containing %q", tc.args, code, stderr, tc.errHas)
			}
			if !strings.Contains(out, tc.outHas) {
				t.Errorf("imaged stage %v output lacks %q:\n%s", tc.args, tc.outHas, out)
			}
			if _, serr := os.Stat(filepath.Join(dir, layout.New)); (serr == nil) != tc.staged {
				t.Errorf("imaged stage %v: %s staged = %v, want %v", tc.args, layout.New, serr == nil, tc.staged)
			}
		})
	}
}
