package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/pgtest"
)

// One private PostgreSQL cluster serves the package's tests (initdb costs
// seconds); each test gets a database of its own on it.
var (
	pgOnce    sync.Once
	pgCluster *pgtest.Cluster
	pgErr     error
	pgDir     string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pgCluster != nil {
		pgCluster.Stop()
	}
	if pgDir != "" {
		os.RemoveAll(pgDir)
	}
	os.Exit(code)
}

func testCluster(t testing.TB) *pgtest.Cluster {
	t.Helper()
	pgOnce.Do(func() {
		if pgDir, pgErr = os.MkdirTemp("", "hnboot-fleet-pg-"); pgErr == nil {
			pgCluster, pgErr = pgtest.Start(pgDir, pgtest.Options{})
		}
	})
	if pgErr != nil {
		t.Fatalf("PostgreSQL for the tests: %v", pgErr)
	}
	return pgCluster
}

func postgresURL(t testing.TB) string {
	t.Helper()
	u, err := testCluster(t).NewDatabase()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func sqliteURL(t testing.TB) string {
	return "sqlite://" + filepath.Join(t.TempDir(), "fleet.db")
}

// backends is the table every storage test runs over.
var backends = []struct {
	name string
	url  func(testing.TB) string
}{
	{"sqlite", sqliteURL},
	{"postgres", postgresURL},
}

func forBackends(t *testing.T, fn func(t *testing.T, dbURL string)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { fn(t, b.url(t)) })
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openTestStore(t *testing.T, dbURL string) Store {
	t.Helper()
	s, err := OpenStore(context.Background(), dbURL, quiet)
	if err != nil {
		t.Fatalf("OpenStore(%s) = %v", dbURL, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustUpdate(t *testing.T, s Store, fn func(Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

func view(t *testing.T, s Store, fn func(Tx) error) {
	t.Helper()
	if err := s.View(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

var t0 = time.Date(2026, 5, 6, 7, 8, 9, 123456789, time.UTC)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

// Every kind of record goes in, survives a reopen and comes back out.
func TestStoreRoundTrip(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		s := openTestStore(t, dbURL)
		obs := &Observed{Checkin: checkin.Checkin{MAC: "52:54:00:00:00:01", Source: "init", Booted: d12, Images: checkin.Slots{Current: d12, Old: d13}, FailedDigests: []string{d13}}, Time: at(0)}
		mustUpdate(t, s, func(tx Tx) error {
			if err := tx.PutObserved(&Observed{Checkin: checkin.Checkin{MAC: obs.MAC}, Time: at(-10)}); err != nil {
				return err
			}
			if err := tx.PutObserved(obs); err != nil { // replaces
				return err
			}
			if err := tx.PutObserved(&Observed{Checkin: checkin.Checkin{MAC: "52:54:00:00:00:02", Source: "agent"}, Time: at(1)}); err != nil {
				return err
			}
			for i := range 5 {
				b := &Boot{MAC: obs.MAC, Start: at(i * 100), Events: []LedgerEvent{{Time: at(i * 100), Kind: "dhcp", Detail: "boot"}}}
				if i == 4 {
					b.Checkin = obs
				}
				if err := tx.PutBoot(b); err != nil {
					return err
				}
			}
			if err := tx.PutOverride(OverrideHost, obs.MAC, Override{Image: "base@1.3", By: "alice", Time: at(2)}); err != nil {
				return err
			}
			if err := tx.PutOverride(OverrideGroup, "web", Override{Image: "base@1.2", By: "bob", Time: at(3), Note: "n"}); err != nil {
				return err
			}
			if err := tx.PutRevert(obs.MAC, PendingRevert{ID: "r1", By: "alice", Time: at(4)}); err != nil {
				return err
			}
			if err := tx.PutRollout(APIRollout{Rollout: Rollout{Name: "web-1.3", Image: "base@1.3", Group: "web", Percent: 20}, By: "alice", Time: at(5)}); err != nil {
				return err
			}
			if err := tx.PutRolloutHost(RolloutHost{Rollout: "web-1.3", MAC: obs.MAC, Wave: 1, State: "trial", Reason: "booted", Updated: at(6)}); err != nil {
				return err
			}
			return tx.AppendAudit(AuditEntry{Time: at(7), Who: "alice", Action: "assign", Target: "host web-01", Host: "web-01", MAC: obs.MAC, Detail: "image base@1.3", Remote: "192.0.2.1:1"})
		})
		s.Close()
		s = openTestStore(t, dbURL)
		view(t, s, func(tx Tx) error {
			got, err := tx.GetObserved(obs.MAC)
			if err != nil || got == nil || !reflect.DeepEqual(got.Checkin, obs.Checkin) || !got.Time.Equal(obs.Time) {
				t.Errorf("GetObserved = %+v, %v, want %+v", got, err, obs)
			}
			if got, err := tx.GetObserved("52:54:00:00:00:99"); got != nil || err != nil {
				t.Errorf("GetObserved(absent) = %+v, %v, want nil, nil", got, err)
			}
			if all, err := tx.ListObserved(); err != nil || len(all) != 2 || all[1].Source != "agent" {
				t.Errorf("ListObserved = %d, %v, want 2 sorted by MAC", len(all), err)
			}
			bs, err := tx.ListBoots(obs.MAC, 3)
			if err != nil || len(bs) != 3 || !bs[0].Start.Equal(at(200)) || bs[2].Checkin == nil || bs[2].Checkin.Booted != d12 {
				t.Errorf("ListBoots(3) = %+v, %v, want the last 3 oldest first, the last checked in", bs, err)
			}
			ho, _ := tx.ListOverrides(OverrideHost)
			go2, _ := tx.ListOverrides(OverrideGroup)
			if ho[obs.MAC].Image != "base@1.3" || len(ho) != 1 || go2["web"].Note != "n" || !go2["web"].Time.Equal(at(3)) {
				t.Errorf("overrides = %+v, %+v", ho, go2)
			}
			rv, _ := tx.ListReverts()
			if rv[obs.MAC].ID != "r1" {
				t.Errorf("reverts = %+v", rv)
			}
			ro, _ := tx.ListRollouts()
			if len(ro) != 1 || ro[0].Percent != 20 || ro[0].By != "alice" {
				t.Errorf("rollouts = %+v", ro)
			}
			rh, _ := tx.ListRolloutHosts("web-1.3")
			if len(rh) != 1 || rh[0].State != "trial" || !rh[0].Updated.Equal(at(6)) {
				t.Errorf("rollout hosts = %+v", rh)
			}
			au, _ := tx.QueryAudit(AuditQuery{})
			if len(au) != 1 || au[0].Host != "web-01" || au[0].Remote != "192.0.2.1:1" || !au[0].Time.Equal(at(7)) {
				t.Errorf("audit = %+v", au)
			}
			return nil
		})
		mustUpdate(t, s, func(tx Tx) error {
			if ok, err := tx.DeleteRevert(obs.MAC, "r0"); ok || err != nil {
				t.Errorf("DeleteRevert(other ID) = %v, %v, want false: a newer revert stays", ok, err)
			}
			if ok, err := tx.DeleteRevert(obs.MAC, "r1"); !ok || err != nil {
				t.Errorf("DeleteRevert(its ID) = %v, %v, want true", ok, err)
			}
			if err := tx.DeleteOverride(OverrideGroup, "web"); err != nil {
				return err
			}
			if err := tx.DeleteOverride(OverrideGroup, "nope"); err != nil {
				return err
			}
			return tx.DeleteRollout("web-1.3")
		})
		view(t, s, func(tx Tx) error {
			rv, _ := tx.ListReverts()
			gov, _ := tx.ListOverrides(OverrideGroup)
			ro, _ := tx.ListRollouts()
			if len(rv)+len(gov)+len(ro) != 0 {
				t.Errorf("after the deletes: reverts %v, group overrides %v, rollouts %v; want none", rv, gov, ro)
			}
			return nil
		})
	})
}

// Rollout progress is compare-and-set: two leaders (a lock handover with a
// slow old leader) cannot both advance a rollout.
func TestStoreRolloutProgressConflict(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		s := openTestStore(t, dbURL)
		put := func(p RolloutProgress) (int64, error) {
			var v int64
			err := s.Update(context.Background(), func(tx Tx) error {
				var err error
				v, err = tx.PutRolloutProgress(p)
				return err
			})
			return v, err
		}
		v, err := put(RolloutProgress{Name: "r", State: "running", Wave: 0, Data: json.RawMessage(`{"canary":["a"]}`), Updated: at(0)})
		if err != nil || v != 1 {
			t.Fatalf("first PutRolloutProgress = %d, %v, want 1", v, err)
		}
		if _, err := put(RolloutProgress{Name: "r", State: "running"}); !errors.Is(err, ErrConflict) {
			t.Errorf("second create = %v, want ErrConflict", err)
		}
		if v, err = put(RolloutProgress{Name: "r", State: "running", Wave: 1, Updated: at(1), Version: 1}); err != nil || v != 2 {
			t.Errorf("advance from version 1 = %d, %v, want 2", v, err)
		}
		if _, err := put(RolloutProgress{Name: "r", State: "halted", Version: 1}); !errors.Is(err, ErrConflict) {
			t.Errorf("advance from a stale version = %v, want ErrConflict", err)
		}
		view(t, s, func(tx Tx) error {
			p, err := tx.GetRolloutProgress("r")
			if err != nil || p == nil || p.Wave != 1 || p.Version != 2 || p.Data != nil || !p.Updated.Equal(at(1)) {
				t.Errorf("GetRolloutProgress = %+v, %v, want wave 1 version 2", p, err)
			}
			all, _ := tx.ListRolloutProgress()
			if len(all) != 1 {
				t.Errorf("ListRolloutProgress = %+v", all)
			}
			return nil
		})
	})
}

func TestStoreAuditQuery(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		s := openTestStore(t, dbURL)
		entries := []AuditEntry{
			{Time: at(0), Who: "alice", Action: "assign", Target: "host web-01", Host: "web-01", MAC: "52:54:00:00:00:01"},
			{Time: at(10), Who: "bob", Action: "revert", Target: "web-01 52:54:00:00:00:01", Host: "web-01", MAC: "52:54:00:00:00:01"},
			{Time: at(20), Who: "alice", Action: "rollout", Target: "rollout r"},
			{Time: at(30), Who: "host:52:54:00:00:00:01", Action: "revert-applied", Target: "52:54:00:00:00:01", MAC: "52:54:00:00:00:01"},
			{Time: at(30), Who: "alice", Action: "assign", Target: "group db"}, // same time: insertion order
		}
		mustUpdate(t, s, func(tx Tx) error {
			for _, e := range entries {
				if err := tx.AppendAudit(e); err != nil {
					return err
				}
			}
			return nil
		})
		for _, c := range []struct {
			name string
			q    AuditQuery
			want string // actions, oldest first
		}{
			{"all", AuditQuery{}, "assign revert rollout revert-applied assign"},
			{"since", AuditQuery{Since: at(10)}, "revert rollout revert-applied assign"},
			{"until", AuditQuery{Until: at(20)}, "assign revert"},
			{"range", AuditQuery{Since: at(5), Until: at(25)}, "revert rollout"},
			{"who", AuditQuery{Who: "alice"}, "assign rollout assign"},
			{"action", AuditQuery{Action: "assign"}, "assign assign"},
			{"host by name", AuditQuery{Hosts: []string{"web-01"}}, "assign revert"},
			{"host by name or MAC", AuditQuery{Hosts: []string{"web-01", "52:54:00:00:00:01"}}, "assign revert revert-applied"},
			{"who and host", AuditQuery{Who: "bob", Hosts: []string{"52:54:00:00:00:01"}}, "revert"},
			{"last 2", AuditQuery{Limit: 2}, "revert-applied assign"},
			{"none", AuditQuery{Who: "carol"}, ""},
		} {
			view(t, s, func(tx Tx) error {
				es, err := tx.QueryAudit(c.q)
				var got []string
				for _, e := range es {
					got = append(got, e.Action)
				}
				if err != nil || strings.Join(got, " ") != c.want {
					t.Errorf("QueryAudit(%s) = %q, %v, want %q", c.name, got, err, c.want)
				}
				return nil
			})
		}
	})
}

func TestStoreRetention(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		s := openTestStore(t, dbURL)
		mustUpdate(t, s, func(tx Tx) error {
			for _, mac := range []string{"52:54:00:00:00:01", "52:54:00:00:00:02"} {
				for i := range 6 {
					if err := tx.PutBoot(&Boot{MAC: mac, Start: at(i)}); err != nil {
						return err
					}
				}
			}
			for i := range 4 {
				if err := tx.AppendAudit(AuditEntry{Time: at(i * 100), Who: "a", Action: "x"}); err != nil {
					return err
				}
			}
			return nil
		})
		var boots, audit int64
		mustUpdate(t, s, func(tx Tx) error {
			var err error
			if boots, err = tx.PruneBoots(4); err != nil {
				return err
			}
			audit, err = tx.PruneAudit(at(150))
			return err
		})
		if boots != 4 || audit != 2 {
			t.Errorf("pruned %d boots and %d audit entries, want 4 (2 per MAC) and 2", boots, audit)
		}
		view(t, s, func(tx Tx) error {
			bs, _ := tx.ListBoots("52:54:00:00:00:02", 0)
			if len(bs) != 4 || !bs[0].Start.Equal(at(2)) {
				t.Errorf("boots left = %+v, want the last 4", bs)
			}
			es, _ := tx.QueryAudit(AuditQuery{})
			if len(es) != 2 || !es[0].Time.Equal(at(200)) {
				t.Errorf("audit left = %+v, want the 2 newest", es)
			}
			return nil
		})
	})
}

// A database migrated by a newer imaged is refused, with what to do.
func TestStoreRefusesNewerSchema(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		s := openTestStore(t, dbURL)
		c := s.(interface{ core() *sqlCore }).core()
		if _, err := c.w.Exec(`INSERT INTO schema_version (version, applied_ns, applied_by) VALUES (999, 0, 'imaged from the future')`); err != nil {
			t.Fatal(err)
		}
		s.Close()
		_, err := OpenStore(context.Background(), dbURL, quiet)
		if err == nil || !strings.Contains(err.Error(), "schema version 999, newer than this imaged knows ("+strconv.Itoa(SchemaVersion())+")") || !strings.Contains(err.Error(), "backup") {
			t.Errorf("OpenStore(newer schema) = %v, want a refusal naming both versions and the way out", err)
		}
	})
}

// Changes reach subscribers after the commit, a rolled-back transaction
// announces nothing; with PostgreSQL a second store (another server) on
// the same database hears them too.
func TestStoreNotifies(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		a := openTestStore(t, dbURL)
		var other Store
		if a.Backend() == "postgres" {
			other = openTestStore(t, dbURL)
		}
		type got struct {
			who string
			c   Change
		}
		ch := make(chan got, 16)
		defer a.Subscribe(func(c Change) { ch <- got{"local", c} })()
		if other != nil {
			defer other.Subscribe(func(c Change) { ch <- got{"other", c} })()
		}
		s := a
		s.Update(context.Background(), func(tx Tx) error {
			tx.Changed(ChangeRevert, "52:54:00:00:00:99")
			return errors.New("rolled back")
		})
		start := time.Now()
		mustUpdate(t, s, func(tx Tx) error {
			if err := tx.PutRevert("52:54:00:00:00:01", PendingRevert{ID: "r"}); err != nil {
				return err
			}
			tx.Changed(ChangeRevert, "52:54:00:00:00:01")
			tx.Changed(ChangeRevert, "52:54:00:00:00:01", "52:54:00:00:00:02")
			return nil
		})
		want := map[string]bool{"local": true}
		if other != nil {
			want["other"] = true
		}
		for len(want) > 0 {
			select {
			case g := <-ch:
				if g.c.Kind != ChangeRevert || strings.Join(g.c.Keys, ",") != "52:54:00:00:00:01,52:54:00:00:00:02" || g.c.Local != (g.who == "local") {
					t.Errorf("%s subscriber got %+v, want one revert change of both MACs", g.who, g.c)
				}
				delete(want, g.who)
				t.Logf("%s subscriber notified after %v", g.who, time.Since(start))
			case <-time.After(time.Second):
				t.Fatalf("no notification within 1 s for %v", want)
			}
		}
		select {
		case g := <-ch:
			t.Errorf("extra notification %+v (a rolled-back transaction must announce nothing)", g)
		case <-time.After(200 * time.Millisecond):
		}
	})
}

// The leader lock is held by one store at a time and moves on release and
// when the holder's connection dies.
func TestStoreLeaderLock(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		a, b := openTestStore(t, dbURL), openTestStore(t, dbURL)
		ctx := context.Background()
		la, err := a.TryLock(ctx, "maintenance")
		if err != nil || la == nil {
			t.Fatalf("a.TryLock = %v, %v, want the lock", la, err)
		}
		if lb, err := b.TryLock(ctx, "maintenance"); lb != nil || err != nil {
			t.Fatalf("b.TryLock while a holds it = %v, %v, want nil, nil", lb, err)
		}
		if l, err := a.TryLock(ctx, "maintenance"); l != nil || err != nil {
			t.Errorf("a.TryLock again = %v, %v, want nil (held)", l, err)
		}
		if lo, err := b.TryLock(ctx, "other"); lo == nil || err != nil {
			t.Errorf("b.TryLock(other) = %v, %v, want a lock of its own", lo, err)
		} else {
			lo.Release()
		}
		la.Release()
		lb, err := b.TryLock(ctx, "maintenance")
		if err != nil || lb == nil {
			t.Fatalf("b.TryLock after a released = %v, %v, want the lock", lb, err)
		}
		if a.Backend() != "postgres" {
			lb.Release()
			return
		}
		// The holder's connection dies (its server was killed, or the
		// network cut): Lost fires and the other server takes the lock.
		if out, err := testCluster(t).Psql("postgres", `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted`); err != nil {
			t.Fatal(err, out)
		}
		select {
		case <-lb.Lost():
		case <-time.After(5 * time.Second):
			t.Fatal("Lost not closed 5 s after the lock's connection was terminated")
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			la, err := a.TryLock(ctx, "maintenance")
			if la != nil {
				la.Release()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a.TryLock after b's connection died = %v, %v, want the lock within 5 s", la, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// ListObserved keeps decoded check-ins between lists (observedCache):
// a check-in changed by this server or by another one on the same
// database must show in the next list, and what a caller does to its
// copy must not reach the next caller.
func TestStoreListObservedSeesChanges(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		a, b := openTestStore(t, dbURL), openTestStore(t, dbURL)
		put := func(s Store, mac, booted string) {
			t.Helper()
			mustUpdate(t, s, func(tx Tx) error {
				return tx.PutObserved(&Observed{Checkin: checkin.Checkin{MAC: mac, Source: "agent", Booted: booted}, Time: t0})
			})
		}
		list := func(s Store) map[string]string {
			t.Helper()
			got := map[string]string{}
			view(t, s, func(tx Tx) error {
				all, err := tx.ListObserved()
				for _, o := range all {
					got[o.MAC] = o.Booted
					o.Booted = "changed by the caller"
				}
				return err
			})
			return got
		}
		const m1, m2 = "52:54:00:00:00:01", "52:54:00:00:00:02"
		d1, d2, d3 := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64), "sha256:"+strings.Repeat("3", 64)
		put(a, m1, d1)
		for i, step := range []struct {
			do   func()
			want map[string]string
		}{
			{func() {}, map[string]string{m1: d1}},
			{func() {}, map[string]string{m1: d1}}, // from the cache, unchanged by the caller
			{func() { put(a, m1, d2) }, map[string]string{m1: d2}},
			{func() { put(b, m1, d3); put(b, m2, d1) }, map[string]string{m1: d3, m2: d1}}, // the other server
		} {
			step.do()
			if got := list(a); !reflect.DeepEqual(got, step.want) {
				t.Errorf("step %d: ListObserved = %v, want %v", i, got, step.want)
			}
		}
	})
}
