package testvm

import (
	"context"
	"fmt"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hnboot/hnboot/internal/chromium"
)

// The dashboard's screenshots: one headless chromium (internal/chromium)
// for the whole run, logged in once with the admin token through the
// dashboard's login form, so each step costs one page load.

type browser struct {
	ctx    context.Context
	cancel func()
	base   string
}

func newBrowser(ctx context.Context, base, token, profile string) (*browser, error) {
	bctx, cancel, err := chromium.Start(context.WithoutCancel(ctx), profile)
	if err != nil {
		return nil, err
	}
	b := &browser{ctx: bctx, cancel: cancel, base: base}
	lctx, lcancel := context.WithTimeout(bctx, 90*time.Second)
	defer lcancel()
	if err := chromedp.Do(lctx,
		chromedp.Navigate(base+"/ui/login"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitNotPresent(chromedp.ID("token")),
	); err != nil {
		b.close()
		return nil, fmt.Errorf("log in to %s/ui/: %w", base, err)
	}
	return b, nil
}

// shot loads page (a path under base) and saves the whole page as a PNG.
func (b *browser) shot(ctx context.Context, page, out string) error {
	sctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	if err := chromedp.Do(sctx, chromedp.Navigate(b.base+page), chromedp.WaitReady(chromedp.CSS("body"))); err != nil {
		return fmt.Errorf("load %s: %w", page, err)
	}
	return chromium.Screenshot(sctx, out)
}

func (b *browser) close() { b.cancel() }
