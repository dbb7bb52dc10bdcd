package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/layout"
)

// slowFleet is a fleet server whose first blob download sends the first
// half of the image, then waits until release is closed (a slow or stuck
// link); later requests are served at once, with Range. It records each
// blob request's Range header and the bytes it sent.
type slowFleet struct {
	*httptest.Server
	release  chan struct{}
	sentHalf chan struct{}
	mu       sync.Mutex
	ranges   []string
	checkins []checkin.Checkin
	served   int64
}

func newSlowFleet(t *testing.T, img []byte, des Desired) *slowFleet {
	f := &slowFleet{release: make(chan struct{}), sentHalf: make(chan struct{})}
	var once sync.Once
	first := true
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/hosts/{mac}/desired", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(des)
	})
	mux.HandleFunc("POST /api/checkin", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var rep checkin.Checkin
		if err := json.Unmarshal(b, &rep); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		f.mu.Lock()
		f.checkins = append(f.checkins, rep)
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.PathValue("digest"), ".json") {
			http.NotFound(w, r)
			return
		}
		f.mu.Lock()
		f.ranges = append(f.ranges, r.Header.Get("Range"))
		slow := first
		first = false
		f.mu.Unlock()
		if !slow {
			http.ServeContent(&countWriter{ResponseWriter: w, f: f}, r, "", time.Time{}, strings.NewReader(string(img)))
			return
		}
		half := len(img) / 2
		w.Header().Set("Content-Length", strconv.Itoa(len(img)))
		cw := &countWriter{ResponseWriter: w, f: f}
		cw.Write(img[:half])
		w.(http.Flusher).Flush()
		once.Do(func() { close(f.sentHalf) })
		select {
		case <-f.release:
			cw.Write(img[half:])
		case <-r.Context().Done():
		}
	})
	f.Server = httptest.NewServer(mux)
	t.Cleanup(func() {
		select {
		case <-f.release:
		default:
			close(f.release)
		}
		f.Close()
	})
	return f
}

type countWriter struct {
	http.ResponseWriter
	f *slowFleet
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.f.mu.Lock()
	c.f.served += int64(n)
	c.f.mu.Unlock()
	return n, err
}

func (f *slowFleet) last() checkin.Checkin {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.checkins[len(f.checkins)-1]
}

func onceAgent(dir string, srv *slowFleet) *Agent {
	return &Agent{
		Dir: dir, Server: &HTTPServer{Base: srv.URL}, MAC: "52:54:00:12:34:56",
		Policy: Policy{Mode: RebootNever}, Config: Config{Interval: time.Hour},
		Reboot: func() error { return errors.New("no reboot in tests") },
		Log:    slog.New(slog.DiscardHandler),
	}
}

// imaged agent --once finishes the staging its round starts: Once
// returns only when hn-root-new.img is in place, and reports it.
func TestOnceWaitsForStaging(t *testing.T) {
	dir := t.TempDir()
	imgA, _ := testImage(t, 4000)
	imgB, dB := testImage(t, 1<<20)
	os.WriteFile(filepath.Join(dir, layout.Current), imgA, 0o644)
	srv := newSlowFleet(t, imgB, Desired{Image: DesiredImage{Name: "B", Version: "2", Digest: dB, Size: int64(len(imgB))}})
	a := onceAgent(dir, srv)
	done := make(chan error, 1)
	go func() { done <- a.Once(context.Background()) }()
	<-srv.sentHalf
	select {
	case err := <-done:
		t.Fatalf("Once returned (%v) while its download was half done", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(srv.release)
	if err := <-done; err != nil {
		t.Fatalf("Once = %v, want the image staged", err)
	}
	if !exists(dir, layout.New) || exists(dir, layout.NewPart) {
		t.Fatalf("after Once: %s present %v, %s present %v; want the image staged, no .part", layout.New, exists(dir, layout.New), layout.NewPart, exists(dir, layout.NewPart))
	}
	if rep := srv.last(); rep.Images.New != dB || rep.Staging == nil || rep.Staging.State != "staged" {
		t.Errorf("Once's last check-in: images.new %s, staging %+v; want %s, staged", rep.Images.New, rep.Staging, dB)
	}
}

// A round cut short (the agent stopped mid-download) leaves a .part; the
// next round, in a new agent process, resumes it with a Range request
// instead of downloading it again. Once reports the interruption as an
// error (exit status 1).
func TestInterruptedRoundResumes(t *testing.T) {
	dir := t.TempDir()
	imgA, _ := testImage(t, 4000)
	imgB, dB := testImage(t, 1<<20)
	os.WriteFile(filepath.Join(dir, layout.Current), imgA, 0o644)
	srv := newSlowFleet(t, imgB, Desired{Image: DesiredImage{Name: "B", Version: "2", Digest: dB, Size: int64(len(imgB))}})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- onceAgent(dir, srv).Once(ctx) }()
	<-srv.sentHalf
	waitFor(t, "the first half in "+layout.NewPart, func() bool {
		fi, err := os.Stat(filepath.Join(dir, layout.NewPart))
		return err == nil && fi.Size() == int64(len(imgB)/2)
	})
	cancel() // SIGTERM
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("Once interrupted mid-download = %v, want an error saying it was interrupted", err)
	}
	fi, serr := os.Stat(filepath.Join(dir, layout.NewPart))
	if serr != nil || fi.Size() == 0 || exists(dir, layout.New) {
		t.Fatalf("after the interruption: %s = %v (%v), %s present %v; want a partial download kept, nothing staged", layout.NewPart, fi, serr, layout.New, exists(dir, layout.New))
	}
	kept := fi.Size()

	if err := onceAgent(dir, srv).Once(context.Background()); err != nil {
		t.Fatalf("next round = %v, want the download resumed and staged", err)
	}
	got, err := os.ReadFile(filepath.Join(dir, layout.New))
	if err != nil || string(got) != string(imgB) {
		t.Fatalf("%s after the resumed round: %v, equal to the image %v", layout.New, err, string(got) == string(imgB))
	}
	srv.mu.Lock()
	ranges, served := srv.ranges, srv.served
	srv.mu.Unlock()
	if want := "bytes=" + strconv.FormatInt(kept, 10) + "-"; len(ranges) != 2 || ranges[1] != want {
		t.Errorf("blob requests' Range headers = %q, want the second to be %q (resume after the %d bytes kept)", ranges, want, kept)
	}
	if served != int64(len(imgB)) {
		t.Errorf("server sent %d bytes for a %d-byte image: the .part was not resumed", served, len(imgB))
	}
	if rep := srv.last(); rep.Staging == nil || rep.Staging.State != "staged" || rep.Staging.Reused != kept {
		t.Errorf("last check-in staging = %+v, want staged with %d bytes reused", rep.Staging, kept)
	}
}

// A staging that fails (here: the download is not the image asked for)
// is Once's error, after the round reported it.
func TestOnceReportsFailedStaging(t *testing.T) {
	dir := t.TempDir()
	imgA, _ := testImage(t, 4000)
	_, dB := testImage(t, 6000)
	os.WriteFile(filepath.Join(dir, layout.Current), imgA, 0o644)
	srv := newFakeFleet(t)
	srv.blobs[dB] = []byte(strings.Repeat("x", 6000)) // not B
	srv.set(Desired{Image: DesiredImage{Digest: dB}})
	a := &Agent{Dir: dir, Server: &HTTPServer{Base: srv.URL}, MAC: "52:54:00:12:34:56", Config: Config{Interval: time.Hour},
		Reboot: func() error { t.Error("reboot with nothing staged"); return nil }, Log: slog.New(slog.DiscardHandler)}
	err := a.Once(context.Background())
	if err == nil || !strings.Contains(err.Error(), "staging failed") || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Once with a corrupt download = %v, want a staging failure naming the corruption", err)
	}
	if rep := srv.last(); rep.Staging == nil || rep.Staging.State != "failed" {
		t.Errorf("Once's last check-in staging = %+v, want failed (reported before exiting)", rep.Staging)
	}
}
