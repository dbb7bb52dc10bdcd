package chunkindex

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestPolynomialIrreducible(t *testing.T) {
	if !Polynomial.Irreducible() || Polynomial.Deg() != 53 {
		t.Fatalf("Polynomial %#x: irreducible %v, degree %d; want an irreducible polynomial of degree 53", uint64(Polynomial), Polynomial.Irreducible(), Polynomial.Deg())
	}
}

func sums(ix *Index) map[[32]byte]bool {
	m := map[[32]byte]bool{}
	for _, c := range ix.Chunks {
		m[c.Sum] = true
	}
	return m
}

// Chunks cover the image in order, within the size bounds, and hash to
// what the index says.
func TestBuildCoversImage(t *testing.T) {
	img := random(1, 8<<20)
	ix, err := Build(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if ix.Size != int64(len(img)) || ix.SHA256 != sha256.Sum256(img) {
		t.Fatalf("Build: size %d sha %x, want %d %x", ix.Size, ix.SHA256, len(img), sha256.Sum256(img))
	}
	var off int64
	for i, c := range ix.Chunks {
		if c.Offset != off || c.Length > MaxSize || (c.Length < MinSize && i != len(ix.Chunks)-1) {
			t.Fatalf("chunk %d: offset %d length %d, want offset %d and %d..%d bytes", i, c.Offset, c.Length, off, MinSize, MaxSize)
		}
		if sha256.Sum256(img[c.Offset:c.End()]) != c.Sum {
			t.Fatalf("chunk %d: sum does not match its bytes", i)
		}
		off = c.End()
	}
	if off != ix.Size {
		t.Fatalf("chunks end at %d, image is %d bytes", off, ix.Size)
	}
	// About 8 MiB / (MinSize + 2^AverageBits) chunks, within a factor of 2.
	want := len(img) / (MinSize + 1<<AverageBits)
	if n := len(ix.Chunks); n < want/2 || n > want*2 {
		t.Errorf("%d chunks for 8 MiB, want about %d", n, want)
	}
}

// An insertion, a deletion or an overwrite in the middle changes only the
// chunks around it: nearly all chunks of the old image stay.
func TestBoundariesStableUnderEdits(t *testing.T) {
	base := random(2, 16<<20)
	mid := len(base) / 2
	edits := []struct {
		name string
		img  []byte
	}{
		{"insert 100 bytes", append(append(append([]byte{}, base[:mid]...), random(3, 100)...), base[mid:]...)},
		{"delete 5000 bytes", append(append([]byte{}, base[:mid]...), base[mid+5000:]...)},
		{"overwrite 1 byte", func() []byte { b := append([]byte{}, base...); b[mid] ^= 0xff; return b }()},
		{"insert 1 MiB at the start", append(random(4, 1<<20), base...)},
	}
	old, err := Build(bytes.NewReader(base))
	if err != nil {
		t.Fatal(err)
	}
	have := sums(old)
	for _, e := range edits {
		ix, err := Build(bytes.NewReader(e.img))
		if err != nil {
			t.Fatal(err)
		}
		var newBytes int64
		for _, c := range ix.Chunks {
			if !have[c.Sum] {
				newBytes += int64(c.Length)
			}
		}
		// The edit itself, plus at most a few chunks around it.
		limit := int64(4*MaxSize) + int64(len(e.img)-len(base))
		if newBytes > limit {
			t.Errorf("%s: %d bytes in chunks the old image lacks, want at most %d", e.name, newBytes, limit)
		}
	}
}

// packed gives ix a frame table, as chunkpack makes one: frame lengths
// that vary from chunk to chunk, each within zstd's bound.
func packed(ix *Index) *Index {
	p := &Index{Size: ix.Size, SHA256: ix.SHA256, Packed: true}
	for i, c := range ix.Chunks {
		c.PackOffset, c.PackLength = p.PackSize, 1+uint32(i*7919)%FrameBound(c.Length)
		p.PackSize += int64(c.PackLength)
		p.Chunks = append(p.Chunks, c)
	}
	return p
}

// Version 2 (with the frame table) and version 1 (without) both survive
// a round trip, and a version 1 index still parses, unpacked.
func TestMarshalParse(t *testing.T) {
	img := random(5, 3<<20+12345)
	ix, err := Build(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		ix        *Index
		version   uint32
		entrySize int
	}{
		{"version 1", ix, 1, entrySize1},
		{"version 2", packed(ix), 2, entrySize2},
	} {
		b := c.ix.Marshal()
		if len(b) != headerSize+c.entrySize*len(ix.Chunks) || binary.BigEndian.Uint32(b[8:]) != c.version {
			t.Fatalf("%s: Marshal: %d bytes, version %d for %d chunks", c.name, len(b), binary.BigEndian.Uint32(b[8:]), len(ix.Chunks))
		}
		got, err := Parse(b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !Equal(got, c.ix) || got.Digest() != ix.Digest() || got.Packed != c.ix.Packed || got.PackSize != c.ix.PackSize {
			t.Fatalf("%s: Parse(Marshal(ix)) differs from ix", c.name)
		}
		for i := range ix.Chunks {
			if got.Chunks[i] != c.ix.Chunks[i] {
				t.Fatalf("%s: chunk %d: %+v, want %+v", c.name, i, got.Chunks[i], c.ix.Chunks[i])
			}
		}
	}
	// The chunks themselves do not depend on the version.
	if p := packed(ix).Unpacked(); !bytes.Equal(p.Marshal(), ix.Marshal()) {
		t.Fatal("Unpacked of a packed index differs from the version 1 index")
	}
}

// FrameBound is zstd's ZSTD_COMPRESSBOUND at the sizes chunks have.
func TestFrameBound(t *testing.T) {
	for _, c := range []struct{ n, want uint32 }{
		{1, 1 + 63},
		{MinSize, MinSize + 4 + (128<<10-MinSize)>>11},
		{MaxSize, MaxSize + MaxSize>>8 + (128<<10-MaxSize)>>11},
	} {
		if got := FrameBound(c.n); got != c.want {
			t.Errorf("FrameBound(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	img := random(6, 1<<20)
	ix, _ := Build(bytes.NewReader(img))
	good, good2 := ix.Marshal(), packed(ix).Marshal()
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, good...)) }
	mod2 := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, good2...)) }
	be := binary.BigEndian
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrFormat},
		{"magic", mod(func(b []byte) []byte { b[0] = 'X'; return b }), ErrFormat},
		{"version", mod(func(b []byte) []byte { be.PutUint32(b[8:], 3); return b }), ErrFormat},
		{"version 1 entries as version 2", mod(func(b []byte) []byte { be.PutUint32(b[8:], 2); return b }), ErrFormat},
		{"version 2 entries as version 1", mod2(func(b []byte) []byte { be.PutUint32(b[8:], 1); return b }), ErrFormat},
		{"zero-length frame", mod2(func(b []byte) []byte { be.PutUint32(b[headerSize+4:], 0); return b }), ErrFormat},
		{"frame over zstd's bound", mod2(func(b []byte) []byte {
			be.PutUint32(b[headerSize+4:], FrameBound(be.Uint32(b[headerSize:]))+1)
			return b
		}), ErrFormat},
		{"frame of 4 GiB", mod2(func(b []byte) []byte { be.PutUint32(b[headerSize+4:], 1<<32-1); return b }), ErrFormat},
		{"min size", mod(func(b []byte) []byte { be.PutUint32(b[12:], 4096); return b }), ErrParams},
		{"polynomial", mod(func(b []byte) []byte { be.PutUint64(b[24:], 3); return b }), ErrParams},
		{"truncated", good[:len(good)-1], ErrFormat},
		{"count too big", mod(func(b []byte) []byte { be.PutUint64(b[72:], 1<<60); return b }), ErrFormat},
		{"size zero", mod(func(b []byte) []byte { be.PutUint64(b[32:], 0); return b }), ErrFormat},
		{"size larger than chunks", mod(func(b []byte) []byte { be.PutUint64(b[32:], uint64(ix.Size)+1); return b }), ErrFormat},
		{"size smaller than chunks", mod(func(b []byte) []byte { be.PutUint64(b[32:], uint64(ix.Size)-1); return b }), ErrFormat},
		{"zero-length chunk", mod(func(b []byte) []byte { be.PutUint32(b[headerSize:], 0); return b }), ErrFormat},
		{"oversized chunk", mod(func(b []byte) []byte { be.PutUint32(b[headerSize:], MaxSize+1); return b }), ErrFormat},
		{"short chunk not last", mod(func(b []byte) []byte { be.PutUint32(b[headerSize:], MinSize-1); return b }), ErrFormat},
	}
	for _, c := range cases {
		_, err := Parse(c.b)
		if !errors.Is(err, c.want) {
			t.Errorf("Parse(%s) = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestReadLimit(t *testing.T) {
	img := random(7, 1<<20)
	ix, _ := Build(bytes.NewReader(img))
	b := ix.Marshal()
	if _, _, err := Read(bytes.NewReader(b), ix.Size); err != nil {
		t.Fatalf("Read of a good index: %v", err)
	}
	// An index far larger than the image it claims to describe is
	// refused without reading it all.
	huge := append(append([]byte{}, b...), make([]byte, 1<<20)...)
	if _, _, err := Read(bytes.NewReader(huge), ix.Size); !errors.Is(err, ErrFormat) {
		t.Fatalf("Read of an oversized index = %v, want ErrFormat", err)
	}
}

func TestWriteFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.img")
	img := random(8, 2<<20)
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	ix, sum, err := WriteFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p + layout.ChunksSuffix)
	if err != nil {
		t.Fatal(err)
	}
	if Sum(b) != sum || !bytes.Equal(b, ix.Marshal()) {
		t.Fatalf("WriteFile: file and returned digest disagree")
	}
	// Reproducible: the same image gives the same index bytes.
	ix2, _ := Build(bytes.NewReader(img))
	if !bytes.Equal(ix2.Marshal(), b) {
		t.Fatal("a second Build of the same bytes differs")
	}
}

// FuzzChunkIndex: a hostile index must not crash Parse, and whatever it
// accepts covers exactly [0, Size) in order, so a writer that trusts its
// offsets stays inside the file; its frames (version 2) follow each other
// from 0 to PackSize, each 1 byte to zstd's bound of its chunk, so a host
// never asks for or decodes more than a chunk's worth per chunk.
func FuzzChunkIndex(f *testing.F) {
	ix, _ := Build(bytes.NewReader(random(9, 600<<10)))
	f.Add(ix.Marshal())
	f.Add(ix.Marshal()[:headerSize])
	f.Add(packed(ix).Marshal())
	f.Add(packed(ix).Marshal()[:headerSize+entrySize2])
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := Parse(b)
		if err != nil {
			return
		}
		es := entrySize1
		if ix.Packed {
			es = entrySize2
		}
		if len(ix.Chunks)*es+headerSize != len(b) || int64(len(b)) > MaxBytes(ix.Size) {
			t.Fatalf("%d chunks from %d bytes (at most %d for %d bytes of image)", len(ix.Chunks), len(b), MaxBytes(ix.Size), ix.Size)
		}
		var off, poff int64
		for i, c := range ix.Chunks {
			if c.Offset != off || c.Length == 0 || c.Length > MaxSize || c.End() > ix.Size {
				t.Fatalf("chunk %d: %+v outside [0, %d) or out of order (expected offset %d)", i, c, ix.Size, off)
			}
			off = c.End()
			if !ix.Packed {
				if c.PackOffset != 0 || c.PackLength != 0 {
					t.Fatalf("chunk %d of a version 1 index has a frame: %+v", i, c)
				}
				continue
			}
			if c.PackOffset != poff || c.PackLength == 0 || c.PackLength > FrameBound(MaxSize) || c.PackLength > FrameBound(c.Length) {
				t.Fatalf("chunk %d: frame %+v out of order (expected at %d) or outside 1..%d bytes", i, c, poff, FrameBound(c.Length))
			}
			poff = c.PackEnd()
		}
		if off != ix.Size || poff != ix.PackSize {
			t.Fatalf("chunks cover %d of %d bytes, frames %d of %d", off, ix.Size, poff, ix.PackSize)
		}
	})
}

func BenchmarkBuild(b *testing.B) {
	img := random(10, 64<<20)
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := Build(bytes.NewReader(img)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSplit(b *testing.B) {
	img := random(10, 64<<20)
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		Split(bytes.NewReader(img), func(int64, []byte) error { return nil })
	}
}

// A run of zeros (free space) is cut into MaxSize chunks, not MinSize
// ones, and ZeroSum knows their sums.
func TestZeroRuns(t *testing.T) {
	img := append(append(random(11, 100<<10), make([]byte, 8<<20)...), random(12, 100<<10)...)
	ix, err := Build(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	var zero, full int
	for _, c := range ix.Chunks {
		if s, ok := ZeroSum(c.Length); ok && s == c.Sum {
			zero++
			if c.Length == MaxSize {
				full++
			}
		}
	}
	if want := 8 << 20 / MaxSize; zero < want || zero > want+4 || full < want-1 {
		t.Fatalf("8 MiB of zeros: %d zero chunks (%d of MaxSize), want about %d of MaxSize", zero, full, want)
	}
	if _, ok := ZeroSum(MinSize + 1); ok {
		t.Fatal("ZeroSum(MinSize+1) ok, want only multiples of MinSize")
	}
}
