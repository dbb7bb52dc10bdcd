package rollout

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	img = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	old = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)

var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC) // a Monday

func macs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("m%02d", i)
	}
	return out
}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		waves []Wave
		n     int
		want  string // wave of m00, m01, ... ("-": not covered)
	}{
		{[]Wave{{Percent: 100}}, 4, "0000"},
		{[]Wave{{Hosts: []string{"m03"}}, {Percent: 50}, {Percent: 100}}, 5, "11202"},
		{[]Wave{{Count: 1}, {Count: 2}, {Percent: 100}}, 6, "011222"},
		{[]Wave{{Percent: 10}, {Percent: 50}}, 10, "01111-----"},
		{[]Wave{{Percent: 10}, {Percent: 5}, {Percent: 100}}, 10, "0222222222"}, // a smaller share adds nothing
		{[]Wave{{Count: 20}}, 3, "000"},
		{[]Wave{{Hosts: []string{"x1"}}, {Percent: 100}}, 2, "11"}, // a canary outside the target is in wave 0 anyway
	} {
		s := &Spec{Waves: tc.waves}
		p := s.Plan(macs(tc.n))
		var b strings.Builder
		for _, m := range macs(tc.n) {
			if w, ok := p[m]; ok {
				fmt.Fprint(&b, w)
			} else {
				b.WriteString("-")
			}
		}
		if b.String() != tc.want {
			t.Errorf("Plan(%+v, %d hosts) = %s, want %s", tc.waves, tc.n, b.String(), tc.want)
		}
	}
}

func TestParseAmount(t *testing.T) {
	for _, tc := range []struct {
		in    string
		want  Amount
		of10  int
		isErr bool
	}{
		{"3", Amount{N: 3}, 3, false},
		{"25%", Amount{Percent: 25}, 3, false},
		{"100%", Amount{Percent: 100}, 10, false},
		{"30", Amount{N: 30}, 10, false},
		{"101%", Amount{}, 0, true},
		{"-1", Amount{}, 0, true},
		{"x", Amount{}, 0, true},
	} {
		got, err := ParseAmount(tc.in)
		if (err != nil) != tc.isErr || got != tc.want || (err == nil && got.Of(10) != tc.of10) {
			t.Errorf("ParseAmount(%q) = %+v (of 10: %d), %v; want %+v (%d), error %v", tc.in, got, got.Of(10), err, tc.want, tc.of10, tc.isErr)
		}
	}
}

func TestWindow(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		tt, err := time.ParseInLocation("2006-01-02 15:04", s, berlin)
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
	for _, tc := range []struct {
		days  []string
		hours string
		t     string // Berlin time; 2026-03-02 is a Monday
		open  bool
		next  string
	}{
		{nil, "02:00-05:00", "2026-03-02 03:00", true, "2026-03-02 03:00"},
		{nil, "02:00-05:00", "2026-03-02 05:00", false, "2026-03-03 02:00"},
		{[]string{"Sat,Sun"}, "02:00-05:00", "2026-03-02 03:00", false, "2026-03-07 02:00"},
		{[]string{"Mon-Fri"}, "", "2026-03-07 12:00", false, "2026-03-09 00:00"},
		{[]string{"Fri"}, "22:00-04:00", "2026-03-07 03:00", true, "2026-03-07 03:00"}, // Saturday morning belongs to Friday's window
		{[]string{"Fri"}, "22:00-04:00", "2026-03-08 03:00", false, "2026-03-13 22:00"},
		{[]string{"Fri"}, "22:00-04:00", "2026-03-06 23:59", true, "2026-03-06 23:59"},
	} {
		w, err := ParseWindow(tc.days, tc.hours, "Europe/Berlin")
		if err != nil {
			t.Fatal(err)
		}
		tt := at(tc.t)
		if got := w.Open(tt); got != tc.open {
			t.Errorf("%s Open(%s) = %v, want %v", w, tc.t, got, tc.open)
		}
		if got := w.Next(tt).In(berlin).Format("2006-01-02 15:04"); got != tc.next {
			t.Errorf("%s Next(%s) = %s, want %s", w, tc.t, got, tc.next)
		}
		// The same instant in UTC is the same answer.
		if got := w.Open(tt.UTC()); got != tc.open {
			t.Errorf("%s Open(%s UTC) = %v, want %v", w, tc.t, got, tc.open)
		}
	}
	for _, bad := range [][3]string{{"Mo", "", ""}, {"", "2-5", ""}, {"", "", "Mars/Olympus"}} {
		if _, err := ParseWindow([]string{bad[0]}, bad[1], bad[2]); err == nil {
			t.Errorf("ParseWindow(%q) = nil error", bad)
		}
	}
}

// One moved host: what each signal makes of it.
func TestObserve(t *testing.T) {
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Percent: 100}}}
	moved := t0
	now := t0.Add(10 * time.Minute)
	seen := now.Add(-time.Minute)
	for _, tc := range []struct {
		name  string
		from  string
		sig   Signal
		want  string
		why   string // in the reason
		unset bool   // the event withdraws the assignment
	}{
		{"no check-in yet", HostStaging, Signal{Seen: moved.Add(-time.Minute), Running: old}, HostStaging, "no check-in since", false},
		{"downloading", HostStaging, Signal{Seen: seen, Running: old, Staging: "downloading", Done: 40, Total: 100}, HostStaging, "40%", false},
		{"download failed", HostStaging, Signal{Seen: seen, Running: old, Staging: "failed", StagingWhy: "connection reset"}, HostStaging, "connection reset", false},
		{"refused", HostStaging, Signal{Seen: seen, Running: old, Staging: "refused", StagingWhy: "not signed"}, HostFailed, "not signed", true},
		{"staged", HostStaging, Signal{Seen: seen, Running: old, New: img}, HostRebooting, "staged", false},
		{"agent reboots", HostStaging, Signal{Seen: seen, Running: old, New: img, Rebooting: "image staged"}, HostRebooting, "rebooting: image staged", false},
		{"on trial", HostRebooting, Signal{Seen: seen, Running: img, Trial: true, Health: "pending", HealthWhy: "settling"}, HostTrial, "health pending: settling", false},
		{"confirmed", HostTrial, Signal{Seen: seen, Running: img}, HostConfirmed, "confirmed", false},
		{"unhealthy", HostTrial, Signal{Seen: seen, Running: img, Trial: true, Health: "failed", HealthWhy: "unit app.service failed"}, HostFailed, "app.service", true},
		{"trial reverted", HostTrial, Signal{Seen: seen, Running: old, Failed: true, FailReason: "reverted (found as hn-root-broken.img)"}, HostFailed, "broken", true},
		{"rejected by the init", HostRebooting, Signal{Seen: seen, Running: old, Failed: true, FailReason: "the init rejected the staged image"}, HostFailed, "rejected", true},
		{"confirmed, reverted by hand later", HostConfirmed, Signal{Seen: seen, Running: old}, HostConfirmed, "", false},
		{"confirmed, then found broken", HostConfirmed, Signal{Seen: seen, Running: old, Failed: true, FailReason: "reverted"}, HostFailed, "reverted", true},
		{"past the deadline", HostStaging, Signal{Seen: moved.Add(-time.Minute), Running: old}, HostFailed, "not confirmed within 5m0s", true},
	} {
		sp := *spec
		if tc.name == "past the deadline" {
			sp.Deadline = 5 * time.Minute
		}
		st := State{Phase: Running, Waves: []WaveState{{Started: t0}}, Hosts: map[string]*Host{
			"m00": {Wave: 0, State: tc.from, Moved: moved, From: old, Since: moved},
		}}
		e, changed := st.observe(&sp, "m00", tc.sig, now)
		h := st.Hosts["m00"]
		if h.State != tc.want || !strings.Contains(h.Reason, tc.why) {
			t.Errorf("%s: %s + %+v = %s (%q), want %s (with %q)", tc.name, tc.from, tc.sig, h.State, h.Reason, tc.want, tc.why)
		}
		if changed != (tc.from != tc.want) || e.Unassign != tc.unset {
			t.Errorf("%s: event %+v (changed %v); want a transition %v, unassign %v", tc.name, e, changed, tc.from != tc.want, tc.unset)
		}
	}
}

// sim is a fleet of hosts that do what they are told, on a fake clock.
type sim struct {
	t      *testing.T
	spec   *Spec
	st     State
	target []string
	sig    map[string]Signal
	now    time.Time
	events []Event
	// behaviour of each host once assigned: "ok" (default), "revert"
	// (its trial is reverted), "offline" (never checks in), "slow"
	// (never gets past staging).
	do map[string]string
}

func newSim(t *testing.T, spec *Spec, n int) *sim {
	s := &sim{t: t, spec: spec, st: New(t0), target: macs(n), sig: map[string]Signal{}, now: t0, do: map[string]string{}}
	for _, m := range s.target {
		s.sig[m] = Signal{Seen: t0, Running: old}
	}
	return s
}

func (s *sim) step() []Event {
	ev := Step(s.spec, &s.st, s.target, s.sig, s.now)
	s.events = append(s.events, ev...)
	return ev
}

// tick lets a minute pass: each assigned host moves one state further
// (staging -> staged -> trial -> confirmed), then the rollout steps.
func (s *sim) tick() []Event {
	s.now = s.now.Add(time.Minute)
	for _, m := range s.target {
		h := s.st.Hosts[m]
		g := s.sig[m]
		if s.do[m] == "offline" {
			continue
		}
		g.Seen = s.now
		if h != nil && h.Assigned() {
			switch {
			case s.do[m] == "slow":
			case g.Running != img && g.New != img:
				g.New = img
			case g.New == img:
				g.Running, g.New, g.Trial = img, "", true
			case g.Trial && s.do[m] == "revert":
				g.Running, g.Trial, g.Failed, g.FailReason = old, false, true, "reverted (found as hn-root-broken.img)"
			case g.Trial:
				g.Trial = false
			}
		}
		s.sig[m] = g
	}
	return s.step()
}

func (s *sim) count(state string) int {
	n := 0
	for _, h := range s.st.Hosts {
		if h.State == state {
			n++
		}
	}
	return n
}

func (s *sim) run(max int, until func() bool) {
	s.t.Helper()
	for i := 0; i < max; i++ {
		if until() {
			return
		}
		s.tick()
	}
	if !until() {
		s.t.Fatalf("not reached after %d minutes: phase %s (%s), hosts %v", max, s.st.Phase, s.st.Reason, s.states())
	}
}

func (s *sim) states() map[string]string {
	out := map[string]string{}
	for m, h := range s.st.Hosts {
		out[m] = h.State + " (" + h.Reason + ")"
	}
	return out
}

func mustStart(t *testing.T, s *sim) {
	t.Helper()
	ev, err := Start(&s.st, s.spec, s.now, "started by alice")
	if err != nil {
		t.Fatal(err)
	}
	s.events = append(s.events, ev...)
	s.step()
}

// The canary goes first and alone; the next wave starts only once it is
// confirmed and the soak has passed; then all the others.
func TestCanaryThenWaves(t *testing.T) {
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Hosts: []string{"m03"}}, {Percent: 50}, {Percent: 100}},
		Gate: Gate{Soak: 10 * time.Minute}}
	s := newSim(t, spec, 6)
	if ev := s.step(); len(ev) != 0 || s.count(HostPending) != 0 {
		t.Fatalf("a pending rollout stepped: %v", ev)
	}
	mustStart(t, s)
	s.step()
	if got := s.st.Hosts["m03"].State; got != HostStaging || s.count(HostStaging) != 1 {
		t.Fatalf("after start: canary %s, %d staging; want only the canary staging", got, s.count(HostStaging))
	}
	s.run(10, func() bool { return s.st.Hosts["m03"].State == HostConfirmed })
	gateAt := s.now
	s.run(30, func() bool { return s.count(HostStaging)+s.count(HostRebooting)+s.count(HostTrial) > 0 })
	if soaked := s.now.Sub(gateAt); soaked < 10*time.Minute {
		t.Errorf("wave 2 started %v after the canary confirmed, want the 10m soak", soaked)
	}
	if s.count(HostStaging) != 3 { // 50% of the 5 others, rounded up
		t.Errorf("wave 2 moved %d hosts, want 3", s.count(HostStaging))
	}
	s.run(60, func() bool { return s.st.Phase == Done })
	if s.count(HostConfirmed) != 6 {
		t.Errorf("done with %v", s.states())
	}
	var waves []string
	for _, e := range s.events {
		if e.Host == "" && e.Wave >= 0 {
			waves = append(waves, fmt.Sprintf("%d:%s", e.Wave+1, e.To))
		}
	}
	want := "1:started 1:gate met 1:passed 2:started 2:gate met 2:passed 3:started 3:gate met 3:passed"
	if strings.Join(waves, " ") != want {
		t.Errorf("wave events %q, want %q", strings.Join(waves, " "), want)
	}
}

func TestMaxRebooting(t *testing.T) {
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Percent: 100}}, MaxRebooting: 2}
	s := newSim(t, spec, 7)
	mustStart(t, s)
	s.step()
	peak := 0
	s.run(60, func() bool {
		peak = max(peak, s.count(HostStaging)+s.count(HostRebooting)+s.count(HostTrial))
		return s.st.Phase == Done
	})
	if peak != 2 {
		t.Errorf("at most %d hosts updated at once, want 2", peak)
	}
}

func TestWindowHoldsMoves(t *testing.T) {
	w, _ := ParseWindow(nil, "10:30-11:00", "UTC")
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Percent: 100}}, Window: w}
	s := newSim(t, spec, 2)
	mustStart(t, s)
	s.step()
	if s.count(HostStaging) != 0 || !strings.Contains(s.st.Hosts["m00"].Reason, "maintenance window") || !strings.Contains(s.st.Reason, "next 2026-03-02 10:30") {
		t.Fatalf("outside the window: %v, rollout %q", s.states(), s.st.Reason)
	}
	s.run(40, func() bool { return s.count(HostStaging) > 0 })
	if s.now.Before(t0.Add(30 * time.Minute)) {
		t.Errorf("moved at %v, before the window opened", s.now)
	}
}

func TestOffline(t *testing.T) {
	for _, policy := range []string{OfflineWait, OfflineSkip} {
		t.Run(policy, func(t *testing.T) {
			spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Percent: 100}}, Offline: policy, OfflineDeadline: 30 * time.Minute}
			s := newSim(t, spec, 3)
			s.do["m01"] = "offline"
			g := s.sig["m01"]
			g.Seen = t0.Add(-time.Hour)
			s.sig["m01"] = g
			mustStart(t, s)
			s.run(120, func() bool { return s.st.Phase == Done || s.now.After(t0.Add(90*time.Minute)) })
			h := s.st.Hosts["m01"]
			switch policy {
			case OfflineWait:
				if s.st.Phase == Done || h.State != HostPending || !strings.Contains(h.Reason, "offline") {
					t.Errorf("wait: phase %s, m01 %s (%s); want running with m01 pending", s.st.Phase, h.State, h.Reason)
				}
				// Back online: moved, and the rollout finishes.
				delete(s.do, "m01")
				s.run(20, func() bool { return s.st.Phase == Done })
				if got := s.st.Hosts["m01"].State; got != HostConfirmed {
					t.Errorf("after coming back m01 is %s", got)
				}
			case OfflineSkip:
				if s.st.Phase != Done || h.State != HostSkipped || !h.Moved.IsZero() {
					t.Errorf("skip: phase %s, m01 %+v; want done with m01 skipped, never moved", s.st.Phase, h)
				}
				if !strings.Contains(s.st.Reason, "2 confirmed, 0 failed, 1 skipped") {
					t.Errorf("done reason %q: the skipped host must not count as confirmed", s.st.Reason)
				}
			}
		})
	}
}

// A failure in the canary halts the rollout, and with revert the moved
// hosts are reverted; a resume acknowledges the failure.
func TestHaltAndRevert(t *testing.T) {
	for _, revert := range []bool{true, false} {
		t.Run(fmt.Sprint("revert=", revert), func(t *testing.T) {
			spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Count: 2}, {Percent: 100}}, Revert: revert, Threshold: Amount{N: 1}}
			s := newSim(t, spec, 5)
			s.do["m01"] = "revert"
			s.do["m00"] = "slow"
			mustStart(t, s)
			s.run(20, func() bool { return s.st.Phase == Halted })
			if !strings.Contains(s.st.Reason, "wave 1: 1 hosts failed, threshold 1 (m01: reverted") {
				t.Errorf("halt reason %q", s.st.Reason)
			}
			if n := s.count(HostStaging) + s.count(HostRebooting) + s.count(HostTrial) + s.count(HostConfirmed); n != 0 {
				t.Errorf("after the halt %d hosts still assigned: %v", n, s.states())
			}
			var reverts, unassigns int
			for _, e := range s.events {
				if e.Revert {
					reverts++
				}
				if e.Unassign {
					unassigns++
				}
			}
			// m01 failed (unassigned), m00 was still staging (unassigned, no revert needed).
			if reverts != 0 || unassigns != 2 || s.st.Hosts["m00"].State != HostReverted {
				t.Errorf("reverts %d unassigns %d, m00 %s; want 0, 2, reverted", reverts, unassigns, s.st.Hosts["m00"].State)
			}
			for _, m := range []string{"m02", "m03", "m04"} {
				if s.st.Hosts[m].State != HostPending {
					t.Errorf("%s is %s after a halt in wave 1", m, s.st.Hosts[m].State)
				}
			}
			if _, err := Resume(&s.st, spec, s.now, "resumed by alice"); err != nil {
				t.Fatal(err)
			}
			s.tick()
			if s.st.Phase != Running {
				t.Errorf("after a resume the acknowledged failure halted it again: %s %s", s.st.Phase, s.st.Reason)
			}
		})
	}
}

// A halt after the canary confirmed: with revert, the confirmed canary is
// reverted (pinned to the image it ran).
func TestHaltRevertsConfirmed(t *testing.T) {
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Count: 1}, {Count: 2}, {Percent: 100}}, Revert: true}
	s := newSim(t, spec, 5)
	s.do["m01"] = "revert"
	mustStart(t, s)
	s.run(30, func() bool { return s.st.Phase == Halted })
	var reverted []string
	for _, e := range s.events {
		if e.Revert {
			reverted = append(reverted, e.Host+"->"+e.FromDigest[:9])
		}
	}
	// m01 reverted itself; m00 (confirmed) and m02 (on trial) ran the image.
	if got := strings.Join(reverted, " "); got != "m00->sha256:aa m02->sha256:aa" {
		t.Errorf("reverted %q, want the confirmed canary m00 and m02 back to their old image", got)
	}
}

// A host that fails its health checks on trial still runs the image: a
// halt with revert reverts it too.
func TestHaltRevertsUnhealthy(t *testing.T) {
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Count: 1}, {Percent: 100}}, Revert: true}
	s := newSim(t, spec, 3)
	mustStart(t, s)
	s.run(10, func() bool { return s.st.Hosts["m00"].State == HostTrial })
	g := s.sig["m00"]
	g.Trial, g.Health, g.HealthWhy = true, "failed", "unit app.service failed"
	s.sig["m00"] = g
	ev := s.step()
	h := s.st.Hosts["m00"]
	if s.st.Phase != Halted || h.State != HostReverted || !strings.Contains(h.Reason, "health checks failed") {
		t.Fatalf("after the canary's health failed: %s, m00 %s (%s)", s.st.Phase, h.State, h.Reason)
	}
	reverts := 0
	for _, e := range ev {
		if e.Revert && e.Host == "m00" && e.FromDigest == old {
			reverts++
		}
	}
	if reverts != 1 {
		t.Errorf("events %v: want one revert of m00 to its old image", ev)
	}
}

func TestThresholdShare(t *testing.T) {
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Percent: 100}}, Threshold: Amount{Percent: 30}}
	s := newSim(t, spec, 10)
	s.do["m01"], s.do["m02"] = "revert", "revert"
	mustStart(t, s)
	s.run(30, func() bool { return s.st.Phase == Done || s.st.Phase == Halted })
	if s.st.Phase != Done {
		t.Errorf("2 of 10 failed under a 30%% threshold: %s (%s)", s.st.Phase, s.st.Reason)
	}
	s = newSim(t, spec, 10)
	s.do["m01"], s.do["m02"], s.do["m03"] = "revert", "revert", "revert"
	mustStart(t, s)
	s.run(30, func() bool { return s.st.Phase == Done || s.st.Phase == Halted })
	if s.st.Phase != Halted {
		t.Errorf("3 of 10 failed under a 30%% threshold: %s", s.st.Phase)
	}
}

func TestPauseAbort(t *testing.T) {
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Count: 1}, {Percent: 100}}, Gate: Gate{Soak: 5 * time.Minute}}
	s := newSim(t, spec, 4)
	mustStart(t, s)
	s.run(10, func() bool { return s.st.Hosts["m00"].State == HostConfirmed })
	if _, err := Pause(&s.st, spec, s.now, "paused by bob"); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		s.tick()
	}
	if s.count(HostPending) != 3 || s.st.Phase != Paused {
		t.Errorf("paused: %v", s.states())
	}
	if _, err := Pause(&s.st, spec, s.now, "again"); err == nil {
		t.Error("pausing a paused rollout: no error")
	}
	if _, err := Resume(&s.st, spec, s.now, "resumed"); err != nil {
		t.Fatal(err)
	}
	s.tick()
	s.tick()
	if s.count(HostPending) != 0 {
		t.Errorf("resumed but not moving: %v", s.states())
	}
	ev, err := Abort(&s.st, spec, s.now, false, "aborted by bob", s.sig)
	if err != nil {
		t.Fatal(err)
	}
	if s.st.Phase != Aborted || s.st.Hosts["m00"].State != HostConfirmed || len(ev) != 1+3 {
		t.Errorf("abort without revert: phase %s, canary %s, %d events; want the confirmed canary kept and 3 assignments withdrawn", s.st.Phase, s.st.Hosts["m00"].State, len(ev))
	}
	if _, err := Resume(&s.st, spec, s.now, "x"); err == nil {
		t.Error("resuming an aborted rollout: no error")
	}
	if _, err := Start(&s.st, spec, s.now, "x"); err == nil {
		t.Error("starting an aborted rollout: no error")
	}
}

// A rollout whose state is saved and loaded between any two steps (a
// server restart, or another server taking over as leader) ends as one
// that ran in one process, with the same transitions.
func TestRestartInTheMiddle(t *testing.T) {
	spec := &Spec{Name: "r", Digest: img, Waves: []Wave{{Hosts: []string{"m02"}}, {Percent: 50}, {Percent: 100}},
		Gate: Gate{Soak: 3 * time.Minute}, MaxRebooting: 2}
	run := func(restart bool) (State, []string) {
		s := newSim(t, spec, 8)
		s.do["m05"] = "revert"
		s.spec.Threshold = Amount{N: 2}
		mustStart(t, s)
		for i := 0; i < 80 && s.st.Phase == Running; i++ {
			s.tick()
			if restart {
				s.st = roundTrip(t, s.st)
			}
		}
		var ev []string
		for _, e := range s.events {
			ev = append(ev, e.String())
		}
		return s.st, ev
	}
	a, evA := run(false)
	b, evB := run(true)
	if !reflect.DeepEqual(evA, evB) {
		t.Errorf("events differ with restarts:\n%s\n---\n%s", strings.Join(evA, "\n"), strings.Join(evB, "\n"))
	}
	if a.Phase != Done || b.Phase != Done {
		t.Errorf("phases %s, %s; want done", a.Phase, b.Phase)
	}
}

// roundTrip is what the fleet database keeps: the state as JSON and each
// host as a row.
func roundTrip(t *testing.T, st State) State {
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var out State
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	out.Hosts = map[string]*Host{}
	for m, h := range st.Hosts {
		hb, _ := json.Marshal(h)
		var c Host
		json.Unmarshal(hb, &c)
		out.Hosts[m] = &c
	}
	return out
}
