package testvm

import (
	"context"
	"fmt"
	"strings"
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

// pressRevert presses a big red button as an operator does: on page (a
// path under base) it types name, the target's, into the confirmation
// field confirmID, clicks buttonID, and waits for the dashboard's
// reverted page. It returns that page (a path under base, for its
// screenshot), the #applied sentence, and each host's row text ("web-1
// pending"), so the caller can check that the revert is pending.
func (b *browser) pressRevert(ctx context.Context, page, confirmID, buttonID, name string) (reverted, applied string, rows []string, err error) {
	pctx, cancel := context.WithTimeout(b.ctx, 90*time.Second)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	if err := chromedp.Do(pctx,
		chromedp.Navigate(b.base+page),
		chromedp.WaitVisible(chromedp.ID(confirmID)),
		chromedp.SendKeys(chromedp.ID(confirmID), name),
		// The page's script enables the button once the name matches.
		chromedp.WaitEnabled(chromedp.ID(buttonID)),
		chromedp.Click(chromedp.ID(buttonID)),
		chromedp.WaitVisible(chromedp.ID("reverts")),
	); err != nil {
		return "", "", nil, fmt.Errorf("press #%s on %s (typed %q into #%s) and wait for the reverted page: %w", buttonID, page, name, confirmID, err)
	}
	loc, err := chromedp.Run(pctx, chromedp.Location())
	if err != nil {
		return "", "", nil, fmt.Errorf("press #%s on %s: the reverted page's address: %w", buttonID, page, err)
	}
	if applied, err = chromedp.Run(pctx, chromedp.Text(chromedp.ID("applied"))); err != nil {
		return "", "", nil, fmt.Errorf("read #applied on %s: %w", loc, err)
	}
	// Each row: the host (first cell) and whether it applied the
	// revert (fifth cell, "pending" until its next boot).
	rows, err = chromedp.Run(pctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#reverts tbody tr"), r => r.cells[0].innerText + " " + r.cells[4].innerText)`))
	if err != nil {
		return "", "", nil, fmt.Errorf("read #reverts on %s: %w", loc, err)
	}
	reverted, ok := strings.CutPrefix(loc, b.base)
	if !ok || !strings.HasPrefix(reverted, "/ui/reverted?") {
		return "", "", nil, fmt.Errorf("press #%s on %s: landed on %s, not the reverted page", buttonID, page, loc)
	}
	return reverted, strings.TrimSpace(applied), rows, nil
}

func (b *browser) close() { b.cancel() }
