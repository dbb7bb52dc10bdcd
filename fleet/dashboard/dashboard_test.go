package dashboard

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/checkin"
)

const testToken = "dashboard-test-token-0123456789"

// testServer is the example fleet behind the dashboard (and the API, as
// imaged serve mounts them), with an operator token and a viewer user.
func testServer(t *testing.T) (*httptest.Server, *fleet.Fleet) {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "fleet"), os.DirFS("../testdata/example")); err != nil {
		t.Fatal(err)
	}
	// A rollout with waves beside the example's plain one.
	rf, err := os.OpenFile(filepath.Join(dir, "fleet", "rollouts.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	rf.WriteString("  - name: web-1.3\n    image: base@1.3\n    groups: [web]\n    waves:\n      - hosts: [web-01]\n      - percent: 100\n")
	rf.Close()
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("ops "+testToken+"\n"), 0o600)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f, err := fleet.New(fleet.Options{Dir: filepath.Join(dir, "fleet"), DB: "sqlite://" + filepath.Join(dir, "fleet.db"),
		TokenFile: tokens, PollInterval: -1, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h, err := HashPassword("viewer-password")
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users")
	os.WriteFile(users, []byte("# the test's users\nvera viewer "+h+"\n"), 0o600)
	us, err := ReadUsers(users)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(f, Options{Users: us, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/", d)
	mux.Handle("/", f.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { srv.Close(); f.Close() })
	return srv, f
}

// browser is a client with a cookie jar that does not follow redirects,
// so the test sees them.
func browser(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, u string) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func post(t *testing.T, c *http.Client, u string, form url.Values, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func login(t *testing.T, srv *httptest.Server, c *http.Client, form url.Values) string {
	t.Helper()
	code, body, h := post(t, c, srv.URL+"/ui/login", form, nil)
	if code != http.StatusSeeOther {
		t.Fatalf("login %v = %d, want 303\n%s", form, code, body)
	}
	ck := h.Get("Set-Cookie")
	for _, want := range []string{cookieName + "=", "HttpOnly", "SameSite=Strict", "Path=/ui/"} {
		if !strings.Contains(ck, want) {
			t.Errorf("session cookie %q lacks %s", ck, want)
		}
	}
	_, page, _ := get(t, c, srv.URL+"/ui/")
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token on the overview:\n%s", page)
	}
	return m[1]
}

func TestLoginRequired(t *testing.T) {
	srv, _ := testServer(t)
	c := browser(t)
	for _, p := range []string{"/ui/", "/ui/hosts", "/ui/hosts/web-01", "/ui/audit"} {
		code, _, h := get(t, c, srv.URL+p)
		if code != http.StatusSeeOther || !strings.HasPrefix(h.Get("Location"), "/ui/login") {
			t.Errorf("GET %s without a session = %d to %q, want 303 to /ui/login", p, code, h.Get("Location"))
		}
	}
	if code, _, _ := post(t, c, srv.URL+"/ui/login", url.Values{"token": {"wrong-token-0123456789"}}, nil); code != http.StatusUnauthorized {
		t.Errorf("login with a wrong token = %d, want 401", code)
	}
	if code, _, _ := post(t, c, srv.URL+"/ui/login", url.Values{"user": {"vera"}, "password": {"nope"}}, nil); code != http.StatusUnauthorized {
		t.Errorf("login with a wrong password = %d, want 401", code)
	}
}

// The rules of the state-changing requests: who, which token, which
// origin, and that the red button reverts and says which hosts applied.
func TestActionsRefusedAndAllowed(t *testing.T) {
	srv, f := testServer(t)
	op, viewer := browser(t), browser(t)
	csrf := login(t, srv, op, url.Values{"token": {testToken}})
	vcsrf := login(t, srv, viewer, url.Values{"user": {"vera"}, "password": {"viewer-password"}})
	revert := url.Values{"kind": {"host"}, "name": {"web-01"}, "confirm": {"web-01"}}
	with := func(v url.Values, k, val string) url.Values {
		out := url.Values{}
		for kk, vv := range v {
			out[kk] = vv
		}
		out.Set(k, val)
		return out
	}
	for _, c := range []struct {
		name string
		c    *http.Client
		form url.Values
		hdr  map[string]string
		want int
	}{
		{"viewer", viewer, with(revert, "csrf", vcsrf), nil, http.StatusForbidden},
		{"no CSRF token", op, revert, nil, http.StatusForbidden},
		{"another session's CSRF token", op, with(revert, "csrf", vcsrf), nil, http.StatusForbidden},
		{"cross-site (Sec-Fetch-Site)", op, with(revert, "csrf", csrf), map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"cross-site (Origin)", op, with(revert, "csrf", csrf), map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
		{"wrong confirmation", op, with(with(revert, "csrf", csrf), "confirm", "web-0"), nil, http.StatusBadRequest},
		{"no session", browser(t), with(revert, "csrf", csrf), nil, http.StatusUnauthorized},
	} {
		code, body, _ := post(t, c.c, srv.URL+"/ui/revert", c.form, c.hdr)
		if code != c.want {
			t.Errorf("%s: POST /ui/revert = %d, want %d\n%.300s", c.name, code, c.want, body)
		}
	}
	if es := actions(f); len(es) != 0 {
		t.Fatalf("refused requests left audit entries %+v, want none", es)
	}
	if got := f.Audit(0); len(got) != 2 || got[0].Action != "login" || got[1].Who != "vera" {
		t.Errorf("audit log %+v, want the two logins", got)
	}
	code, _, h := post(t, op, srv.URL+"/ui/revert", with(revert, "csrf", csrf), nil)
	if code != http.StatusSeeOther || !strings.HasPrefix(h.Get("Location"), "/ui/reverted?") {
		t.Fatalf("operator's revert = %d to %q, want 303 to /ui/reverted", code, h.Get("Location"))
	}
	_, page, _ := get(t, op, srv.URL+h.Get("Location"))
	if !strings.Contains(page, "0 of 1 hosts applied") || !strings.Contains(page, "web-01") || !strings.Contains(page, "pending") {
		t.Errorf("reverted page does not list web-01 as pending:\n%s", page)
	}
	es := actions(f)
	if len(es) != 1 || es[0].Who != "ops" || es[0].Action != "revert" || es[0].Host != "web-01" {
		t.Errorf("audit after the revert = %+v, want one revert of web-01 by ops", es)
	}
	// The whole fleet: every host.
	code, _, h = post(t, op, srv.URL+"/ui/revert", url.Values{"csrf": {csrf}, "kind": {"fleet"}, "confirm": {"whole fleet"}}, nil)
	if code != http.StatusSeeOther {
		t.Fatalf("whole-fleet revert = %d", code)
	}
	if _, page, _ = get(t, op, srv.URL+h.Get("Location")); !strings.Contains(page, "of 5 hosts applied") {
		t.Errorf("whole-fleet revert page does not list the 5 hosts:\n%s", page)
	}
	// Assign to a group, audited under the user.
	if code, body, _ := post(t, op, srv.URL+"/ui/assign", url.Values{"csrf": {csrf}, "kind": {"group"}, "name": {"web"}, "image": {"base@1.3"}, "back": {"/ui/hosts?group=web"}}, nil); code != http.StatusSeeOther {
		t.Errorf("assign = %d\n%s", code, body)
	}
	if es := f.Audit(0); es[len(es)-1].Action != "assign" || es[len(es)-1].Who != "ops" {
		t.Errorf("last audit entry %+v, want ops's assign", es[len(es)-1])
	}
}

// Logout ends the session on the server: the old cookie no longer works.
func TestLogoutEndsSession(t *testing.T) {
	srv, _ := testServer(t)
	c := browser(t)
	csrf := login(t, srv, c, url.Values{"token": {testToken}})
	u, _ := url.Parse(srv.URL + "/ui/")
	old := c.Jar.Cookies(u)
	if code, _, _ := post(t, c, srv.URL+"/ui/logout", url.Values{"csrf": {csrf}}, nil); code != http.StatusSeeOther {
		t.Fatalf("logout = %d, want 303", code)
	}
	replay := browser(t)
	replay.Jar.SetCookies(u, old)
	if code, _, h := get(t, replay, srv.URL+"/ui/"); code != http.StatusSeeOther || !strings.HasPrefix(h.Get("Location"), "/ui/login") {
		t.Errorf("GET /ui/ with the cookie from before logout = %d to %q, want the login page", code, h.Get("Location"))
	}
}

// Check-in fields are untrusted: a switch's system name (the hostname
// LLDP reports) and a kernel string with markup show as text. (The
// host's own hostname cannot carry markup: checkin.Parse refuses it.)
func TestHostileCheckinEscaped(t *testing.T) {
	srv, f := testServer(t)
	evil := `<script>alert("x")</script>`
	c, err := checkin.Parse(strings.NewReader(`{"mac":"52:54:00:00:00:01","source":"agent","hostname":"web-01","kernel":` + jsonString(evil) +
		`,"booted":"sha256:1111111111111111111111111111111111111111111111111111111111111111",` +
		`"images":{"current":"sha256:1111111111111111111111111111111111111111111111111111111111111111"},` +
		`"facts":{"cpu":{"model":"x"},"firmware":{},"nics":[{"name":"eth0","link":true,"lldp":{"system_name":` + jsonString(evil) + `}}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Checkin(c); err != nil {
		t.Fatal(err)
	}
	b := browser(t)
	login(t, srv, b, url.Values{"token": {testToken}})
	for _, p := range []string{"/ui/", "/ui/hosts", "/ui/hosts/web-01"} {
		_, page, h := get(t, b, srv.URL+p)
		if strings.Contains(page, "<script>alert") {
			t.Errorf("GET %s: a check-in field is in the page as markup", p)
		}
		if !strings.Contains(h.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: CSP %q, want script-src 'self'", p, h.Get("Content-Security-Policy"))
		}
	}
	_, page, _ := get(t, b, srv.URL+"/ui/hosts/web-01")
	if !strings.Contains(page, `<th scope="row">current</th><td>base@1.2</td>`) {
		t.Errorf("host page does not name the current slot's image base@1.2")
	}
	if n := strings.Count(page, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"); n < 2 {
		t.Errorf("host page shows the kernel and the switch's name as text %d times, want 2:\n%s", n, page)
	}
}

func jsonString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// The hosts table: filter, sort, pages.
func TestHostsFilterPages(t *testing.T) {
	for _, c := range []struct {
		f    hostFilter
		h    row
		want bool
	}{
		{hostFilter{Group: "web"}, row{HostStatus: fleet.HostStatus{Group: "web"}}, true},
		{hostFilter{Group: "web"}, row{HostStatus: fleet.HostStatus{Group: "db"}}, false},
		{hostFilter{Label: "rack=r1"}, row{Labels: map[string]string{"rack": "r1"}}, true},
		{hostFilter{Label: "rack=r1"}, row{Labels: map[string]string{"rack": "r2"}}, false},
		{hostFilter{Label: "rack"}, row{Labels: map[string]string{"rack": "r2"}}, true},
		{hostFilter{Image: "base@1.3"}, row{HostStatus: fleet.HostStatus{Current: fleet.ImageInfo{Ref: "base@1.3"}}}, true},
		{hostFilter{Image: "base@1.3"}, row{HostStatus: fleet.HostStatus{Current: fleet.ImageInfo{Ref: "base@1.2"}}}, false},
		{hostFilter{State: "offline"}, row{Offline: true}, true},
		{hostFilter{State: "trial"}, row{HostStatus: fleet.HostStatus{State: "ok"}}, false},
	} {
		if got := c.f.match(c.h); got != c.want {
			t.Errorf("%+v.match(%+v) = %v, want %v", c.f, c.h, got, c.want)
		}
	}
	srv, _ := testServer(t)
	c := browser(t)
	login(t, srv, c, url.Values{"token": {testToken}})
	if code, page, _ := get(t, c, srv.URL+"/ui/images/base@1.3?diff=base@1.2"); code != 200 || !strings.Contains(page, "From base@1.2 to this image") || !strings.Contains(page, "<dt>Manifest</dt>") {
		t.Errorf("image page = %d, want the manifest and the diff section:\n%s", code, page)
	}
	_, page, _ := get(t, c, srv.URL+"/ui/hosts?group=web&sort=state")
	if !strings.Contains(page, "4 hosts") || strings.Contains(page, "db-01") {
		t.Errorf("hosts?group=web: want the 4 web hosts and not db-01:\n%s", page)
	}
}

// Under TLS the session cookie is Secure: the browser never sends it in
// clear.
func TestCookieSecureUnderTLS(t *testing.T) {
	plain, _ := testServer(t)
	tlsSrv := httptest.NewTLSServer(plain.Config.Handler)
	defer tlsSrv.Close()
	for _, c := range []struct {
		srv    *httptest.Server
		secure bool
	}{{plain, false}, {tlsSrv, true}} {
		cl := c.srv.Client()
		cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		_, _, h := post(t, cl, c.srv.URL+"/ui/login", url.Values{"token": {testToken}}, nil)
		if got := strings.Contains(h.Get("Set-Cookie"), "Secure"); got != c.secure {
			t.Errorf("%s: cookie %q Secure = %v, want %v", c.srv.URL, h.Get("Set-Cookie"), got, c.secure)
		}
	}
}

// The event stream says "change" when a host checks in, and needs a
// session.
func TestEventStream(t *testing.T) {
	srv, f := testServer(t)
	if code, _, _ := get(t, browser(t), srv.URL+"/ui/events"); code != http.StatusUnauthorized {
		t.Errorf("GET /ui/events without a session = %d, want 401", code)
	}
	c := browser(t)
	login(t, srv, c, url.Values{"token": {testToken}})
	resp, err := c.Get(srv.URL + "/ui/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q, want text/event-stream", ct)
	}
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		var all string
		for {
			n, err := resp.Body.Read(buf)
			all += string(buf[:n])
			if strings.Contains(all, "event: change") || err != nil {
				got <- all
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // the stream waits for the next change
	ci, _ := checkin.Parse(strings.NewReader(`{"mac":"52:54:00:00:00:02","booted":"sha256:1111111111111111111111111111111111111111111111111111111111111111"}`))
	if err := f.Checkin(ci); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if !strings.Contains(s, "event: change") {
			t.Errorf("stream %q, want an event: change", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10 s of a check-in")
	}
}

func TestReadUsersRefuses(t *testing.T) {
	h, _ := HashPassword("x")
	for _, c := range []struct{ file, want string }{
		{"alice admin " + h + "\n", `role "admin"`},
		{"alice operator plaintext\n", "not bcrypt"},
		{"alice operator\n", "want NAME ROLE BCRYPT-HASH"},
		{"alice viewer " + h + "\nalice operator " + h + "\n", "there twice"},
	} {
		p := filepath.Join(t.TempDir(), "users")
		os.WriteFile(p, []byte(c.file), 0o600)
		if _, err := ReadUsers(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ReadUsers(%q) = %v, want an error with %q", c.file, err, c.want)
		}
	}
}

// The rollout buttons: start and pause a rollout with waves, audited.
func TestRolloutActions(t *testing.T) {
	srv, f := testServer(t)
	c := browser(t)
	csrf := login(t, srv, c, url.Values{"token": {testToken}})
	for _, a := range []struct{ action, state string }{{"start", "running"}, {"pause", "paused"}} {
		if code, body, _ := post(t, c, srv.URL+"/ui/rollouts/web-1.3/"+a.action, url.Values{"csrf": {csrf}}, nil); code != http.StatusSeeOther {
			t.Fatalf("POST %s = %d\n%s", a.action, code, body)
		}
		st, err := f.RolloutStatus("web-1.3")
		if err != nil || st.State != a.state {
			t.Errorf("after %s: state %q, %v; want %s", a.action, st.State, err, a.state)
		}
	}
	_, page, _ := get(t, c, srv.URL+"/ui/rollouts")
	if !strings.Contains(page, "web-1.3: base@1.3") || !strings.Contains(page, ">paused<") || !strings.Contains(page, "/ui/rollouts/web-1.3/resume") {
		t.Errorf("rollouts page lacks web-1.3 paused with a resume button:\n%s", page)
	}
	var acts []string
	for _, e := range actions(f) {
		if e.Who == "ops" && e.Target == "rollout web-1.3" {
			acts = append(acts, e.Action+" "+e.Detail)
		}
	}
	if len(acts) < 2 {
		t.Errorf("audit of rollout web-1.3 by ops: %q, want the start and the pause", acts)
	}
}

// actions are the audit entries but logins and logouts.
func actions(f *fleet.Fleet) []fleet.AuditEntry {
	var out []fleet.AuditEntry
	for _, e := range f.Audit(0) {
		if e.Action != "login" && e.Action != "logout" {
			out = append(out, e)
		}
	}
	return out
}

// ReloadUsers takes a changed users file and keeps the last good one
// when the file breaks.
func TestReloadUsers(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "users")
	h, _ := HashPassword("pw")
	os.WriteFile(p, []byte("ann viewer "+h+"\n"), 0o600)
	us, err := ReadUsers(p)
	if err != nil {
		t.Fatal(err)
	}
	srv, f := testServer(t)
	srv.Close()
	d, err := New(f, Options{Users: us, UsersFile: p, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("bob operator "+h+"\n"), 0o600)
	if err := d.ReloadUsers(); err != nil {
		t.Fatal(err)
	}
	if _, ok := (*d.users.Load())["bob"]; !ok {
		t.Errorf("after a reload bob is not a user")
	}
	os.WriteFile(p, []byte("broken line\n"), 0o600)
	if err := d.ReloadUsers(); err == nil {
		t.Errorf("ReloadUsers of a broken file = nil, want the error")
	}
	if _, ok := (*d.users.Load())["bob"]; !ok {
		t.Errorf("a broken file dropped the last good users")
	}
}

// TestLoginThrottled: after LoginFailures wrong tokens from one address,
// even the right token is refused with 429 and Retry-After until the
// window passes (the window itself: TestThrottle).
func TestLoginThrottled(t *testing.T) {
	srv, _ := testServer(t)
	c := browser(t)
	for i := 0; i < LoginFailures; i++ {
		if code, _, _ := post(t, c, srv.URL+"/ui/login", url.Values{"token": {"wrong-token-0123456789"}}, nil); code != http.StatusUnauthorized {
			t.Fatalf("wrong token %d = %d, want 401", i+1, code)
		}
	}
	code, body, h := post(t, c, srv.URL+"/ui/login", url.Values{"token": {testToken}}, nil)
	if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" || !strings.Contains(body, "Too many failed logins") {
		t.Errorf("the right token after %d failures = %d (Retry-After %q), want 429 with Retry-After\n%s", LoginFailures, code, h.Get("Retry-After"), body)
	}
	if strings.Contains(h.Get("Set-Cookie"), cookieName+"=") {
		t.Errorf("a throttled login set a session cookie")
	}
}
