package chunkpack

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/layout"
)

// image is a filesystem-like image: text-like runs that compress, random
// runs that do not, and free space.
func image(seed int64) []byte {
	r := rand.New(rand.NewSource(seed))
	var b []byte
	words := []string{"usr", "lib", "share", "doc", "debian", "changelog", "libc6", "amd64", "\n", " "}
	for len(b) < 3<<20 {
		for range 20000 {
			b = append(b, words[r.Intn(len(words))]...)
		}
		rnd := make([]byte, 100<<10)
		r.Read(rnd)
		b = append(b, rnd...)
	}
	return append(b, make([]byte, 1<<20)...)
}

func writeImage(t *testing.T, img []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "a.img")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The pack is the image's chunks as independent frames: decompressed
// whole it is the image byte for byte (by this package's decoder and,
// when installed, by the zstd command), each frame the index locates
// decodes alone to its chunk, and the index is version 2 with the same
// chunks as a version 1 index of the image.
func TestPackDecompressesToImage(t *testing.T) {
	img := image(1)
	p := writeImage(t, img)
	_, sum, err := WriteFile(p)
	if err != nil {
		t.Fatal(err)
	}
	pack, err := os.ReadFile(p + layout.PackSuffix)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := os.ReadFile(p + layout.ChunksSuffix)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := chunkindex.Parse(ib)
	if err != nil || chunkindex.Sum(ib) != sum || !parsed.Packed || parsed.PackSize != int64(len(pack)) {
		t.Fatalf("index: %v, packed %v, pack size %d, pack is %d bytes", err, parsed != nil && parsed.Packed, parsed.PackSize, len(pack))
	}
	plain, _ := chunkindex.Build(bytes.NewReader(img))
	if !bytes.Equal(parsed.Unpacked().Marshal(), plain.Marshal()) {
		t.Fatal("the packed index's chunks differ from chunkindex.Build's: delta reuse would change")
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	whole, err := dec.DecodeAll(pack, nil)
	if err != nil || !bytes.Equal(whole, img) {
		t.Fatalf("the pack decompresses to %d bytes (%v), want the image's %d", len(whole), err, len(img))
	}
	for i, c := range parsed.Chunks {
		got, err := dec.DecodeAll(pack[c.PackOffset:c.PackEnd()], nil)
		if err != nil || !bytes.Equal(got, img[c.Offset:c.End()]) {
			t.Fatalf("frame %d (%d bytes at %d): %v, does not decode to its chunk", i, c.PackLength, c.PackOffset, err)
		}
	}
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Log("zstd command not installed: not checked with it")
		return
	}
	out := filepath.Join(t.TempDir(), "out.img")
	if b, err := exec.Command("zstd", "-q", "-d", p+layout.PackSuffix, "-o", out).CombinedOutput(); err != nil {
		t.Fatalf("zstd -d: %v: %s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, img) {
		t.Fatalf("zstd -d of the pack gives %d bytes, not the image's %d", len(got), len(img))
	}
}

// Compressible chunks take fewer bytes in the pack; incompressible ones
// stay within zstd's bound, which the index's parser enforces.
func TestPackFrameSizes(t *testing.T) {
	img := image(2)
	ix, err := Build(bytes.NewReader(img), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var packed, raw int64
	for _, c := range ix.Chunks {
		if c.PackLength > chunkindex.FrameBound(c.Length) {
			t.Fatalf("chunk at %d: %d-byte frame for %d bytes, over the bound %d", c.Offset, c.PackLength, c.Length, chunkindex.FrameBound(c.Length))
		}
		packed += int64(c.PackLength)
		raw += int64(c.Length)
	}
	if packed >= raw*3/4 {
		t.Errorf("pack %d bytes for %d of image, want it well under", packed, raw)
	}
	// Random bytes of every chunk size: the frame is a raw block.
	rnd := make([]byte, chunkindex.MaxSize)
	rand.New(rand.NewSource(3)).Read(rnd)
	enc, _ := NewEncoder()
	for _, n := range []int{1, 100, chunkindex.MinSize, 20000, chunkindex.MaxSize} {
		if f := enc.EncodeAll(rnd[:n], nil); len(f) > int(chunkindex.FrameBound(uint32(n))) {
			t.Errorf("%d random bytes: %d-byte frame, over the bound %d", n, len(f), chunkindex.FrameBound(uint32(n)))
		}
	}
}

// The same image gives the same pack and index: a server that packs an
// uploaded image agrees with mkimage's manifest.
func TestPackReproducible(t *testing.T) {
	img := image(4)
	var a, b bytes.Buffer
	ia, _ := Build(bytes.NewReader(img), &a)
	ib, _ := Build(bytes.NewReader(img), &b)
	if !bytes.Equal(a.Bytes(), b.Bytes()) || !bytes.Equal(ia.Marshal(), ib.Marshal()) {
		t.Fatal("two packs of the same image differ")
	}
}
