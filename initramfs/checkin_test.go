package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
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
