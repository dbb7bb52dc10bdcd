package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/stage"
)

const (
	dA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	dB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	dC = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
)

func TestPlan(t *testing.T) {
	failedB := stage.Failed{dB: {Digest: dB, Reason: "reverted"}}
	none := func(string) bool { return false }
	for _, tc := range []struct {
		name   string
		obs    Observed
		des    Desired
		failed stage.Failed
		want   Decision // compared on the action fields
	}{
		{"up to date", Observed{Current: dA}, Desired{Image: DesiredImage{Digest: dA}}, nil, Decision{Uptodate: true}},
		{"assigned new image", Observed{Current: dA}, Desired{Image: DesiredImage{Digest: dB}}, nil, Decision{Stage: true}},
		{"already staged waits for reboot", Observed{Current: dA, New: dB}, Desired{Image: DesiredImage{Digest: dB}}, nil, Decision{Reboot: true}},
		{"back to current unstages", Observed{Current: dA, New: dB}, Desired{Image: DesiredImage{Digest: dA}}, nil, Decision{Uptodate: true, Unstage: true}},
		{"failed digest refused", Observed{Current: dA}, Desired{Image: DesiredImage{Digest: dB}}, failedB, Decision{Refused: "x"}},
		{"failed digest forced", Observed{Current: dA}, Desired{Image: DesiredImage{Digest: dB}, Force: true}, failedB, Decision{Stage: true}},
		{"no staging during a trial", Observed{Current: dA, Trial: true}, Desired{Image: DesiredImage{Digest: dC}}, nil, Decision{}},
		{"revert with old", Observed{Current: dB, Old: dA}, Desired{Image: DesiredImage{Digest: dA}, Revert: "r1"}, nil, Decision{Revert: "r1", Reboot: true}},
		{"revert without old", Observed{Current: dB}, Desired{Image: DesiredImage{Digest: dB}, Revert: "r1"}, nil, Decision{NoOld: "r1", Uptodate: true}},
		{"revert written waits for reboot", Observed{Current: dB, Old: dA, RevertPending: true}, Desired{Image: DesiredImage{Digest: dC}}, nil, Decision{Reboot: true}},
		{"no assignment", Observed{Current: dA}, Desired{}, nil, Decision{}},
	} {
		got := Plan(tc.obs, tc.des, tc.failed, none)
		if got.Stage != tc.want.Stage || got.Unstage != tc.want.Unstage || got.Revert != tc.want.Revert ||
			got.NoOld != tc.want.NoOld || got.Reboot != tc.want.Reboot || got.Uptodate != tc.want.Uptodate ||
			(got.Refused != "") != (tc.want.Refused != "") {
			t.Errorf("%s: Plan(%+v, %+v) = %+v, want %+v", tc.name, tc.obs, tc.des, got, tc.want)
		}
	}
	applied := func(id string) bool { return id == "r1" }
	if got := Plan(Observed{Current: dA, Old: dB}, Desired{Image: DesiredImage{Digest: dA}, Revert: "r1"}, nil, applied); got.Revert != "" {
		t.Errorf("Plan with revert r1 already applied = %+v, want no second revert", got)
	}
}

func TestJudge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ok := []Observation{{Check: "unit a", OK: true}}
	bad := []Observation{{Check: "unit a", OK: false, Detail: "failed"}}
	type round struct {
		at  time.Duration
		obs []Observation
	}
	for _, tc := range []struct {
		name   string
		rounds []round
		want   string
		reason string
	}{
		{"passes after settle", []round{{0, ok}, {10 * time.Second, ok}, {30 * time.Second, ok}}, HealthPassed, "healthy for"},
		{"still settling", []round{{0, ok}, {20 * time.Second, ok}}, HealthPending, ""},
		{"flap restarts settle", []round{{0, ok}, {20 * time.Second, bad}, {40 * time.Second, ok}, {60 * time.Second, ok}}, HealthPending, ""},
		{"fails at deadline with reason", []round{{0, bad}, {2 * time.Minute, bad}}, HealthFailed, "unit a: failed"},
		{"healthy too briefly at deadline", []round{{0, bad}, {110 * time.Second, ok}, {2 * time.Minute, ok}}, HealthFailed, "settle"},
	} {
		j := &Judge{Checks: Checks{Settle: 30 * time.Second, Deadline: 2 * time.Minute}, Start: t0}
		var v Verdict
		for _, r := range tc.rounds {
			v = j.Observe(t0.Add(r.at), r.obs)
		}
		if v.State != tc.want || !strings.Contains(v.Reason, tc.reason) {
			t.Errorf("%s: verdict = %s (%s), want %s with %q", tc.name, v.State, v.Reason, tc.want, tc.reason)
		}
	}
}

func TestPolicyDecide(t *testing.T) {
	// 2026-01-03 is a Saturday.
	at := func(day, h, m int) time.Time { return time.Date(2026, 1, day, h, m, 0, 0, time.UTC) }
	for _, tc := range []struct {
		policy string
		now    time.Time
		reboot bool
		next   time.Time
	}{
		{"", at(3, 12, 0), false, time.Time{}},
		{"never", at(3, 12, 0), false, time.Time{}},
		{"immediate", at(3, 12, 0), true, at(3, 12, 0)},
		{"window 02:00-04:00", at(3, 3, 0), true, at(3, 3, 0)},
		{"window 02:00-04:00", at(3, 4, 0), false, at(4, 2, 0)},
		{"window Sat,Sun 02:00-04:00", at(5, 3, 0), false, at(10, 2, 0)},
		{"window Fri 22:00-02:00", at(3, 1, 0), true, at(3, 1, 0)}, // Saturday 01:00 is in Friday's window
		{"window Fri 22:00-02:00", at(3, 2, 0), false, at(9, 22, 0)},
	} {
		p, err := ParsePolicy(tc.policy)
		if err != nil {
			t.Fatalf("ParsePolicy(%q): %v", tc.policy, err)
		}
		reboot, next := p.Decide(tc.now)
		if reboot != tc.reboot || !next.Equal(tc.next) {
			t.Errorf("%q.Decide(%v) = %v, %v; want %v, %v", tc.policy, tc.now, reboot, next, tc.reboot, tc.next)
		}
	}
	for _, bad := range []string{"sometimes", "window", "window 25:00-01:00", "window Xyz 01:00-02:00", "immediate now"} {
		if _, err := ParsePolicy(bad); err == nil {
			t.Errorf("ParsePolicy(%q) = nil error, want one", bad)
		}
	}
}
