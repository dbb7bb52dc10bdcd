package testvm

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestFleetDemo runs make demo's story end to end (RunFleetDemo with this
// run's fixture): two PXE-booted QEMU hosts with the agent, a rollout of
// web@2 that finishes, the big red button on their group pressed in the
// dashboard (headless chromium), and both hosts back on web@1, each
// through a revert its init applied; a screenshot of the dashboard
// after each step.
func TestFleetDemo(t *testing.T) {
	f := fixture(t)
	var story syncLog
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := RunFleetDemo(ctx, FleetDemoOptions{Fixture: f, Dir: t.TempDir(), Out: &story, Shots: t.TempDir()})
	if testing.Verbose() || err != nil {
		t.Logf("the demo's story:\n%s", story.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fleet demo in %v (fixture built before)", time.Since(start).Round(time.Second))
	for _, h := range demoHosts {
		if got := res.Final[h.name]; got != res.Old {
			t.Errorf("%s ends on %q, want the old image %s", h.name, got, res.Old)
		}
		if res.RevertID[h.name] == "" {
			t.Errorf("%s's last check-in reports no applied revert", h.name)
		}
		// First boot, the update's boot, the revert's boot.
		if res.Boots[h.name] < 3 {
			t.Errorf("%s booted %d times, want at least 3 (web@1, web@2, the revert)", h.name, res.Boots[h.name])
		}
	}
	var names []string
	for _, s := range res.Steps {
		names = append(names, s.Name)
		if s.Name == "images" {
			continue // before the server: nothing to show
		}
		// A screenshot of the dashboard after every other step, a PNG.
		if b, err := os.ReadFile(s.Shot); err != nil || len(b) < 1000 || string(b[1:4]) != "PNG" {
			t.Errorf("step %s: no dashboard screenshot (%q: %v, %d bytes)", s.Name, s.Shot, err, len(b))
		}
	}
	if got, want := strings.Join(names, " "), "images serve booted rolled-out revert-pressed reverted"; got != want {
		t.Errorf("steps = %q, want %q", got, want)
	}
}
