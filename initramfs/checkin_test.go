package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/pxe/checkin"
)

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

	cache := map[string]string{}
	info, got := imageDigest(context.Background(), img, cache)
	if got != want || info.Source != "computed" || info.Size != int64(len(body)) || info.Head != "sha256:"+hex.EncodeToString(head[:]) {
		t.Fatalf("imageDigest = %+v %s, want computed %s", info, got, want)
	}
	cf := filepath.Join(dir, "digests")
	saveDigests(cf, cache)
	// A rename (rotation) keeps inode, size and mtime: still cached.
	moved := filepath.Join(dir, "hn-root-old.img")
	os.Rename(img, moved)
	info, got = imageDigest(context.Background(), moved, loadDigests(cf))
	if got != want || info.Source != "cache" {
		t.Errorf("after rename: %+v %s, want cache %s", info, got, want)
	}
	// Out of time: no digest, but the head and size.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	info, got = imageDigest(ctx, moved, map[string]string{})
	if got != "" || info.Source != "none" || info.Head == "" {
		t.Errorf("cancelled: %+v %q, want no digest, a head", info, got)
	}
}

func TestImageDigestSkipsBigImages(t *testing.T) {
	img := filepath.Join(t.TempDir(), "big.img")
	f, _ := os.Create(img)
	f.Truncate(checkin.HashLimit + 1)
	f.Close()
	info, got := imageDigest(context.Background(), img, map[string]string{})
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
		info, got := imageDigest(context.Background(), img, map[string]string{})
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
	key, _ := fileKey(cached)
	cache := map[string]string{key: "sha256:" + strings.Repeat("11", 32)}
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
		if got := knownDigest(path, cache); got != want {
			t.Errorf("knownDigest(%s) = %q, want %q", filepath.Base(path), got, want)
		}
	}
}
