// Package chunkindex splits an image into content-defined chunks and
// reads and writes the chunk index published beside it (IMAGE.chunks),
// from which a host builds a new image out of the chunks of the images it
// already has and fetches only the missing ones (internal/stage).
//
// Chunk boundaries come from a Rabin fingerprint over a 64-byte window
// (github.com/restic/chunker, the chunker restic's repositories have used
// since 2015) with a fixed polynomial: a cut where the low AverageBits
// bits of the fingerprint are zero, no chunk shorter than MinSize (except
// the last) or longer than MaxSize. Boundaries depend only on the bytes
// near them, so a change moves the boundaries around it and no others:
// an insertion costs the chunks it touches, not everything after it.
// Runs of zeros are joined into chunks of up to MaxSize (see Split).
// MinSize 1 KiB, 16 KiB on average, MaxSize 64 KiB.
//
// # The index file
//
// A small binary file, all integers big-endian:
//
//	offset  size  field
//	0       8     magic "HNCHUNKS"
//	8       4     version, 1 or 2
//	12      4     minimum chunk size (MinSize)
//	16      4     average bits (AverageBits: cut when fingerprint & (1<<bits - 1) == 0)
//	20      4     maximum chunk size (MaxSize)
//	24      8     polynomial (Polynomial)
//	32      8     image size in bytes
//	40      32    sha256 of the whole image
//	72      8     number of chunks N
//	80      36*N  version 1, each chunk: length (4 bytes), sha256 of its bytes (32)
//	80      40*N  version 2, each chunk: length (4 bytes), length of its
//	              frame in the pack (4), sha256 of its bytes (32)
//
// A chunk's offset is the sum of the lengths before it: chunks cannot
// overlap or leave gaps, and their lengths add up to the image size. The
// file's own sha256 is the manifest's chunks field ("sha256:<hex>"), so
// an index is exactly as trusted as the signed manifest that names it.
//
// # The pack
//
// A version 2 index also locates each chunk in the pack published beside
// the image (IMAGE.zst, package chunkpack): every chunk compressed as its
// own zstd frame, the frames concatenated in chunk order, so a frame's
// offset is the sum of the frame lengths before it and `zstd -d` of the
// pack is the image. A host fetches the frames of the chunks it lacks as
// plain HTTP ranges of the pack. The frame table is as trusted as the
// rest of the index; the decompressed chunks are still checked against
// their sha256. A version 1 index has no frame table: no pack.
package chunkindex

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/restic/chunker"

	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
)

// The chunking parameters. A host chunks its local images with these and
// uses an index only when it was made with the same ones. Chosen on a
// real update (testvm/benchdelta: a Debian image after a point release's
// security fixes): the chunks a small change in an ext4 image costs are
// mostly bounded by the minimum, so it is small; the average sets the
// index's size (40 bytes per chunk, about 0.25 % of the image).
const (
	MinSize     = 1 << 10
	AverageBits = 14 // 16 KiB on average
	MaxSize     = 64 << 10
	// Polynomial is an irreducible polynomial of degree 53 over GF(2)
	// (checked by the tests); fixed, so builds agree on boundaries.
	Polynomial chunker.Pol = 0x3DA3358B4DC173
)

const (
	magic      = "HNCHUNKS"
	version1   = 1 // no frame table
	version2   = 2 // with the frame table of the pack
	headerSize = 80
	entrySize1 = 36
	entrySize2 = 40
	// MaxImage bounds the image size an index may claim (1 PiB), so sums
	// of lengths cannot overflow.
	MaxImage = 1 << 50
)

// ErrFormat is returned (wrapped) for bytes that are not a valid index.
var ErrFormat = errors.New("not a valid hnboot chunk index")

// ErrParams is returned (wrapped) for an index made with other chunking
// parameters: valid, but a host cannot match its chunks.
var ErrParams = errors.New("chunk index made with other chunking parameters")

// Chunk is one chunk of an image.
type Chunk struct {
	Offset int64
	Length uint32
	Sum    [32]byte
	// Where the chunk's zstd frame is in the pack; both zero when the
	// index has no frame table (Index.Packed false).
	PackOffset int64
	PackLength uint32
}

// PackEnd is the offset in the pack after the chunk's frame.
func (c Chunk) PackEnd() int64 { return c.PackOffset + int64(c.PackLength) }

// End is the offset after the chunk.
func (c Chunk) End() int64 { return c.Offset + int64(c.Length) }

// Index is an image's chunk list.
type Index struct {
	Size   int64
	SHA256 [32]byte // of the whole image
	Chunks []Chunk
	// Packed: every chunk's PackLength is set and the index marshals as
	// version 2; PackSize is then the pack's size.
	Packed   bool
	PackSize int64
}

// Unpacked is a copy of ix without the frame table: what a version 1
// index of the same image holds.
func (ix *Index) Unpacked() *Index {
	u := &Index{Size: ix.Size, SHA256: ix.SHA256, Chunks: make([]Chunk, len(ix.Chunks))}
	for i, c := range ix.Chunks {
		u.Chunks[i] = Chunk{Offset: c.Offset, Length: c.Length, Sum: c.Sum}
	}
	return u
}

// FrameBound is the most a zstd frame of n bytes can take: zstd's
// ZSTD_COMPRESSBOUND (lib/zstd.h: n + n/256, plus a margin below 128 KiB
// that covers the frame and block headers). An index that claims a longer
// frame is refused, so a hostile one cannot make a host fetch or decode
// more than a chunk's worth of bytes per chunk.
func FrameBound(n uint32) uint32 {
	b := n + n>>8
	if n < 128<<10 {
		b += (128<<10 - n) >> 11
	}
	return b
}

// Digest is the image's digest, "sha256:<hex>".
func (ix *Index) Digest() string { return digest.Prefix + hex.EncodeToString(ix.SHA256[:]) }

// MaxBytes is the largest index an image of size bytes can have: a reader
// of an untrusted index reads at most this much.
func MaxBytes(size int64) int64 {
	if size <= 0 || size > MaxImage {
		return headerSize
	}
	return headerSize + entrySize2*(size/MinSize+1)
}

// Split cuts r into chunks and calls fn with each one's offset and bytes
// (valid only during the call). It is what Build and a host scanning its
// local images share, so both see the same boundaries.
//
// The fingerprint of a window of zeros is zero, so the chunker cuts a run
// of zeros (free space in a filesystem image) every MinSize bytes: Split
// joins consecutive all-zero chunks into chunks of up to MaxSize, which
// keeps the index of a mostly empty image small. The joining depends only
// on the bytes too.
func Split(r io.Reader, fn func(off int64, data []byte) error) error {
	c := chunker.NewWithBoundaries(r, Polynomial, MinSize, MaxSize)
	c.SetAverageBits(AverageBits)
	buf := make([]byte, MaxSize)
	var off, zero int64 // zero: bytes of zeros pending at off
	flush := func() error {
		if zero == 0 {
			return nil
		}
		err := fn(off, zeros[:zero])
		off, zero = off+zero, 0
		return err
	}
	for {
		ch, err := c.Next(buf)
		if err == io.EOF {
			return flush()
		}
		if err != nil {
			return err
		}
		buf = ch.Data[:0]
		if IsZero(ch.Data) {
			if zero+int64(len(ch.Data)) > MaxSize {
				if err := flush(); err != nil {
					return err
				}
			}
			zero += int64(len(ch.Data))
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		if err := fn(off, ch.Data); err != nil {
			return err
		}
		off += int64(ch.Length)
	}
}

var zeros = make([]byte, MaxSize)

// IsZero reports whether b is all zeros.
func IsZero(b []byte) bool { return len(b) <= MaxSize && bytes.Equal(b, zeros[:len(b)]) }

// ZeroSum is the sha256 of n zero bytes, for the lengths a run of zeros
// is cut into (multiples of MinSize); ok is false for other lengths.
// Computed when first asked for: the init imports this package and must
// not hash at every boot for nothing.
func ZeroSum(n uint32) (sum [32]byte, ok bool) {
	if n == 0 || n > MaxSize || n%MinSize != 0 {
		return sum, false
	}
	zeroMu.Lock()
	defer zeroMu.Unlock()
	i := n/MinSize - 1
	if !zeroDone[i] {
		zeroSums[i], zeroDone[i] = sha256.Sum256(zeros[:n]), true
	}
	return zeroSums[i], true
}

var (
	zeroMu   sync.Mutex
	zeroSums [MaxSize / MinSize][32]byte
	zeroDone [MaxSize / MinSize]bool
)

// Build chunks an image.
func Build(r io.Reader) (*Index, error) {
	ix := &Index{}
	whole := sha256.New()
	err := Split(r, func(off int64, data []byte) error {
		whole.Write(data)
		ix.Chunks = append(ix.Chunks, Chunk{Offset: off, Length: uint32(len(data)), Sum: sha256.Sum256(data)})
		ix.Size = off + int64(len(data))
		return nil
	})
	if err != nil {
		return nil, err
	}
	copy(ix.SHA256[:], whole.Sum(nil))
	return ix, nil
}

// Marshal returns the index file's bytes: version 2 when the index is
// Packed, else version 1.
func (ix *Index) Marshal() []byte {
	v, es := uint32(version1), entrySize1
	if ix.Packed {
		v, es = version2, entrySize2
	}
	b := make([]byte, headerSize, headerSize+es*len(ix.Chunks))
	copy(b, magic)
	be := binary.BigEndian
	be.PutUint32(b[8:], v)
	be.PutUint32(b[12:], MinSize)
	be.PutUint32(b[16:], AverageBits)
	be.PutUint32(b[20:], MaxSize)
	be.PutUint64(b[24:], uint64(Polynomial))
	be.PutUint64(b[32:], uint64(ix.Size))
	copy(b[40:72], ix.SHA256[:])
	be.PutUint64(b[72:], uint64(len(ix.Chunks)))
	for _, c := range ix.Chunks {
		b = be.AppendUint32(b, c.Length)
		if ix.Packed {
			b = be.AppendUint32(b, c.PackLength)
		}
		b = append(b, c.Sum[:]...)
	}
	return b
}

// Parse reads an index file's bytes. Whatever b holds, Parse allocates no
// more than len(b) bytes' worth of chunks, and a returned index's chunks
// cover [0, Size) exactly, in order.
func Parse(b []byte) (*Index, error) {
	if len(b) < headerSize || string(b[:8]) != magic {
		return nil, fmt.Errorf("%w: no %q header", ErrFormat, magic)
	}
	be := binary.BigEndian
	v := be.Uint32(b[8:])
	if v != version1 && v != version2 {
		return nil, fmt.Errorf("%w: version %d, this hnboot reads %d and %d", ErrFormat, v, version1, version2)
	}
	packed, es := v == version2, uint64(entrySize1)
	if packed {
		es = entrySize2
	}
	min, bits, max, pol := be.Uint32(b[12:]), be.Uint32(b[16:]), be.Uint32(b[20:]), be.Uint64(b[24:])
	if min != MinSize || bits != AverageBits || max != MaxSize || pol != uint64(Polynomial) {
		return nil, fmt.Errorf("%w: min %d, average bits %d, max %d, polynomial %#x; this hnboot chunks with %d, %d, %d, %#x",
			ErrParams, min, bits, max, pol, MinSize, AverageBits, MaxSize, uint64(Polynomial))
	}
	size := be.Uint64(b[32:])
	if size == 0 || size > MaxImage {
		return nil, fmt.Errorf("%w: image size %d", ErrFormat, size)
	}
	n := be.Uint64(b[72:])
	if rest := uint64(len(b) - headerSize); rest%es != 0 || rest/es != n {
		return nil, fmt.Errorf("%w: %d chunks announced, %d bytes of entries", ErrFormat, n, rest)
	}
	ix := &Index{Size: int64(size), Chunks: make([]Chunk, 0, n), Packed: packed}
	copy(ix.SHA256[:], b[40:72])
	var off, poff int64
	for i := uint64(0); i < n; i++ {
		e := b[headerSize+i*es:]
		l := be.Uint32(e)
		last := i == n-1
		if l == 0 || l > MaxSize || (l < MinSize && !last) {
			return nil, fmt.Errorf("%w: chunk %d is %d bytes (want %d to %d, less only for the last)", ErrFormat, i, l, MinSize, MaxSize)
		}
		c := Chunk{Offset: off, Length: l}
		if packed {
			c.PackOffset, c.PackLength = poff, be.Uint32(e[4:])
			if c.PackLength == 0 || c.PackLength > FrameBound(l) {
				return nil, fmt.Errorf("%w: chunk %d (%d bytes) has a frame of %d bytes (want 1 to %d)", ErrFormat, i, l, c.PackLength, FrameBound(l))
			}
			poff += int64(c.PackLength)
			e = e[4:]
		}
		copy(c.Sum[:], e[4:36])
		off += int64(l)
		if off > ix.Size {
			return nil, fmt.Errorf("%w: chunk %d ends at %d, past the image's %d bytes", ErrFormat, i, off, ix.Size)
		}
		ix.Chunks = append(ix.Chunks, c)
	}
	if off != ix.Size {
		return nil, fmt.Errorf("%w: chunks cover %d bytes, the image has %d", ErrFormat, off, ix.Size)
	}
	if packed {
		ix.PackSize = poff
	}
	return ix, nil
}

// Read reads an index of an image of at most size bytes from r, refusing
// more than MaxBytes(size).
func Read(r io.Reader, size int64) (*Index, []byte, error) {
	limit := MaxBytes(size)
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, nil, err
	}
	if int64(len(b)) > limit {
		return nil, nil, fmt.Errorf("%w: more than %d bytes for a %d-byte image", ErrFormat, limit, size)
	}
	ix, err := Parse(b)
	return ix, b, err
}

// Sum is the digest of an index file's bytes, as the manifest names it.
func Sum(b []byte) string {
	s := sha256.Sum256(b)
	return digest.Prefix + hex.EncodeToString(s[:])
}

// BuildFile chunks the image at path.
func BuildFile(path string) (*Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("chunk index: %w", err)
	}
	defer f.Close()
	ix, err := Build(f)
	if err != nil {
		return nil, fmt.Errorf("chunk index: read %s: %w", path, err)
	}
	return ix, nil
}

// WriteFile chunks the image at path, writes its index durably beside it
// (path.chunks, version 1: no pack; chunkpack.WriteFile writes both) and
// returns the index and the digest of the file.
func WriteFile(path string) (*Index, string, error) {
	ix, err := BuildFile(path)
	if err != nil {
		return nil, "", err
	}
	b := ix.Marshal()
	if err := durable.WriteFile(path+layout.ChunksSuffix, b, 0o644); err != nil {
		return nil, "", fmt.Errorf("chunk index: %w", err)
	}
	return ix, Sum(b), nil
}

// Equal reports whether two indexes describe the same chunks.
func Equal(a, b *Index) bool {
	return a.Size == b.Size && a.SHA256 == b.SHA256 && bytes.Equal(a.Marshal(), b.Marshal())
}
