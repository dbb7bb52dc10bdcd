package stage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"hash"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/chunkpack"
	"github.com/hnboot/hnboot/internal/httpget"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

// deltaImages returns a base image (random data, with free space: zeros)
// and an update of it: bytes inserted, bytes overwritten, a file
// appended, as a package upgrade does to a filesystem image.
func deltaImages(seed int64) (base, update []byte) {
	r := rand.New(rand.NewSource(seed))
	rnd := func(n int) []byte { b := make([]byte, n); r.Read(b); return b }
	base = append(append(rnd(6<<20), make([]byte, 2<<20)...), rnd(1<<20)...)
	update = append([]byte{}, base[:2<<20]...)
	update = append(update, rnd(3000)...) // inserted
	update = append(update, base[2<<20:]...)
	copy(update[4<<20:], rnd(100<<10)) // overwritten
	copy(update[6<<20+4096:], rnd(200<<10))
	return base, update
}

// deltaServer serves one image as imaged (or a static server) does:
// the blob with Range, BLOB.json, BLOB.chunks and the pack BLOB.zst. It
// counts the bytes of the blob and the pack it sends and the requests,
// can ignore Range, corrupt ranges, or die after a number of bytes.
type deltaServer struct {
	*httptest.Server
	data, man, chunks, pack []byte

	mu          sync.Mutex
	blobBytes   int64
	ranges      []string
	noRange     bool  // answer 200 with the whole file to a Range request
	corruptRng  bool  // flip bytes in every answer to a bounded range (bytes=a-b)
	dieAfter    int64 // after this many blob bytes, drop the connection and stop serving
	noChunks    bool
	noPack      bool              // 404 for BLOB.zst
	corruptPack bool              // flip a byte in the middle of every frame of BLOB.zst
	wrongChunks bool              // serve another image's index
	others      map[string][]byte // DIGEST.chunks of other images
	frames      []chunkindex.Chunk
}

// newDeltaServer serves img with a version 2 index and its pack, as
// mkimage writes them.
func newDeltaServer(t *testing.T, img []byte) *deltaServer {
	t.Helper()
	return newDeltaServerIndex(t, img, true)
}

// newDeltaServerIndex serves img with a version 2 index and its pack
// (packed), or a version 1 index and no pack, as mkimage wrote them
// before packs.
func newDeltaServerIndex(t *testing.T, img []byte, packed bool) *deltaServer {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	write := chunkindex.WriteFile
	if packed {
		write = chunkpack.WriteFile
	}
	ix, sum, err := write(p)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.New(p, manifest.Fields{Name: "web", Version: "2", FS: "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	m.Chunks = sum
	cb, _ := os.ReadFile(p + layout.ChunksSuffix)
	s := &deltaServer{data: img, man: m.Marshal(), chunks: cb, noPack: !packed}
	if packed {
		s.pack, _ = os.ReadFile(p + layout.PackSuffix)
		s.frames = ix.Chunks
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *deltaServer) url() string { return s.URL + "/blobs/" + sha(s.data) }

// sent is the blob bytes sent so far, and the Range headers asked.
func (s *deltaServer) sent() (int64, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blobBytes, append([]string(nil), s.ranges...)
}

func (s *deltaServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case strings.HasSuffix(r.URL.Path, layout.ManifestSuffix):
		w.Write(s.man)
		return
	case strings.HasSuffix(r.URL.Path, layout.ChunksSuffix):
		d := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/blobs/"), layout.ChunksSuffix)
		switch {
		case d != sha(s.data):
			if b, ok := s.others[d]; ok {
				w.Write(b)
			} else {
				http.NotFound(w, r)
			}
		case s.noChunks:
			http.NotFound(w, r)
		case s.wrongChunks:
			ix, _ := chunkindex.Build(bytes.NewReader(s.data[:len(s.data)/2]))
			w.Write(ix.Marshal())
		default:
			w.Write(s.chunks)
		}
		return
	}
	rng := r.Header.Get("Range")
	s.ranges = append(s.ranges, rng)
	if s.noRange {
		r.Header.Del("Range")
	}
	data := s.data
	if strings.HasSuffix(r.URL.Path, layout.PackSuffix) {
		if s.noPack {
			http.Error(w, "no pack", http.StatusNotFound)
			return
		}
		data = s.pack
		if s.corruptPack {
			data = append([]byte{}, data...)
			for _, c := range s.frames {
				data[c.PackOffset+int64(c.PackLength)/2] ^= 0x55
			}
		}
		http.ServeContent(&dyingWriter{ResponseWriter: w, s: s}, r, "", time.Time{}, bytes.NewReader(data))
		return
	}
	if s.corruptRng && rng != "" && !strings.HasSuffix(rng, "-") {
		data = append([]byte{}, data...)
		for i := 0; i < len(data); i += 4096 {
			data[i] ^= 0x55
		}
	}
	http.ServeContent(&dyingWriter{ResponseWriter: w, s: s}, r, "", time.Time{}, bytes.NewReader(data))
}

type dyingWriter struct {
	http.ResponseWriter
	s *deltaServer
}

func (d *dyingWriter) Write(p []byte) (int, error) {
	s := d.s
	if s.dieAfter > 0 && s.blobBytes+int64(len(p)) > s.dieAfter {
		n, _ := d.ResponseWriter.Write(p[:s.dieAfter-s.blobBytes])
		s.blobBytes += int64(n)
		d.ResponseWriter.(http.Flusher).Flush()
		go s.Close() // the server goes away: nothing more is answered
		panic(http.ErrAbortHandler)
	}
	n, err := d.ResponseWriter.Write(p)
	s.blobBytes += int64(n)
	return n, err
}

func sha(b []byte) string { d, _, _ := manifest.Digest(bytes.NewReader(b)); return "sha256:" + d }

func deltaHostpart(t *testing.T, current []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, layout.Current), current, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func checkStaged(t *testing.T, dir string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, layout.New))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the published image (%d bytes, want %d)", layout.New, len(got), len(want))
	}
	if _, err := os.Stat(filepath.Join(dir, layout.NewPart)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left behind: %v", layout.NewPart, err)
	}
}

// An update staged over a host that has the base image fetches only the
// chunks that changed, with Range requests, and the result is the image.
func TestDeltaReusesLocalChunks(t *testing.T) {
	base, update := deltaImages(1)
	srv := newDeltaServer(t, update)
	dir := deltaHostpart(t, base)
	res, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.url()}, Digest: sha(update), Size: int64(len(update)), Reserve: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, dir, update)
	d := res.Delta
	if d == nil {
		t.Fatalf("Stage = %+v, want a delta (fallback: %s)", res, res.Fallback)
	}
	sent, ranges := srv.sent()
	// 3000 + 100 KiB + 200 KiB changed: a few chunks around each.
	if limit := int64(len(update) / 10); d.FetchedBytes > limit || sent != d.WireBytes {
		t.Errorf("fetched %d bytes (%d on the wire, server sent %d), want at most %d of %d", d.FetchedBytes, d.WireBytes, sent, limit, len(update))
	}
	if d.PackChunks != d.FetchedChunks || d.PackBytes != d.WireBytes {
		t.Errorf("%d of %d fetched chunks from the pack (%d of %d bytes on the wire), want all", d.PackChunks, d.FetchedChunks, d.PackBytes, d.WireBytes)
	}
	if d.LocalBytes+d.FetchedBytes != int64(len(update)) || d.LocalChunks+d.FetchedChunks != d.Chunks {
		t.Errorf("local %d + fetched %d bytes, %d + %d of %d chunks: do not add up to the image", d.LocalBytes, d.FetchedBytes, d.LocalChunks, d.FetchedChunks, d.Chunks)
	}
	for _, r := range ranges {
		if !strings.HasPrefix(r, "bytes=") || strings.HasSuffix(r, "-") {
			t.Errorf("blob request with Range %q, want only bounded ranges", r)
		}
	}
	if d.Ranges != len(ranges) || d.Ranges > 6 {
		t.Errorf("%d range requests (server saw %d), want at most 6 for three changes", d.Ranges, len(ranges))
	}
	if res.Downloaded != d.WireBytes+d.IndexBytes {
		t.Errorf("Downloaded %d, want on the wire %d + index %d", res.Downloaded, d.WireBytes, d.IndexBytes)
	}
}

// Whatever keeps a delta from working falls back to a full download in
// the same run, and the image is staged all the same.
func TestDeltaFallsBack(t *testing.T) {
	base, update := deltaImages(2)
	cases := []struct {
		name    string
		set     func(*deltaServer)
		client  Getter
		noDelta bool
		want    string // in Result.Fallback
	}{
		{"no index", func(s *deltaServer) { s.noChunks = true }, nil, false, "404"},
		{"index of another image", func(s *deltaServer) { s.wrongChunks = true }, nil, false, "the manifest names"},
		{"server ignores Range", func(s *deltaServer) { s.noRange = true }, nil, false, "does not serve ranges"},
		{"ranges corrupted", func(s *deltaServer) { s.corruptRng, s.noPack = true, true }, nil, false, "do not match the chunk index"},
		{"ranges corrupted, pack too", func(s *deltaServer) { s.corruptRng, s.corruptPack = true, true }, nil, false, "do not match the chunk index"},
		{"manifest without index", func(s *deltaServer) {
			m, _ := manifest.Parse(s.man)
			m.Chunks = ""
			s.man = m.Marshal()
		}, nil, false, "names no chunk index"},
		{"client without ranges", func(*deltaServer) {}, plainGetter{}, false, "does not fetch ranges"},
		{"turned off", func(*deltaServer) {}, nil, true, "off"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := newDeltaServer(t, update)
			c.set(srv)
			dir := deltaHostpart(t, base)
			res, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.url(), Client: c.client}, Digest: sha(update), Size: int64(len(update)), Reserve: 1, NoDelta: c.noDelta})
			if err != nil {
				t.Fatalf("Stage: %v (fallback %q)", err, res.Fallback)
			}
			checkStaged(t, dir, update)
			if !strings.Contains(res.Fallback, c.want) {
				t.Errorf("Fallback = %q, want it to say %q", res.Fallback, c.want)
			}
		})
	}
}

// plainGetter fetches no ranges (a Getter only).
type plainGetter struct{}

func (plainGetter) Get(ctx context.Context, url string, offset int64) (*httpget.Response, error) {
	return (&httpget.Client{}).Get(ctx, url, offset)
}

// The server dies in the middle of a delta update, fetching frames of
// the pack or raw ranges of the image: the staging fails as an
// interruption, keeps what arrived, and the next run (from another
// server of the same image) reuses it and fetches only the rest.
func TestDeltaServerDiesMidway(t *testing.T) {
	for _, c := range []struct {
		name   string
		packed bool
	}{{"pack", true}, {"raw ranges", false}} {
		t.Run(c.name, func(t *testing.T) { testDeltaServerDiesMidway(t, c.packed) })
	}
}

func testDeltaServerDiesMidway(t *testing.T, packed bool) {
	base, update := deltaImages(3)
	// Much to fetch: the host has only the first half of the base.
	dir := deltaHostpart(t, base[:len(base)/2])
	req := Request{Digest: sha(update), Size: int64(len(update)), Reserve: 1}

	first := newDeltaServerIndex(t, update, packed)
	first.dieAfter = 1 << 20
	req.Source = HTTPSource{URL: first.url()}
	res, err := Stage(context.Background(), dir, req)
	if err == nil || Permanent(err) {
		t.Fatalf("Stage with a server that dies = %v, want an interruption to resume", err)
	}
	if res.Delta == nil {
		t.Fatalf("the first run was no delta (fallback %q)", res.Fallback)
	}
	if got := res.Delta.PackChunks > 0; got != packed {
		t.Fatalf("the first run took %d chunks from the pack (fallback %q), want them from it: %v", res.Delta.PackChunks, res.Delta.PackFallback, packed)
	}
	fi, err := os.Stat(filepath.Join(dir, layout.NewPart))
	if err != nil || fi.Size() == 0 {
		t.Fatalf("nothing kept in %s after the server died: %v", layout.NewPart, err)
	}
	if _, err := os.Stat(filepath.Join(dir, layout.New)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists after an interrupted staging", layout.New)
	}

	second := newDeltaServerIndex(t, update, packed)
	req.Source = HTTPSource{URL: second.url()}
	res2, err := Stage(context.Background(), dir, req)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, dir, update)
	if res2.Delta == nil || res2.Delta.Resumed == 0 || (res2.Delta.PackChunks == res2.Delta.FetchedChunks) != packed {
		t.Fatalf("second run: %+v, want a delta that resumed the part, its chunks from the pack: %v", res2.Delta, packed)
	}
	// What the first server sent is not fetched again, but for the chunk
	// (or its frame) it was cut in the middle of.
	alone := newDeltaServerIndex(t, update, packed)
	dir2 := deltaHostpart(t, base[:len(base)/2])
	res3, err := Stage(context.Background(), dir2, Request{Source: HTTPSource{URL: alone.url()}, Digest: sha(update), Size: int64(len(update)), Reserve: 1})
	if err != nil {
		t.Fatal(err)
	}
	b1, _ := first.sent()
	b2, _ := second.sent()
	b3, _ := alone.sent()
	if waste := b1 + b2 - b3; waste > int64(chunkindex.FrameBound(chunkindex.MaxSize))+bridgeGap {
		t.Errorf("two runs fetched %d + %d bytes, one uninterrupted run %d: %d fetched twice, want at most one chunk", b1, b2, b3, waste)
	}
	if res2.Delta.FetchedBytes >= res3.Delta.FetchedBytes {
		t.Errorf("the resumed run fetched %d bytes, as much as a fresh one (%d)", res2.Delta.FetchedBytes, res3.Delta.FetchedBytes)
	}
}

// A previous full download of the same image that was cut is resumed by
// the delta: its chunks verify in place.
func TestDeltaResumesFullDownloadPart(t *testing.T) {
	base, update := deltaImages(4)
	dir := deltaHostpart(t, base)
	srv := newDeltaServer(t, update)
	srv.dieAfter = 3 << 20
	req := Request{Source: HTTPSource{URL: srv.url()}, Digest: sha(update), Size: int64(len(update)), Reserve: 1, NoDelta: true}
	if _, err := Stage(context.Background(), dir, req); err == nil {
		t.Fatal("full download from a dying server succeeded")
	}
	srv2 := newDeltaServer(t, update)
	req.Source, req.NoDelta = HTTPSource{URL: srv2.url()}, false
	res, err := Stage(context.Background(), dir, req)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, dir, update)
	if res.Delta == nil || res.Delta.Resumed < 2<<20 {
		t.Fatalf("delta after a cut full download: %+v, want about 3 MiB resumed", res.Delta)
	}
}

// Chunks come from every local image, not only the current one, and a
// chunk that repeats in the image is fetched once and copied from the
// part after that.
func TestDeltaOtherSlotsAndRepeats(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	rnd := func(n int) []byte { b := make([]byte, n); r.Read(b); return b }
	x, old := rnd(2<<20), rnd(4<<20)
	update := append(append(append([]byte{}, x...), x...), old...) // x twice, then what hn-root-old.img has
	srv := newDeltaServer(t, update)
	dir := deltaHostpart(t, rnd(1<<20)) // the current image shares nothing
	if err := os.WriteFile(filepath.Join(dir, layout.Old), old, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.url()}, Digest: sha(update), Size: int64(len(update)), Reserve: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, dir, update)
	d := res.Delta
	if d == nil {
		t.Fatalf("no delta: %s", res.Fallback)
	}
	if len(d.Scanned) != 2 || d.Scanned[1] != layout.Old {
		t.Errorf("scanned %v, want %s and %s", d.Scanned, layout.Current, layout.Old)
	}
	// x once (plus the chunks around its two ends), nothing of old.
	if limit := int64(len(x) + 4*chunkindex.MaxSize); d.FetchedBytes > limit || d.FetchedBytes < int64(len(x)) {
		t.Errorf("fetched %d bytes, want about x's %d once (at most %d)", d.FetchedBytes, len(x), limit)
	}
}

// An image staged by delta keeps its index (.hnboot/chunks/HEX.chunks):
// once it is the current image, the next delta takes its chunks from the
// index without reading it, and indexes of images gone are removed.
func TestDeltaKeepsIndexForNextUpdate(t *testing.T) {
	base, v2 := deltaImages(6)
	v3 := append([]byte{}, v2...)
	copy(v3[3<<20:], bytes.Repeat([]byte("v3"), 50<<10))
	dir := deltaHostpart(t, base)
	stageOK := func(img []byte) Result {
		t.Helper()
		srv := newDeltaServer(t, img)
		res, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.url()}, Digest: sha(img), Size: int64(len(img)), Reserve: 1})
		if err != nil {
			t.Fatal(err)
		}
		checkStaged(t, dir, img)
		return res
	}
	if res := stageOK(v2); res.Delta == nil || len(res.Delta.Scanned) != 1 || len(res.Delta.Indexed) != 0 {
		t.Fatalf("first delta: %+v, want hn-root.img scanned", res.Delta)
	}
	kept := filepath.Join(dir, layout.ChunksDir, strings.TrimPrefix(sha(v2), "sha256:")+layout.ChunksSuffix)
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("index of the staged image not kept: %v", err)
	}
	// The rotation at the next boot: new becomes current (with its
	// manifest), current becomes old.
	for _, mv := range [][2]string{{layout.Current, layout.Old}, {layout.New, layout.Current}, {layout.ManifestFor(layout.New), layout.ManifestFor(layout.Current)}} {
		if err := os.Rename(filepath.Join(dir, mv[0]), filepath.Join(dir, mv[1])); err != nil {
			t.Fatal(err)
		}
	}
	res := stageOK(v3)
	if d := res.Delta; d == nil || len(d.Indexed) != 1 || d.Indexed[0] != layout.Current || len(d.Scanned) != 0 || d.FetchedBytes > 300<<10 {
		t.Fatalf("second delta: %+v, want hn-root.img's chunks from its kept index, nothing scanned, about 100 KiB fetched", res.Delta)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, layout.ChunksDir))
	if len(ents) != 2 {
		t.Errorf("kept indexes %v, want v2's (current) and v3's (staged)", ents)
	}
}

// On the first delta of a host (no index kept), the index of the current
// image comes from the server when the URL names images by digest and
// the manifest beside the image names it: nothing is read from the image
// for chunks. A server index that does not match the manifest is not
// used: the image is read instead.
func TestDeltaCurrentIndexFromServer(t *testing.T) {
	base, update := deltaImages(7)
	for _, good := range []bool{true, false} {
		srv := newDeltaServer(t, update)
		dir := deltaHostpart(t, base)
		// The current image came with its manifest (and an index the
		// server publishes by digest).
		p := filepath.Join(dir, layout.Current)
		ix, sum, err := chunkindex.WriteFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := manifest.New(p, manifest.Fields{Name: "web", Version: "1"})
		m.Chunks = sum
		m.WriteFile(p + layout.ManifestSuffix)
		os.Remove(p + layout.ChunksSuffix)
		srv.mu.Lock()
		srv.others = map[string][]byte{ix.Digest(): ix.Marshal()}
		if !good {
			other, _ := chunkindex.Build(bytes.NewReader(update))
			srv.others[ix.Digest()] = other.Marshal()
		}
		srv.mu.Unlock()
		res, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.url()}, Digest: sha(update), Size: int64(len(update)), Reserve: 1})
		if err != nil {
			t.Fatal(err)
		}
		checkStaged(t, dir, update)
		d := res.Delta
		if d == nil {
			t.Fatalf("no delta: %s", res.Fallback)
		}
		if good && (len(d.Indexed) != 1 || len(d.Scanned) != 0 || d.LocalBytes < int64(len(update))*8/10) {
			t.Errorf("with the server's index of hn-root.img: %+v, want it indexed, not scanned", d)
		}
		if !good && (len(d.Indexed) != 0 || len(d.Scanned) != 1) {
			t.Errorf("with a wrong server index of hn-root.img: %+v, want it scanned", d)
		}
	}
}

// compressibleImages are deltaImages with text-like bytes where those
// have random ones: what most of a root filesystem's changed files are.
func compressibleImages(seed int64) (base, update []byte) {
	r := rand.New(rand.NewSource(seed))
	words := []string{"usr", "/lib", "/share/doc", "debian", "changelog.gz", "libc6", "amd64", "\n", " ", "\x00\x01"}
	txt := func(n int) []byte {
		b := make([]byte, 0, n+16)
		for len(b) < n {
			b = append(b, words[r.Intn(len(words))]...)
		}
		return b[:n]
	}
	base = append(append(txt(6<<20), make([]byte, 2<<20)...), txt(1<<20)...)
	update = append([]byte{}, base[:2<<20]...)
	update = append(update, txt(3000)...)
	update = append(update, base[2<<20:]...)
	copy(update[4<<20:], txt(100<<10))
	copy(update[6<<20+4096:], txt(300<<10))
	return base, update
}

// For compressible chunks, staging from the pack moves fewer bytes than
// raw ranges of the image (the same chunks, fetched by an index without
// frames, or with the pack gone), and both give the image byte for byte.
func TestDeltaPackFetchesLess(t *testing.T) {
	base, update := compressibleImages(8)
	type run struct {
		sent int64
		d    *DeltaStats
	}
	runs := map[string]run{}
	for _, c := range []struct {
		name   string
		packed bool
		set    func(*deltaServer)
	}{
		{"pack", true, func(*deltaServer) {}},
		{"version 1 index", false, func(*deltaServer) {}},
		{"pack missing", true, func(s *deltaServer) { s.noPack = true }},
	} {
		srv := newDeltaServerIndex(t, update, c.packed)
		c.set(srv)
		dir := deltaHostpart(t, base)
		res, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.url()}, Digest: sha(update), Size: int64(len(update)), Reserve: 1})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		checkStaged(t, dir, update)
		if res.Delta == nil {
			t.Fatalf("%s: no delta (%s)", c.name, res.Fallback)
		}
		sent, _ := srv.sent()
		if sent != res.Delta.WireBytes {
			t.Errorf("%s: the server sent %d bytes, the staging counts %d on the wire", c.name, sent, res.Delta.WireBytes)
		}
		// The check-in (imaged fleet host) reports the bytes moved.
		var ci checkin.Staging
		res.Report(&ci)
		if ci.Mode != "delta" || ci.Fetched != sent+res.Delta.IndexBytes || ci.FetchedChunks != int64(res.Delta.FetchedChunks) {
			t.Errorf("%s: check-in %+v, want a delta that fetched %d bytes (%d of chunks, %d of index) in %d chunks", c.name, ci, sent+res.Delta.IndexBytes, sent, res.Delta.IndexBytes, res.Delta.FetchedChunks)
		}
		runs[c.name] = run{sent, res.Delta}
	}
	p, v1, gone := runs["pack"], runs["version 1 index"], runs["pack missing"]
	if p.d.FetchedChunks != v1.d.FetchedChunks || p.d.FetchedBytes != v1.d.FetchedBytes || gone.d.FetchedBytes != v1.d.FetchedBytes {
		t.Errorf("the pack fetched %d chunks (%d bytes), raw ranges %d (%d), %d bytes with the pack missing: want the same chunks",
			p.d.FetchedChunks, p.d.FetchedBytes, v1.d.FetchedChunks, v1.d.FetchedBytes, gone.d.FetchedBytes)
	}
	if p.d.PackChunks != p.d.FetchedChunks || v1.d.PackChunks != 0 || gone.d.PackChunks != 0 {
		t.Errorf("chunks from the pack: %d of %d with it, %d with a version 1 index, %d with it missing", p.d.PackChunks, p.d.FetchedChunks, v1.d.PackChunks, gone.d.PackChunks)
	}
	if p.sent*2 > v1.sent || p.sent*2 > gone.sent {
		t.Errorf("the pack moved %d bytes, raw ranges %d (%d with the pack missing): want at most half", p.sent, v1.sent, gone.sent)
	}
}

// A pack that does not serve (404) or holds a corrupt frame is left for
// raw ranges of the image in the same run: the chunk the frame held is
// refused, fetched from the image, and the image is staged by delta all
// the same, byte for byte.
func TestDeltaPackFallsBackToRanges(t *testing.T) {
	base, update := compressibleImages(9)
	for _, c := range []struct {
		name string
		set  func(*deltaServer)
		want string // in DeltaStats.PackFallback and Result.Fallback
	}{
		{"pack 404", func(s *deltaServer) { s.noPack = true }, "404"},
		{"frame corrupt", func(s *deltaServer) { s.corruptPack = true }, "frame of the chunk at"},
		{"pack ignores Range", func(s *deltaServer) { s.noRange = true }, "does not serve ranges"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := newDeltaServer(t, update)
			c.set(srv)
			dir := deltaHostpart(t, base)
			res, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.url()}, Digest: sha(update), Size: int64(len(update)), Reserve: 1})
			if err != nil {
				t.Fatalf("Stage: %v (fallback %q)", err, res.Fallback)
			}
			checkStaged(t, dir, update)
			d := res.Delta
			if c.name == "pack ignores Range" {
				// Neither serves ranges: a full download, as without a pack,
				// and Result.Report says so.
				var ci checkin.Staging
				res.Report(&ci)
				if d != nil || ci.Mode != "full" || !strings.Contains(res.Fallback, c.want) {
					t.Fatalf("delta %+v, fallback %q: want a full download saying %q", d, res.Fallback, c.want)
				}
				return
			}
			if d == nil {
				t.Fatalf("no delta: %s", res.Fallback)
			}
			if d.PackChunks != 0 || !strings.Contains(d.PackFallback, c.want) || !strings.Contains(res.Fallback, c.want) {
				t.Errorf("%d chunks from the pack, pack fallback %q, fallback %q; want none from it and both saying %q", d.PackChunks, d.PackFallback, res.Fallback, c.want)
			}
			_, ranges := srv.sent()
			if len(ranges) != d.Ranges || d.FetchedChunks == 0 {
				t.Errorf("%d range requests (server saw %d), %d chunks fetched", d.Ranges, len(ranges), d.FetchedChunks)
			}
		})
	}
}

// countingHash is crypto/sha256 counting the bytes written through it.
type countingHash struct {
	hash.Hash
	n *atomic.Int64
}

func (c countingHash) Write(p []byte) (int, error) { c.n.Add(int64(len(p))); return c.Hash.Write(p) }

// TestDeltaUsesRequestHash: a delta checks every chunk and the whole
// image with the hash the request names (the init's choice of the
// kernel's SHA-256 under emulation), not with crypto/sha256 behind it.
func TestDeltaUsesRequestHash(t *testing.T) {
	base, update := deltaImages(11)
	srv := newDeltaServer(t, update)
	dir := deltaHostpart(t, base)
	var n atomic.Int64
	res, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.url()}, Digest: sha(update), Size: int64(len(update)), Reserve: 1,
		Hash: func() hash.Hash { return countingHash{sha256.New(), &n} }})
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, dir, update)
	if res.Delta == nil {
		t.Fatalf("no delta (%s)", res.Fallback)
	}
	// The image once, each fetched chunk once, and each local chunk at
	// least once (no index of the base is known: it is scanned, every
	// chunk of a wanted length hashed).
	if min := int64(len(update)) + res.Delta.FetchedBytes + res.Delta.LocalBytes; n.Load() < min {
		t.Errorf("the request's hash saw %d bytes, want at least %d (image %d + fetched %d + local %d)", n.Load(), min, len(update), res.Delta.FetchedBytes, res.Delta.LocalBytes)
	}
}
