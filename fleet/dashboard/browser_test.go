package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/chromiumtest"
)

// do runs browser steps, failing the test with what was being done.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
}

func eval[T any](t *testing.T, ctx context.Context, js string, opts ...chromedp.EvaluateOption) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, opts...))
	if err != nil {
		t.Fatalf("browser: %s: %v", js, err)
	}
	return v
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return s
}

// TestBrowser drives the dashboard in Debian's chromium: log in with
// the admin token, read the pages (markup from a check-in shows as text
// and runs nothing), a forged cross-site form post is refused, the red
// button reverts a host after its name is typed, logout ends the
// session; a viewer gets no red button and is refused when posting
// anyway. Screenshots of the main pages are kept as artifacts.
func TestBrowser(t *testing.T) {
	srv, f := testServer(t)
	evil := `<script>window.__xss=1</script><img src=x onerror="window.__xss=2">`
	c, err := checkin.Parse(strings.NewReader(`{"mac":"52:54:00:00:00:01","source":"agent","hostname":"web-01","kernel":` + jsonString(evil) +
		`,"booted":"sha256:1111111111111111111111111111111111111111111111111111111111111111",` +
		`"images":{"current":"sha256:1111111111111111111111111111111111111111111111111111111111111111"},` +
		`"facts":{"cpu":{"model":"QEMU Virtual CPU","count":2},"memory_bytes":2147483648,"firmware":{"mode":"uefi"},"nics":[{"name":"eth0","link":true,"lldp":{"system_name":` + jsonString(evil) + `,"port_id":"ge-0/0/7"}}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Checkin(c); err != nil {
		t.Fatal(err)
	}
	ctx := chromiumtest.Browser(t, 3*time.Minute)

	// Log in: the dashboard sends a browser without a session to the login page.
	do(t, ctx, "log in",
		chromedp.Navigate(srv.URL+"/ui/hosts"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), testToken),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#hosts")),
	)
	if got := text(t, ctx, "#whoami"); got != "ops (operator)" {
		t.Errorf("logged in as %q, want ops (operator)", got)
	}
	chromiumtest.Screenshot(t, ctx, "hosts")
	do(t, ctx, "overview", chromedp.Navigate(srv.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#h-states")))
	chromiumtest.Screenshot(t, ctx, "overview")
	for _, p := range []string{"images", "rollouts", "audit"} {
		do(t, ctx, p, chromedp.Navigate(srv.URL+"/ui/"+p), chromedp.WaitVisible(chromedp.CSS("main h1")))
		chromiumtest.Screenshot(t, ctx, p)
	}

	// A check-in's markup is text, and no script of it ran.
	do(t, ctx, "host page", chromedp.Navigate(srv.URL+"/ui/hosts/web-01"), chromedp.WaitVisible(chromedp.CSS("#hostname")))
	chromiumtest.Screenshot(t, ctx, "host")
	if main := text(t, ctx, "main"); strings.Count(main, "<script>window.__xss=1</script>") < 2 {
		t.Errorf("the host page does not show the kernel and the switch's name as text:\n%s", main)
	}
	if ran := eval[bool](t, ctx, `window.__xss !== undefined`); ran {
		t.Errorf("a script from a check-in ran in the page")
	}

	// A forged cross-site POST: another site's page posts the red button's
	// form to the dashboard. The browser sends the session cookie (the
	// other port is the same site), the server refuses the request.
	forger := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/ui/revert">
<input name="kind" value="host"><input name="name" value="web-01"><input name="confirm" value="web-01"></form>
<script>document.getElementById("f").submit()</script>`, srv.URL)
	}))
	defer forger.Close()
	do(t, ctx, "forged post", chromedp.Navigate(forger.URL), chromedp.WaitReady(chromedp.CSS("body")))
	var body string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if body = eval[string](t, ctx, `location.href + " " + document.body.innerText`); strings.Contains(body, "/ui/revert") {
			break
		}
	}
	if !strings.Contains(body, "/ui/revert") || !strings.Contains(body, "refused") {
		t.Errorf("after the forged post the browser shows %q, want the dashboard's refusal", body)
	}
	for _, e := range f.Audit(0) {
		if e.Action == "revert" {
			t.Fatalf("the forged post reverted: %+v", e)
		}
	}

	// The red button: disabled until the host's name is typed.
	do(t, ctx, "host page", chromedp.Navigate(srv.URL+"/ui/hosts/web-01"), chromedp.WaitVisible(chromedp.CSS("#confirm-host")))
	if !eval[bool](t, ctx, `document.getElementById("revert-host").disabled`) {
		t.Errorf("the red button is enabled before the name is typed")
	}
	do(t, ctx, "revert",
		chromedp.SendKeys(chromedp.CSS("#confirm-host"), "web-01"),
		chromedp.WaitEnabled(chromedp.CSS("#revert-host")),
		chromedp.Click(chromedp.CSS("#revert-host")),
		chromedp.WaitVisible(chromedp.CSS("#reverts")),
	)
	chromiumtest.Screenshot(t, ctx, "reverted")
	if got := text(t, ctx, "#reverts tbody"); !strings.Contains(got, "web-01") || !strings.Contains(got, "pending") {
		t.Errorf("reverted page %q, want web-01 pending", got)
	}
	if es := f.Audit(0); len(es) == 0 || es[len(es)-1].Action != "revert" || es[len(es)-1].Who != "ops" {
		t.Errorf("audit log %+v, want the revert by ops last", es)
	}

	// Logout ends the session: the dashboard asks for a login again.
	do(t, ctx, "logout",
		chromedp.Click(chromedp.CSS("#logout")),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.Navigate(srv.URL+"/ui/hosts/web-01"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
	)

	// A viewer: no red button, and a post made anyway is refused.
	do(t, ctx, "viewer login",
		chromedp.SendKeys(chromedp.CSS("#user"), "vera"),
		chromedp.SendKeys(chromedp.CSS("#password"), "viewer-password"),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#hostname")),
	)
	if got := text(t, ctx, "#whoami"); got != "vera (viewer)" {
		t.Errorf("logged in as %q, want vera (viewer)", got)
	}
	if eval[bool](t, ctx, `document.getElementById("revert-host") !== null`) {
		t.Errorf("a viewer sees the red button")
	}
	status := eval[float64](t, ctx, `(async () => {
		const csrf = document.querySelector('input[name=csrf]').value;
		const r = await fetch('/ui/revert', {method: 'POST', body: new URLSearchParams({csrf, kind: 'host', name: 'web-02', confirm: 'web-02'})});
		return r.status;
	})()`, chromedp.EvalAwaitPromise)
	if status != http.StatusForbidden {
		t.Errorf("a viewer's revert post = %v, want 403", status)
	}
	for _, e := range f.Audit(0) {
		if e.Host == "web-02" {
			t.Errorf("the viewer's post reverted web-02: %+v", e)
		}
	}
}
