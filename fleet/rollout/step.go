package rollout

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/digest"
)

// Phases of a rollout.
const (
	Pending = "pending" // declared, not started
	Running = "running"
	Paused  = "paused" // no moves, no new waves; hosts in flight are still watched, failures still halt
	Halted  = "halted" // the failure threshold was reached
	Aborted = "aborted"
	Done    = "done"
)

// Host states.
const (
	HostPending   = "pending"   // its wave has not started, or it waits (capacity, window, offline)
	HostStaging   = "staging"   // assigned the image; downloading it, or not yet seen doing so
	HostRebooting = "rebooting" // the image is staged; the host reboots into it
	HostTrial     = "trial"     // runs the image on trial
	HostConfirmed = "confirmed" // runs the image, trial confirmed
	HostFailed    = "failed"    // reverted, rejected, refused, unhealthy or past the deadline
	HostReverted  = "reverted"  // the rollout took it back after a halt or an abort
	HostSkipped   = "skipped"   // offline past the deadline; not moved, never a success
)

// State is a rollout's progress: what the fleet database keeps.
type State struct {
	Phase  string      `json:"phase"`
	Reason string      `json:"reason,omitempty"` // why the phase, or what it waits for
	Since  time.Time   `json:"since"`            // of the phase
	Waves  []WaveState `json:"waves"`
	// Hosts are kept apart by the database (one row each); they are not
	// in the JSON of the rest.
	Hosts map[string]*Host `json:"-"`
}

// WaveState is one wave's progress; zero times: not yet.
type WaveState struct {
	Started time.Time `json:"started,omitzero"`
	GateMet time.Time `json:"gate_met,omitzero"` // the gate holds since
	Passed  time.Time `json:"passed,omitzero"`
	// Acked failures were acknowledged by a resume after a halt: only
	// failures beyond them count towards the threshold.
	Acked int `json:"acked,omitempty"`
}

// Host is one host's progress.
type Host struct {
	Wave   int       `json:"wave"`
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since"` // of State
	Moved  time.Time `json:"moved,omitzero"`
	From   string    `json:"from,omitempty"` // the digest it ran when moved
}

// moved reports whether the rollout assigns the host the image.
func (h *Host) moved() bool {
	return !h.Moved.IsZero() && h.State != HostReverted && h.State != HostFailed
}

// Assigned reports whether the rollout assigns the host its image now.
func (h *Host) Assigned() bool {
	return h.moved()
}

func inFlight(state string) bool {
	return state == HostStaging || state == HostRebooting || state == HostTrial
}

// Signal is what a host's last check-in says, as far as the rollout's
// image is concerned.
type Signal struct {
	Seen    time.Time // the last check-in; zero: never
	Running string    // digest of the image it runs
	Trial   bool
	New     string // digest staged as hn-root-new.img
	// Failed: the host reverted the image (hn-root-broken.img), lists it
	// in its failed digests, or the init rejected it; FailReason says
	// which.
	Failed      bool
	FailReason  string
	Health      string // the agent's verdict on this boot: pending, passed, failed
	HealthWhy   string
	Staging     string // the agent's staging of the image: downloading, staged, failed, refused
	StagingWhy  string
	Done, Total int64  // staging progress in bytes
	Rebooting   string // the agent said it reboots, and why
}

// Event is one transition and its cause. Host is a MAC, or "" for the
// rollout (From and To are phases then, or wave events).
type Event struct {
	Host     string
	Wave     int // -1: not about a wave
	From, To string
	Reason   string
	// Assign: the host is assigned the image from now on; Unassign:
	// no more. Revert: the host runs (or may run) the image and must be
	// reverted (fleet revert, pinned to From).
	Assign, Unassign, Revert bool
	FromDigest               string
}

func (e Event) String() string {
	who := "rollout"
	if e.Host != "" {
		who = e.Host
	}
	w := ""
	if e.Wave >= 0 {
		w = fmt.Sprintf(" (wave %d)", e.Wave+1)
	}
	return fmt.Sprintf("%s%s: %s -> %s: %s", who, w, e.From, e.To, e.Reason)
}

// New is the state of a declared rollout.
func New(now time.Time) State {
	return State{Phase: Pending, Since: now, Hosts: map[string]*Host{}}
}

// Manual transitions.
var (
	ErrNotStarted = errors.New("the rollout has not been started")
	ErrFinished   = errors.New("the rollout is finished")
)

// Start starts a pending rollout: its first wave begins at the next Step.
func Start(st *State, spec *Spec, now time.Time, why string) ([]Event, error) {
	if st.Phase != Pending {
		return nil, fmt.Errorf("rollout %s is %s, not pending: only a pending rollout starts (resume a paused or halted one)", spec.Name, st.Phase)
	}
	st.Waves = make([]WaveState, len(spec.Waves))
	st.Waves[0].Started = now
	ev := []Event{st.phase(Running, why, now), {Wave: 0, From: "waiting", To: "started", Reason: "first wave"}}
	return ev, nil
}

// Pause stops moving hosts and starting waves.
func Pause(st *State, spec *Spec, now time.Time, why string) ([]Event, error) {
	if st.Phase != Running {
		return nil, fmt.Errorf("rollout %s is %s: only a running rollout pauses", spec.Name, st.Phase)
	}
	return []Event{st.phase(Paused, why, now)}, nil
}

// Resume continues a paused or halted rollout. After a halt, the failures
// so far are acknowledged: only new ones count towards the threshold.
func Resume(st *State, spec *Spec, now time.Time, why string) ([]Event, error) {
	switch st.Phase {
	case Paused:
	case Halted:
		fails := st.failures()
		for w := range st.Waves {
			st.Waves[w].Acked = fails[w]
		}
	default:
		return nil, fmt.Errorf("rollout %s is %s: only a paused or halted rollout resumes", spec.Name, st.Phase)
	}
	return []Event{st.phase(Running, why, now)}, nil
}

// Abort ends the rollout for good; with revert, the hosts it moved are
// reverted (sig tells which failed hosts still run the image), else those
// that run the image keep it.
func Abort(st *State, spec *Spec, now time.Time, revert bool, why string, sig map[string]Signal) ([]Event, error) {
	if st.Phase == Aborted || st.Phase == Done {
		return nil, fmt.Errorf("rollout %s is %s already", spec.Name, st.Phase)
	}
	ev := []Event{st.phase(Aborted, why, now)}
	ev = append(ev, st.withdraw(spec, revert, "aborted: "+why, now, sig)...)
	return ev, nil
}

func (st *State) phase(to, why string, now time.Time) Event {
	e := Event{Wave: -1, From: st.Phase, To: to, Reason: why}
	st.Phase, st.Reason, st.Since = to, why, now
	return e
}

// withdraw takes the rollout's image back from the hosts it moved: hosts
// that may run it are reverted (revert) or keep it (!revert); hosts that
// have not booted it yet lose the assignment either way. A failed host
// that still runs the image (unhealthy on trial) is reverted too.
func (st *State) withdraw(spec *Spec, revert bool, why string, now time.Time, sig map[string]Signal) []Event {
	var ev []Event
	for _, mac := range st.macs() {
		h := st.Hosts[mac]
		switch {
		case revert && h.State == HostFailed && !h.Moved.IsZero() && sig[mac].Running == spec.Digest:
			ev = append(ev, st.set(mac, h, HostReverted, h.Reason+"; "+why+": reverted to "+label(h.From), now, Event{Revert: true, FromDigest: h.From}))
		case !h.moved() || h.State == HostSkipped:
			continue
		case h.State == HostStaging || h.State == HostRebooting:
			ev = append(ev, st.set(mac, h, HostReverted, why+"; its assignment is withdrawn before it booted the image", now, Event{Unassign: true, FromDigest: h.From}))
		case revert:
			ev = append(ev, st.set(mac, h, HostReverted, why+"; reverted to "+label(h.From), now, Event{Unassign: true, Revert: true, FromDigest: h.From}))
		}
	}
	return ev
}

func label(d string) string {
	if d == "" {
		return "its old image"
	}
	return digest.Short(d)
}

func (st *State) macs() []string {
	out := make([]string, 0, len(st.Hosts))
	for m := range st.Hosts {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// set changes a host's state and returns the event.
func (st *State) set(mac string, h *Host, to, why string, now time.Time, e Event) Event {
	e.Host, e.Wave, e.From, e.To, e.Reason = mac, h.Wave, h.State, to, why
	h.State, h.Reason, h.Since = to, why, now
	return e
}

// failures counts the failed hosts per wave.
func (st *State) failures() []int {
	n := make([]int, len(st.Waves))
	for _, h := range st.Hosts {
		if h.State == HostFailed && h.Wave < len(n) {
			n[h.Wave]++
		}
	}
	return n
}

// Step advances the rollout to now: target is the rollout's hosts (MACs,
// in its stable order), sig what each last reported. It updates st and
// returns the transitions.
func Step(spec *Spec, st *State, target []string, sig map[string]Signal, now time.Time) []Event {
	if st.Hosts == nil {
		st.Hosts = map[string]*Host{}
	}
	if len(st.Waves) < len(spec.Waves) {
		st.Waves = append(st.Waves, make([]WaveState, len(spec.Waves)-len(st.Waves))...)
	}
	if st.Phase == Pending {
		return nil
	}
	var ev []Event
	ev = append(ev, st.reconcile(spec, target, now)...)
	for _, mac := range st.macs() {
		if e, ok := st.observe(spec, mac, sig[mac], now); ok {
			ev = append(ev, e)
		}
	}
	if st.Phase != Running && st.Phase != Paused {
		return ev
	}
	if e := st.checkThreshold(spec, now, sig); e != nil {
		return append(ev, e...)
	}
	if st.Phase != Running {
		return ev
	}
	ev = append(ev, st.advance(spec, sig, now)...)
	return ev
}

// reconcile puts new target hosts into their waves (a host that joins
// after its wave started goes into the wave its place gives it) and drops
// hosts that left the target before they were moved.
func (st *State) reconcile(spec *Spec, target []string, now time.Time) []Event {
	plan := spec.Plan(target)
	var ev []Event
	for mac, w := range plan {
		if w >= len(st.Waves) {
			continue
		}
		if _, ok := st.Hosts[mac]; !ok {
			st.Hosts[mac] = &Host{Wave: w, State: HostPending, Since: now, Reason: "waiting for its wave"}
		}
	}
	for _, mac := range st.macs() {
		h := st.Hosts[mac]
		if _, in := plan[mac]; !in && h.Moved.IsZero() {
			delete(st.Hosts, mac)
			ev = append(ev, Event{Host: mac, Wave: h.Wave, From: h.State, To: "removed", Reason: "no longer in the rollout's target"})
		}
	}
	return ev
}

// observe derives a moved host's state from its signal.
func (st *State) observe(spec *Spec, mac string, s Signal, now time.Time) (Event, bool) {
	h := st.Hosts[mac]
	if h.Moved.IsZero() || h.State == HostReverted {
		return Event{}, false
	}
	to, why := h.State, h.Reason
	d := spec.Digest
	switch {
	case s.Failed:
		to, why = HostFailed, s.FailReason
	case s.Running == d && s.Trial && s.Health == "failed":
		to, why = HostFailed, "health checks failed on trial: "+s.HealthWhy
	case s.Running == d && !s.Trial:
		to, why = HostConfirmed, "runs the image, trial confirmed"
	case h.State == HostConfirmed || h.State == HostFailed:
		// A confirmed host that runs something else now (reverted by
		// hand, say) is no failure of the image; a failed one stays so.
	case s.Running == d:
		to, why = HostTrial, "runs the image on trial"
		if s.Health != "" {
			why += "; health " + s.Health
			if s.HealthWhy != "" {
				why += ": " + s.HealthWhy
			}
		}
	case s.Staging == "refused":
		to, why = HostFailed, "the host refused the image: "+s.StagingWhy
	case s.New == d || s.Staging == "staged":
		to, why = HostRebooting, "the image is staged; waiting for the reboot"
		if s.Rebooting != "" {
			why = "rebooting: " + s.Rebooting
		}
	default:
		to, why = HostStaging, "assigned; waiting for the host to fetch the image"
		switch {
		case s.Staging == "downloading" && s.Total > 0:
			why = fmt.Sprintf("downloading the image (%d%%)", s.Done*100/s.Total)
		case s.Staging == "downloading":
			why = "downloading the image"
		case s.Staging == "failed":
			why = "download failed (the host retries): " + s.StagingWhy
		case s.Seen.Before(h.Moved):
			why = "assigned; no check-in since"
		}
	}
	if (inFlight(to) || to == HostPending) && now.Sub(h.Moved) > spec.deadline() {
		last := "never checked in"
		if !s.Seen.IsZero() {
			last = "last check-in " + now.Sub(s.Seen).Round(time.Second).String() + " ago"
		}
		to, why = HostFailed, fmt.Sprintf("not confirmed within %v of its assignment (%s; %s)", spec.deadline(), why, last)
	}
	if to == h.State && why == h.Reason {
		return Event{}, false
	}
	if to == h.State {
		h.Reason = why // progress only: no transition to audit
		return Event{}, false
	}
	e := Event{}
	if to == HostFailed {
		e.Unassign = true
		e.FromDigest = h.From
	}
	return st.set(mac, h, to, why, now, e), true
}

// checkThreshold halts the rollout when a started wave has as many new
// failures as its threshold.
func (st *State) checkThreshold(spec *Spec, now time.Time, sig map[string]Signal) []Event {
	fails := st.failures()
	size := st.waveSizes()
	for w := range st.Waves {
		if st.Waves[w].Started.IsZero() {
			continue
		}
		n, limit := fails[w]-st.Waves[w].Acked, spec.threshold(size[w])
		if n < limit {
			continue
		}
		var who []string
		for _, mac := range st.macs() {
			if h := st.Hosts[mac]; h.Wave == w && h.State == HostFailed {
				who = append(who, mac+": "+h.Reason)
			}
		}
		if len(who) > 3 {
			who = append(who[:3], fmt.Sprintf("and %d more", len(who)-3))
		}
		why := fmt.Sprintf("wave %d: %d hosts failed, threshold %d (%s)", w+1, n, limit, strings.Join(who, "; "))
		ev := []Event{st.phase(Halted, why, now)}
		return append(ev, st.withdraw(spec, spec.Revert, "halted", now, sig)...)
	}
	return nil
}

func (st *State) waveSizes() []int {
	n := make([]int, len(st.Waves))
	for _, h := range st.Hosts {
		if h.Wave < len(n) {
			n[h.Wave]++
		}
	}
	return n
}

// advance moves hosts of the started waves, skips offline ones past the
// deadline, and checks the current wave's gate.
func (st *State) advance(spec *Spec, sig map[string]Signal, now time.Time) []Event {
	var ev []Event
	flying := 0
	for _, h := range st.Hosts {
		if inFlight(h.State) {
			flying++
		}
	}
	open := spec.Window.Open(now)
	waitWhy := ""
	if !open {
		waitWhy = "waiting for the maintenance window (" + spec.Window.String() + ", next " + spec.Window.Next(now).Format("2006-01-02 15:04 MST") + ")"
	}
	for _, mac := range st.macs() {
		h := st.Hosts[mac]
		if h.State != HostPending || st.Waves[h.Wave].Started.IsZero() {
			continue
		}
		s := sig[mac]
		online := !s.Seen.IsZero() && now.Sub(s.Seen) <= spec.onlineWithin()
		switch {
		case s.Running == spec.Digest && !s.Trial && !s.Failed:
			h.Moved, h.From = now, s.Running
			ev = append(ev, st.set(mac, h, HostConfirmed, "already runs the image, confirmed", now, Event{Assign: true}))
		case s.Failed:
			h.Moved, h.From = now, s.Running
			ev = append(ev, st.set(mac, h, HostFailed, "the image failed on this host before: "+s.FailReason, now, Event{}))
		case !online:
			last := "never checked in"
			if !s.Seen.IsZero() {
				last = "last check-in " + now.Sub(s.Seen).Round(time.Second).String() + " ago"
			}
			if spec.Offline == OfflineSkip && now.Sub(st.Waves[h.Wave].Started) >= spec.offlineDeadline() {
				ev = append(ev, st.set(mac, h, HostSkipped, fmt.Sprintf("offline %v after its wave started (%s); skipped", spec.offlineDeadline(), last), now, Event{}))
			} else {
				h.Reason = "offline (" + last + "); waiting for it to check in"
			}
		case !open:
			h.Reason = waitWhy
		case spec.MaxRebooting > 0 && flying >= spec.MaxRebooting:
			h.Reason = fmt.Sprintf("waiting: %d hosts are updating (max_rebooting %d)", flying, spec.MaxRebooting)
		default:
			flying++
			h.Moved, h.From = now, s.Running
			ev = append(ev, st.set(mac, h, HostStaging, "assigned the image", now, Event{Assign: true}))
		}
	}
	st.Reason = waitWhy
	// The gate of the newest started wave.
	cur := 0
	for w := range st.Waves {
		if !st.Waves[w].Started.IsZero() {
			cur = w
		}
	}
	ws := &st.Waves[cur]
	if ws.Passed.IsZero() {
		total, confirmed, failed := 0, 0, 0
		for _, h := range st.Hosts {
			if h.Wave != cur || h.State == HostSkipped {
				continue
			}
			total++
			switch h.State {
			case HostConfirmed:
				confirmed++
			case HostFailed:
				failed++
			}
		}
		g := spec.gate(cur)
		// By default every host that did not fail (below the
		// threshold) must confirm.
		need := total - failed
		if !g.Confirmed.IsZero() {
			need = g.Confirmed.Of(total)
		}
		met := confirmed >= need
		switch {
		case met && ws.GateMet.IsZero():
			ws.GateMet = now
			why := fmt.Sprintf("%d of %d hosts confirmed (gate %s)", confirmed, total, gateText(g))
			if g.Soak > 0 {
				why += fmt.Sprintf("; soaking %v", g.Soak)
			}
			ev = append(ev, Event{Wave: cur, From: "started", To: "gate met", Reason: why})
		case !met && !ws.GateMet.IsZero():
			ws.GateMet = time.Time{}
			ev = append(ev, Event{Wave: cur, From: "gate met", To: "started", Reason: fmt.Sprintf("gate lost during the soak: %d of %d hosts confirmed, %d needed", confirmed, total, need)})
		}
		if !ws.GateMet.IsZero() && now.Sub(ws.GateMet) >= g.Soak {
			ws.Passed = now
			ev = append(ev, Event{Wave: cur, From: "gate met", To: "passed", Reason: fmt.Sprintf("gate held for %v", g.Soak)})
			if cur+1 < len(st.Waves) {
				st.Waves[cur+1].Started = now
				ev = append(ev, Event{Wave: cur + 1, From: "waiting", To: "started", Reason: fmt.Sprintf("wave %d passed its gate", cur+1)})
				// Its hosts move at once, not a step later.
				ev = append(ev, st.advance(spec, sig, now)...)
				return ev
			}
		}
	}
	if !ws.Passed.IsZero() && cur == len(st.Waves)-1 {
		left := 0
		for _, h := range st.Hosts {
			if inFlight(h.State) || h.State == HostPending {
				left++
			}
		}
		if left == 0 {
			n := map[string]int{}
			for _, h := range st.Hosts {
				n[h.State]++
			}
			ev = append(ev, st.phase(Done, fmt.Sprintf("every wave passed: %d confirmed, %d failed, %d skipped", n[HostConfirmed], n[HostFailed], n[HostSkipped]), now))
		} else if st.Reason == "" {
			st.Reason = fmt.Sprintf("the last wave passed its gate; %d hosts still updating or waiting", left)
		}
	}
	return ev
}

func gateText(g Gate) string {
	s := "all confirmed"
	if !g.Confirmed.IsZero() {
		s = g.Confirmed.String() + " confirmed"
	}
	if g.Soak > 0 {
		s += ", soak " + g.Soak.String()
	}
	return s
}

// GateText is a gate in words, for status.
func GateText(g Gate) string { return gateText(g) }
