package boot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/hostpart"
	"github.com/hnboot/hnboot/internal/layout"
)

// TestCheckinReportParses builds the init's check-in over a hostpart with
// a promoted image, an old one known by its manifest and a generated
// identity, and checks that imaged's parser takes it as it was built.
func TestCheckinReportParses(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, layout.StateDir), 0o755)
	cur := []byte(strings.Repeat("current image ", 1000))
	os.WriteFile(filepath.Join(dir, layout.Current), cur, 0o644)
	old := []byte("old image")
	os.WriteFile(filepath.Join(dir, layout.Old), old, 0o644)
	oldSum := sha256.Sum256(old)
	m := fmt.Sprintf(`{"format":"hnboot-manifest-1","name":"A","version":"1","sha256":%q,"size":%d,"fs":"ext4","kernel_release":"","build_time":"2023-11-14T22:13:20Z"}`, hex.EncodeToString(oldSum[:]), len(old))
	os.WriteFile(filepath.Join(dir, layout.ManifestFor(layout.Old)), []byte(m), 0o644)
	os.WriteFile(filepath.Join(dir, layout.Reverts), []byte("r0\nr1\n"), 0o644)

	w := newWorld(t, nil)
	w.paths.Hostpart = dir
	b := &Boot{Sys: w.sys, Paths: w.paths, Log: slog.New(slog.DiscardHandler),
		cfg:     cmdline.Config{Hostname: "hn-525400123456", Image: layout.Current, RevertID: "r1"},
		res:     rotate.Result{Action: rotate.Promote, Trial: true, TriesLeft: 2, RevertApplied: "r1", Notes: []string{"promoted " + layout.New + "\r\n\x1b[0m"}},
		digests: digestcache.Load(dir),
		id:      startIdentity(dir, time.Now),
	}
	rep := b.checkinReport(context.Background())
	rep.MAC = "52:54:00:12:34:56"
	rep.Tidy()
	body, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	got, err := checkin.Parse(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("checkin.Parse(init report) = %v\n%s", err, body)
	}
	if !reflect.DeepEqual(got, rep) {
		t.Errorf("checkin.Parse(init report) =\n%+v\nwant\n%+v", got, rep)
	}
	curSum := sha256.Sum256(cur)
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"source", got.Source, checkin.SourceInit},
		{"action", got.Action, "promote"},
		{"booted", got.Booted, "sha256:" + hex.EncodeToString(curSum[:])},
		{"booted_image.source", got.BootedImage.Source, "computed"},
		{"images.old", got.Images.Old, "sha256:" + hex.EncodeToString(oldSum[:])},
		{"revert_applied", got.RevertApplied, "r1"},
		{"ssh keys", len(got.SSHHostKeys) > 0 && len(got.SSHHostKeys) == len(got.Fingerprints), true},
		{"notes", got.Notes, []string{"promoted " + layout.New + "\n\uFFFD[0m"}},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("init report %s = %v, want %v", c.what, c.got, c.want)
		}
	}
}

func TestImageDigestComputedThenCached(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, layout.Current)
	body := make([]byte, 3<<20+5)
	for i := range body {
		body[i] = byte(i * 7)
	}
	os.WriteFile(img, body, 0o644)
	sum := sha256.Sum256(body)
	head := sha256.Sum256(body[:1<<20])
	want := "sha256:" + hex.EncodeToString(sum[:])

	cache := digestcache.Load(dir)
	info, got := imageDigest(context.Background(), dir, layout.Current, cache)
	if got != want || info.Source != "computed" || info.Size != int64(len(body)) || info.Head != "sha256:"+hex.EncodeToString(head[:]) {
		t.Fatalf("imageDigest = %+v %s, want computed %s", info, got, want)
	}
	if err := saveDigests(dir, cache); err != nil {
		t.Fatal(err)
	}
	// A rename (rotation) keeps inode, size and mtime: still cached.
	if err := os.Rename(img, filepath.Join(dir, layout.Old)); err != nil {
		t.Fatal(err)
	}
	info, got = imageDigest(context.Background(), dir, layout.Old, digestcache.Load(dir))
	if got != want || info.Source != "cache" {
		t.Errorf("after rename: %+v %s, want cache %s", info, got, want)
	}
	// Out of time: no digest, but the head and size.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	info, got = imageDigest(ctx, dir, layout.Old, digestcache.Parse(nil))
	if got != "" || info.Source != "none" || info.Head == "" {
		t.Errorf("cancelled: %+v %q, want no digest, a head", info, got)
	}
}

func TestImageDigestSkipsBigImages(t *testing.T) {
	dir := t.TempDir()
	f, _ := os.Create(filepath.Join(dir, "big.img"))
	f.Truncate(checkin.HashLimit + 1)
	f.Close()
	info, got := imageDigest(context.Background(), dir, "big.img", digestcache.Parse(nil))
	if got != "" || info.Source != "none" || info.Size != checkin.HashLimit+1 {
		t.Errorf("big image: %+v %q, want no digest (agent reports it)", info, got)
	}
}

// A big image with a manifest beside it reports the manifest's digest
// (checked at promotion) instead of nothing; a manifest of another size
// is not trusted.
func TestImageDigestFromManifest(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, layout.Old)
	f, _ := os.Create(img)
	f.Truncate(checkin.HashLimit + 1)
	f.Close()
	hexd := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		size       int64
		wantDigest string
		wantSource string
	}{
		{checkin.HashLimit + 1, "sha256:" + hexd, "manifest"},
		{checkin.HashLimit, "", "none"},
	} {
		m := fmt.Sprintf(`{"format":"hnboot-manifest-1","name":"A","version":"1","sha256":%q,"size":%d,"fs":"ext4","kernel_release":"","build_time":"2023-11-14T22:13:20Z"}`, hexd, tc.size)
		if err := os.WriteFile(img+".json", []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
		info, got := imageDigest(context.Background(), dir, layout.Old, digestcache.Parse(nil))
		if got != tc.wantDigest || info.Source != tc.wantSource {
			t.Errorf("manifest size %d: imageDigest = %+v %q, want %s %q", tc.size, info, got, tc.wantSource, tc.wantDigest)
		}
	}
}

// Slots other than the booted one are reported from the cache, else from
// their manifest, never hashed.
func TestKnownDigest(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{layout.Old, layout.Broken, layout.New} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("image "+name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cached := "sha256:" + strings.Repeat("11", 32)
	if err := digestcache.Remember(dir, layout.Old, cached); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(dir, layout.Broken))
	m := fmt.Sprintf(`{"format":"hnboot-manifest-1","name":"B","version":"2","sha256":%q,"size":%d,"fs":"ext4","kernel_release":"","build_time":"2023-11-14T22:13:20Z"}`, strings.Repeat("22", 32), st.Size())
	if err := os.WriteFile(filepath.Join(dir, layout.ManifestFor(layout.Broken)), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	cache := digestcache.Load(dir)
	for name, want := range map[string]string{
		layout.Old:     cached,
		layout.Broken:  "sha256:" + strings.Repeat("22", 32),
		layout.New:     "",
		layout.Current: "",
	} {
		if got := knownDigest(dir, name, cache); got != want {
			t.Errorf("knownDigest(%s) = %q, want %q", name, got, want)
		}
	}
}

// TestDigestCacheSharedWithAgent: the init and the agent (hostpart, as
// agent/stage.go and imaged status use it) read each other's digest cache,
// including the text format inits before internal/digestcache wrote. Each
// side's digests are fakes, so a hit proves it came from the other's file.
func TestDigestCacheSharedWithAgent(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{layout.New: "image B", layout.Old: "image C", layout.Broken: "image D"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fake := func(c string) string { return "sha256:" + strings.Repeat(c, 64) }

	// An old init's text line for broken, then the agent stages new.
	st, _ := os.Stat(filepath.Join(dir, layout.Broken))
	ino := st.Sys().(*syscall.Stat_t).Ino
	os.MkdirAll(filepath.Join(dir, layout.StateDir), 0o755)
	legacy := fmt.Sprintf("%d %d %d %s\n", ino, st.Size(), st.ModTime().UnixNano(), fake("d"))
	if err := os.WriteFile(filepath.Join(dir, layout.Digests), []byte(legacy), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := hostpart.Remember(dir, layout.New, fake("b")); err != nil {
		t.Fatal(err)
	}

	// The init promotes new (a rename) and reports: both come from the
	// cache the agent wrote, and the legacy line survived the agent's save.
	if err := os.Rename(filepath.Join(dir, layout.New), filepath.Join(dir, layout.Current)); err != nil {
		t.Fatal(err)
	}
	cache := digestcache.Load(dir)
	img, slots := reportImages(context.Background(), dir, layout.Current, cache)
	if img.Source != "cache" || slots.Current != fake("b") || slots.Broken != fake("d") {
		t.Errorf("init after the agent: booted %+v, slots %+v; want current %s from the cache, broken %s", img, slots, fake("b"), fake("d"))
	}
	// The init hashes old (pretend it booted it) and saves.
	_, d := imageDigest(context.Background(), dir, layout.Old, cache)
	if err := saveDigests(dir, cache); err != nil {
		t.Fatal(err)
	}

	// The agent (imaged status) reads the init's file without hashing.
	hs, err := hostpart.Read(dir, hostpart.ReadOptions{Hash: false})
	if err != nil {
		t.Fatal(err)
	}
	for slot, want := range map[string]string{layout.SlotCurrent: fake("b"), layout.SlotOld: d, layout.SlotBroken: fake("d")} {
		if got := hs.Slot(slot).Digest; got != want {
			t.Errorf("hostpart.Read after the init: %s = %q, want %q", slot, got, want)
		}
	}
}

// A 503 (the server's fleet database is away: nothing was stored) is
// retried while the budget lasts; other answers are final.
func TestPostRetries503(t *testing.T) {
	for _, c := range []struct {
		name     string
		refusals int           // 503s before the server stores it
		budget   time.Duration // the check-in's budget
		want     int
		posts    int // at least
	}{
		{"stored after two 503s", 2, 5 * time.Second, http.StatusNoContent, 3},
		{"budget ends first", 100, 1200 * time.Millisecond, http.StatusServiceUnavailable, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			posts := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				posts++
				if posts <= c.refusals {
					http.Error(w, "fleet database unavailable", http.StatusServiceUnavailable)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			defer srv.Close()
			w := newWorld(t, nil)
			b := &Boot{Sys: w.sys, Paths: w.paths, Log: slog.New(slog.DiscardHandler)}
			ctx, cancel := context.WithTimeout(context.Background(), c.budget)
			defer cancel()
			code, err := b.post(ctx, srv.URL+"/checkin", []byte(`{}`))
			if err != nil || code != c.want || posts < c.posts {
				t.Errorf("post = %d, %v after %d posts, want %d after at least %d", code, err, posts, c.want, c.posts)
			}
		})
	}
}
