package fleet

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/pgtest"
	"github.com/hnboot/hnboot/pxe"
)

// waitFor polls cond for up to d and reports how long it took.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// Two servers (each with its own copy of the fleet directory, as on two
// machines) share one PostgreSQL: what an admin does on one reaches the
// other's precomputed boot answers within a second, without a poll, and a
// host's check-in through one shows in the other's status.
func TestTwoServersOneFleet(t *testing.T) {
	dbURL := postgresURL(t)
	slow := func(o *Options) { o.RefreshInterval = time.Hour } // only notifications may refresh
	a := newEnvDB(t, false, dbURL, slow)
	b := newEnvDB(t, false, dbURL, slow)
	web01, db01 := mustMAC("52:54:00:00:00:01"), mustMAC("52:54:00:00:00:10")

	if code, body := a.call(t, "POST", "/api/assign", aliceToken, map[string]string{"host": "web-01", "image": "base@1.3"}); code != 200 {
		t.Fatalf("assign on server A: %d %s", code, body)
	}
	took := waitFor(t, time.Second, "server B answers web-01 with base@1.3 after the assign on A", func() bool {
		hb, _ := b.f.Lookup(web01)
		return hb.Image.Digest == d13
	})
	t.Logf("assign on A reached B's boot answers in %v", took)

	// db-01 checks in through A; B's status shows it.
	if code, body := a.call(t, "POST", "/api/checkin", "", json.RawMessage(`{"mac":"52:54:00:00:00:10","source":"init","booted":"`+d13+`","images":{"current":"`+d13+`","old":"`+d12+`"}}`)); code != 200 {
		t.Fatalf("check-in through A: %d %s", code, body)
	}
	if st := b.f.Status(); st.Hosts[4].LastCheckin == nil || st.Hosts[4].State != StateOK {
		t.Errorf("B's status of db-01 after its check-in through A: %+v, want ok with the check-in", st.Hosts[4])
	}
	// The red button on B uses that check-in (pins the old image) and
	// reaches A's answers.
	code, body := b.call(t, "POST", "/api/revert", bobToken, map[string]string{"host": "db-01"})
	var res []RevertResult
	if code != 200 || json.Unmarshal(body, &res) != nil || len(res) != 1 || res[0].PinnedTo != "base@1.2" {
		t.Fatalf("revert on B: %d %s, want db-01 pinned to base@1.2", code, body)
	}
	took = waitFor(t, time.Second, "server A sends hn.revert after the revert on B", func() bool {
		hb, _ := a.f.Lookup(db01)
		return hb.Cmdline == "hn.revert="+res[0].ID && hb.Image.Digest == d12
	})
	t.Logf("revert on B reached A's boot answers in %v", took)
	// The host applies it, reporting through A; B stops sending it.
	if code, body := a.call(t, "POST", "/api/checkin", "", json.RawMessage(`{"mac":"52:54:00:00:00:10","source":"init","booted":"`+d12+`","revert_applied":"`+res[0].ID+`","images":{"current":"`+d12+`","broken":"`+d13+`"}}`)); code != 200 {
		t.Fatalf("check-in through A: %d %s", code, body)
	}
	waitFor(t, time.Second, "server B stops sending hn.revert once the host reported it through A", func() bool {
		hb, _ := b.f.Lookup(db01)
		return hb.Cmdline == ""
	})
	// Both tell the same story.
	sa, sb := a.f.Status(), b.f.Status()
	for i := range sa.Hosts {
		if sa.Hosts[i].State != sb.Hosts[i].State || sa.Hosts[i].Desired != sb.Hosts[i].Desired {
			t.Errorf("host %s: A says %s/%s, B says %s/%s", sa.Hosts[i].Hostname, sa.Hosts[i].State, sa.Hosts[i].Desired.Ref, sb.Hosts[i].State, sb.Hosts[i].Desired.Ref)
		}
	}
	var actions []string
	for _, e := range a.f.Audit(0) {
		actions = append(actions, e.Who+" "+e.Action)
	}
	if got, want := strings.Join(actions, "; "), "alice assign; bob revert; host:52:54:00:00:00:10 revert-applied"; got != want {
		t.Errorf("audit on A = %q, want %q", got, want)
	}
	why, err := b.f.Why("db-01", 0)
	if err != nil || len(why.Boots) == 0 || !strings.Contains(why.Text, "applied revert "+res[0].ID) {
		t.Errorf("B's why db-01 (boots seen by A) = %v\n%s", err, why.Text)
	}
}

// Work that must happen once runs on one server; when it goes the other
// takes over.
func TestLeaderMoves(t *testing.T) {
	dbURL := postgresURL(t)
	fast := func(o *Options) { o.LeaderRetry = 50 * time.Millisecond }
	a := newEnvDB(t, false, dbURL, fast)
	b := newEnvDB(t, false, dbURL, fast)
	waitFor(t, 2*time.Second, "one leader", func() bool { return a.f.IsLeader() || b.f.IsLeader() })
	time.Sleep(200 * time.Millisecond)
	if a.f.IsLeader() == b.f.IsLeader() {
		t.Fatalf("leaders: A %v, B %v, want exactly one", a.f.IsLeader(), b.f.IsLeader())
	}
	leader, other := a, b
	if b.f.IsLeader() {
		leader, other = b, a
	}
	if st := leader.f.Status(); !st.Database.Leader || st.Database.Backend != "postgres" {
		t.Errorf("leader's status database = %+v", st.Database)
	}
	leader.srv.Close()
	leader.f.Close()
	took := waitFor(t, 2*time.Second, "the other server takes the leader lock", other.f.IsLeader)
	t.Logf("leader lock moved in %v", took)
}

// Retention runs on the leader: the ledger keeps --keep-boots per MAC.
func TestRetentionOnLeader(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		e := newEnvDB(t, false, dbURL, func(o *Options) {
			o.KeepBoots, o.KeepAudit, o.PruneInterval, o.LeaderRetry = 2, time.Hour, 20*time.Millisecond, 20*time.Millisecond
		})
		mustUpdate(t, e.f.store, func(tx Tx) error {
			for i := range 5 {
				if err := tx.PutBoot(&Boot{MAC: "52:54:00:00:00:01", Start: time.Now().Add(time.Duration(i-10) * time.Minute)}); err != nil {
					return err
				}
			}
			if err := tx.AppendAudit(AuditEntry{Time: time.Now().Add(-2 * time.Hour), Who: "old", Action: "assign"}); err != nil {
				return err
			}
			return tx.AppendAudit(AuditEntry{Time: time.Now(), Who: "new", Action: "assign"})
		})
		waitFor(t, 3*time.Second, "retention on the leader", func() bool {
			var n int
			view(t, e.f.store, func(tx Tx) error {
				bs, err := tx.ListBoots("52:54:00:00:00:01", 0)
				n = len(bs)
				return err
			})
			au := e.f.Audit(0)
			return n == 2 && len(au) == 1 && au[0].Who == "new"
		})
	})
}

// With the database away: boot answers go on from memory (YAML reloads
// too), check-ins are refused with 503 and Retry-After so hosts keep and
// resend them, and admin calls fail saying why. A check-in that arrives
// during a short outage waits for the database and is acknowledged once
// stored. When the database is back, everything works again.
func TestDatabaseDown(t *testing.T) {
	cl := pgtest.T(t)
	dbURL, err := cl.NewDatabase()
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvDB(t, false, dbURL, func(o *Options) { o.CheckinWait = 300 * time.Millisecond })
	h := pxe.NewHTTPHandler(pxe.HTTPConfig{}, e.f, pxe.NewExtractor(t.TempDir()), nil, e.f, e.f.Checkin, e.f.Handler(), slog.New(slog.DiscardHandler), nil)
	boot := httptest.NewServer(h)
	defer boot.Close()
	db01 := mustMAC("52:54:00:00:00:10")
	ci := `{"mac":"52:54:00:00:00:10","source":"init","booted":"` + d13 + `","images":{"current":"` + d13 + `","old":"` + d12 + `"}}`
	if code, b := e.call(t, "POST", "/api/checkin", "", json.RawMessage(ci)); code != 200 {
		t.Fatalf("check-in: %d %s", code, b)
	}
	code, b := e.call(t, "POST", "/api/revert", aliceToken, map[string]string{"host": "db-01"})
	var res []RevertResult
	if code != 200 || json.Unmarshal(b, &res) != nil || len(res) != 1 {
		t.Fatalf("revert: %d %s", code, b)
	}

	if err := cl.StopServer(); err != nil {
		t.Fatal(err)
	}
	if hb, ok := e.f.Lookup(db01); !ok || hb.Cmdline != "hn.revert="+res[0].ID || hb.Image.Digest != d12 {
		t.Errorf("Lookup(db-01) with the database down = %+v, %v, want the pending revert from memory", hb, ok)
	}
	writeFile(t, filepath.Join(e.dir, "extra.yaml"), "hosts:\n  - mac: 52:54:00:00:00:20\n    hostname: web-20\n    group: web\n")
	if err := e.f.Reload(); err != nil {
		t.Fatalf("Reload with the database down = %v", err)
	}
	if hb, ok := e.f.Lookup(mustMAC("52:54:00:00:00:20")); !ok || hb.Image.Digest != d12 {
		t.Errorf("a host added to the YAML while the database is down: Lookup = %+v, %v", hb, ok)
	}
	if hb, _ := e.f.Lookup(db01); hb.Cmdline != "hn.revert="+res[0].ID {
		t.Errorf("after the reload the pending revert is gone from the answers: %+v", hb)
	}
	if code, b := e.call(t, "GET", "/api/hosts/52:54:00:00:00:10/desired", "", nil); code != 200 || !strings.Contains(string(b), res[0].ID) {
		t.Errorf("GET desired with the database down = %d %s, want 200 with the revert", code, b)
	}
	// Check-ins: refused, not lost.
	for _, path := range []string{"/checkin", "/api/checkin"} {
		start := time.Now()
		resp, err := http.Post(boot.URL+path, "application/json", strings.NewReader(ci))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("POST %s with the database down = %s (Retry-After %q), want 503 with Retry-After", path, resp.Status, resp.Header.Get("Retry-After"))
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("POST %s took %v to refuse, want about CheckinWait", path, d)
		}
	}
	if err := e.f.Checkin(mustParse(t, ci)); !errors.Is(err, ErrDatabase) || !errors.Is(err, pxe.ErrRetryLater) {
		t.Errorf("Checkin with the database down = %v, want an ErrDatabase (a pxe.ErrRetryLater)", err)
	}
	// Admin calls: a clear error, nothing half done.
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/api/assign", `{"host":"web-01","image":"base@1.3"}`},
		{"POST", "/api/revert", `{"host":"web-01"}`},
		{"POST", "/api/rollout", `{"name":"r","image":"base@1.3","group":"web","percent":10}`},
		{"POST", "/api/reload", ""},
		{"GET", "/api/status", ""},
		{"GET", "/api/audit", ""},
		{"GET", "/api/hosts/web-01/why", ""},
	} {
		var body any
		if c.body != "" {
			body = json.RawMessage(c.body)
		}
		code, b := e.call(t, c.method, c.path, aliceToken, body)
		if code != http.StatusServiceUnavailable || !strings.Contains(string(b), "fleet database") {
			t.Errorf("%s %s with the database down = %d %s, want 503 naming the database", c.method, c.path, code, b)
		}
	}
	if hb, _ := e.f.Lookup(mustMAC("52:54:00:00:00:01")); hb.Image.Digest != d12 {
		t.Errorf("the refused assign changed web-01's answer: %+v", hb)
	}

	// A short outage: the check-in waits and is stored once the database
	// is back.
	e.f.opts.CheckinWait = 20 * time.Second
	done := make(chan int, 1)
	go func() {
		resp, err := http.Post(boot.URL+"/checkin", "application/json", strings.NewReader(`{"mac":"52:54:00:00:00:01","source":"init","booted":"`+d12+`","images":{"current":"`+d12+`"}}`))
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	time.Sleep(300 * time.Millisecond)
	if err := cl.StartServer(); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != http.StatusNoContent {
		t.Errorf("check-in during a short outage = %d, want 204 once the database is back", code)
	}
	st, err := e.f.status()
	for _, h := range st.Hosts {
		if h.Hostname == "web-01" && (err != nil || h.LastCheckin == nil || h.State != StateOK) {
			t.Errorf("status after the outage = %v, web-01 %+v; want its check-in stored", err, h)
		}
	}
	if code, b := e.call(t, "POST", "/api/assign", aliceToken, map[string]string{"host": "web-01", "image": "base@1.3"}); code != 200 {
		t.Errorf("assign after the outage = %d %s", code, b)
	}
	if hb, _ := e.f.Lookup(mustMAC("52:54:00:00:00:01")); hb.Image.Digest != d13 {
		t.Errorf("assign after the outage not answered: %+v", hb)
	}
	os.Remove(filepath.Join(e.dir, "extra.yaml"))
}
