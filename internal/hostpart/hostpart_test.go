package hostpart

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/layout"
)

func TestLocate(t *testing.T) {
	tmp := t.TempDir()
	mi := filepath.Join(tmp, "mountinfo")
	sys := filepath.Join(tmp, "sys")
	os.MkdirAll(sys, 0o755)
	for _, tc := range []struct {
		name      string
		loc       Locator
		mountinfo string
		want      string
		errHas    []string
	}{
		{"--hostpart dir", Locator{Dir: tmp}, "", tmp, nil},
		{"--hostpart missing", Locator{Dir: filepath.Join(tmp, "nope")}, "", "", []string{"--hostpart", "nope"}},
		{"mounted", Locator{MountInfo: mi, SysClassBlock: sys}, "36 25 254:2 / /hostpart rw,noatime - ext4 /dev/vda2 rw\n", layout.HostpartMount, nil},
		{"not mounted, no device", Locator{MountInfo: mi, SysClassBlock: sys}, "36 25 254:1 / / rw - ext4 /dev/vda1 rw\n", "",
			[]string{"/hostpart is not a mount point", "LABEL=hostpart", "--hostpart DIR"}},
	} {
		os.WriteFile(mi, []byte(tc.mountinfo), 0o644)
		got, err := tc.loc.Locate()
		if got != tc.want || (err != nil) != (len(tc.errHas) > 0) {
			t.Errorf("%s: Locate() = %q, %v; want %q, error %v", tc.name, got, err, tc.want, tc.errHas)
			continue
		}
		for _, s := range tc.errHas {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: Locate() error %q lacks %q", tc.name, err, s)
			}
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\`: `/x\`} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestDigestCache: a digest is computed once and then read from the cache
// while inode, size and mtime stay; a rename (as the init does) keeps it.
func TestDigestCache(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, layout.New)
	os.WriteFile(p, []byte("image one"), 0o644)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	os.Chtimes(p, mtime, mtime)
	st, err := Read(dir, ReadOptions{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	first := st.Slot(layout.SlotNew).Digest
	want, _ := digest.File(p, nil)
	if first != want {
		t.Fatalf("Read digest = %s, want %s", first, want)
	}
	// Same inode, size and mtime, other content: the cache answers, which
	// proves it was not hashed again.
	os.WriteFile(p, []byte("image two"), 0o644)
	os.Chtimes(p, mtime, mtime)
	os.Rename(p, filepath.Join(dir, layout.Current))
	st, _ = Read(dir, ReadOptions{Hash: false})
	if got := st.Slot(layout.SlotCurrent).Digest; got != first {
		t.Errorf("after rename, cached digest = %q, want %s", got, first)
	}
	// A new mtime invalidates it.
	os.Chtimes(filepath.Join(dir, layout.Current), mtime.Add(time.Second), mtime.Add(time.Second))
	st, _ = Read(dir, ReadOptions{Hash: true})
	if got, want := st.Slot(layout.SlotCurrent).Digest, mustDigest(t, filepath.Join(dir, layout.Current)); got != want {
		t.Errorf("after touching, digest = %s, want %s (rehashed)", got, want)
	}
}

func mustDigest(t *testing.T, p string) string {
	d, err := digest.File(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestReadTrialRevertParts(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{layout.Current: "x", layout.Trial: "2\n", layout.RevertTrigger: "", "hn-root-new.img.part": "abc"} {
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
	}
	st, err := Read(dir, ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Trial || st.TriesLeft != 2 || !st.RevertPending || len(st.Parts) != 1 || st.Parts[0].Size != 3 {
		t.Errorf("Read = trial %v tries %d revert %v parts %v; want true 2 true [hn-root-new.img.part 3]", st.Trial, st.TriesLeft, st.RevertPending, st.Parts)
	}
}

func TestParseBootLog(t *testing.T) {
	log := `hninit: [   1.000000] hnboot init starting
hninit: [   2.000000] WARNING: promoting hn-root-new.img: hn-root.img becomes hn-root-old.img, on trial for 3 boots
hninit: [   2.100000] rotation done action=promote trial=true tries_left=2 took=3ms
hninit: [   3.000000] ERROR: bind state directory source=/x
hninit: [   4.000000] mounted image read-only image=/hostpart/hn-root.img loop=/dev/loop0 fs=ext4
`
	b := ParseBootLog(log)
	if b.Image != "hn-root.img" || b.Action != "promote" || !b.Trial || b.TriesLeft != 2 || b.Warnings != 1 || b.Errors != 1 || len(b.Problems) != 2 {
		t.Errorf("ParseBootLog = %+v", b)
	}
	if want := "booted hn-root.img, action promote, on trial, 2 tries left, 1 warnings, 1 errors"; b.Summary != want {
		t.Errorf("Summary = %q, want %q", b.Summary, want)
	}
}
