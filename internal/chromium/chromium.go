// Package chromium runs Debian's chromium headless under chromedp (the
// DevTools protocol from Go: no Node.js, no driver binary) for programs
// that look at the dashboard: the browser tests (internal/chromiumtest)
// and the demo's screenshots.
package chromium

import (
	"context"
	"fmt"
	"os"
	"os/exec"

	"github.com/chromedp/chromedp"
)

// Install is what makes chromium available (scripts/deps.sh runs it).
const Install = "apt-get install chromium (scripts/deps.sh installs it)"

// Path finds the browser.
func Path() (string, error) {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("chromium is not installed: %s", Install)
}

// Start starts a headless chromium with its profile in userDataDir (a
// directory of its own) and returns a context to run chromedp actions
// in; cancel stops the browser.
func Start(parent context.Context, userDataDir string) (context.Context, context.CancelFunc, error) {
	path, err := Path()
	if err != nil {
		return nil, nil, err
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(userDataDir),
		// No proxy: the dashboard is on loopback.
		chromedp.ProxyServer("direct://"),
	)
	if os.Geteuid() == 0 {
		// Chromium's sandbox refuses to run as root (the tests do, for
		// namespaces and QEMU's taps).
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelA := chromedp.NewExecAllocator(parent, opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	cancel := func() { cancelB(); cancelA() }
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("starting %s: %w", path, err)
	}
	return ctx, cancel, nil
}

// Screenshot writes the whole page as a PNG file.
func Screenshot(ctx context.Context, path string) error {
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG (below: JPEG)
	if err != nil {
		return fmt.Errorf("screenshot %s: %w", path, err)
	}
	return os.WriteFile(path, png, 0o644)
}
