package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hnboot/hnboot/fleet/rollout"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/simhost"
)

// simEnv is a fleet of n hosts (group sim, image base@1) served by a real
// Fleet over HTTP, for rollouts with simulated hosts.
type simEnv struct {
	dir     string
	digests map[string]string // version → digest
	f       *Fleet
	srv     *httptest.Server
	hosts   []*simhost.Host
}

func macN(i int) string { return fmt.Sprintf("52:54:02:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff) }

func newSimEnv(t *testing.T, n int, dbURL, rollouts string) *simEnv {
	t.Helper()
	e := &simEnv{dir: t.TempDir(), digests: map[string]string{}}
	var b strings.Builder
	b.WriteString("images:\n")
	for _, v := range []string{"1", "2", "3"} {
		p := filepath.Join(e.dir, "base-"+v+".img")
		writeFile(t, p, "image "+v+"\n")
		d, err := digest.File(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.digests[v] = d
		fmt.Fprintf(&b, "  - {name: base, version: %q, digest: %s, path: %s}\n", v, d, p)
	}
	b.WriteString("groups:\n  - {name: sim, image: base@1}\nhosts:\n")
	for i := range n {
		rack := fmt.Sprintf("r%d", i%4)
		fmt.Fprintf(&b, "  - {mac: %q, hostname: h%04d, group: sim, labels: {rack: %s}}\n", macN(i), i, rack)
	}
	b.WriteString(rollouts)
	writeFile(t, filepath.Join(e.dir, "fleet.yaml"), b.String())
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, "alice "+aliceToken+"\n")
	if dbURL == "" {
		dbURL = "sqlite://" + filepath.Join(t.TempDir(), "fleet.db")
	}
	f, err := New(Options{Dir: e.dir, DB: dbURL, TokenFile: tokens, OpenReads: true, PollInterval: -1, RolloutInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e.f = f
	e.srv = httptest.NewServer(f.Handler())
	t.Cleanup(func() { e.srv.Close(); f.Close() })
	return e
}

// run starts the simulated hosts; they stop with the test.
func (e *simEnv) run(t *testing.T, n int, every time.Duration, fail func(i int, digest string) string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	for i := range n {
		h := simhost.New(macN(i), e.srv.URL, e.digests["1"], every)
		h.Client = &http.Client{Transport: tr, Timeout: 20 * time.Second}
		if fail != nil {
			h.Fail = func(d string) string { return fail(i, d) }
		}
		e.hosts = append(e.hosts, h)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the first rounds over one interval.
			time.Sleep(time.Duration(i) * every / time.Duration(n))
			h.Run(ctx)
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func (e *simEnv) action(t *testing.T, name, action string, body any) RolloutStatus {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/api/rollouts/"+name+"/"+action, rd)
	req.Header.Set("Authorization", "Bearer "+aliceToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/rollouts/%s/%s: %s: %s", name, action, resp.Status, out)
	}
	var st RolloutStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func (e *simEnv) status(t *testing.T, name string) RolloutStatus {
	t.Helper()
	st, err := e.f.RolloutStatus(name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (e *simEnv) wait(t *testing.T, name string, d time.Duration, cond func(RolloutStatus) bool) RolloutStatus {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := e.status(t, name)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s after %v: %s (%s), waves %+v", name, d, st.State, st.Reason, st.Waves)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *simEnv) audit(t *testing.T, action string) []AuditEntry {
	es, err := e.f.QueryAudit(AuditQuery{Action: action}, "")
	if err != nil {
		t.Fatal(err)
	}
	return es
}

const fourWaves = `rollouts:
  - name: to-2
    image: base@2
    group: sim
    waves:
      - hosts: [h0007]
      - percent: 10
      - percent: 50
      - percent: 100
    failure_threshold: 5%
    revert_on_halt: true
  - name: to-3
    image: base@3
    group: sim
    waves:
      - count: 10
      - percent: 25
      - percent: 60
      - percent: 100
    failure_threshold: 5%
    revert_on_halt: true
`

// 1,000 simulated agents speaking the real HTTP API converge through a
// four-wave rollout; then a second rollout, in whose third wave 40 hosts
// revert the image, halts there, reverts the hosts it moved, and never
// starts its last wave.
func TestRolloutThousandSimulatedHosts(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 200
	}
	e := newSimEnv(t, n, "", fourWaves)
	d2, d3 := e.digests["2"], e.digests["3"]
	// Hosts whose position puts them in to-3's third wave fail it.
	plan := e.f.snap.Load().autos["to-3"].spec.Plan(e.f.snap.Load().autos["to-3"].target)
	bad := map[string]bool{}
	for mac, w := range plan {
		if w == 2 && len(bad) < n/25 {
			bad[mac] = true
		}
	}
	e.run(t, n, 300*time.Millisecond, func(i int, d string) string {
		if d == d3 && bad[macN(i)] {
			return simhost.Reverts
		}
		return simhost.Healthy
	})
	start := time.Now()
	st := e.action(t, "to-2", ActionStart, nil)
	if st.State != rollout.Running || st.Wave != 1 {
		t.Fatalf("after start: %s wave %d", st.State, st.Wave)
	}
	st = e.wait(t, "to-2", 3*time.Minute, func(st RolloutStatus) bool { return st.State == rollout.Done })
	t.Logf("rollout to-2: %d hosts through 4 waves in %v: %s", n, time.Since(start).Round(time.Millisecond), st.Reason)
	for _, h := range e.hosts {
		if cur, trial := h.Current(); cur != d2 || trial {
			t.Fatalf("host %s runs %s (trial %v) after to-2 is done", h.MAC, cur, trial)
		}
		if h.Boots() != 1 {
			t.Errorf("host %s rebooted %d times, want once", h.MAC, h.Boots())
		}
	}
	for _, w := range st.Waves {
		if w.Count[rollout.HostConfirmed] != w.Hosts || w.State != "passed" {
			t.Errorf("wave %+v: want every host confirmed and the wave passed", w)
		}
	}
	if st.Waves[0].Hosts != 1 || st.Hosts[0].Host != "h0007" {
		t.Errorf("canary wave %+v (first host %+v), want h0007 alone", st.Waves[0], st.Hosts[0])
	}
	// The waves started one after the other, each after the last passed.
	for i := 1; i < 4; i++ {
		if st.Waves[i].Started.Before(st.Waves[i-1].Passed) {
			t.Errorf("wave %d started %v, before wave %d passed %v", i+1, st.Waves[i].Started, i, st.Waves[i-1].Passed)
		}
	}
	// Every host's desired answer followed the rollout.
	if dh, _ := e.f.DesiredFor(mustMAC(macN(3))); dh.Image.Digest != d2 || !strings.Contains(dh.Source, "rollout to-2, wave") {
		t.Errorf("desired of %s after to-2: %s (%s)", macN(3), dh.Image.Digest, dh.Source)
	}
	hostEvents := len(e.audit(t, "rollout-host"))
	if hostEvents < 3*n {
		t.Errorf("%d host transitions audited, want at least 3 per host (staging, rebooting or trial, confirmed)", hostEvents)
	}

	// to-3: its third wave fails.
	start = time.Now()
	e.action(t, "to-3", ActionStart, nil)
	st = e.wait(t, "to-3", 3*time.Minute, func(st RolloutStatus) bool { return st.State == rollout.Halted || st.State == rollout.Done })
	t.Logf("rollout to-3 halted after %v: %s", time.Since(start).Round(time.Millisecond), st.Reason)
	if st.State != rollout.Halted || !strings.Contains(st.Reason, "wave 3:") {
		t.Fatalf("to-3 is %s (%s), want halted in wave 3", st.State, st.Reason)
	}
	if !st.Waves[3].Started.IsZero() {
		t.Errorf("the fourth wave started after the third halted")
	}
	if st.Waves[3].Count[rollout.HostPending] != st.Waves[3].Hosts {
		t.Errorf("fourth wave: %v, want all pending", st.Waves[3].Count)
	}
	// Every host the rollout moved is back on base@2 (reverted, or never
	// booted 3), within a few rounds.
	waitFor(t, time.Minute, "the moved hosts back on base@2", func() bool {
		for _, h := range e.hosts {
			if cur, _ := h.Current(); cur != d2 {
				return false
			}
		}
		return true
	})
	halts := e.audit(t, "rollout-halt")
	if len(halts) != 1 || halts[0].Who != "rollout:to-3" {
		t.Errorf("halt audit %+v, want one entry by rollout:to-3", halts)
	}
	reverted := 0
	for _, ae := range e.audit(t, "rollout-host") {
		if ae.Target == "rollout to-3" && strings.Contains(ae.Detail, "-> reverted") && strings.Contains(ae.Detail, "revert r") {
			reverted++
		}
	}
	if want := st.Waves[0].Hosts + st.Waves[1].Hosts; reverted < want {
		t.Errorf("%d hosts reverted by the halt, want at least the %d of the two waves that passed", reverted, want)
	}
}

// Two servers step the same rollout at once (a leader handover, or a
// lock that two believe they hold): the compare-and-set on the stored
// version lets one step through per version, so no host is moved twice
// and no transition is audited twice. On PostgreSQL, the backend of
// several servers (SQLite serializes its writers and has one server).
func TestRolloutTwoServersRace(t *testing.T) {
	func(t *testing.T, dbURL string) {
		const n = 30
		rollouts := `rollouts:
  - name: race
    image: base@2
    group: sim
    waves: [{count: 5}, {percent: 100}]
`
		a := newSimEnv(t, n, dbURL, rollouts)
		tokens := filepath.Join(t.TempDir(), "tokens")
		writeFile(t, tokens, "alice "+aliceToken+"\n")
		b, err := New(Options{Dir: a.dir, DB: dbURL, TokenFile: tokens, PollInterval: -1, RolloutInterval: time.Hour,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		a.run(t, n, 100*time.Millisecond, nil)
		a.action(t, "race", ActionStart, nil)
		conflicts := 0
		var mu sync.Mutex
		deadline := time.Now().Add(90 * time.Second)
		for a.status(t, "race").State != rollout.Done && time.Now().Before(deadline) {
			// Both servers load their state, then step at the same moment:
			// without the barrier a loaded machine runs one goroutine to
			// the end before the other starts, and nothing races.
			var wg, ready sync.WaitGroup
			start := make(chan struct{})
			for _, f := range []*Fleet{a.f, b} {
				wg.Add(1)
				ready.Add(1)
				go func() {
					defer wg.Done()
					s := f.snap.Load()
					ready.Done()
					<-start
					_, err := f.stepRollout(context.Background(), s, s.autos["race"])
					if errors.Is(err, ErrConflict) {
						mu.Lock()
						conflicts++
						mu.Unlock()
					} else if err != nil && !errors.Is(err, ErrDatabase) {
						t.Error(err)
					}
				}()
			}
			ready.Wait()
			close(start)
			wg.Wait()
			time.Sleep(20 * time.Millisecond)
		}
		st := a.status(t, "race")
		if st.State != rollout.Done {
			t.Fatalf("race: %s (%s)", st.State, st.Reason)
		}
		seen := map[string]int{}
		for _, e := range a.audit(t, "rollout-host") {
			if strings.Contains(e.Detail, "pending -> staging") {
				seen[e.MAC]++
			}
		}
		for mac, k := range seen {
			if k != 1 {
				t.Errorf("%s moved %d times", mac, k)
			}
		}
		if len(seen) != n {
			t.Errorf("%d hosts moved, want %d", len(seen), n)
		}
		if conflicts == 0 {
			t.Errorf("no step was refused: the servers did not race")
		}
		t.Logf("%d conflicting steps refused", conflicts)
	}(t, postgresURL(t))
}
