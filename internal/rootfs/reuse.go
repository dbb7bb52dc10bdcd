package rootfs

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
)

// Reuse says how much of a new image a block-level delta can take from an
// old one: of the new image's 4 KiB blocks that are not all zeros (zeros
// cost a delta nothing), how many hold the same bytes at the same offset
// in the old image, and how many are found anywhere in it.
type Reuse struct {
	Blocks     int64 // non-zero 4 KiB blocks of the new image
	SameOffset int64
	Anywhere   int64
}

// SameShare and AnywhereShare are the shares of Blocks, 0..1.
func (r Reuse) SameShare() float64     { return share(r.SameOffset, r.Blocks) }
func (r Reuse) AnywhereShare() float64 { return share(r.Anywhere, r.Blocks) }

func share(n, of int64) float64 {
	if of == 0 {
		return 1
	}
	return float64(n) / float64(of)
}

// BlockReuse compares the images at oldPath and newPath block by block.
func BlockReuse(oldPath, newPath string) (Reuse, error) {
	var r Reuse
	old, err := os.ReadFile(oldPath)
	if err != nil {
		return r, fmt.Errorf("block reuse: %w", err)
	}
	seen := make(map[[32]byte]struct{}, len(old)/blockSize)
	for off := 0; off+blockSize <= len(old); off += blockSize {
		seen[sha256.Sum256(old[off:off+blockSize])] = struct{}{}
	}
	f, err := os.Open(newPath)
	if err != nil {
		return r, fmt.Errorf("block reuse: %w", err)
	}
	defer f.Close()
	zero := make([]byte, blockSize)
	b := make([]byte, blockSize)
	for off := 0; ; off += blockSize {
		if _, err := io.ReadFull(f, b); err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		} else if err != nil {
			return r, fmt.Errorf("block reuse: %s: %w", newPath, err)
		}
		if bytes.Equal(b, zero) {
			continue
		}
		r.Blocks++
		if off+blockSize <= len(old) && bytes.Equal(b, old[off:off+blockSize]) {
			r.SameOffset++
		}
		if _, ok := seen[sha256.Sum256(b)]; ok {
			r.Anywhere++
		}
	}
	return r, nil
}
