package boot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/hostpart"
	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/checkin"
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
		res:     rotate.Result{Action: rotate.Promote, Trial: true, TriesLeft: 2, Notes: []string{"promoted " + layout.New + "\r\n\x1b[0m"}},
		digests: hostpart.LoadCache(dir),
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
	img := filepath.Join(dir, "hn-root.img")
	body := make([]byte, 3<<20+5)
	for i := range body {
		body[i] = byte(i * 7)
	}
	os.WriteFile(img, body, 0o644)
	sum := sha256.Sum256(body)
	head := sha256.Sum256(body[:1<<20])
	want := "sha256:" + hex.EncodeToString(sum[:])

	cache := hostpart.LoadCache(dir)
	info, got := imageDigest(context.Background(), dir, "hn-root.img", cache)
	if got != want || info.Source != "computed" || info.Size != int64(len(body)) || info.Head != "sha256:"+hex.EncodeToString(head[:]) {
		t.Fatalf("imageDigest = %+v %s, want computed %s", info, got, want)
	}
	os.MkdirAll(filepath.Join(dir, layout.StateDir), 0o755)
	if err := cache.Save(dir); err != nil {
		t.Fatal(err)
	}
	// A rename (rotation) keeps inode, size and mtime: still cached.
	os.Rename(img, filepath.Join(dir, "hn-root-old.img"))
	info, got = imageDigest(context.Background(), dir, "hn-root-old.img", hostpart.LoadCache(dir))
	if got != want || info.Source != "cache" {
		t.Errorf("after rename: %+v %s, want cache %s", info, got, want)
	}
	// Out of time: no digest, but the head and size.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	info, got = imageDigest(ctx, dir, "hn-root-old.img", hostpart.LoadCache(t.TempDir()))
	if got != "" || info.Source != "none" || info.Head == "" {
		t.Errorf("cancelled: %+v %q, want no digest, a head", info, got)
	}
}

func TestImageDigestSkipsBigImages(t *testing.T) {
	dir := t.TempDir()
	f, _ := os.Create(filepath.Join(dir, "big.img"))
	f.Truncate(checkin.HashLimit + 1)
	f.Close()
	info, got := imageDigest(context.Background(), dir, "big.img", hostpart.LoadCache(dir))
	if got != "" || info.Source != "none" || info.Size != checkin.HashLimit+1 {
		t.Errorf("big image: %+v %q, want no digest (agent reports it)", info, got)
	}
}

// A big image with a manifest beside it reports the manifest's digest
// (checked at promotion) instead of nothing; a manifest of another size
// is not trusted.
func TestImageDigestFromManifest(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "hn-root-old.img")
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
		info, got := imageDigest(context.Background(), dir, "hn-root-old.img", hostpart.LoadCache(dir))
		if got != tc.wantDigest || info.Source != tc.wantSource {
			t.Errorf("manifest size %d: imageDigest = %+v %q, want %s %q", tc.size, info, got, tc.wantSource, tc.wantDigest)
		}
	}
}

// Slots other than the booted one are reported from the cache, else from
// their manifest, never hashed.
func TestKnownDigest(t *testing.T) {
	dir := t.TempDir()
	cached := filepath.Join(dir, "hn-root-old.img")
	withManifest := filepath.Join(dir, "hn-root-broken.img")
	unknown := filepath.Join(dir, "hn-root-new.img")
	for _, p := range []string{cached, withManifest, unknown} {
		if err := os.WriteFile(p, []byte("image "+p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cache := hostpart.LoadCache(dir)
	fi, _ := os.Stat(cached)
	cache.Put("hn-root-old.img", fi, "sha256:"+strings.Repeat("11", 32))
	st, _ := os.Stat(withManifest)
	m := fmt.Sprintf(`{"format":"hnboot-manifest-1","name":"B","version":"2","sha256":%q,"size":%d,"fs":"ext4","kernel_release":"","build_time":"2023-11-14T22:13:20Z"}`, strings.Repeat("22", 32), st.Size())
	if err := os.WriteFile(withManifest+".json", []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		cached:                           "sha256:" + strings.Repeat("11", 32),
		withManifest:                     "sha256:" + strings.Repeat("22", 32),
		unknown:                          "",
		filepath.Join(dir, "absent.img"): "",
	} {
		if got := knownDigest(dir, filepath.Base(path), cache); got != want {
			t.Errorf("knownDigest(%s) = %q, want %q", filepath.Base(path), got, want)
		}
	}
}
