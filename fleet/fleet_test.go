package fleet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/pxe"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/crypto/ssh"
)

const (
	aliceToken = "alice-0123456789abcdef"
	bobToken   = "bob-0123456789abcdef0"
)

type env struct {
	dir, db, tokens string
	importPath      string
	tweak           func(*Options)
	f               *Fleet
	srv             *httptest.Server
}

func newEnv(t *testing.T, openReads bool) *env {
	t.Helper()
	return newEnvDB(t, openReads, "", nil)
}

// newEnvDB is newEnv on the database dbURL ("": a SQLite file of its
// own), with Options changed by tweak.
func newEnvDB(t *testing.T, openReads bool, dbURL string, tweak func(*Options)) *env {
	t.Helper()
	e := &env{dir: copyExample(t), db: dbURL, tweak: tweak}
	tmp := t.TempDir()
	if e.db == "" {
		e.db = "sqlite://" + filepath.Join(tmp, "state", "fleet.db")
	}
	e.tokens = filepath.Join(tmp, "tokens")
	os.WriteFile(e.tokens, []byte("# admin tokens\nalice "+aliceToken+"\nbob "+bobToken+"\n"), 0o600)
	e.open(t, openReads)
	return e
}

func (e *env) open(t *testing.T, openReads bool) {
	t.Helper()
	opts := Options{Dir: e.dir, DB: e.db, Import: e.importPath, TokenFile: e.tokens, OpenReads: openReads, PollInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if e.tweak != nil {
		e.tweak(&opts)
	}
	f, err := New(opts)
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	e.f = f
	e.srv = httptest.NewServer(f.Handler())
	t.Cleanup(func() { e.srv.Close(); f.Close() })
}

func (e *env) call(t *testing.T, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLookupAnswersFromYAML(t *testing.T) {
	e := newEnv(t, false)
	for _, c := range []struct {
		mac, host, digest string
		ok                bool
	}{
		{"52:54:00:00:00:01", "web-01", d12, true},
		{"52:54:00:00:00:04", "web-04", d13, true}, // listed in rollout canary-1.3
		{"52:54:00:00:00:10", "db-01", d13, true},
		{"52:54:00:00:00:99", "", "", false},
	} {
		hb, ok := e.f.Lookup(mustMAC(c.mac))
		if ok != c.ok || hb.Hostname != c.host || hb.Image.Digest != c.digest || hb.Cmdline != "" {
			t.Errorf("Lookup(%s) = %+v, %v, want %s %s, %v, no cmdline", c.mac, hb, ok, c.host, short(c.digest), c.ok)
		}
	}
	if got := len(e.f.Images()); got != 2 {
		t.Errorf("len(Images()) = %d, want 2", got)
	}
}

func TestReloadKeepsLastGood(t *testing.T) {
	e := newEnv(t, true)
	hosts := filepath.Join(e.dir, "hosts.yaml")
	orig, _ := os.ReadFile(hosts)
	writeFile(t, hosts, strings.Replace(string(orig), "hostname: web-02", "hostname: web-02\n    colour: blue", 1))
	err := e.f.Reload()
	if err == nil || !strings.Contains(err.Error(), hosts+`:8: unknown key "colour"`) {
		t.Fatalf("Reload(invalid) = %v, want an error naming %s:8", err, hosts)
	}
	if hb, ok := e.f.Lookup(mustMAC("52:54:00:00:00:02")); !ok || hb.Image.Digest != d12 {
		t.Errorf("Lookup after a failed reload = %+v, %v, want the last good answer", hb, ok)
	}
	if st := e.f.Status(); !strings.Contains(st.ConfigError, "colour") {
		t.Errorf("Status().ConfigError = %q, want the reload error", st.ConfigError)
	}
	want := `
# HELP hnboot_fleet_config_reloads_total Reloads of the fleet directory, by result.
# TYPE hnboot_fleet_config_reloads_total counter
hnboot_fleet_config_reloads_total{result="error"} 1
hnboot_fleet_config_reloads_total{result="ok"} 0
# HELP hnboot_fleet_config_valid 1 if the fleet directory as it is now on disk loaded; 0 if the last reload failed and the last good state is served.
# TYPE hnboot_fleet_config_valid gauge
hnboot_fleet_config_valid 0
`
	if err := testutil.CollectAndCompare(collector{e.f}, strings.NewReader(want), "hnboot_fleet_config_valid", "hnboot_fleet_config_reloads_total"); err != nil {
		t.Errorf("metrics after a failed reload: %v", err)
	}
	writeFile(t, hosts, strings.Replace(string(orig), "hostname: web-02\n    group: web", "hostname: web-02\n    group: web\n    image: base@1.3", 1))
	if err := e.f.Reload(); err != nil {
		t.Fatalf("Reload(fixed) = %v", err)
	}
	if hb, _ := e.f.Lookup(mustMAC("52:54:00:00:00:02")); hb.Image.Digest != d13 {
		t.Errorf("Lookup after a good reload = %s, want %s", short(hb.Image.Digest), short(d13))
	}
	if st := e.f.Status(); st.ConfigError != "" {
		t.Errorf("Status().ConfigError after a good reload = %q, want empty", st.ConfigError)
	}
}

func TestRunReloadsOnChange(t *testing.T) {
	e := newEnv(t, true)
	e.f.opts.PollInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(30 * time.Millisecond)
	writeFile(t, filepath.Join(e.dir, "extra.yaml"), "hosts:\n  - mac: 52:54:00:00:00:20\n    hostname: web-20\n    group: web\n")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if hb, ok := e.f.Lookup(mustMAC("52:54:00:00:00:20")); ok && hb.Hostname == "web-20" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("Lookup(new host) after writing extra.yaml: not answered within 5s, want the new host")
}

func TestAuth(t *testing.T) {
	for _, c := range []struct {
		name         string
		open         bool
		method, path string
		header       string
		want         int
	}{
		{"no token, admin", false, "POST", "/api/revert", "", 401},
		{"wrong token, admin", false, "POST", "/api/revert", "Bearer " + aliceToken + "x", 401},
		{"prefix of a token, admin", false, "POST", "/api/revert", "Bearer " + aliceToken[:10], 401},
		{"basic auth, admin", false, "POST", "/api/revert", "Basic " + aliceToken, 401},
		{"empty bearer, admin", false, "POST", "/api/revert", "Bearer ", 401},
		{"good token, admin", false, "POST", "/api/revert", "Bearer " + bobToken, 200},
		{"no token, read, closed", false, "GET", "/api/status", "", 401},
		{"no token, metrics, closed", false, "GET", "/metrics", "", 401},
		{"no token, read, open", true, "GET", "/api/status", "", 200},
		{"no token, admin, reads open", true, "POST", "/api/assign", "", 401},
		{"no token, host desired", false, "GET", "/api/hosts/52:54:00:00:00:01/desired", "", 200},
		{"no token, host checkin", false, "POST", "/api/checkin", "", 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, c.open)
			var body io.Reader
			switch c.path {
			case "/api/revert":
				body = strings.NewReader(`{"host":"web-01"}`)
			case "/api/assign":
				body = strings.NewReader(`{"host":"web-01","image":"base@1.3"}`)
			case "/api/checkin":
				body = strings.NewReader(`{"mac":"52:54:00:00:00:01"}`)
			}
			req, _ := http.NewRequest(c.method, e.srv.URL+c.path, body)
			if c.header != "" {
				req.Header.Set("Authorization", c.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s %s with %q = %d, want %d", c.method, c.path, c.header, resp.StatusCode, c.want)
			}
			if c.want == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
			if c.want == 401 && len(e.f.Audit(0)) != 0 {
				t.Errorf("refused call left audit entries %+v, want none", e.f.Audit(0))
			}
		})
	}
}

func TestTokenMatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	writeFile(t, path, "alice "+aliceToken+"\n"+bobToken+"\n")
	ts, err := readTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tok, name string
		ok        bool
	}{{aliceToken, "alice", true}, {bobToken, "admin", true}, {"", "", false}, {aliceToken[:len(aliceToken)-1], "", false}, {"x" + bobToken, "", false}} {
		name, ok := ts.match(c.tok)
		if name != c.name || ok != c.ok {
			t.Errorf("match(%q) = %q, %v, want %q, %v", c.tok, name, ok, c.name, c.ok)
		}
	}
	writeFile(t, path, "short\n")
	if _, err := readTokens(path); err == nil || !strings.Contains(err.Error(), path+":1:") {
		t.Errorf("readTokens(short token) = %v, want an error naming %s:1", err, path)
	}
}

// The big red button, end to end through the API, on either database.
func TestRevertFlow(t *testing.T) {
	forBackends(t, testRevertFlow)
}

func testRevertFlow(t *testing.T, dbURL string) {
	e := newEnvDB(t, false, dbURL, nil)
	mac := mustMAC("52:54:00:00:00:10") // db-01, assigned base@1.3
	ci := func(body string) {
		t.Helper()
		if code, b := e.call(t, "POST", "/api/checkin", "", json.RawMessage(body)); code != 200 {
			t.Fatalf("POST /api/checkin = %d %s", code, b)
		}
	}
	ci(`{"mac":"52:54:00:00:00:10","booted":"` + d13 + `","action":"promote","trial":true,"tries_left":2,"images":{"current":"` + d13 + `","old":"` + d12 + `"}}`)

	code, b := e.call(t, "POST", "/api/revert", aliceToken, map[string]string{"host": "db-01"})
	if code != 200 {
		t.Fatalf("POST /api/revert = %d %s", code, b)
	}
	var res []RevertResult
	json.Unmarshal(b, &res)
	if len(res) != 1 || res[0].ID == "" || res[0].PinnedTo != "base@1.2" {
		t.Fatalf("revert result = %s, want one ID, pinned to base@1.2 (the host's old image)", b)
	}
	id := res[0].ID

	hb, _ := e.f.Lookup(mac)
	if hb.Cmdline != "hn.revert="+id || hb.Image.Digest != d12 {
		t.Errorf("Lookup after revert = cmdline %q image %s, want hn.revert=%s and base@1.2", hb.Cmdline, short(hb.Image.Digest), id)
	}
	code, b = e.call(t, "GET", "/api/hosts/52:54:00:00:00:10/desired", "", nil)
	var dh DesiredHost
	json.Unmarshal(b, &dh)
	if code != 200 || dh.Revert != id || dh.Image.Digest != d12 {
		t.Errorf("GET desired = %d %s, want revert %s and base@1.2", code, b, id)
	}
	if st := e.f.Status(); st.Hosts[4].State != StateRevertPending {
		t.Errorf("state of db-01 = %s, want %s", st.Hosts[4].State, StateRevertPending)
	}

	ci(`{"mac":"52:54:00:00:00:10","revert_applied":"r-some-older-id","images":{"current":"` + d13 + `"}}`)
	if hb, _ := e.f.Lookup(mac); hb.Cmdline != "hn.revert="+id {
		t.Errorf("Lookup after a check-in with another revert ID = %q, want hn.revert=%s still", hb.Cmdline, id)
	}

	ci(`{"mac":"52:54:00:00:00:10","booted":"` + d12 + `","action":"revert","revert_applied":"` + id + `","images":{"current":"` + d12 + `","broken":"` + d13 + `"}}`)
	if hb, _ := e.f.Lookup(mac); hb.Cmdline != "" || hb.Image.Digest != d12 {
		t.Errorf("Lookup after the host reported the revert = %q %s, want no cmdline and base@1.2", hb.Cmdline, short(hb.Image.Digest))
	}
	if st := e.f.Status(); st.Hosts[4].State != StateOK {
		t.Errorf("state of db-01 after the revert = %s, want ok", st.Hosts[4].State)
	}
	var actions []string
	for _, a := range e.f.Audit(0) {
		actions = append(actions, a.Who+" "+a.Action)
	}
	if got, want := strings.Join(actions, "; "), "alice revert; host:52:54:00:00:00:10 revert-applied"; got != want {
		t.Errorf("audit = %q, want %q", got, want)
	}

	// The state survives a restart.
	e.srv.Close()
	e.f.Close()
	e.open(t, false)
	if hb, _ := e.f.Lookup(mac); hb.Image.Digest != d12 {
		t.Errorf("Lookup after restart = %s, want base@1.2 (the revert's assignment)", short(hb.Image.Digest))
	}
	rep, err := e.f.Why("db-01", 0)
	if err != nil || len(rep.Boots) == 0 || !strings.Contains(rep.Text, "applied revert "+id) {
		t.Errorf("Why(db-01) after restart = %v %q, want the persisted boot with the applied revert", err, rep.Text)
	}
}

func TestAssignPrecedence(t *testing.T) {
	forBackends(t, testAssignPrecedence)
}

func testAssignPrecedence(t *testing.T, dbURL string) {
	e := newEnvDB(t, false, dbURL, nil)
	web01 := mustMAC("52:54:00:00:00:01")
	step := func(path string, body any, wantCode int, wantDigest string) {
		t.Helper()
		code, b := e.call(t, "POST", path, bobToken, body)
		if code != wantCode {
			t.Fatalf("POST %s %v = %d %s, want %d", path, body, code, b, wantCode)
		}
		if hb, _ := e.f.Lookup(web01); hb.Image.Digest != wantDigest {
			t.Errorf("after POST %s %v: Lookup(web-01) = %s, want %s", path, body, short(hb.Image.Digest), short(wantDigest))
		}
	}
	step("/api/rollout", map[string]any{"name": "all-web", "image": "base@1.3", "group": "web", "percent": 100}, 200, d13)
	step("/api/assign", map[string]string{"group": "web", "image": "base@1.2"}, 200, d12) // group override beats rollout
	step("/api/assign", map[string]string{"host": "web-01", "image": "base@1.3"}, 200, d13)
	step("/api/assign", map[string]string{"group": "web", "image": "base@1.2"}, 200, d12) // clears members' host overrides
	step("/api/assign", map[string]string{"group": "web", "image": ""}, 200, d13)         // back to the rollout
	step("/api/rollout", map[string]any{"name": "all-web", "delete": true}, 200, d12)     // back to the YAML
	step("/api/assign", map[string]string{"host": "web-01", "image": "base@9"}, 400, d12)
	step("/api/assign", map[string]string{"host": "nope", "image": "base@1.2"}, 400, d12)
	step("/api/assign", map[string]string{"host": "web-01", "group": "web", "image": "base@1.2"}, 400, d12)
	if got := len(e.f.Audit(0)); got != 6 {
		t.Errorf("audit entries = %d, want 6 (one per accepted action)", got)
	}
	for _, a := range e.f.Audit(0) {
		if a.Who != "bob" {
			t.Errorf("audit who = %q, want bob (the token's name)", a.Who)
		}
	}
}

// mustParse is a check-in as the HTTP edges hand it to Checkin.
func mustParse(t *testing.T, body string) *checkin.Checkin {
	t.Helper()
	c, err := checkin.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatalf("checkin.Parse(%s) = %v", body, err)
	}
	return c
}

// A TARGET is a host (name or MAC) or a group, whichever exists; a name
// that is both is refused.
func TestAssignTarget(t *testing.T) {
	e := newEnv(t, false)
	hosts, err := os.ReadFile(filepath.Join(e.dir, "hosts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(e.dir, "hosts.yaml"), string(hosts)+"  - mac: 52:54:00:00:00:20\n    hostname: db\n    group: db\n")
	if err := e.f.Reload(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		target     string
		code       int
		wantTarget string // the reply's "target", or a substring of its error
	}{
		{"web", 200, "group web"},
		{"web-01", 200, "host web-01"},
		{"52:54:00:00:00:02", 200, "host 52:54:00:00:00:02"},
		{"db", 400, `"db" is both a host and a group`},
		{"nope", 400, `unknown host or group "nope"`},
	} {
		code, b := e.call(t, "POST", "/api/assign", bobToken, map[string]string{"target": tc.target, "image": "base@1.2"})
		var reply struct{ Target, Error string }
		json.Unmarshal(b, &reply)
		if code != tc.code || !strings.Contains(reply.Target+reply.Error, tc.wantTarget) {
			t.Errorf("POST /api/assign target %q = %d %s, want %d and %q", tc.target, code, b, tc.code, tc.wantTarget)
		}
		// A revert resolves its target by the same rule.
		code, b = e.call(t, "POST", "/api/revert", bobToken, map[string]string{"target": tc.target})
		if code != tc.code {
			t.Errorf("POST /api/revert target %q = %d %s, want %d", tc.target, code, b, tc.code)
		}
	}
	if hb, _ := e.f.Lookup(mustMAC("52:54:00:00:00:03")); hb.Image.Digest != d12 {
		t.Errorf("after assigning group web base@1.2, web-03 boots %s, want %s", short(hb.Image.Digest), short(d12))
	}
}

func TestKnownHosts(t *testing.T) {
	e := newEnv(t, false)
	pub, _, _ := ed25519.GenerateKey(nil)
	spk, _ := ssh.NewPublicKey(pub)
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spk)))
	if err := e.f.Checkin(mustParse(t, `{"mac":"52:54:00:00:00:01","source":"agent","ssh_host_keys":["`+key+` root@web-01"]}`)); err != nil {
		t.Fatal(err)
	}
	code, b := e.call(t, "GET", "/api/known_hosts", aliceToken, nil)
	if want := "web-01,192.0.2.11 " + key + "\n"; code != 200 || !strings.HasSuffix(string(b), want) {
		t.Errorf("GET /api/known_hosts = %d %q, want it to end with %q", code, b, want)
	}
}

// The boot server records an accepted check-in event and then calls
// Checkin, which links the check-in to the boot; a refused one (the
// boot server could not parse it) is linked with its reason and counted.
func TestCheckinLedger(t *testing.T) {
	e := newEnv(t, false)
	e.f.Record(Event{MAC: mustMAC("52:54:00:00:00:02"), Kind: pxe.KindCheckin, Detail: "source=init"})
	if err := e.f.Checkin(mustParse(t, `{"mac":"52:54:00:00:00:02","booted":"`+d12+`","images":{"current":"`+d12+`"}}`)); err != nil {
		t.Fatal(err)
	}
	if bs := e.f.led.Boots("52:54:00:00:00:02"); len(bs) != 1 || len(bs[0].Events) != 1 || bs[0].Checkin == nil || bs[0].Checkin.Booted != d12 {
		t.Errorf("ledger of web-02 after Record(checkin)+Checkin = %+v, want one boot with one linked check-in event", bs)
	}
	e.f.Record(Event{MAC: mustMAC("52:54:00:00:00:03"), Kind: pxe.KindCheckin, Detail: "refused", Err: "check-in from 52:54:00:00:00:03: booted: \"x\" is not sha256:<64 lowercase hex>"})
	e.f.Record(Event{Kind: pxe.KindCheckin, Detail: "refused", Err: "check-in: mac: missing"}) // no MAC: counted only
	if st := e.f.Status(); st.Hosts[1].State != StateOK || st.Hosts[2].LastCheckin != nil {
		t.Errorf("states after one good and one refused check-in: web-02 %s, web-03 last %+v; want ok, none", st.Hosts[1].State, st.Hosts[2].LastCheckin)
	}
	if bs := e.f.led.Boots("52:54:00:00:00:03"); len(bs) != 1 || !strings.Contains(bs[0].Events[0].Err, "booted:") || bs[0].Checkin != nil {
		t.Errorf("ledger of web-03 after a refused check-in = %+v, want the refusal with its reason", bs)
	}
	_, mb := e.call(t, "GET", "/metrics", aliceToken, nil)
	if m := string(mb); !strings.Contains(m, `hnboot_checkins_total{result="error"} 2`+"\n") || !strings.Contains(m, `hnboot_checkins_total{result="ok"} 1`+"\n") {
		t.Errorf("check-in metrics after 1 accepted and 2 refused:\n%s", m)
	}
}

// What the init and the agent send (bodies marshalled by the code before
// package checkin) reaches the store through both HTTP edges, the boot
// server's /checkin and the fleet's /api/checkin, and comes back out of
// the status API and a reopened store as parsed.
func TestCheckinStoredAsSent(t *testing.T) {
	forBackends(t, testCheckinStoredAsSent)
}

func testCheckinStoredAsSent(t *testing.T, dbURL string) {
	e := newEnvDB(t, true, dbURL, nil)
	h := pxe.NewHTTPHandler(pxe.HTTPConfig{}, e.f, pxe.NewExtractor(t.TempDir()), nil, e.f, e.f.Checkin, e.f.Handler(), slog.New(slog.DiscardHandler), nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, tc := range []struct {
		file, path string
		code       int
	}{
		{"old-init.json", "/checkin", http.StatusNoContent},
		{"old-agent.json", "/api/checkin", http.StatusOK},
	} {
		body, err := os.ReadFile(filepath.Join("..", "internal", "checkin", "testdata", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		want := mustParse(t, string(body))
		resp, err := http.Post(srv.URL+tc.path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Fatalf("POST %s (%s) = %s, want %d", tc.path, tc.file, resp.Status, tc.code)
		}
		obs, _ := e.f.observed()
		got := obs[want.MAC]
		if got == nil || !reflect.DeepEqual(got.Checkin, *want) || got.Time.IsZero() {
			t.Fatalf("stored after POST %s (%s) =\n%+v\nwant\n%+v", tc.path, tc.file, got, want)
		}
		var st Status
		if code, b := e.call(t, "GET", "/api/status", "", nil); code != 200 || json.Unmarshal(b, &st) != nil || len(st.Unknown) != 1 {
			t.Fatalf("GET /api/status = %d %s, want one unknown check-in", code, b)
		}
		if got := st.Unknown[0].Checkin; !reflect.DeepEqual(got, *want) {
			t.Errorf("GET /api/status after POST %s (%s): check-in =\n%+v\nwant\n%+v", tc.path, tc.file, got, *want)
		}
	}
	// The init's check-in closed its boot in the ledger.
	why, err := e.f.Why("52:54:00:12:34:56", 0)
	if err != nil || len(why.Boots) != 1 || why.Boots[0].Checkin == nil || why.Boots[0].Checkin.Action != "promote" {
		t.Errorf("Why(init host) = %+v, %v; want one boot closed by the init's check-in", why.Boots, err)
	}
	obs, _ := e.f.observed()
	want := obs["52:54:00:12:34:56"]
	srv.Close()
	e.f.Close()
	e.open(t, true)
	obs, _ = e.f.observed()
	if got := obs["52:54:00:12:34:56"]; !reflect.DeepEqual(got.Checkin, want.Checkin) || !got.Time.Equal(want.Time) {
		t.Errorf("after reopening the store: %+v, want %+v", got, want)
	}
}

func TestRecordAndWhy(t *testing.T) {
	e := newEnv(t, false)
	t0 := time.Date(2026, 1, 2, 12, 1, 3, 0, time.Local)
	mac := mustMAC("52:54:00:00:00:01")
	e.f.Record(Event{Time: t0, MAC: mac, Kind: "dhcp", Detail: "offered ipxe.efi (UEFI x86-64, option 93=7)"})
	e.f.Record(Event{Time: t0.Add(time.Second), MAC: mac, Kind: "tftp", Detail: "ipxe.efi sent"})
	e.f.Record(Event{Time: t0, MAC: mustMAC("52:54:00:99:99:99"), Kind: "dhcp-ignored", Detail: "unknown MAC (not in the fleet; --allow-unknown serves it)"})
	code, b := e.call(t, "GET", "/api/hosts/web-01/why", aliceToken, nil)
	var rep WhyReport
	json.Unmarshal(b, &rep)
	if code != 200 || !strings.Contains(rep.Text, "12:01:03 DHCP: offered ipxe.efi (UEFI x86-64, option 93=7)") || !strings.Contains(rep.Text, "12:01:04 TFTP: ipxe.efi sent") {
		t.Errorf("GET why web-01 = %d %q, want the DHCP and TFTP lines", code, rep.Text)
	}
	code, b = e.call(t, "GET", "/api/hosts/52:54:00:99:99:99/why", aliceToken, nil)
	json.Unmarshal(b, &rep)
	if code != 200 || rep.Known || !strings.Contains(rep.Text, "add it to a hosts file") {
		t.Errorf("GET why unknown MAC = %d %q, want the ignored line with advice", code, rep.Text)
	}
	if code, _ := e.call(t, "GET", "/api/hosts/nonsense/why", aliceToken, nil); code != 404 {
		t.Errorf("GET why nonsense = %d, want 404", code)
	}
}

// TestMetrics scrapes GET /metrics as Prometheus would and parses it: the
// fleet's families with their values, and the Go runtime's, the process's
// and promhttp's own beside them.
func TestMetrics(t *testing.T) {
	e := newEnv(t, false)
	e.f.Checkin(mustParse(t, `{"mac":"52:54:00:00:00:01","images":{"current":"`+d12+`"}}`))
	e.f.Record(Event{MAC: mustMAC("52:54:00:00:00:01"), Kind: "dhcp"})
	e.call(t, "GET", "/api/status", "", nil) // a 401
	if code, _ := e.call(t, "GET", "/metrics", "", nil); code != http.StatusUnauthorized {
		t.Errorf("GET /metrics without a token = %d, want 401", code)
	}
	code, b := e.call(t, "GET", "/metrics", aliceToken, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("GET /metrics is not the Prometheus text format: %v\n%s", err, b)
	}
	for _, tt := range []struct {
		name   string
		typ    dto.MetricType
		labels map[string]string
		want   float64
	}{
		{"hnboot_fleet_hosts", dto.MetricType_GAUGE, map[string]string{"state": "ok"}, 1},
		{"hnboot_fleet_hosts", dto.MetricType_GAUGE, map[string]string{"state": "never-seen"}, 4},
		{"hnboot_fleet_hosts", dto.MetricType_GAUGE, map[string]string{"state": "failed"}, 0},
		{"hnboot_fleet_images", dto.MetricType_GAUGE, nil, float64(len(e.f.Images()))},
		{"hnboot_fleet_config_valid", dto.MetricType_GAUGE, nil, 1},
		{"hnboot_fleet_config_reloads_total", dto.MetricType_COUNTER, map[string]string{"result": "ok"}, 0}, // the first load is not a reload
		{"hnboot_boot_events_total", dto.MetricType_COUNTER, map[string]string{"kind": "dhcp"}, 1},
		{"hnboot_boot_events_total", dto.MetricType_COUNTER, map[string]string{"kind": "tftp"}, 0},
		{"hnboot_checkins_total", dto.MetricType_COUNTER, map[string]string{"result": "ok"}, 1},
		{"hnboot_checkins_total", dto.MetricType_COUNTER, map[string]string{"result": "error"}, 0},
		{"hnboot_api_requests_total", dto.MetricType_COUNTER, map[string]string{"code": "401"}, 2},
	} {
		got, ok := sample(fams, tt.name, tt.typ, tt.labels)
		if !ok || got != tt.want {
			t.Errorf("%s%v = %v (found: %v), want %v of type %v", tt.name, tt.labels, got, ok, tt.want, tt.typ)
		}
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes", "promhttp_metric_handler_errors_total"} {
		if fams[name] == nil {
			t.Errorf("GET /metrics lacks %s", name)
		}
	}
}

// sample finds the value of the sample of family name with exactly labels.
func sample(fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, labels map[string]string) (float64, bool) {
	mf := fams[name]
	if mf == nil || mf.GetType() != typ {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch typ {
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), true
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func TestHostState(t *testing.T) {
	for _, c := range []struct {
		name   string
		revert *PendingRevert
		ci     *checkin.Checkin
		want   string
	}{
		{"revert pending", &PendingRevert{ID: "r"}, &checkin.Checkin{Images: checkin.Slots{Current: d12}}, StateRevertPending},
		{"never seen", nil, nil, StateNeverSeen},
		{"desired is broken here", nil, &checkin.Checkin{Images: checkin.Slots{Current: d13, Broken: d12}}, StateFailed},
		{"desired failed before", nil, &checkin.Checkin{Images: checkin.Slots{Current: d13}, FailedDigests: []string{d12}}, StateFailed},
		{"trial", nil, &checkin.Checkin{Trial: true, Images: checkin.Slots{Current: d12}}, StateTrial},
		{"ok", nil, &checkin.Checkin{Images: checkin.Slots{Current: d12}}, StateOK},
		{"ok from booted", nil, &checkin.Checkin{Booted: d12}, StateOK},
		{"staged", nil, &checkin.Checkin{Images: checkin.Slots{Current: d13, New: d12}}, StateStaged},
		{"outdated", nil, &checkin.Checkin{Images: checkin.Slots{Current: d13}}, StateOutdated},
	} {
		if got := hostState(d12, c.revert, c.ci); got != c.want {
			t.Errorf("hostState(%s) = %s, want %s", c.name, got, c.want)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	dir := b.TempDir()
	var sb strings.Builder
	sb.WriteString("images:\n  - {name: base, version: \"1\", digest: " + d12 + ", path: a.img}\nhosts:\n")
	for i := range 1000 {
		fmt.Fprintf(&sb, "  - {mac: \"52:54:00:00:%02x:%02x\", hostname: h%d, image: base@1}\n", i>>8, i&0xff, i)
	}
	os.WriteFile(filepath.Join(dir, "f.yaml"), []byte(sb.String()), 0o644)
	f, err := New(Options{Dir: dir, DB: "sqlite://" + filepath.Join(dir, "s.db"), PollInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	mac := mustMAC("52:54:00:00:01:02")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := f.Lookup(mac); !ok {
				b.Fatal("not found")
			}
		}
	})
}

// GET /api/hosts/{mac}/desired carries what package agent decodes: the
// image with lower-case keys and its size, and the failed digests of the
// host's last check-in (minus the image it runs).
func TestDesiredForAgent(t *testing.T) {
	e := newEnv(t, false)
	os.MkdirAll(filepath.Join(e.dir, "images"), 0o755)
	writeFile(t, filepath.Join(e.dir, "images", "base-1.2.img"), strings.Repeat("x", 12345))
	d9 := "sha256:" + strings.Repeat("9", 64)
	if code, b := e.call(t, "POST", "/api/checkin", "", json.RawMessage(`{"mac":"52:54:00:00:00:10","source":"agent","images":{"current":"`+d12+`"},"failed_digests":["`+d9+`","`+d12+`"]}`)); code != 200 {
		t.Fatalf("POST /api/checkin = %d %s", code, b)
	}
	for _, c := range []struct {
		mac    string
		image  string // the image object, keys sorted
		failed string
	}{
		// web-01: base@1.2, its file in the state directory
		{"52:54:00:00:00:01", `{"digest":"` + d12 + `","name":"base","size":12345,"version":"1.2"}`, ""},
		// db-01: base@1.3, not on this server; it failed d9 and runs d12
		{"52:54:00:00:00:10", `{"digest":"` + d13 + `","name":"base","version":"1.3"}`, d9},
	} {
		code, b := e.call(t, "GET", "/api/hosts/"+c.mac+"/desired", "", nil)
		if code != 200 {
			t.Fatalf("GET desired %s = %d %s", c.mac, code, b)
		}
		var got struct {
			Image         map[string]any  `json:"image"`
			Force         json.RawMessage `json:"force"`
			FailedDigests []string        `json:"failed_digests"`
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if img, _ := json.Marshal(got.Image); string(img) != c.image {
			t.Errorf("GET desired %s image = %s, want %s", c.mac, img, c.image)
		}
		if f := strings.Join(got.FailedDigests, ","); f != c.failed {
			t.Errorf("GET desired %s failed_digests = %q, want %q", c.mac, f, c.failed)
		}
		if got.Force != nil {
			t.Errorf("GET desired %s force = %s, want absent (nothing sets it)", c.mac, got.Force)
		}
	}
}

// The streamed status is the JSON writeJSON would write, byte for byte.
func TestWriteStatusIsWriteJSON(t *testing.T) {
	e := newEnv(t, true)
	e.f.Checkin(mustParse(t, `{"mac":"52:54:00:00:00:01","images":{"current":"`+d12+`"}}`))
	e.f.Checkin(mustParse(t, `{"mac":"52:54:00:99:00:01","hostname":"stray"}`))
	for _, st := range []Status{e.f.Status(), {Dir: "empty"}, {Dir: "no unknown", Hosts: e.f.Status().Hosts[:1]}} {
		a, b := httptest.NewRecorder(), httptest.NewRecorder()
		writeJSON(a, 200, st)
		writeStatus(b, st)
		if a.Body.String() != b.Body.String() {
			t.Errorf("writeStatus =\n%s\nwant (writeJSON)\n%s", b.Body, a.Body)
		}
	}
}
