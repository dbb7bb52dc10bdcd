package digestcache

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/layout"
)

func digestOf(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

// image writes dir/name with a fixed mtime and returns its FileInfo.
func image(t *testing.T, dir, name, body string) os.FileInfo {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func TestParse(t *testing.T) {
	d := digestOf('a')
	for _, tc := range []struct {
		name string
		in   string
		want int // entries
	}{
		{"empty", "", 0},
		{"garbage", "{nope", 0},
		{"json", `[{"file":"hn-root.img","inode":12,"size":3,"mtime_ns":4,"digest":"` + d + `"}]`, 1},
		{"json, bad digest dropped", `[{"file":"x","inode":1,"size":3,"mtime_ns":4,"digest":"sha256:zz"},{"inode":2,"size":3,"mtime_ns":4,"digest":"` + d + `"}]`, 1},
		{"broken json", `[{"inode":1,`, 0},
		{"legacy text", "12 3 4 " + d + "\n13 3 4 " + digestOf('b') + "\n", 2},
		{"legacy text, bad lines skipped", "12 3 4 " + d + "\nx 3 4 " + d + "\n12 3\n\n", 1},
	} {
		if got := Parse([]byte(tc.in)).Len(); got != tc.want {
			t.Errorf("Parse(%s).Len() = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestLegacyText: the file the init wrote before this package is read, and
// its entry found by the file's inode, size and mtime.
func TestLegacyText(t *testing.T) {
	dir := t.TempDir()
	fi := image(t, dir, layout.Current, "image A")
	k, _ := KeyOf(fi)
	if err := os.MkdirAll(filepath.Join(dir, layout.StateDir), 0o755); err != nil {
		t.Fatal(err)
	}
	legacy := fmt.Sprintf("%d %d %d %s\n", k.Inode, k.Size, k.MtimeNS, digestOf('a'))
	if err := os.WriteFile(filepath.Join(dir, layout.Digests), []byte(legacy), 0o644); err != nil {
		t.Fatal(err)
	}
	c := Load(dir)
	if got := c.Lookup(layout.Current, fi); got != digestOf('a') {
		t.Fatalf("Lookup after a legacy file = %q, want %s", got, digestOf('a'))
	}
	if !c.Dirty() {
		t.Errorf("Dirty() = false after learning the entry's file name, want true")
	}
	if err := c.Save(dir); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, layout.Digests))
	if !strings.HasPrefix(string(b), "[") || !strings.Contains(string(b), `"file": "hn-root.img"`) {
		t.Errorf("saved cache = %s, want JSON naming hn-root.img", b)
	}
	if got := Load(dir).Lookup(layout.Current, fi); got != digestOf('a') {
		t.Errorf("Lookup after Save = %q, want %s", got, digestOf('a'))
	}
}

// TestSaveKeepsLiveEntries: entries of files that exist always stay, even
// past Max, and follow a rename; entries of files that are gone fill the
// room left, deterministically.
func TestSaveKeepsLiveEntries(t *testing.T) {
	dir := t.TempDir()
	c := Load(dir)
	cur := image(t, dir, layout.Current, "A")
	c.Put(layout.Current, cur, digestOf('a'))
	for i := range Max + 5 {
		c.entries[Key{Inode: uint64(1000 + i), Size: 1, MtimeNS: 1}] = entry{File: "gone", Inode: uint64(1000 + i), Size: 1, MtimeNS: 1, Digest: digestOf('0')}
	}
	if err := c.Save(dir); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(filepath.Join(dir, layout.Digests))
	got := Load(dir)
	if got.Len() != Max {
		t.Errorf("after Save: %d entries, want Max = %d", got.Len(), Max)
	}
	// The rotation renames current to old: the entry is still live.
	if err := os.Rename(filepath.Join(dir, layout.Current), filepath.Join(dir, layout.Old)); err != nil {
		t.Fatal(err)
	}
	old, _ := os.Stat(filepath.Join(dir, layout.Old))
	if d := got.Lookup(layout.Old, old); d != digestOf('a') {
		t.Errorf("Lookup(old) after the rename = %q, want %s", d, digestOf('a'))
	}
	// Saving the same entries again gives the same bytes but the new name.
	if err := Parse(first).Save(dir); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(filepath.Join(dir, layout.Digests))
	if want := strings.Replace(string(first), `"file": "hn-root.img"`, `"file": "hn-root-old.img"`, 1); string(again) != want {
		t.Errorf("Save is not deterministic or did not follow the rename:\n%s\nwant\n%s", again, want)
	}
}

// TestSaveMerges: two writers that loaded the same file both keep their
// entries.
func TestSaveMerges(t *testing.T) {
	dir := t.TempDir()
	a := image(t, dir, layout.Current, "A")
	b := image(t, dir, layout.New, "BB")
	c1, c2 := Load(dir), Load(dir)
	c1.Put(layout.Current, a, digestOf('a'))
	c2.Put(layout.New, b, digestOf('b'))
	if err := c1.Save(dir); err != nil {
		t.Fatal(err)
	}
	if err := c2.Save(dir); err != nil {
		t.Fatal(err)
	}
	c := Load(dir)
	if c.Lookup(layout.Current, a) != digestOf('a') || c.Lookup(layout.New, b) != digestOf('b') {
		t.Errorf("after two writers: %v, want both entries", c.entries)
	}
}

func TestRemember(t *testing.T) {
	dir := t.TempDir()
	fi := image(t, dir, layout.New, "B")
	if err := Remember(dir, layout.New, "sha256:nope"); err == nil {
		t.Errorf("Remember(bad digest) = nil, want an error")
	}
	if err := Remember(dir, layout.Broken, digestOf('b')); err == nil {
		t.Errorf("Remember(missing file) = nil, want an error")
	}
	if err := Remember(dir, layout.New, digestOf('b')); err != nil {
		t.Fatal(err)
	}
	if got := Load(dir).Lookup(layout.New, fi); got != digestOf('b') {
		t.Errorf("Lookup after Remember = %q, want %s", got, digestOf('b'))
	}
}

func TestValidDigest(t *testing.T) {
	for s, want := range map[string]bool{
		digestOf('a'):                  true,
		digestOf('A'):                  false,
		"sha256:" + digestOf('a')[10:]: false,
		strings.Repeat("a", 64):        false,
		"":                             false,
	} {
		if got := digest.Valid(s); got != want {
			t.Errorf("digest.Valid(%q) = %v, want %v", s, got, want)
		}
	}
}
