package fleet

import (
	"path/filepath"
	"strings"
	"testing"
)

// Rollouts with waves are checked at load, each problem at its line.
func TestRolloutSpecRefused(t *testing.T) {
	head := `images:
  - {name: base, version: "1", digest: sha256:` + strings.Repeat("a", 64) + `, path: /nonexistent/1.img}
groups:
  - {name: web, image: base@1, labels: {rack: r1}}
hosts:
  - {mac: "52:54:00:00:00:01", hostname: web-01, group: web, labels: {role: db}}
rollouts:
`
	for _, tc := range []struct {
		name, rollout, want string
	}{
		{"percent with waves", `  - {name: r, image: base@1, group: web, percent: 10, waves: [{percent: 100}]}`, "percent is for rollouts advanced by hand"},
		{"two kinds in one wave", `  - {name: r, image: base@1, group: web, waves: [{percent: 10, count: 3}]}`, "wave 1: give one of hosts, percent and count"},
		{"unknown canary", `  - {name: r, image: base@1, group: web, waves: [{hosts: [web-99]}, {percent: 100}]}`, `wave 1: unknown host "web-99"`},
		{"unknown group", `  - {name: r, image: base@1, groups: [db], waves: [{percent: 100}]}`, `unknown group "db"`},
		{"bad window", `  - {name: r, image: base@1, group: web, waves: [{percent: 100}], window: {days: [Fry]}}`, "window: day"},
		{"bad zone", `  - {name: r, image: base@1, group: web, waves: [{percent: 100}], window: {hours: "01:00-02:00", timezone: Mars/Base}}`, "time zone"},
		{"bad threshold", `  - {name: r, image: base@1, group: web, waves: [{percent: 100}], failure_threshold: lots}`, "failure_threshold"},
		{"bad gate", `  - {name: r, image: base@1, group: web, waves: [{percent: 100}], gate: {confirmed: 120%}}`, "gate: confirmed"},
		{"bad soak", `  - {name: r, image: base@1, group: web, waves: [{percent: 100}], gate: {soak: soon}}`, "soak"},
		{"offline policy", `  - {name: r, image: base@1, group: web, waves: [{percent: 100}], offline: later}`, `offline "later"`},
		{"limits without waves", `  - {name: r, image: base@1, group: web, max_rebooting: 3}`, "for rollouts with waves"},
		{"no target", `  - {name: r, image: base@1, waves: [{percent: 100}]}`, "needs a target"},
		{"bad selector", `  - {name: r, image: base@1, selector: {"bad key!": x}, waves: [{percent: 100}]}`, "label key"},
		{"unknown key", `  - {name: r, image: base@1, group: web, waves: [{percent: 100}], soak: 1h}`, `unknown key "soak"`},
	} {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "fleet.yaml"), head+tc.rollout+"\n")
		_, err := Load(dir)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "fleet.yaml:8") {
			t.Errorf("%s: Load = %v, want an error at fleet.yaml:8 naming %q", tc.name, err, tc.want)
		}
	}
	// A selector picks by merged labels.
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), head+`  - {name: r, image: base@1, selector: {rack: r1, role: db}, waves: [{percent: 100}]}`+"\n")
	d, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.rolloutTarget(d.Rollouts[0]); len(got) != 1 || got[0] != "52:54:00:00:00:01" {
		t.Errorf("target of selector rack=r1,role=db = %v", got)
	}
}
