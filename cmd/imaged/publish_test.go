package main

import (
	"bytes"
	"context"
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

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/rootfs"
)

// publishServer is fleetServer with an images directory; its handler
// cuts the first PATCH after cut bytes, as a broken link would.
func publishServer(t *testing.T, cut int64) (url, tokenFile string, f *fleet.Fleet, cuts *atomic.Int32) {
	t.Helper()
	dir := t.TempDir()
	src := "../../fleet/testdata/example"
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644)
	}
	tokenFile = filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("ci "+testToken+"\n"), 0o600)
	f, err := fleet.New(fleet.Options{Dir: dir, DB: "sqlite://" + filepath.Join(t.TempDir(), "fleet.db"), TokenFile: tokenFile, PollInterval: -1,
		Images: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h := f.Handler()
	cuts = &atomic.Int32{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "PATCH" && cuts.Add(1) == 1 {
			// The server gets the first cut bytes, then the connection dies.
			r.Body = io.NopCloser(io.LimitReader(r.Body, cut))
			h.ServeHTTP(httptest.NewRecorder(), r)
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close()
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.Close(); f.Close() })
	return srv.URL, tokenFile, f, cuts
}

// imaged fleet publish resumes an interrupted upload where the server
// stopped, and publishing the same image again sends nothing.
func TestFleetPublishResumes(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("hello\n"), 0o644)
	img := filepath.Join(t.TempDir(), "web.img")
	if _, err := rootfs.Build(context.Background(), rootfs.Options{From: src, Out: img, Size: 8 << 20, Boot: rootfs.BootOptions{Disabled: true}}); err != nil {
		t.Fatal(err)
	}
	m, _ := manifest.New(img, manifest.Fields{Name: "web", Version: "7", FS: "ext4", BuildTime: time.Unix(1700000000, 0)})
	m.WriteFile(img + ".json")

	url, tok, f, cuts := publishServer(t, 3<<20)
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"fleet"}, args...), nil, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, out, errs := run("publish", "--server", url, "--token-file", tok, img)
	if code != 0 || !strings.Contains(out, "published web@7 sha256:"+m.SHA256) || !strings.Contains(errs, "resuming (1/5)") || cuts.Load() != 2 {
		t.Fatalf("publish through a broken link = %d %q %q, %d PATCHes; want published after one resume", code, out, errs, cuts.Load())
	}
	if !strings.Contains(out, "resumed at byte") && !strings.Contains(out, "sent in") {
		t.Errorf("publish output %q says nothing about what was sent", out)
	}
	if f.Desired().Image("web@7") == nil {
		t.Errorf("web@7 not registered")
	}
	code, out, _ = run("publish", "--server", url, "--token-file", tok, img)
	if code != 0 || !strings.Contains(out, "already published as web@7") {
		t.Errorf("publishing again = %d %q, want already published", code, out)
	}
	code, out, _ = run("images", "--server", url, "--token-file", tok)
	if code != 0 || !strings.Contains(out, "web@7") || !strings.Contains(out, "published") || !strings.Contains(out, "8.0 MiB") {
		t.Errorf("images = %d %q, want web@7, published, 8.0 MiB", code, out)
	}
	code, out, _ = run("prune", "--server", url, "--token-file", tok)
	if code != 0 || !strings.Contains(out, "would remove") || !strings.Contains(out, "1 images (8.0 MiB) would be removed") {
		t.Errorf("prune (dry run) = %d %q", code, out)
	}
	code, out, _ = run("prune", "--server", url, "--token-file", tok, "--apply")
	if code != 0 || !strings.Contains(out, "removed 1 images") || f.Desired().Image("web@7") != nil {
		t.Errorf("prune --apply = %d %q", code, out)
	}
	// A file that does not match its manifest is not sent.
	os.WriteFile(img+".json", bytes.Replace(m.Marshal(), []byte(m.SHA256), []byte(strings.Repeat("0", 64)), 1), 0o644)
	if code, _, errs = run("publish", "--server", url, "--token-file", tok, img); code != 1 || !strings.Contains(errs, "does not match its manifest") {
		t.Errorf("publish of a changed image = %d %q, want 1", code, errs)
	}
}
