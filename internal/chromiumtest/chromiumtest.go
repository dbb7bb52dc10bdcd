// Package chromiumtest runs Debian's chromium, headless, for tests that
// drive the dashboard in a real browser (chromedp speaks the DevTools
// protocol to it), and keeps their screenshots as test artifacts.
package chromiumtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Install is what makes chromium available (scripts/deps.sh runs it).
const Install = "apt-get install chromium (scripts/deps.sh installs it)"

// Browser starts a headless chromium for t and returns a context to run
// chromedp actions in; it ends with the test. Without chromium the test
// fails with the command that installs it.
func Browser(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Fatalf("chromium is not installed: %s", Install)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(t.TempDir()),
		// No proxy: every address a test opens is on loopback.
		chromedp.ProxyServer("direct://"),
	)
	if os.Geteuid() == 0 {
		// Chromium's sandbox refuses to run as root (the tests do, for
		// namespaces and QEMU's taps).
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	tctx, cancelT := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() { cancelT(); cancelB(); cancelA() })
	if err := chromedp.Do(tctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return tctx
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
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG (below: JPEG)
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(ArtifactDir(t), strings.ReplaceAll(name, "/", "-")+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Error(err)
		return
	}
	t.Logf("screenshot: %s", p)
}
