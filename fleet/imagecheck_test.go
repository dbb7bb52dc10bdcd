package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// imageFleet is a fleet directory whose images exist and match: base@1
// and base@2, with web-01 on base@1.
type imageFleet struct {
	dir, state string
	f          *Fleet
}

const imagesYAML = `images:
  - name: base
    version: "1"
    digest: %1
    path: images/base-1.img
  - name: base
    version: "2"
    digest: %2
    path: images/base-2.img
hosts:
  - {mac: "52:54:00:00:00:01", hostname: web-01, image: base@1}
`

func newImageFleet(t *testing.T) *imageFleet {
	t.Helper()
	e := &imageFleet{dir: t.TempDir(), state: filepath.Join(t.TempDir(), "fleet.db")}
	os.Mkdir(filepath.Join(e.dir, "images"), 0o755)
	writeFile(t, filepath.Join(e.dir, "images", "base-1.img"), "image one")
	writeFile(t, filepath.Join(e.dir, "images", "base-2.img"), "image two")
	e.writeYAML(t, digestOf("image one"), digestOf("image two"))
	return e
}

func (e *imageFleet) writeYAML(t *testing.T, d1, d2 string) {
	t.Helper()
	writeFile(t, filepath.Join(e.dir, "images.yaml"), strings.NewReplacer("%1", d1, "%2", d2).Replace(imagesYAML))
}

func (e *imageFleet) open(t *testing.T) (*Fleet, error) {
	t.Helper()
	f, err := New(Options{Dir: e.dir, DB: "sqlite://" + e.state, ImageCache: e.state + ".image-digests.json", PollInterval: -1, OpenReads: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil {
		e.f = f
		t.Cleanup(func() { f.Close() })
	}
	return f, err
}

// countHashes counts the files hashed until the test ends.
func countHashes(t *testing.T) *atomic.Int64 {
	var n atomic.Int64
	orig := hashFile
	hashFile = func(path string, progress func(int64)) (string, error) {
		n.Add(1)
		return orig(path, progress)
	}
	t.Cleanup(func() { hashFile = orig })
	return &n
}

func TestImageDigestMismatch(t *testing.T) {
	wrong := digestOf("something else")
	for _, c := range []struct {
		name string
		edit func(e *imageFleet, t *testing.T)
		want string // in the error; %dir is the fleet directory
	}{
		{"declared digest wrong",
			func(e *imageFleet, t *testing.T) { e.writeYAML(t, digestOf("image one"), wrong) },
			"%dir/images.yaml:8: image base@2: %dir/images/base-2.img has digest " + digestOf("image two") + ", not the declared " + wrong + ": if the file is the image you mean, set digest: " + digestOf("image two")},
		{"file replaced",
			func(e *imageFleet, t *testing.T) {
				writeFile(t, filepath.Join(e.dir, "images", "base-1.img"), "image one, rebuilt")
			},
			"%dir/images.yaml:4: image base@1: %dir/images/base-1.img has digest " + digestOf("image one, rebuilt")},
		{"path is a directory",
			func(e *imageFleet, t *testing.T) {
				os.Remove(filepath.Join(e.dir, "images", "base-2.img"))
				os.Mkdir(filepath.Join(e.dir, "images", "base-2.img"), 0o755)
			},
			"%dir/images.yaml:8: image base@2: %dir/images/base-2.img is not a regular file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// At start: refused.
			e := newImageFleet(t)
			c.edit(e, t)
			want := strings.ReplaceAll(c.want, "%dir", e.dir)
			if _, err := e.open(t); err == nil || !errors.As(err, new(*ValidationError)) || !strings.Contains(err.Error(), want) {
				t.Fatalf("New = %v, want a validation error containing\n%s", err, want)
			}

			// On reload: refused, the last good state kept.
			e = newImageFleet(t)
			f, err := e.open(t)
			if err != nil {
				t.Fatalf("New(good) = %v", err)
			}
			c.edit(e, t)
			want = strings.ReplaceAll(c.want, "%dir", e.dir)
			if err := f.Reload(); err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Reload = %v, want an error containing\n%s", err, want)
			}
			if hb, ok := f.Lookup(mustMAC("52:54:00:00:00:01")); !ok || hb.Image.Digest != digestOf("image one") {
				t.Errorf("Lookup after a refused reload = %+v, %v, want the last good base@1", hb, ok)
			}
			if st := f.Status(); !strings.Contains(st.ConfigError, want) {
				t.Errorf("Status().ConfigError = %q, want it to contain %q", st.ConfigError, want)
			}
		})
	}
}

func TestImageDigestCache(t *testing.T) {
	n := countHashes(t)
	e := newImageFleet(t)
	f, err := e.open(t)
	if err != nil {
		t.Fatal(err)
	}
	img1 := filepath.Join(e.dir, "images", "base-1.img")
	step := func(name string, do func(), want int64) {
		t.Helper()
		n.Store(0)
		do()
		if got := n.Load(); got != want {
			t.Errorf("%s: files hashed = %d, want %d", name, got, want)
		}
	}
	reload := func() {
		t.Helper()
		if err := f.Reload(); err != nil {
			t.Fatalf("Reload = %v", err)
		}
	}
	step("reload, nothing changed", reload, 0)
	step("reload after a YAML edit", func() {
		writeFile(t, filepath.Join(e.dir, "extra.yaml"), "hosts:\n  - {mac: \"52:54:00:00:00:02\", hostname: web-02, image: base@2}\n")
		reload()
	}, 0)
	step("reload after touching base-1.img", func() {
		later := time.Now().Add(time.Hour)
		os.Chtimes(img1, later, later)
		reload()
	}, 1)
	step("restart", func() {
		f.Close()
		if f, err = e.open(t); err != nil {
			t.Fatal(err)
		}
	}, 0)
	// cp -p over the file: same inode, size and mtime; only the change
	// time tells.
	fi, _ := os.Stat(img1)
	step("same size and mtime, other bytes", func() {
		time.Sleep(10 * time.Millisecond) // a change time of its own
		writeFile(t, img1, "IMAGE ONE")
		os.Chtimes(img1, fi.ModTime(), fi.ModTime())
		if err := f.Reload(); err == nil || !strings.Contains(err.Error(), "has digest "+digestOf("IMAGE ONE")) {
			t.Errorf("Reload after cp -p of other bytes = %v, want a mismatch", err)
		}
	}, 1)
}

func TestImageMissingIsWarning(t *testing.T) {
	e := newImageFleet(t)
	os.Remove(filepath.Join(e.dir, "images", "base-2.img"))
	f, err := e.open(t)
	if err != nil {
		t.Fatalf("New with a missing image file = %v, want nil (a warning)", err)
	}
	want := "image base@2 (" + filepath.Join(e.dir, "images.yaml") + ":6): " + filepath.Join(e.dir, "images", "base-2.img") + " does not exist on this server"
	if w := strings.Join(f.Status().Warnings, "\n"); !strings.Contains(w, want) {
		t.Errorf("Status().Warnings = %q, want %q", w, want)
	}
}

// While a large image is hashed, the boot server answers from the last
// good state and check-ins and admin calls are not held up.
func TestReloadServesWhileHashing(t *testing.T) {
	e := newImageFleet(t)
	f, err := e.open(t)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()

	started, release := make(chan struct{}), make(chan struct{})
	orig := hashFile
	hashFile = func(path string, progress func(int64)) (string, error) {
		close(started)
		<-release
		return orig(path, progress)
	}
	t.Cleanup(func() { hashFile = orig })

	writeFile(t, filepath.Join(e.dir, "images", "base-3.img"), "image three")
	writeFile(t, filepath.Join(e.dir, "more.yaml"), "images:\n  - {name: base, version: \"3\", digest: "+digestOf("image three")+", path: images/base-3.img}\n")
	reloaded := make(chan error)
	go func() { reloaded <- f.Reload() }()
	<-started

	done := make(chan struct{})
	go func() {
		defer close(done)
		if hb, ok := f.Lookup(mustMAC("52:54:00:00:00:01")); !ok || hb.Image.Digest != digestOf("image one") {
			t.Errorf("Lookup while hashing = %+v, %v, want base@1", hb, ok)
		}
		resp, err := http.Post(srv.URL+"/api/checkin", "application/json", strings.NewReader(`{"mac":"52:54:00:00:00:01"}`))
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("POST /api/checkin while hashing = %v, %v, want 200", resp, err)
		}
		if err == nil {
			resp.Body.Close()
		}
		if _, err := f.Assign("test", "", Target{Host: "web-01"}, "base@2"); err != nil {
			t.Errorf("Assign while hashing = %v", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("lookups, check-ins or admin calls waited for the hashing")
	}
	close(release)
	if err := <-reloaded; err != nil {
		t.Fatalf("Reload = %v", err)
	}
	if f.Desired().Image("base@3") == nil {
		t.Errorf("after the reload base@3 is not declared")
	}
	if hb, _ := f.Lookup(mustMAC("52:54:00:00:00:01")); hb.Image.Digest != digestOf("image two") {
		t.Errorf("Lookup after the reload = %s, want the override made while hashing (base@2)", short(hb.Image.Digest))
	}
}

// Run follows the image files, not only the YAML: a replaced image is
// checked without a SIGHUP.
func TestRunChecksReplacedImage(t *testing.T) {
	e := newImageFleet(t)
	f, err := e.open(t)
	if err != nil {
		t.Fatal(err)
	}
	f.opts.PollInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	writeFile(t, filepath.Join(e.dir, "images", "base-2.img"), "image two, replaced")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(f.Status().ConfigError, "has digest "+digestOf("image two, replaced")) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("Status().ConfigError after replacing base-2.img = %q, want the mismatch within 5s", f.Status().ConfigError)
}
