// Package chromiumtest is internal/chromium for tests: a browser that
// ends with the test, and screenshots kept as test artifacts.
package chromiumtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/chromium"
)

// Browser starts a headless chromium for t and returns a context to run
// chromedp actions in, ending with the test or after timeout. Without
// chromium the test fails with the command that installs it.
func Browser(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	tctx, cancelT := context.WithTimeout(context.Background(), timeout)
	ctx, cancel, err := chromium.Start(tctx, t.TempDir())
	if err != nil {
		cancelT()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cancelT() })
	return ctx
}

// ArtifactDir is where screenshots go: $HNBOOT_ARTIFACTS/screenshots,
// else out/screenshots at the repository's root (found from the test's
// directory).
func ArtifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("HNBOOT_ARTIFACTS")
	if dir == "" {
		wd, _ := os.Getwd()
		for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				dir = filepath.Join(d, "out")
				break
			}
		}
	}
	if dir == "" {
		dir = t.TempDir()
	}
	dir = filepath.Join(dir, "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Screenshot saves the whole page as NAME.png in the artifact directory.
func Screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	p := filepath.Join(ArtifactDir(t), strings.ReplaceAll(name, "/", "-")+".png")
	if err := chromium.Screenshot(ctx, p); err != nil {
		t.Error(err)
		return
	}
	t.Logf("screenshot: %s", p)
}
