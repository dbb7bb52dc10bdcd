package fleet

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// oldStoreWant is what the JSON-lines store's own code answered from
// testdata/oldstore/fleet.db when it wrote it (see that commit).
type oldStoreWant struct {
	Status Status            `json:"status"`
	Audit  []AuditEntry      `json:"audit"`
	Boots  map[string][]Boot `json:"boots"`
}

var dirRE = regexp.MustCompile(`/\S*/`)

// noDirs drops the directories of file names: the old store's answers
// name the generator's temporary fleet directory.
func noDirs(s string) string { return dirRE.ReplaceAllString(s, "") }

func copyOldStore(t *testing.T, to string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/oldstore/fleet.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// An installation with the old store loses nothing: on the first start
// the log is imported and renamed aside, and the fleet answers as the old
// code did; the next start imports nothing twice. With SQLite the
// database takes the old store's place (both were /var/lib/hnboot/fleet.db).
func TestImportOldStore(t *testing.T) {
	var want oldStoreWant
	b, err := os.ReadFile("testdata/oldstore/want.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	forBackends(t, func(t *testing.T, dbURL string) {
		old := filepath.Join(t.TempDir(), "fleet.db")
		orig := copyOldStore(t, old)
		if strings.HasPrefix(dbURL, "sqlite:") {
			dbURL = "sqlite://" + old
		}
		e := &env{dir: copyExample(t), db: dbURL, importPath: old, tokens: filepath.Join(t.TempDir(), "tokens")}
		os.WriteFile(e.tokens, []byte("alice "+aliceToken+"\n"), 0o600)
		e.open(t, false)

		if b, err := os.ReadFile(old + OldStoreSuffix); err != nil || !bytes.Equal(b, orig) {
			t.Errorf("old store renamed aside: %v (same bytes: %v), want %s", err, bytes.Equal(b, orig), old+OldStoreSuffix)
		}
		if isOld, _ := isOldStore(old); isOld {
			t.Errorf("%s is still the old store after the import", old)
		}
		check := func(when string) {
			t.Helper()
			st, err := e.f.status()
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Hosts) != len(want.Status.Hosts) {
				t.Fatalf("%s: %d hosts, want %d", when, len(st.Hosts), len(want.Status.Hosts))
			}
			for i, h := range st.Hosts {
				w := want.Status.Hosts[i]
				if h.MAC != w.MAC || h.State != w.State || h.Desired != w.Desired || noDirs(h.DesiredSource) != noDirs(w.DesiredSource) || h.Current != w.Current ||
					!reflect.DeepEqual(h.RevertPending, w.RevertPending) || (h.LastCheckin == nil) != (w.LastCheckin == nil) ||
					(h.LastCheckin != nil && (!reflect.DeepEqual(h.LastCheckin.Checkin, w.LastCheckin.Checkin) || !h.LastCheckin.Time.Equal(w.LastCheckin.Time))) {
					t.Errorf("%s: host %s =\n%+v\nwant (from the old store)\n%+v", when, h.Hostname, h, w)
				}
			}
			if len(st.Unknown) != 1 || !reflect.DeepEqual(st.Unknown[0].Checkin, want.Status.Unknown[0].Checkin) {
				t.Errorf("%s: unknown check-ins %+v, want %+v", when, st.Unknown, want.Status.Unknown)
			}
			for i := range st.Rollouts {
				st.Rollouts[i].Pos = Pos{}
				st.Rollouts[i].Origin = noDirs(st.Rollouts[i].Origin)
				want.Status.Rollouts[i].Origin = noDirs(want.Status.Rollouts[i].Origin)
			}
			if !reflect.DeepEqual(st.Rollouts, want.Status.Rollouts) {
				t.Errorf("%s: rollouts %+v, want %+v", when, st.Rollouts, want.Status.Rollouts)
			}
			au := e.f.Audit(0)
			if len(au) != len(want.Audit) {
				t.Fatalf("%s: %d audit entries, want %d (imported once)", when, len(au), len(want.Audit))
			}
			for i, a := range au {
				w := want.Audit[i]
				if !a.Time.Equal(w.Time) || a.Who != w.Who || a.Action != w.Action || a.Target != w.Target || a.Detail != w.Detail || a.Remote != w.Remote {
					t.Errorf("%s: audit %d = %+v, want %+v", when, i, a, w)
				}
			}
			for mac, wb := range want.Boots {
				rep, err := e.f.Why(mac, 0)
				if err != nil || len(rep.Boots) != len(wb) {
					t.Fatalf("%s: Why(%s) = %d boots, %v, want %d", when, mac, len(rep.Boots), err, len(wb))
				}
				for i := range wb {
					got, w := rep.Boots[i], wb[i]
					if !got.Start.Equal(w.Start) || len(got.Events) != len(w.Events) || (got.Checkin == nil) != (w.Checkin == nil) {
						t.Errorf("%s: boot %d of %s = %+v, want %+v", when, i, mac, got, w)
					}
				}
			}
			// The revert entry is found by host name and by MAC.
			if es, _ := e.f.QueryAudit(AuditQuery{Action: "revert"}, "52:54:00:00:00:10"); len(es) != 1 || es[0].Host != "db-01" {
				t.Errorf("%s: audit of db-01's revert by MAC = %+v, want the imported entry with its host", when, es)
			}
		}
		check("after the import")
		e.srv.Close()
		e.f.Close()
		e.open(t, false)
		check("after a restart")
	})
}

// The old store's own rules hold for the import: a torn last record (a
// crash in a write) is dropped, damage before the end stops the start
// with the file and line.
func TestImportOldStoreDamage(t *testing.T) {
	for _, c := range []struct {
		name    string
		mangle  func([]byte) []byte
		wantErr string
	}{
		{"torn last record", func(b []byte) []byte { return append(b, []byte(`0badc0de {"op":"put","k":"observed/52:5`)...) }, ""},
		{"bit rot in line 2", func(b []byte) []byte {
			lines := strings.SplitAfter(string(b), "\n")
			lines[1] = strings.Replace(lines[1], `"source"`, `"sourcX"`, 1)
			return []byte(strings.Join(lines, ""))
		}, "fleet.db" + OldStoreSuffix + ":2: checksum mismatch"},
	} {
		t.Run(c.name, func(t *testing.T) {
			old := filepath.Join(t.TempDir(), "fleet.db")
			b := copyOldStore(t, old)
			os.WriteFile(old, c.mangle(b), 0o600)
			f, err := New(Options{Dir: copyExample(t), DB: "sqlite://" + old, Import: old, PollInterval: -1, Logger: quiet})
			if err == nil {
				f.Close()
			}
			if c.wantErr == "" && err != nil {
				t.Fatalf("New = %v, want the torn record dropped", err)
			}
			if c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("New = %v, want an error with %q", err, c.wantErr)
			}
		})
	}
}

// A crash between the import's commit and the rename leaves the old store
// in place: the next start sees it was imported (by its sha256), imports
// nothing twice and renames it.
func TestImportOldStoreOnce(t *testing.T) {
	forBackends(t, func(t *testing.T, dbURL string) {
		if strings.HasPrefix(dbURL, "sqlite:") {
			dbURL = "sqlite://" + filepath.Join(t.TempDir(), "other.db") // not the old store's file
		}
		old := filepath.Join(t.TempDir(), "fleet.db")
		copyOldStore(t, old)
		open := func() int {
			f, err := New(Options{Dir: copyExample(t), DB: dbURL, Import: old, PollInterval: -1, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			return len(f.Audit(0))
		}
		first := open()
		if err := os.Rename(old+OldStoreSuffix, old); err != nil { // as if the rename never happened
			t.Fatal(err)
		}
		if again := open(); again != first || first != 6 {
			t.Errorf("audit entries after the first start %d, after the second %d; want 6 both times", first, again)
		}
		if _, err := os.Stat(old + OldStoreSuffix); err != nil {
			t.Errorf("old store not renamed aside on the second start: %v", err)
		}
	})
}
