package fleet

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/hnboot/hnboot/fleet/rollout"
	"github.com/hnboot/hnboot/internal/hostconfig"
	"gopkg.in/yaml.v3"
)

// Auto is what makes a rollout run itself (package fleet/rollout): its
// target beyond Group and Hosts, its waves and their gates, and its
// limits. A rollout without Waves is advanced by hand (Percent).
type Auto struct {
	Groups   []string          `json:"groups,omitempty"`
	Selector map[string]string `json:"selector,omitempty"` // labels a host must all have
	Waves    []WaveSpec        `json:"waves,omitempty"`
	Gate     *GateSpec         `json:"gate,omitempty"`
	// MaxRebooting bounds the hosts between assignment and confirmation.
	MaxRebooting     int         `json:"max_rebooting,omitempty"`
	Window           *WindowSpec `json:"window,omitempty"`
	FailureThreshold string      `json:"failure_threshold,omitempty"` // "1" or "10%"
	RevertOnHalt     bool        `json:"revert_on_halt,omitempty"`
	Offline          string      `json:"offline,omitempty"` // wait or skip
	OfflineDeadline  Duration    `json:"offline_deadline,omitempty"`
	Deadline         Duration    `json:"deadline,omitempty"`
}

// WaveSpec is one wave: explicit hosts (canaries), a share of the target
// the rollout reaches with it, or a count of hosts it adds.
type WaveSpec struct {
	Hosts   []string  `json:"hosts,omitempty"`
	Percent int       `json:"percent,omitempty"`
	Count   int       `json:"count,omitempty"`
	Gate    *GateSpec `json:"gate,omitempty"`
}

// GateSpec is a wave's gate: how many hosts ("3" or "90%") confirmed
// the image, held for Soak.
type GateSpec struct {
	Confirmed string   `json:"confirmed,omitempty"`
	Soak      Duration `json:"soak,omitempty"`
}

// WindowSpec is a maintenance window: days ("Mon-Fri", "Sat,Sun"),
// hours ("02:00-05:00", may cross midnight) and a time zone (IANA name;
// default UTC).
type WindowSpec struct {
	Days     []string `json:"days,omitempty"`
	Hours    string   `json:"hours,omitempty"`
	Timezone string   `json:"timezone,omitempty"`
}

// Duration is a time.Duration that reads and writes as "30m" in YAML and
// JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string like \"30m\": %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("duration %q: want a Go duration like 30m or 1h30m", s)
	}
	*d = Duration(v)
	return nil
}

// IsAuto reports whether the rollout runs itself.
func (r *Rollout) IsAuto() bool { return len(r.Waves) > 0 }

var autoKeys = []string{"groups", "selector", "waves", "gate", "max_rebooting", "window", "failure_threshold",
	"revert_on_halt", "offline", "offline_deadline", "deadline"}

// auto reads the keys of Auto from a rollout's YAML mapping.
func (l *loader) auto(file string, f map[string]*yaml.Node, r *Rollout) {
	who := "rollout " + r.Name
	r.Groups = l.strs(file, f["groups"], "groups")
	r.Selector = l.labels(file, f["selector"], who+": selector")
	if n := f["waves"]; n != nil {
		for _, it := range l.seq(file, n, "waves") {
			wf := l.mapping(file, it, "hosts", "percent", "count", "gate")
			w := WaveSpec{Hosts: l.strs(file, wf["hosts"], "hosts"), Gate: l.gate(file, wf["gate"], who)}
			l.int(file, wf["percent"], who+": percent", &w.Percent)
			l.int(file, wf["count"], who+": count", &w.Count)
			r.Waves = append(r.Waves, w)
		}
	}
	r.Gate = l.gate(file, f["gate"], who)
	l.int(file, f["max_rebooting"], who+": max_rebooting", &r.MaxRebooting)
	if n := f["window"]; n != nil {
		wf := l.mapping(file, n, "days", "hours", "timezone")
		r.Window = &WindowSpec{Days: l.strs(file, wf["days"], "days"), Hours: l.str(file, wf["hours"], "hours"), Timezone: l.str(file, wf["timezone"], "timezone")}
	}
	r.FailureThreshold = l.str(file, f["failure_threshold"], "failure_threshold")
	if n := f["revert_on_halt"]; n != nil {
		if err := n.Decode(&r.RevertOnHalt); err != nil {
			l.errf(Pos{file, n.Line}, "%s: revert_on_halt %q: want true or false", who, n.Value)
		}
	}
	r.Offline = l.str(file, f["offline"], "offline")
	l.duration(file, f["offline_deadline"], who+": offline_deadline", &r.OfflineDeadline)
	l.duration(file, f["deadline"], who+": deadline", &r.Deadline)
}

func (l *loader) gate(file string, n *yaml.Node, who string) *GateSpec {
	if n == nil {
		return nil
	}
	f := l.mapping(file, n, "confirmed", "soak")
	g := &GateSpec{Confirmed: l.str(file, f["confirmed"], "confirmed")}
	l.duration(file, f["soak"], who+": soak", &g.Soak)
	return g
}

func (l *loader) int(file string, n *yaml.Node, what string, v *int) {
	if n != nil {
		if err := n.Decode(v); err != nil {
			l.errf(Pos{file, n.Line}, "%s %q: want a whole number", what, n.Value)
		}
	}
}

func (l *loader) duration(file string, n *yaml.Node, what string, v *Duration) {
	if n == nil {
		return
	}
	d, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil || d < 0 {
		l.errf(Pos{file, n.Line}, "%s %q: want a duration like 30m or 1h30m", what, n.Value)
		return
	}
	*v = Duration(d)
}

// Labels: keys as Kubernetes has them (a prefix/ may stand before), values
// one line of text.
var labelKeyRE = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)

const (
	maxLabels     = 64
	maxLabelValue = 253
)

// CheckLabel checks one label, for the loader and the API's selectors.
func CheckLabel(k, v string) error {
	if len(k) > 253 || !labelKeyRE.MatchString(k) {
		return fmt.Errorf("label key %q: want letters, digits, '-', '_' and '.' (at most 63, starting and ending with a letter or digit), optionally after a prefix/", k)
	}
	if err := hostconfig.CheckLine(v, maxLabelValue); err != nil {
		return fmt.Errorf("label %s: %v", k, err)
	}
	return nil
}

func (l *loader) labels(file string, n *yaml.Node, who string) map[string]string {
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		l.errf(Pos{file, n.Line}, "%s: labels: want a mapping of keys to values (rack: r12)", who)
		return nil
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			l.errf(Pos{file, v.Line}, "%s: label %s: want a single value", who, k.Value)
			continue
		}
		if err := CheckLabel(k.Value, v.Value); err != nil {
			l.errf(Pos{file, k.Line}, "%s: %v", who, err)
			continue
		}
		if _, dup := out[k.Value]; dup {
			l.errf(Pos{file, k.Line}, "%s: label %s twice", who, k.Value)
		}
		out[k.Value] = v.Value
	}
	if len(out) > maxLabels {
		l.errf(Pos{file, n.Line}, "%s: %d labels, over the limit of %d", who, len(out), maxLabels)
	}
	return out
}

// Labels are h's labels: its group's, with its own over them.
func (d *Desired) Labels(h *Host) map[string]string {
	out := map[string]string{}
	if g := d.Groups[h.Group]; g != nil {
		for k, v := range g.Labels {
			out[k] = v
		}
	}
	for k, v := range h.Labels {
		out[k] = v
	}
	return out
}

// Matches reports whether h has every label of sel.
func (d *Desired) Matches(h *Host, sel map[string]string) bool {
	if len(sel) == 0 {
		return true
	}
	ls := d.Labels(h)
	for k, v := range sel {
		if got, ok := ls[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// checkRollout checks what a rollout refers to and, for one with waves,
// its whole declaration (the loader and SetRollout both call it).
func (d *Desired) checkRollout(r *Rollout) error {
	var errs []error
	for _, hn := range r.Hosts {
		if d.FindHost(hn) == nil {
			errs = append(errs, fmt.Errorf("unknown host %q", hn))
		}
	}
	if !r.IsAuto() {
		if r.Group == "" && len(r.Hosts) == 0 {
			errs = append(errs, errors.New("needs a group or a list of hosts"))
		}
		if r.Percent < 0 || r.Percent > 100 {
			errs = append(errs, fmt.Errorf("percent %d out of 0..100", r.Percent))
		}
		if len(r.Groups) > 0 || len(r.Selector) > 0 || r.Gate != nil || r.Window != nil || r.MaxRebooting != 0 || r.FailureThreshold != "" ||
			r.RevertOnHalt || r.Offline != "" || r.OfflineDeadline != 0 || r.Deadline != 0 {
			errs = append(errs, errors.New("groups, selector, gate, window and the limits are for rollouts with waves: add waves (or remove them)"))
		}
		return errors.Join(errs...)
	}
	if r.Percent != 0 {
		errs = append(errs, errors.New("percent is for rollouts advanced by hand: with waves, give each wave a percent"))
	}
	for _, g := range r.groups() {
		if d.Groups[g] == nil {
			errs = append(errs, fmt.Errorf("unknown group %q", g))
		}
	}
	for k, v := range r.Selector {
		if err := CheckLabel(k, v); err != nil {
			errs = append(errs, fmt.Errorf("selector: %v", err))
		}
	}
	if r.Group == "" && len(r.Groups) == 0 && len(r.Hosts) == 0 && len(r.Selector) == 0 {
		canaries := 0
		for _, w := range r.Waves {
			canaries += len(w.Hosts)
		}
		if canaries == 0 {
			errs = append(errs, errors.New("needs a target: groups, hosts or a selector"))
		}
	}
	for i, w := range r.Waves {
		for _, hn := range w.Hosts {
			if d.FindHost(hn) == nil {
				errs = append(errs, fmt.Errorf("wave %d: unknown host %q", i+1, hn))
			}
		}
	}
	if len(errs) == 0 {
		if _, err := d.rolloutSpec(r, ""); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Rollout) groups() []string {
	gs := append([]string(nil), r.Groups...)
	if r.Group != "" {
		gs = append(gs, r.Group)
	}
	return gs
}

// rolloutSpec turns a rollout with waves into the state machine's Spec,
// hosts named by MAC; digest is its image's.
func (d *Desired) rolloutSpec(r *Rollout, digest string) (*rollout.Spec, error) {
	s := &rollout.Spec{Name: r.Name, Digest: digest, MaxRebooting: r.MaxRebooting, Revert: r.RevertOnHalt,
		Offline: r.Offline, OfflineDeadline: time.Duration(r.OfflineDeadline), Deadline: time.Duration(r.Deadline)}
	gate := func(g *GateSpec) (*rollout.Gate, error) {
		if g == nil {
			return nil, nil
		}
		out := &rollout.Gate{Soak: time.Duration(g.Soak)}
		if g.Confirmed != "" {
			a, err := rollout.ParseAmount(g.Confirmed)
			if err != nil {
				return nil, fmt.Errorf("gate: confirmed %v", err)
			}
			out.Confirmed = a
		}
		return out, nil
	}
	g, err := gate(r.Gate)
	if err != nil {
		return nil, err
	}
	if g != nil {
		s.Gate = *g
	}
	for i, w := range r.Waves {
		wv := rollout.Wave{Percent: w.Percent, Count: w.Count}
		for _, hn := range w.Hosts {
			if h := d.FindHost(hn); h != nil {
				wv.Hosts = append(wv.Hosts, h.MAC.String())
			}
		}
		if wv.Gate, err = gate(w.Gate); err != nil {
			return nil, fmt.Errorf("wave %d: %v", i+1, err)
		}
		s.Waves = append(s.Waves, wv)
	}
	if r.Window != nil {
		if s.Window, err = rollout.ParseWindow(r.Window.Days, r.Window.Hours, r.Window.Timezone); err != nil {
			return nil, fmt.Errorf("window: %v", err)
		}
	}
	if r.FailureThreshold != "" {
		if s.Threshold, err = rollout.ParseAmount(r.FailureThreshold); err != nil {
			return nil, fmt.Errorf("failure_threshold: %v", err)
		}
	}
	if err := s.Check(); err != nil {
		return nil, err
	}
	return s, nil
}

// rolloutTarget is the rollout's target, MACs in its stable order
// (sha256 of rollout name and MAC, as for the hand-advanced rollouts):
// the hosts of its groups that match its selector (every host matching
// it without groups), and its listed hosts.
func (d *Desired) rolloutTarget(r *Rollout) []string {
	seen := map[string]bool{}
	var cand []string
	add := func(h *Host) {
		if m := h.MAC.String(); !seen[m] {
			seen[m] = true
			cand = append(cand, m)
		}
	}
	gs := map[string]bool{}
	for _, g := range r.groups() {
		gs[g] = true
	}
	for _, h := range d.Hosts {
		if (len(gs) > 0 && !gs[h.Group]) || (len(gs) == 0 && len(r.Selector) == 0) {
			continue
		}
		if d.Matches(h, r.Selector) {
			add(h)
		}
	}
	for _, hn := range r.Hosts {
		if h := d.FindHost(hn); h != nil {
			add(h)
		}
	}
	keys := make(map[string]string, len(cand))
	for _, m := range cand {
		s := sha256.Sum256([]byte(r.Name + "\x00" + m))
		keys[m] = string(s[:])
	}
	sort.Slice(cand, func(i, j int) bool { return keys[cand[i]] < keys[cand[j]] })
	return cand
}

// describeTarget is the target in words, for status.
func (r *Rollout) describeTarget() string {
	var parts []string
	if gs := r.groups(); len(gs) > 0 {
		parts = append(parts, "groups "+strings.Join(gs, ","))
	}
	if len(r.Selector) > 0 {
		var kv []string
		for k, v := range r.Selector {
			kv = append(kv, k+"="+v)
		}
		sort.Strings(kv)
		parts = append(parts, "labels "+strings.Join(kv, ","))
	}
	if len(r.Hosts) > 0 {
		parts = append(parts, "hosts "+strings.Join(r.Hosts, ","))
	}
	return strings.Join(parts, "; ")
}
