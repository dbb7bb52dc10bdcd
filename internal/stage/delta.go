package stage

// Delta updates: the image is built in File.part from the chunks of the
// images already in the directory (current, old, new, broken) and from
// what an earlier run left in the part, and only the missing chunks are
// fetched, with HTTP Range requests, so a plain static server or any HTTP
// cache in front of imaged serves them: ranges of the pack (IMAGE.zst,
// each chunk a zstd frame, package chunkpack) when the index locates its
// frames (version 2), else, or when the pack is missing or fails, ranges
// of the image itself.
//
// The chunk index (IMAGE.chunks, package chunkindex) is used only when
// the manifest names its sha256, so it is as trusted as the manifest; the
// part is written in order, so it stays a byte prefix of the image that
// the next run (delta or full) resumes from; every fetched chunk is
// checked against the index before it is written; and the whole image's
// sha256 is checked before the rename, as for a full download. Anything
// that keeps a delta from working (no index, a server that ignores Range,
// a chunk or an image that does not verify) falls back to a full
// download in the same run; an interrupted connection is an interrupted
// staging, resumed by the next run.

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/hostpart"
	"github.com/hnboot/hnboot/internal/httpget"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

// RangeGetter is a Getter that also fetches byte ranges; an HTTPSource
// whose client is one can stage by delta. *httpget.Client and the
// agent's NetGetter are.
type RangeGetter interface {
	Getter
	// GetRange fetches bytes [start, end) of url.
	GetRange(ctx context.Context, url string, start, end int64) (*httpget.Response, error)
}

// DeltaStats says how a delta staging built the image.
type DeltaStats struct {
	Chunks        int   `json:"chunks"`         // in the image
	LocalChunks   int   `json:"local_chunks"`   // copied from images in the directory, or zeros
	LocalBytes    int64 `json:"local_bytes"`    //
	FetchedChunks int   `json:"fetched_chunks"` // fetched from the server this time
	FetchedBytes  int64 `json:"fetched_bytes"`  // image bytes of the chunks fetched (decompressed)
	// WireBytes is what the chunks took on the network: their frames in
	// the pack (PackBytes, of PackChunks chunks) and the raw ranges of the
	// image. PackFallback says why chunks came as raw ranges when the
	// index has a pack.
	WireBytes    int64  `json:"wire_bytes"`
	PackChunks   int    `json:"pack_chunks"`
	PackBytes    int64  `json:"pack_bytes"`
	PackFallback string `json:"pack_fallback,omitempty"`
	IndexBytes   int64  `json:"index_bytes"` // the chunk indexes fetched
	Resumed      int64  `json:"resumed"`     // bytes an earlier run left in the part that verified
	Ranges       int    `json:"ranges"`      // Range requests
	// Indexed are the local images whose index (kept, or from the
	// server) said where their chunks are; Scanned those read for chunks,
	// Scan the time both took.
	Indexed []string      `json:"indexed,omitempty"`
	Scanned []string      `json:"scanned,omitempty"`
	Scan    time.Duration `json:"scan"`
}

// String is the one-line summary for logs and imaged stage.
func (d DeltaStats) String() string {
	return fmt.Sprintf("%d of %d chunks (%s) from local images, %d chunks (%s) fetched in %d ranges, %s on the wire (%d chunks from the pack), %s resumed",
		d.LocalChunks, d.Chunks, SizeString(d.LocalBytes), d.FetchedChunks, SizeString(d.FetchedBytes), d.Ranges, SizeString(d.WireBytes), d.PackChunks, SizeString(d.Resumed))
}

// fallbackError is a delta that cannot work: stage falls back to a full
// download.
type fallbackError struct{ err error }

func (e *fallbackError) Error() string { return e.err.Error() }
func (e *fallbackError) Unwrap() error { return e.err }

func fallback(format string, args ...any) error {
	return &fallbackError{fmt.Errorf(format, args...)}
}

// bridgeGap: local chunks between two missing runs are fetched with them
// when they add up to at most this many bytes. None: measured on a real
// update, bridging 4 KiB gaps cut the ranges from 2343 to 674 but added
// 4.4 MB (18 %) to what is fetched; with the connection kept between
// ranges (httpget.GetRange, net/http) a range costs a round trip, not a
// connection.
const bridgeGap = 0

// deltaIndex fetches and checks the chunk index the manifest names.
func deltaIndex(ctx context.Context, s HTTPSource, g RangeGetter, m *manifest.Manifest, want string) (*chunkindex.Index, int64, error) {
	u := s.URL + layout.ChunksSuffix
	resp, err := g.Get(ctx, u, 0)
	if err != nil {
		return nil, 0, fallback("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, 0, fallback("GET %s: %s", u, resp.Status)
	}
	ix, b, err := chunkindex.Read(resp.Body, m.Size)
	if err != nil {
		return nil, int64(len(b)), fallback("%s: %w", u, err)
	}
	if got := chunkindex.Sum(b); got != m.Chunks {
		return nil, int64(len(b)), fallback("%s has sha256 %s, the manifest names %s", u, got, m.Chunks)
	}
	if ix.Digest() != want || ix.Size != m.Size {
		return nil, int64(len(b)), fallback("%s describes %s (%d bytes), want %s (%d bytes)", u, ix.Digest(), ix.Size, want, m.Size)
	}
	return ix, int64(len(b)), nil
}

// where a chunk comes from
type source uint8

const (
	fromNet   source = iota
	fromZero         // all zeros: nothing to read (a hole in the part)
	fromLocal        // a local image
	fromSelf         // an earlier chunk of this image, already in the part
)

type loc struct {
	f   *os.File // nil: not found yet
	off int64
}

type deltaRun struct {
	ix       *chunkindex.Index
	url      string
	pack     string        // the pack's URL; "" when there is none or it failed
	dec      *zstd.Decoder // of the pack's frames, made at the first
	frame    []byte        // a frame as it arrives
	get      RangeGetter
	part     *os.File
	progress func(done, total int64)
	newHash  func() hash.Hash // the whole image's hash (Request.Hash)
	chunkH   hash.Hash        // of one chunk at a time (sum), made by newHash
	log      *slog.Logger
	st       DeltaStats
}

// sum is the sha256 of one chunk, by the hash the caller chose for the
// image (Request.Hash: in the init under emulation the kernel's, 2-3x
// Go's there). Every chunk the run checks, read locally or fetched, goes
// through it, on the run's goroutine (the image's hash has its own).
func (d *deltaRun) sum(b []byte) (s [32]byte) {
	if d.chunkH == nil {
		d.chunkH = d.newHash()
	}
	d.chunkH.Reset()
	d.chunkH.Write(b)
	d.chunkH.Sum(s[:0])
	return s
}

// local is an image in the directory that chunks can come from.
type local struct {
	path   string
	digest string // "" when not known without hashing
	size   int64
}

// localImages are the images in dir that chunks can come from, in the
// order they are read: the current one first (the update's base).
func localImages(dir string, st hostpart.State) []local {
	var out []local
	for _, s := range layout.Slots {
		im := st.Slot(s.Slot)
		p := filepath.Join(dir, s.File)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
			out = append(out, local{path: p, digest: SlotDigest(dir, im), size: fi.Size()})
		}
	}
	return out
}

// The chunk indexes of the images on hostpart, by digest
// (.hnboot/chunks/<hex>.chunks): kept when an image is staged by delta,
// so the next delta finds its chunks without reading the image.

func chunksFile(digest string) string {
	return layout.ChunksDir + "/" + strings.TrimPrefix(digest, "sha256:") + layout.ChunksSuffix
}

// knownIndex is the kept index of a local image, nil when there is none
// or it does not describe the file.
func knownIndex(dir string, l local) *chunkindex.Index {
	if l.digest == "" {
		return nil
	}
	f, err := os.Open(filepath.Join(dir, chunksFile(l.digest)))
	if err != nil {
		return nil
	}
	defer f.Close()
	ix, _, err := chunkindex.Read(f, l.size)
	if err != nil || ix.Digest() != l.digest || ix.Size != l.size {
		return nil
	}
	return ix
}

// serverIndex fetches the index of a local image from the server, when
// the image's URL names it by digest (imaged's /blobs/DIGEST, or a cache
// laid out the same) and the manifest beside the local image (checked
// when it was staged) names the index's sha256; nil otherwise.
func (d *deltaRun) serverIndex(ctx context.Context, dir string, l local) *chunkindex.Index {
	want := d.ix.Digest()
	base, ok := strings.CutSuffix(d.url, want)
	if !ok || l.digest == "" || l.digest == want {
		return nil
	}
	m, err := manifest.ReadFile(l.path + layout.ManifestSuffix)
	if err != nil || "sha256:"+m.SHA256 != l.digest || m.Size != l.size || m.Chunks == "" {
		return nil
	}
	u := base + l.digest + layout.ChunksSuffix
	resp, err := d.get.Get(ctx, u, 0)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil
	}
	ix, b, err := chunkindex.Read(resp.Body, l.size)
	d.st.IndexBytes += int64(len(b))
	if err != nil || chunkindex.Sum(b) != m.Chunks || ix.Digest() != l.digest || ix.Size != l.size {
		d.log.Warn("stage: delta: the server's index of a local image does not match its manifest; reading the image", "url", u, "err", err)
		return nil
	}
	return ix
}

// keepIndex stores the index of a staged image and removes those of
// images no longer in a slot.
func keepIndex(dir string, ix *chunkindex.Index, keep map[string]bool) error {
	fsys := durable.Root(dir)
	if err := fsys.WriteFile(chunksFile(ix.Digest()), ix.Marshal()); err != nil {
		return err
	}
	keep[ix.Digest()] = true
	ents, _ := os.ReadDir(filepath.Join(dir, layout.ChunksDir))
	for _, e := range ents {
		hex, ok := strings.CutSuffix(e.Name(), layout.ChunksSuffix)
		if !ok || !keep["sha256:"+hex] {
			fsys.Remove(layout.ChunksDir + "/" + e.Name())
		}
	}
	return nil
}

// fetchDelta builds the image in part. have is how much of the part an
// earlier run of the same digest left (0 for none). It returns the
// image's digest.
func (d *deltaRun) fetch(ctx context.Context, dir string, have int64, locals []local) (string, error) {
	ix := d.ix
	d.st.Chunks = len(ix.Chunks)
	h := d.newHash()
	buf := make([]byte, chunkindex.MaxSize)

	// What an earlier run left: the chunks of the prefix that verify.
	first := 0
	for first < len(ix.Chunks) && ix.Chunks[first].End() <= have {
		c := ix.Chunks[first]
		b := buf[:c.Length]
		if _, err := d.part.ReadAt(b, c.Offset); err != nil || d.sum(b) != c.Sum {
			break
		}
		h.Write(b)
		first++
	}
	start := int64(0)
	if first > 0 {
		start = ix.Chunks[first-1].End()
	}
	d.st.Resumed = start
	if err := d.part.Truncate(start); err != nil {
		return "", fmt.Errorf("truncate %s: %w", d.part.Name(), err)
	}

	// Where each chunk comes from.
	from := make([]source, len(ix.Chunks))
	selfAt := make([]int, len(ix.Chunks))
	need := map[[32]byte]*loc{}
	lengths := map[uint32]int{} // chunks to find, by length: most local chunks are skipped unhashed
	var missing int64
	seen := map[[32]byte]int{}
	for i, c := range ix.Chunks {
		if zs, ok := chunkindex.ZeroSum(c.Length); ok && zs == c.Sum {
			from[i] = fromZero
			continue
		}
		if j, ok := seen[c.Sum]; ok {
			from[i], selfAt[i] = fromSelf, j
			continue
		}
		seen[c.Sum] = i
		if i < first {
			continue
		}
		need[c.Sum] = &loc{}
		lengths[c.Length]++
		missing += int64(c.Length)
	}
	scanStart := time.Now()
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	found := func(f *os.File, off int64, n int, sum [32]byte) bool {
		if lengths[uint32(n)] == 0 {
			return false
		}
		l := need[sum]
		if l == nil || l.f != nil {
			return false
		}
		l.f, l.off = f, off
		lengths[uint32(n)]--
		missing -= int64(n)
		return true
	}
	// Images whose index was kept, or is on the server: their chunks are
	// known unread.
	var scan []local
	for _, lc := range locals {
		ix := knownIndex(dir, lc)
		if ix == nil && missing > 0 {
			ix = d.serverIndex(ctx, dir, lc)
		}
		if ix == nil {
			scan = append(scan, lc)
			continue
		}
		f, err := os.Open(lc.path)
		if err != nil {
			continue
		}
		files = append(files, f)
		d.st.Indexed = append(d.st.Indexed, filepath.Base(lc.path))
		for _, c := range ix.Chunks {
			found(f, c.Offset, int(c.Length), c.Sum)
		}
	}
	for k, lc := range scan {
		p := lc.path
		// Reading an image for chunks runs at several times a gigabit
		// link's speed: after the first (the base of the update), another
		// is read only when what is still missing outweighs a quarter of it.
		if missing == 0 || ((k > 0 || len(d.st.Indexed) > 0) && missing < lc.size/4) {
			break
		}
		f, err := os.Open(p)
		if err != nil {
			d.log.Warn("stage: delta: cannot read a local image", "file", p, "err", err)
			continue
		}
		files = append(files, f)
		d.st.Scanned = append(d.st.Scanned, filepath.Base(p))
		err = scanImage(ctx, f, func(off int64, data []byte) bool {
			return lengths[uint32(len(data))] > 0 && found(f, off, len(data), d.sum(data)) && missing == 0
		})
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			d.log.Warn("stage: delta: reading a local image failed; using what it gave", "file", p, "err", err)
		}
	}
	d.st.Scan = time.Since(scanStart)
	for i := first; i < len(ix.Chunks); i++ {
		if from[i] != fromNet {
			continue
		}
		if l := need[ix.Chunks[i].Sum]; l != nil && l.f != nil {
			from[i] = fromLocal
		}
	}
	// A duplicate of a chunk that is fetched, or of one in the resumed
	// prefix, is copied from the part.
	for i := first; i < len(ix.Chunks); i++ {
		if from[i] == fromSelf && from[selfAt[i]] == fromLocal {
			from[i] = fromLocal
		}
	}

	w := newSink(d.part, h)
	done := start
	last := time.Time{}
	report := func() {
		if d.progress != nil && time.Since(last) > 200*time.Millisecond {
			d.progress(done, ix.Size)
			last = time.Now()
		}
	}
	err := func() error {
		for i := first; i < len(ix.Chunks); {
			c := ix.Chunks[i]
			switch from[i] {
			case fromZero:
				w.zero(c.Offset, int(c.Length))
			case fromLocal, fromSelf:
				f, off := d.part, ix.Chunks[selfAt[i]].Offset
				if from[i] == fromLocal {
					l := need[c.Sum]
					f, off = l.f, l.off
				} else if err := w.barrier(); err != nil {
					return err
				}
				b := w.buf()[:c.Length]
				if _, err := f.ReadAt(b, off); err != nil {
					w.put(b)
					return fallback("read %s at %d: %w", f.Name(), off, err)
				}
				w.write(c.Offset, b)
			case fromNet:
				j := d.run(from, i)
				k := i // the first chunk the pack did not give
				if d.pack != "" {
					var err error
					if k, err = d.fetchFrames(ctx, w, i, j); err != nil {
						if !isFallback(err) {
							return err
						}
						// The chunks are still in the image: the rest of
						// this run fetches them from it.
						d.log.Warn("stage: delta: the pack fails; fetching the missing chunks as ranges of the image", "err", err)
						d.st.PackFallback, d.pack = err.Error(), ""
					}
				}
				if k < j {
					if err := d.fetchRange(ctx, w, k, j); err != nil {
						return err
					}
				}
				done = ix.Chunks[j-1].End()
				i = j
				report()
				continue
			}
			d.st.LocalChunks++
			d.st.LocalBytes += int64(c.Length)
			done = c.End()
			i++
			report()
		}
		return nil
	}()
	if werr := w.close(); err == nil {
		err = werr
	}
	if err != nil {
		return "", err
	}
	if err := d.part.Truncate(ix.Size); err != nil { // trailing zeros are a hole
		return "", fmt.Errorf("truncate %s: %w", d.part.Name(), err)
	}
	if d.progress != nil {
		d.progress(ix.Size, ix.Size)
	}
	got := digest.Of(h)
	if got != ix.Digest() {
		d.part.Truncate(0)
		return "", fallback("the image built from chunks has sha256 %s, want %s", got, ix.Digest())
	}
	return got, nil
}

// scanImage chunks f and calls fn with each chunk, until fn says it has
// all it needs. The chunker runs on its own goroutine and fn (hashing)
// on this one: on two CPUs the scan takes the time of the slower of the
// two, not of their sum.
func scanImage(ctx context.Context, f *os.File, fn func(off int64, data []byte) (done bool)) error {
	type piece struct {
		off int64
		b   []byte
	}
	const n = 16
	free, full := make(chan []byte, n), make(chan piece, n)
	for range n {
		free <- make([]byte, chunkindex.MaxSize)
	}
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(full)
		errc <- chunkindex.Split(f, func(off int64, data []byte) error {
			var b []byte
			select {
			case b = <-free:
			case <-stop:
				return errStop
			}
			full <- piece{off, append(b[:0], data...)}
			return ctx.Err()
		})
	}()
	done := false
	for p := range full {
		if !done && fn(p.off, p.b) {
			done = true
			close(stop)
		}
		free <- p.b
	}
	if err := <-errc; err != nil && err != errStop {
		return err
	}
	return nil
}

var errStop = errors.New("stop")

// run is the end of the range to fetch from chunk i: the chunks to fetch
// after it, with short runs of other chunks between them.
func (d *deltaRun) run(from []source, i int) int {
	cs := d.ix.Chunks
	j := i + 1
	for j < len(cs) {
		if from[j] == fromNet {
			j++
			continue
		}
		k, gap := j, int64(0)
		for k < len(cs) && from[k] != fromNet && gap <= bridgeGap {
			gap += int64(cs[k].Length)
			k++
		}
		if k == len(cs) || from[k] != fromNet || gap > bridgeGap {
			break
		}
		j = k
	}
	return j
}

// fetchRange fetches chunks [i, j) in one Range request, checks each
// against the index and hands it to the writer.
func (d *deltaRun) fetchRange(ctx context.Context, w *sink, i, j int) error {
	cs := d.ix.Chunks
	start, end := cs[i].Offset, cs[j-1].End()
	d.st.Ranges++
	resp, err := d.get.GetRange(ctx, d.url, start, end)
	if err != nil {
		return fmt.Errorf("GET %s bytes %d-%d: %w", d.url, start, end-1, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case 206:
	case 200:
		return fallback("GET %s with Range: the server sent the whole file (200), it does not serve ranges", d.url)
	default:
		if resp.StatusCode >= 500 {
			return fmt.Errorf("GET %s bytes %d-%d: %s", d.url, start, end-1, resp.Status) // retried
		}
		return fallback("GET %s bytes %d-%d: %s", d.url, start, end-1, resp.Status)
	}
	if s, e, total, ok := httpget.ParseContentRange(resp.Header.Get("Content-Range")); !ok || s != start || e != end-1 || (total >= 0 && total != d.ix.Size) {
		return fallback("GET %s bytes %d-%d: answered with Content-Range %q", d.url, start, end-1, resp.Header.Get("Content-Range"))
	}
	for k := i; k < j; k++ {
		c := cs[k]
		b := w.buf()[:c.Length]
		n, err := io.ReadFull(resp.Body, b)
		d.st.FetchedBytes += int64(n)
		d.st.WireBytes += int64(n)
		if err != nil {
			w.put(b)
			return fmt.Errorf("GET %s bytes %d-%d: at %d: %w", d.url, start, end-1, c.Offset+int64(n), err)
		}
		if d.sum(b) != c.Sum {
			w.put(b)
			return fallback("GET %s: the bytes at %d (%d) do not match the chunk index: the server serves another image", d.url, c.Offset, c.Length)
		}
		w.write(c.Offset, b)
		d.st.FetchedChunks++
	}
	return nil
}

// fetchFrames fetches the frames of chunks [i, j) from the pack in one
// Range request, decompresses each, checks it against the index and
// hands it to the writer. It returns the first chunk it did not write:
// with a fallback error, the caller fetches the rest from the image.
func (d *deltaRun) fetchFrames(ctx context.Context, w *sink, i, j int) (int, error) {
	cs := d.ix.Chunks
	start, end := cs[i].PackOffset, cs[j-1].PackEnd()
	if d.dec == nil {
		// One frame at a time into a buffer of the chunk's length: a
		// frame that claims or decodes to more is refused, not grown into.
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(chunkindex.MaxSize), zstd.WithDecoderMaxWindow(chunkindex.MaxSize), zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			return i, fallback("zstd decoder: %w", err)
		}
		d.dec = dec
	}
	d.st.Ranges++
	resp, err := d.get.GetRange(ctx, d.pack, start, end)
	if err != nil {
		return i, fmt.Errorf("GET %s bytes %d-%d: %w", d.pack, start, end-1, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case 206:
	case 200:
		return i, fallback("GET %s with Range: the server sent the whole file (200), it does not serve ranges", d.pack)
	default:
		if resp.StatusCode >= 500 {
			return i, fmt.Errorf("GET %s bytes %d-%d: %s", d.pack, start, end-1, resp.Status) // retried
		}
		return i, fallback("GET %s bytes %d-%d: %s", d.pack, start, end-1, resp.Status)
	}
	if s, e, total, ok := httpget.ParseContentRange(resp.Header.Get("Content-Range")); !ok || s != start || e != end-1 || (total >= 0 && total != d.ix.PackSize) {
		return i, fallback("GET %s bytes %d-%d: answered with Content-Range %q", d.pack, start, end-1, resp.Header.Get("Content-Range"))
	}
	if d.frame == nil {
		d.frame = make([]byte, chunkindex.FrameBound(chunkindex.MaxSize))
	}
	for k := i; k < j; k++ {
		c := cs[k]
		f := d.frame[:c.PackLength]
		n, err := io.ReadFull(resp.Body, f)
		d.st.PackBytes += int64(n)
		d.st.WireBytes += int64(n)
		if err != nil {
			return k, fmt.Errorf("GET %s bytes %d-%d: at %d: %w", d.pack, start, end-1, c.PackOffset+int64(n), err)
		}
		b := w.buf()
		out, err := d.dec.DecodeAll(f, b[:0:c.Length])
		if err != nil || len(out) != int(c.Length) {
			w.put(b)
			return k, fallback("%s: the frame of the chunk at %d (%d bytes at %d in the pack) decodes to %d bytes, want %d: %v", d.pack, c.Offset, c.PackLength, c.PackOffset, len(out), c.Length, err)
		}
		b = b[:c.Length]
		if &out[0] != &b[0] {
			copy(b, out)
		}
		if d.sum(b) != c.Sum {
			w.put(b)
			return k, fallback("%s: the frame of the chunk at %d does not decode to the chunk the index names: the pack is of another image, or corrupt", d.pack, c.Offset)
		}
		w.write(c.Offset, b)
		d.st.FetchedChunks++
		d.st.FetchedBytes += int64(c.Length)
		d.st.PackChunks++
	}
	return j, nil
}

// sink writes chunks to the part and into the image's hash, in order, on
// its own goroutine: on a host with two CPUs, hashing the image runs
// beside reading and checking the chunks.
type sink struct {
	part *os.File
	h    hash.Hash
	ch   chan piece
	free chan []byte
	done chan struct{}
	err  error // of the goroutine; read after done
}

type piece struct {
	off     int64
	b       []byte
	zero    int
	barrier chan error
}

func newSink(part *os.File, h hash.Hash) *sink {
	const n = 8
	s := &sink{part: part, h: h, ch: make(chan piece, n), free: make(chan []byte, n), done: make(chan struct{})}
	for range n {
		s.free <- make([]byte, chunkindex.MaxSize)
	}
	go func() {
		defer close(s.done)
		for p := range s.ch {
			switch {
			case p.barrier != nil:
				p.barrier <- s.err
			case p.zero > 0:
				s.h.Write(zeroBuf[:p.zero])
			default:
				if s.err == nil {
					if _, err := s.part.WriteAt(p.b, p.off); err != nil {
						s.err = fmt.Errorf("write %s: %w", s.part.Name(), err)
					}
				}
				s.h.Write(p.b)
				s.free <- p.b[:cap(p.b)]
			}
		}
	}()
	return s
}

var zeroBuf = make([]byte, chunkindex.MaxSize)

func (s *sink) buf() []byte               { return <-s.free }
func (s *sink) put(b []byte)              { s.free <- b[:cap(b)] }
func (s *sink) write(off int64, b []byte) { s.ch <- piece{off: off, b: b} }
func (s *sink) zero(off int64, n int)     { s.ch <- piece{off: off, zero: n} }

// barrier waits until everything sent is written.
func (s *sink) barrier() error {
	c := make(chan error, 1)
	s.ch <- piece{barrier: c}
	return <-c
}

func (s *sink) close() error {
	close(s.ch)
	<-s.done
	return s.err
}

// deltaSource says whether req can stage by delta: an HTTP source whose
// client fetches ranges, a known digest, and a manifest naming an index.
func deltaSource(req Request, man *manifest.Manifest) (HTTPSource, RangeGetter, string) {
	hs, ok := req.Source.(HTTPSource)
	switch {
	case req.NoDelta:
		return hs, nil, "delta updates are off"
	case !ok:
		return hs, nil, ""
	case req.Digest == "":
		return hs, nil, "no digest asked for"
	case man == nil:
		return hs, nil, "the source has no manifest"
	case man.Chunks == "":
		return hs, nil, "the manifest names no chunk index (built before delta updates)"
	}
	g, ok := hs.client().(RangeGetter)
	if !ok {
		return hs, nil, "the HTTP client does not fetch ranges"
	}
	return hs, g, ""
}

// isFallback reports whether err is a delta that cannot work, as opposed
// to an interruption.
func isFallback(err error) bool {
	var fe *fallbackError
	return errors.As(err, &fe)
}

// stageDelta builds the image in part by delta. On success res.Delta,
// res.Reused and res.Downloaded say how.
func stageDelta(ctx context.Context, dir string, st hostpart.State, res *Result, req Request, hs HTTPSource, g RangeGetter, man *manifest.Manifest, part *os.File, have int64, log *slog.Logger) (string, error) {
	ix, n, err := deltaIndex(ctx, hs, g, man, req.Digest)
	res.Downloaded += n
	if err != nil {
		return "", err
	}
	if ci, ok := g.(interface{ CloseIdle() }); ok {
		defer ci.CloseIdle() // the connection kept between ranges
	}
	d := &deltaRun{ix: ix, url: hs.URL, get: g, part: part, progress: req.Progress, newHash: req.newHash, log: log}
	if ix.Packed {
		d.pack = hs.URL + layout.PackSuffix
	}
	d.st.IndexBytes = n
	start := time.Now()
	got, err := d.fetch(ctx, dir, have, localImages(dir, st))
	if d.dec != nil {
		d.dec.Close()
	}
	res.Delta = &d.st
	res.Reused = d.st.Resumed
	res.Downloaded += d.st.WireBytes + d.st.IndexBytes - n
	if d.st.PackFallback != "" {
		res.Fallback = "the pack: " + d.st.PackFallback
	}
	if err != nil {
		return "", err
	}
	keep := map[string]bool{}
	for _, im := range st.Images {
		if dg := SlotDigest(dir, im); dg != "" {
			keep[dg] = true
		}
	}
	if err := keepIndex(dir, ix, keep); err != nil {
		log.Warn("stage: cannot keep the chunk index for the next delta", "err", err)
	}
	log.Info("stage: by delta: "+d.st.String(), "source", req.Source.String(), "indexed", d.st.Indexed, "scanned", d.st.Scanned, "scan", d.st.Scan.Round(time.Millisecond), "took", time.Since(start).Round(time.Millisecond))
	return got, nil
}

// Report fills a check-in's staging with how the image came: the mode,
// the bytes and chunks copied from local images and fetched, the time.
func (r Result) Report(s *checkin.Staging) {
	s.Reused, s.Fallback, s.TookMS = r.Reused, r.Fallback, r.Took.Milliseconds()
	s.Fetched = r.Downloaded
	if r.Already != "" {
		return
	}
	s.Mode = "full"
	if d := r.Delta; d != nil {
		s.Mode = "delta"
		s.Local, s.Chunks = d.LocalBytes, int64(d.Chunks)
		s.LocalChunks, s.FetchedChunks = int64(d.LocalChunks), int64(d.FetchedChunks)
	}
}
