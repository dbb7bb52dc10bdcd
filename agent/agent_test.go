package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/hostpart"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/stage"
	"github.com/hnboot/hnboot/supervisor"
)

// fakeFleet is the server side of the agent's wire format: it parses
// every check-in as imaged does, so each one the tests send must pass.
type fakeFleet struct {
	*httptest.Server
	mu       sync.Mutex
	desired  Desired
	checkins []*checkin.Checkin
	raw      [][]byte
	blobs    map[string][]byte
	t        *testing.T
}

func newFakeFleet(t *testing.T) *fakeFleet {
	f := &fakeFleet{t: t, blobs: map[string][]byte{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/hosts/{mac}/desired", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		json.NewEncoder(w).Encode(f.desired)
	})
	mux.HandleFunc("POST /api/checkin", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rep, err := checkin.Parse(bytes.NewReader(b))
		if err != nil {
			f.t.Errorf("imaged would refuse the agent's check-in: %v", err)
			http.Error(w, err.Error(), 400)
			return
		}
		f.mu.Lock()
		f.checkins = append(f.checkins, rep)
		f.raw = append(f.raw, b)
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		b, ok := f.blobs[r.PathValue("digest")]
		f.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(b)))
	})
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	return f
}

func (f *fakeFleet) set(d Desired) {
	f.mu.Lock()
	f.desired = d
	f.mu.Unlock()
}

func (f *fakeFleet) last() *checkin.Checkin {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.checkins[len(f.checkins)-1]
}

type passProber struct{}

func (passProber) Probe(context.Context, Checks) []Observation {
	return []Observation{{Check: "command ok", OK: true}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func exists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}

// TestAgentUpdateConfirmRevert walks the agent through an update, a
// confirmed trial, a server revert and a refused re-assignment, playing
// the init's part by renaming files as rotate does.
func TestAgentUpdateConfirmRevert(t *testing.T) {
	dir := t.TempDir()
	imgA, dA := testImage(t, 4000)
	imgB, dB := testImage(t, 6000)
	os.WriteFile(filepath.Join(dir, layout.Current), imgA, 0o644)
	srv := newFakeFleet(t)
	srv.blobs[dB] = imgB
	reboots := 0
	a := &Agent{
		Dir: dir, Server: &HTTPServer{Base: srv.URL}, MAC: "52:54:00:12:34:56",
		Policy: Policy{Mode: RebootImmediate}, Prober: passProber{},
		Reboot: func() error { reboots++; return nil },
		Config: Config{Interval: time.Hour, Health: Checks{Settle: time.Millisecond, Interval: time.Millisecond}},
		Log:    slog.New(slog.DiscardHandler),
	}
	ctx := context.Background()

	srv.set(Desired{Image: DesiredImage{Name: "B", Version: "2", Digest: dB}})
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B staged", func() bool { return exists(dir, layout.New) })
	waitFor(t, "staging goroutine done", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return !a.busy })
	if err := a.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if rep := srv.last(); rep.Images.New != dB || rep.Rebooting == "" || reboots != 1 {
		t.Fatalf("after staging: images.new = %s, rebooting = %q, reboots = %d; want %s, a reason, 1", rep.Images.New, rep.Rebooting, reboots, dB)
	}

	// The init promotes B on trial; the agent starts again.
	a.rebooting = false
	os.Rename(filepath.Join(dir, layout.Current), filepath.Join(dir, layout.Old))
	os.Rename(filepath.Join(dir, layout.New), filepath.Join(dir, layout.Current))
	os.WriteFile(filepath.Join(dir, layout.Trial), []byte("2\n"), 0o644)
	a.confirmTrial(ctx)
	if exists(dir, layout.Trial) {
		t.Fatalf("%s still there after passing health checks", layout.Trial)
	}
	a.Tick(ctx)
	if rep := srv.last(); rep.Trial || rep.Images.Current != dB || rep.Health == nil || rep.Health.State != HealthPassed {
		t.Fatalf("after confirming: trial = %v, current = %s, health = %+v; want false, %s, passed", rep.Trial, rep.Images.Current, rep.Health, dB)
	}

	// The server reverts.
	srv.set(Desired{Image: DesiredImage{Name: "A", Version: "1", Digest: dA}, Revert: "r1"})
	a.Tick(ctx)
	if b, err := os.ReadFile(filepath.Join(dir, layout.RevertTrigger)); err != nil || strings.TrimSpace(string(b)) != "r1" || reboots != 2 {
		t.Fatalf("after the server's revert: %s = %q (%v), reboots = %d; want r1, 2", layout.RevertTrigger, b, err, reboots)
	}
	// The init reverts: current → broken, old → current.
	os.Rename(filepath.Join(dir, layout.Current), filepath.Join(dir, layout.Broken))
	os.Rename(filepath.Join(dir, layout.Old), filepath.Join(dir, layout.Current))
	os.Remove(filepath.Join(dir, layout.RevertTrigger))
	a.rebooting = false
	a.Tick(ctx)
	rep := srv.last()
	if rep.Images.Current != dA || rep.Images.Broken != dB || rep.RevertApplied != "r1" || len(rep.FailedDigests) != 1 || rep.FailedDigests[0] != dB {
		t.Fatalf("after the revert boot: current %s broken %s revert_applied %q failed %v; want %s %s r1 [%s]",
			rep.Images.Current, rep.Images.Broken, rep.RevertApplied, rep.FailedDigests, dA, dB, dB)
	}

	// Assigned B again: refused, and reported.
	srv.set(Desired{Image: DesiredImage{Name: "B", Version: "2", Digest: dB}})
	a.Tick(ctx)
	rep = srv.last()
	if rep.Staging == nil || rep.Staging.State != "refused" || exists(dir, layout.New) || exists(dir, layout.NewPart) {
		t.Fatalf("re-assigned failed image: staging = %+v, new staged = %v; want refused and nothing staged", rep.Staging, exists(dir, layout.New))
	}
	// Forced: staged.
	srv.set(Desired{Image: DesiredImage{Name: "B", Version: "2", Digest: dB}, Force: true})
	a.Tick(ctx)
	waitFor(t, "forced B staged", func() bool { return exists(dir, layout.New) })
	waitFor(t, "staging goroutine done", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return !a.busy })
}

func TestAgentReportsCorruptDownload(t *testing.T) {
	dir := t.TempDir()
	imgA, _ := testImage(t, 4000)
	_, dB := testImage(t, 6000)
	os.WriteFile(filepath.Join(dir, layout.Current), imgA, 0o644)
	srv := newFakeFleet(t)
	srv.blobs[dB] = []byte(strings.Repeat("x", 6000)) // not B
	a := &Agent{Dir: dir, Server: &HTTPServer{Base: srv.URL}, MAC: "52:54:00:12:34:56", Config: Config{Interval: time.Hour},
		Reboot: func() error { t.Error("reboot with nothing staged"); return nil }, Log: slog.New(slog.DiscardHandler)}
	srv.set(Desired{Image: DesiredImage{Digest: dB}})
	a.Tick(context.Background())
	waitFor(t, "staging done", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return !a.busy })
	a.Tick(context.Background())
	rep := srv.last()
	if rep.Staging == nil || rep.Staging.State != "failed" || !strings.Contains(rep.Staging.Error, "corrupt") || exists(dir, layout.New) {
		t.Fatalf("corrupt download: staging = %+v, staged = %v; want failed with \"corrupt\", nothing staged", rep.Staging, exists(dir, layout.New))
	}
}

// TestReportParses builds a report with every part the agent fills (and
// text it does not control) and checks that imaged's parser takes it and
// keeps what was sent.
func TestReportParses(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc", "ssh"), 0o755)
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOQHNaqvvRKVPrqv/6/ZLJ0cdbIvmgNgdqYn+bxdwrFJ"
	os.WriteFile(filepath.Join(root, "etc", "ssh", "ssh_host_ed25519_key.pub"), []byte(key+" root@web-07\n"), 0o644)
	sup, err := supervisor.New([]supervisor.Service{{Name: "node-exporter", Command: "/bin/true"}}, supervisor.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 12, 1, 3, 0, time.UTC)
	a := &Agent{MAC: "52:54:00:12:34:56", Hostname: "web-07", System: System{Root: root}, Services: sup,
		Policy: Policy{Mode: RebootWindow, Start: 120, End: 240}}
	a.staging = &checkin.Staging{Digest: dC, Image: "C 3", State: "failed", Error: "corrupt: <html>\r\n\x1b[31m502</html>"}
	a.health = &Verdict{State: HealthFailed, Reason: "unit db.service: failed", Last: []Observation{{Check: "unit db.service", Detail: strings.Repeat("output\n", 1000)}}}
	st := hostpart.State{Trial: true, TriesLeft: 2,
		Images: []hostpart.Image{{Slot: layout.SlotCurrent, Digest: dA}, {Slot: layout.SlotOld, Digest: dB}},
		Boots:  []hostpart.Boot{{Time: t0, Image: layout.Current, Action: "promote", Trial: true, TriesLeft: 2, Warnings: 1, Problems: []string{"slow disk"}, Summary: "promoted"}}}
	failed := stage.Failed{dC: {Digest: dC, Time: t0, Reason: "reverted"}}
	mem := memory{Reverts: []revertRecord{{ID: "r1", State: "applied"}}}
	rep := a.report(st, failed, mem, Decision{Pending: []string{"reboot to apply"}}, []string{"cannot ask the server: 502 Bad Gateway\r\n<html>"})
	rep.Tidy()
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	got, err := checkin.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("checkin.Parse(agent report) = %v\n%s", err, b)
	}
	if len(got.Fingerprints) != 1 || !strings.HasPrefix(got.Fingerprints[0], "SHA256:") || got.SSHHostKeys[0] != key {
		t.Errorf("parsed keys %v fingerprints %v, want %s and its fingerprint", got.SSHHostKeys, got.Fingerprints, key)
	}
	// What the server stores is what the agent built.
	if !reflect.DeepEqual(got, rep) {
		t.Errorf("checkin.Parse(agent report) =\n%+v\nwant\n%+v", got, rep)
	}
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"source", got.Source, checkin.SourceAgent},
		{"images.old", got.Images.Old, dB},
		{"revert_applied", got.RevertApplied, "r1"},
		{"failures", got.Failures, []checkin.Failure{{Digest: dC, Time: t0, Reason: "reverted"}}},
		{"staging.state", got.Staging.State, "failed"},
		{"health.state", got.Health.State, HealthFailed},
		{"last_boot.problems", got.LastBoot.Problems, []string{"slow disk"}},
		{"services", len(got.Services), 1},
		{"reboot_policy", got.RebootPolicy, "window 02:00-04:00"},
		{"pending", got.Pending, []string{"reboot to apply"}},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("report %s = %v, want %v", c.what, c.got, c.want)
		}
	}
}

// The agent fetches the manifest beside the blob; with a trusted key a
// missing or unsigned one is reported like a corrupt download.
func TestAgentStagesManifest(t *testing.T) {
	imgA, _ := testImage(t, 4000)
	imgB, dB := testImage(t, 6000)
	k := newKey(t)
	for _, tc := range []struct {
		name     string
		manifest []byte // nil: none on the server
		keys     stage.Keys
		state    string // staging state reported
		errHas   string
	}{
		{"signed", signedManifest(t, imgB, k), keysOf(k), "staged", ""},
		{"unsigned with key", signedManifest(t, imgB, nil), keysOf(k), "failed", "not signed"},
		{"none with key", nil, keysOf(k), "failed", "signed manifest is required"},
		{"none without key", nil, stage.Keys{}, "staged", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, layout.Current), imgA, 0o644)
			srv := newFakeFleet(t)
			srv.blobs[dB] = imgB
			if tc.manifest != nil {
				srv.blobs[dB+".json"] = tc.manifest
			}
			a := &Agent{Dir: dir, Server: &HTTPServer{Base: srv.URL}, MAC: "52:54:00:12:34:56", Config: Config{Interval: time.Hour},
				Keys: tc.keys, Reboot: func() error { return nil }, Log: slog.New(slog.DiscardHandler),
				retry: map[string]retryAt{dB: {n: 1}}} // failed once before, retry due
			srv.set(Desired{Image: DesiredImage{Name: "B", Version: "2", Digest: dB, Size: int64(len(imgB))}})
			a.Tick(context.Background())
			waitFor(t, "staging done", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return !a.busy })
			a.Tick(context.Background())
			rep := srv.last()
			if rep.Staging == nil || rep.Staging.State != tc.state || !strings.Contains(rep.Staging.Error, tc.errHas) {
				t.Fatalf("staging = %+v, want state %s, error containing %q", rep.Staging, tc.state, tc.errHas)
			}
			if staged := exists(dir, layout.New); staged != (tc.state == "staged") {
				t.Errorf("%s staged = %v, want %v", layout.New, staged, tc.state == "staged")
			}
			if got, want := exists(dir, layout.ManifestFor(layout.New)), tc.state == "staged" && tc.manifest != nil; got != want {
				t.Errorf("%s present = %v, want %v", layout.ManifestFor(layout.New), got, want)
			}
			if tc.state == "failed" {
				a.mu.Lock()
				r := a.retry[dB]
				a.mu.Unlock()
				if time.Until(r.next) < 90*time.Minute {
					t.Errorf("second retry of a refused manifest in %v, want the corrupt-download back-off (2 intervals), not the next round", time.Until(r.next).Round(time.Second))
				}
			}
		})
	}
}
