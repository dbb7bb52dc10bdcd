package stage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/layout"
)

// blobServer serves one image at /blobs/<digest> with Range support,
// counts the bytes it sends and can cut the first response short.
type blobServer struct {
	*httptest.Server
	mu       sync.Mutex
	data     []byte
	served   int64
	ranges   []string
	cutAt    int64 // cut the next response after this many bytes (0: never)
	corrupt  bool
	manifest []byte // served at <any path>.json; nil: 404
}

func newBlobServer(t *testing.T, data []byte) *blobServer {
	b := &blobServer{data: data}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".json") {
			b.mu.Lock()
			m := b.manifest
			b.mu.Unlock()
			if m == nil {
				http.NotFound(w, r)
				return
			}
			w.Write(m)
			return
		}
		b.mu.Lock()
		cut := b.cutAt
		b.cutAt = 0
		b.ranges = append(b.ranges, r.Header.Get("Range"))
		data := b.data
		if b.corrupt {
			data = append([]byte(nil), data...)
			data[len(data)/2] ^= 0xff
		}
		b.mu.Unlock()
		cw := &countingWriter{ResponseWriter: w, b: b, limit: cut}
		http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(b.Close)
	return b
}

type countingWriter struct {
	http.ResponseWriter
	b     *blobServer
	n     int64
	limit int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.limit > 0 && c.n+int64(len(p)) > c.limit {
		p = p[:c.limit-c.n]
		n, _ := c.ResponseWriter.Write(p)
		c.add(n)
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drop the connection mid-body, like a killed server
	}
	n, err := c.ResponseWriter.Write(p)
	c.add(n)
	return n, err
}

func (c *countingWriter) add(n int) {
	c.n += int64(n)
	c.b.mu.Lock()
	c.b.served += int64(n)
	c.b.mu.Unlock()
}

func testImage(t *testing.T, size int) ([]byte, string) {
	t.Helper()
	data := make([]byte, size)
	rand.New(rand.NewSource(int64(size))).Read(data)
	sum := sha256.Sum256(data)
	return data, "sha256:" + hex.EncodeToString(sum[:])
}

func newHostpart(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cur, _ := testImage(t, 1000)
	if err := os.WriteFile(filepath.Join(dir, layout.Current), cur, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestStageResumesAfterCutConnection(t *testing.T) {
	data, digest := testImage(t, 3<<20+17)
	srv := newBlobServer(t, data)
	srv.cutAt = 1 << 20
	dir := newHostpart(t)
	req := Request{Source: HTTPSource{URL: srv.URL + "/blobs/" + digest}, Digest: digest, Size: int64(len(data)), Reserve: 1}

	_, err := Stage(context.Background(), dir, req)
	if err == nil {
		t.Fatal("Stage over a cut connection = nil error, want an interruption")
	}
	if _, err := os.Stat(filepath.Join(dir, layout.New)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after a cut download, %s exists (stat err %v); it must never be partial", layout.New, err)
	}
	part, err := os.Stat(filepath.Join(dir, layout.NewPart))
	if err != nil || part.Size() != 1<<20 {
		t.Fatalf("after the cut, %s = %v (err %v), want %d bytes kept", layout.NewPart, part, err, 1<<20)
	}

	res, err := Stage(context.Background(), dir, req)
	if err != nil {
		t.Fatalf("Stage after restart: %v", err)
	}
	if res.Reused != 1<<20 || res.Downloaded != int64(len(data))-1<<20 {
		t.Errorf("resumed Stage reused %d, downloaded %d; want %d and %d", res.Reused, res.Downloaded, 1<<20, len(data)-1<<20)
	}
	if srv.served != int64(len(data)) {
		t.Errorf("server sent %d bytes in all, want exactly the image's %d (nothing downloaded twice)", srv.served, len(data))
	}
	if want := []string{"", "bytes=1048576-"}; strings.Join(srv.ranges, ",") != strings.Join(want, ",") {
		t.Errorf("Range headers = %q, want %q", srv.ranges, want)
	}
	got, err := os.ReadFile(filepath.Join(dir, layout.New))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("%s differs from the image (err %v)", layout.New, err)
	}
	for _, f := range []string{layout.NewPart, layout.Staging} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind after staging", f)
		}
	}
}

func TestStageRefusesCorruptDownload(t *testing.T) {
	data, digest := testImage(t, 100000)
	srv := newBlobServer(t, data)
	srv.corrupt = true
	dir := newHostpart(t)
	_, err := Stage(context.Background(), dir, Request{Source: HTTPSource{URL: srv.URL + "/x"}, Digest: digest, Reserve: 1})
	var de *DigestError
	if !errors.As(err, &de) || de.Want != digest {
		t.Fatalf("Stage of a corrupt download = %v, want a DigestError for %s", err, digest)
	}
	for _, f := range []string{layout.New, layout.NewPart} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a corrupt download", f)
		}
	}
}

func TestStageFailedDigest(t *testing.T) {
	data, digest := testImage(t, 5000)
	src := filepath.Join(t.TempDir(), "img")
	os.WriteFile(src, data, 0o644)
	for _, tc := range []struct {
		name    string
		force   bool
		digest  string
		refused bool
	}{
		{"known digest refused", false, digest, true},
		{"digest learnt from the content refused", false, "", true},
		{"forced", true, digest, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newHostpart(t)
			f, _ := LoadFailed(dir)
			f.Add(dir, Failure{Digest: digest, Time: time.Now(), Reason: "reverted"})
			_, err := Stage(context.Background(), dir, Request{Source: FileSource{src}, Digest: tc.digest, Force: tc.force, Reserve: 1})
			if got := errors.Is(err, ErrRefused); got != tc.refused {
				t.Fatalf("Stage(force=%v) err = %v, refused = %v, want %v", tc.force, err, got, tc.refused)
			}
			_, serr := os.Stat(filepath.Join(dir, layout.New))
			if staged := serr == nil; staged == tc.refused {
				t.Errorf("%s staged = %v, want %v", layout.New, staged, !tc.refused)
			}
		})
	}
}

func TestStageNoSpace(t *testing.T) {
	data, digest := testImage(t, 5000)
	src := filepath.Join(t.TempDir(), "img")
	os.WriteFile(src, data, 0o644)
	dir := newHostpart(t)
	_, err := Stage(context.Background(), dir, Request{Source: FileSource{src}, Digest: digest, Size: 5000, Reserve: 1 << 60})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "available") {
		t.Fatalf("Stage with no room = %v, want ErrNoSpace saying what is available", err)
	}
	if _, err := os.Stat(filepath.Join(dir, layout.NewPart)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s created although there is no room", layout.NewPart)
	}
}

func exists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}

// The init stages without hashing the images already on hostpart
// (HashSlots false): the digest of hn-root.img comes from the digest
// cache or its manifest; unknown, the image is downloaded.
func TestStageSlotDigestsWithoutHashing(t *testing.T) {
	data, digest := testImage(t, 5000)
	src := filepath.Join(t.TempDir(), "img")
	os.WriteFile(src, data, 0o644)
	for _, tc := range []struct {
		name      string
		manifest  bool // hn-root.img.json describes it
		hashSlots bool
		want      string // Result.Already
	}{
		{"known by its manifest", true, false, layout.SlotCurrent},
		{"unknown, not hashed", false, false, ""},
		{"unknown, hashed (agent)", false, true, layout.SlotCurrent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, layout.Current), data, 0o644)
			if tc.manifest {
				os.WriteFile(filepath.Join(dir, layout.ManifestFor(layout.Current)), signedManifest(t, data, nil), 0o644)
			}
			res, err := Stage(context.Background(), dir, Request{Source: FileSource{src}, Digest: digest, Reserve: 1, HashSlots: tc.hashSlots})
			if err != nil || res.Already != tc.want {
				t.Fatalf("Stage = %+v, %v; want Already %q", res, err, tc.want)
			}
			if staged := exists(dir, layout.New); staged != (tc.want == "") {
				t.Errorf("%s staged = %v, want %v", layout.New, staged, tc.want == "")
			}
		})
	}
}

// Another target: the image named File in another directory (a
// diskless host's RAM, a recovery), with its manifest beside it.
func TestStageFile(t *testing.T) {
	data, digest := testImage(t, 300000)
	srv := newBlobServer(t, data)
	srv.manifest = signedManifest(t, data, nil)
	dir := t.TempDir()
	var last, calls int64
	res, err := Stage(context.Background(), dir, Request{
		Source: HTTPSource{URL: srv.URL + "/blobs/" + digest}, Digest: digest, Reserve: 1, File: layout.Current,
		Progress: func(done, total int64) {
			if done < last || total != int64(len(data)) {
				t.Errorf("progress(%d, %d) after %d", done, total, last)
			}
			last, calls = done, calls+1
		},
	})
	if err != nil || res.Digest != digest {
		t.Fatalf("Stage(File %s) = %+v, %v", layout.Current, res, err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, layout.Current)); !bytes.Equal(got, data) || !exists(dir, layout.ManifestFor(layout.Current)) || exists(dir, layout.New) {
		t.Errorf("after Stage(File %s): image equal %v, manifest %v, %s %v", layout.Current, bytes.Equal(got, data), exists(dir, layout.ManifestFor(layout.Current)), layout.New, exists(dir, layout.New))
	}
	if last != int64(len(data)) || calls == 0 {
		t.Errorf("progress ended at %d after %d calls, want %d", last, calls, len(data))
	}
	for _, bad := range []string{"../x", "/abs", "hn-root.img.part"} {
		if _, err := Stage(context.Background(), dir, Request{Source: FileSource{"x"}, File: bad}); err == nil {
			t.Errorf("Stage(File %q) = nil error", bad)
		}
	}
}
