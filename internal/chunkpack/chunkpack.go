// Package chunkpack writes the pack published beside an image for delta
// updates (IMAGE.zst): every chunk of the image's index (package
// chunkindex) compressed as its own zstd frame, the frames concatenated
// in chunk order. Each frame stands alone, so a host decompresses the
// frames of the chunks it lacks from plain HTTP ranges of the pack
// (internal/stage), and `zstd -d IMAGE.zst` gives back the image. The
// frame lengths go into the index (version 2), which the manifest names.
//
// It is apart from chunkindex because only the tools that publish images
// need an encoder: the init reads indexes and decodes frames, and carries
// no encoder.
package chunkpack

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"

	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
)

// Level is the zstd level of the frames. Measured on 1.1 GB of a Debian
// system's /usr (binaries, libraries, docs) cut into chunks, each its own
// frame, on one CPU: fastest 43.4 % of the bytes in 11.4 s, default
// 41.1 % in 13.9 s, better 40.4 % in 28.4 s, best 38.9 % in 127 s. Default:
// better saves 1.7 % of the bytes a delta moves for twice the time of
// every mkimage rootfs and every publish (which packs the upload again).
const Level = zstd.SpeedDefault

// NewEncoder is the encoder the frames are made with: one goroutine (the
// frames are small and EncodeAll runs on the caller's; Build runs several
// encoders), no checksum (each
// chunk is checked against its sha256 anyway), and a frame even for an
// empty input. Its output depends only on the bytes and this package's
// version of the encoder, so a server that packs an uploaded image makes
// the same pack, and index, as mkimage did.
func NewEncoder() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(Level), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true), zstd.WithLowerEncoderMem(true))
}

// Build chunks the image r and writes its pack to pack. The index it
// returns is Packed.
//
// Compressing is most of the work (about twice the chunking's CPU), so
// the frames are made on a few goroutines, each with its encoder, while
// this one chunks and another writes the frames and hashes the image in
// chunk order: on two CPUs the pack costs about the chunking's time, not
// the sum. Each frame depends only on its chunk, so the pack is the same
// bytes whatever the scheduling.
func Build(r io.Reader, pack io.Writer) (*chunkindex.Index, error) {
	workers := min(max(runtime.GOMAXPROCS(0), 1), 4)
	type job struct {
		off   int64
		data  []byte
		frame []byte
		sum   [32]byte
		err   error
		done  chan struct{}
	}
	// The jobs in flight are bounded by the free list: Split waits for a
	// free one, so neither queue below ever blocks a sender.
	n := 4 * workers
	free := make(chan *job, n)
	for range n {
		free <- &job{data: make([]byte, 0, chunkindex.MaxSize), frame: make([]byte, 0, chunkindex.FrameBound(chunkindex.MaxSize))}
	}
	jobs, inOrder := make(chan *job, n), make(chan *job, n)
	for range workers {
		enc, err := NewEncoder()
		if err != nil {
			close(jobs)
			return nil, err
		}
		go func() {
			defer enc.Close()
			for j := range jobs {
				j.sum = sha256.Sum256(j.data)
				j.frame = enc.EncodeAll(j.data, j.frame[:0])
				if n := uint32(len(j.frame)); n == 0 || n > chunkindex.FrameBound(uint32(len(j.data))) {
					// Cannot happen with zstd's raw blocks; an index with it
					// would be refused by every host.
					j.err = fmt.Errorf("the frame of the chunk at %d (%d bytes) is %d bytes, over zstd's bound", j.off, len(j.data), n)
				}
				close(j.done)
			}
		}()
	}
	ix := &chunkindex.Index{Packed: true}
	var werr error // the writer's first error; read after written is closed
	var failed atomic.Bool
	written := make(chan struct{})
	go func() {
		defer close(written)
		whole := sha256.New()
		for j := range inOrder {
			<-j.done
			if werr == nil {
				werr = j.err
			}
			if werr == nil {
				if _, err := pack.Write(j.frame); err != nil {
					werr = err
				}
			}
			if werr != nil {
				failed.Store(true)
				free <- j
				continue
			}
			whole.Write(j.data)
			ix.Chunks = append(ix.Chunks, chunkindex.Chunk{Offset: j.off, Length: uint32(len(j.data)), Sum: j.sum,
				PackOffset: ix.PackSize, PackLength: uint32(len(j.frame))})
			ix.PackSize += int64(len(j.frame))
			ix.Size = j.off + int64(len(j.data))
			free <- j
		}
		copy(ix.SHA256[:], whole.Sum(nil))
	}()
	err := chunkindex.Split(r, func(off int64, data []byte) error {
		if failed.Load() {
			return errStopped
		}
		j := <-free
		j.off, j.data, j.err, j.done = off, append(j.data[:0], data...), nil, make(chan struct{})
		inOrder <- j
		jobs <- j
		return nil
	})
	close(jobs)
	close(inOrder)
	<-written
	if werr != nil {
		return nil, werr
	}
	if err != nil {
		return nil, err
	}
	return ix, nil
}

// errStopped ends the chunking once writing the pack failed (the writer's
// error is the one reported).
var errStopped = errors.New("stopped")

// BuildFile chunks the image at path and writes its pack to packPath
// (durably: synced, renamed into place), in one read of the image.
func BuildFile(path, packPath string, perm os.FileMode) (*chunkindex.Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("chunk pack: %w", err)
	}
	defer f.Close()
	out, err := durable.Create(packPath, perm)
	if err != nil {
		return nil, fmt.Errorf("chunk pack: %w", err)
	}
	defer out.Cleanup()
	bw := bufio.NewWriterSize(out, 1<<20)
	ix, err := Build(bufio.NewReaderSize(f, 1<<20), bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return nil, fmt.Errorf("chunk pack: %s from %s: %w", packPath, path, err)
	}
	if err := out.Commit(); err != nil {
		return nil, fmt.Errorf("chunk pack: %w", err)
	}
	return ix, nil
}

// WriteFile chunks the image at path and writes its pack (path.zst) and
// its version 2 index (path.chunks) beside it; it returns the index and
// the digest of the index file, for the manifest.
func WriteFile(path string) (*chunkindex.Index, string, error) {
	ix, err := BuildFile(path, path+layout.PackSuffix, 0o644)
	if err != nil {
		return nil, "", err
	}
	b := ix.Marshal()
	if err := durable.WriteFile(path+layout.ChunksSuffix, b, 0o644); err != nil {
		return nil, "", fmt.Errorf("chunk index: %w", err)
	}
	return ix, chunkindex.Sum(b), nil
}
