package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hnboot/hnboot/fleet/rollout"
	"github.com/hnboot/hnboot/internal/checkin"
)

// autoRollout is a rollout with waves, resolved against the desired
// state: its image, its Spec for the state machine and its target.
type autoRollout struct {
	r         Rollout
	origin    string // "api" or file:line
	image     *Image
	spec      *rollout.Spec
	target    []string        // MACs, in the rollout's order
	targetSet map[string]bool // target and the waves' hosts
}

// resolveAutos resolves the rollouts with waves of the YAML and the API
// (an API rollout of the same name wins), by name.
func resolveAutos(d *Desired, api []APIRollout, warn func(string)) map[string]*autoRollout {
	out := map[string]*autoRollout{}
	add := func(r Rollout, origin string) {
		if !r.IsAuto() {
			return
		}
		img := d.Image(r.Image)
		if img == nil {
			warn(fmt.Sprintf("rollout %s (%s): image %s is no longer declared; it does nothing", r.Name, origin, r.Image))
			return
		}
		spec, err := d.rolloutSpec(&r, img.Digest)
		if err != nil {
			warn(fmt.Sprintf("rollout %s (%s): %v; it does nothing", r.Name, origin, err))
			return
		}
		a := &autoRollout{r: r, origin: origin, image: img, spec: spec, target: d.rolloutTarget(&r), targetSet: map[string]bool{}}
		for _, m := range a.target {
			a.targetSet[m] = true
		}
		for _, w := range spec.Waves {
			for _, m := range w.Hosts {
				a.targetSet[m] = true
			}
		}
		out[r.Name] = a
	}
	for _, r := range d.Rollouts {
		add(*r, r.Pos.String())
	}
	for _, r := range api {
		add(r.Rollout, "api")
	}
	return out
}

func (a *autoRollout) inTarget(mac string) bool { return a.targetSet[mac] }

// rolloutAssigned says which rollout assigns a host its image.
type rolloutAssigned struct {
	rollout string
	wave    int
}

// Rollout actions (POST /api/rollouts/{name}/{action}).
const (
	ActionStart  = "start"
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionAbort  = "abort"
)

// loadRollout reads a rollout's state; nil when it was never started.
func loadRollout(tx Tx, name string) (*rollout.State, *RolloutProgress, error) {
	p, err := tx.GetRolloutProgress(name)
	if err != nil || p == nil {
		return nil, nil, err
	}
	st := &rollout.State{}
	if len(p.Data) > 0 {
		if err := json.Unmarshal(p.Data, st); err != nil {
			return nil, nil, fmt.Errorf("fleet database: progress of rollout %s: %w", name, err)
		}
	}
	hosts, err := tx.ListRolloutHosts(name)
	if err != nil {
		return nil, nil, err
	}
	st.Hosts = map[string]*rollout.Host{}
	for _, h := range hosts {
		st.Hosts[h.MAC] = &rollout.Host{Wave: h.Wave, State: h.State, Reason: h.Reason, Since: h.Updated, Moved: h.Moved, From: h.From}
	}
	return st, p, nil
}

// saveRollout stores st (compare-and-set on p's version: another server
// that stepped the same rollout in between makes it ErrConflict) and the
// hosts that differ from before.
func saveRollout(tx Tx, name string, p *RolloutProgress, st *rollout.State, before map[string]rollout.Host, now time.Time) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	np := RolloutProgress{Name: name, State: st.Phase, Data: data, Updated: now}
	for w, ws := range st.Waves {
		if !ws.Started.IsZero() {
			np.Wave = w
		}
	}
	if p != nil {
		np.Version = p.Version
	}
	if _, err := tx.PutRolloutProgress(np); err != nil {
		return err
	}
	for mac, h := range st.Hosts {
		if b, ok := before[mac]; ok && b == *h {
			continue
		}
		if err := tx.PutRolloutHost(RolloutHost{Rollout: name, MAC: mac, Wave: h.Wave, State: h.State, Reason: h.Reason,
			Updated: h.Since, Moved: h.Moved, From: h.From}); err != nil {
			return err
		}
	}
	tx.Changed(ChangeRolloutProgress, name)
	return nil
}

func copyHosts(st *rollout.State) map[string]rollout.Host {
	out := make(map[string]rollout.Host, len(st.Hosts))
	for m, h := range st.Hosts {
		out[m] = *h
	}
	return out
}

// RolloutAction starts, pauses, resumes or aborts a rollout with waves
// (revert: abort reverting the hosts it moved), audited as who did it.
func (f *Fleet) RolloutAction(who, remote, name, action string, revert bool) (RolloutStatus, error) {
	s := f.snap.Load()
	a := s.autos[name]
	if a == nil {
		if s.rolloutNamed(name) {
			return RolloutStatus{}, fmt.Errorf("rollout %s has no waves: it is advanced by hand (percent); give it waves to run it", name)
		}
		return RolloutStatus{}, fmt.Errorf("unknown rollout %q", name)
	}
	why := action + " by " + who
	var err error
	for try := 0; try < 5; try++ {
		now := f.now()
		var events []rollout.Event
		err = f.update(func(tx Tx) error {
			st, p, err := loadRollout(tx, name)
			if err != nil {
				return err
			}
			if st == nil {
				n := rollout.New(now)
				st = &n
			}
			before := copyHosts(st)
			switch action {
			case ActionStart:
				events, err = rollout.Start(st, a.spec, now, why)
			case ActionPause:
				events, err = rollout.Pause(st, a.spec, now, why)
			case ActionResume:
				events, err = rollout.Resume(st, a.spec, now, why)
			case ActionAbort:
				sig, serr := f.signals(tx, a, st)
				if serr != nil {
					return serr
				}
				events, err = rollout.Abort(st, a.spec, now, revert, why, sig)
			default:
				err = fmt.Errorf("unknown action %q: want start, pause, resume or abort", action)
			}
			if err != nil {
				return err
			}
			// The first step at once: a started rollout's canaries
			// move now, and its status lists its hosts.
			if st.Phase == rollout.Running {
				sig, err := f.signals(tx, a, st)
				if err != nil {
					return err
				}
				auto := rollout.Step(a.spec, st, a.target, sig, now)
				if err := saveRollout(tx, name, p, st, before, now); err != nil {
					return err
				}
				if err := f.applyEvents(tx, s, a, events, who, remote, now); err != nil {
					return err
				}
				return f.applyEvents(tx, s, a, auto, "rollout:"+name, "", now)
			}
			if err := saveRollout(tx, name, p, st, before, now); err != nil {
				return err
			}
			return f.applyEvents(tx, s, a, events, who, remote, now)
		})
		if !errors.Is(err, ErrConflict) {
			break
		}
	}
	if err != nil {
		return RolloutStatus{}, err
	}
	f.mu.Lock()
	f.rebuildLocked(nil)
	f.mu.Unlock()
	f.kickRollouts()
	return f.RolloutStatus(name)
}

// applyEvents audits the transitions and carries out the reverts, in the
// transaction that stores them.
func (f *Fleet) applyEvents(tx Tx, s *snapshot, a *autoRollout, events []rollout.Event, who, remote string, now time.Time) error {
	for _, e := range events {
		ae := AuditEntry{Time: now, Who: who, Remote: remote, Target: "rollout " + a.r.Name}
		switch {
		case e.Host != "":
			ae.Action = "rollout-host"
			ae.MAC = e.Host
			if hw, err := net.ParseMAC(e.Host); err == nil {
				if h := s.desired.HostByMAC(hw); h != nil {
					ae.Host = h.Hostname
				}
			}
			ae.Detail = fmt.Sprintf("wave %d: %s -> %s: %s", e.Wave+1, e.From, e.To, e.Reason)
		case e.Wave >= 0:
			ae.Action = "rollout-wave"
			ae.Detail = fmt.Sprintf("wave %d %s: %s", e.Wave+1, e.To, e.Reason)
		default:
			ae.Action = phaseAction(e.From, e.To)
			ae.Detail = fmt.Sprintf("%s -> %s: %s", e.From, e.To, e.Reason)
		}
		if e.Revert {
			if h := s.desired.FindHost(e.Host); h != nil {
				r, err := f.revertHostTx(tx, s, h, who, e.FromDigest, now)
				if err != nil {
					return err
				}
				ae.Detail += "; revert " + r.ID
				if r.PinnedTo != "" {
					ae.Detail += ", assigned " + r.PinnedTo
				}
				if r.Note != "" {
					ae.Detail += " (" + r.Note + ")"
				}
			}
		}
		if err := f.auditTx(tx, ae); err != nil {
			return err
		}
	}
	return nil
}

func phaseAction(from, to string) string {
	switch to {
	case rollout.Running:
		if from == rollout.Pending {
			return "rollout-start"
		}
		return "rollout-resume"
	case rollout.Paused:
		return "rollout-pause"
	case rollout.Halted:
		return "rollout-halt"
	case rollout.Aborted:
		return "rollout-abort"
	case rollout.Done:
		return "rollout-done"
	}
	return "rollout-" + to
}

func (f *Fleet) kickRollouts() {
	select {
	case f.rolloutKick <- struct{}{}:
	default:
	}
}

// minRolloutGap spaces the leader's steps when check-ins keep kicking it.
const minRolloutGap = 200 * time.Millisecond

// stepRollouts is the leader's work: every started rollout with waves
// takes one step from what the database holds now.
func (f *Fleet) stepRollouts(ctx context.Context) {
	if d := time.Since(f.lastRolloutStep); d < minRolloutGap {
		select {
		case <-time.After(minRolloutGap - d):
		case <-ctx.Done():
			return
		}
	}
	f.lastRolloutStep = time.Now()
	s := f.snap.Load()
	names := make([]string, 0, len(s.autos))
	for n := range s.autos {
		names = append(names, n)
	}
	sort.Strings(names)
	rebuild := false
	for _, n := range names {
		changed, err := f.stepRollout(ctx, s, s.autos[n])
		switch {
		case errors.Is(err, ErrConflict):
			f.log.Info("fleet: rollout stepped by another server meanwhile; stepping again from its state", "rollout", n)
			f.kickRollouts()
		case err != nil:
			f.log.Warn("fleet: rollout step", "rollout", n, "err", err)
		}
		rebuild = rebuild || changed
	}
	if rebuild {
		f.mu.Lock()
		f.rebuildLocked(nil)
		f.mu.Unlock()
	}
}

// stepRollout steps one rollout and reports whether assignments changed.
func (f *Fleet) stepRollout(ctx context.Context, s *snapshot, a *autoRollout) (bool, error) {
	changed := false
	now := f.now()
	err := f.store.Update(ctx, func(tx Tx) error {
		changed = false
		st, p, err := loadRollout(tx, a.r.Name)
		if err != nil || st == nil {
			return err
		}
		switch st.Phase {
		case rollout.Pending, rollout.Done, rollout.Aborted:
			return nil
		}
		before := copyHosts(st)
		beforeData, _ := json.Marshal(st)
		sig, err := f.signals(tx, a, st)
		if err != nil {
			return err
		}
		events := rollout.Step(a.spec, st, a.target, sig, now)
		afterData, _ := json.Marshal(st)
		same := len(events) == 0 && string(beforeData) == string(afterData) && len(before) == len(st.Hosts)
		if same {
			for m, h := range st.Hosts {
				if before[m] != *h {
					same = false
					break
				}
			}
		}
		if same {
			return nil
		}
		for m := range before {
			if st.Hosts[m] == nil {
				// Left the target before it was moved.
				if err := tx.PutRolloutHost(RolloutHost{Rollout: a.r.Name, MAC: m, State: "removed", Updated: now}); err != nil {
					return err
				}
			}
		}
		if err := saveRollout(tx, a.r.Name, p, st, before, now); err != nil {
			return err
		}
		for _, e := range events {
			changed = changed || e.Assign || e.Unassign || e.Revert
		}
		return f.applyEvents(tx, s, a, events, "rollout:"+a.r.Name, "", now)
	})
	if err != nil {
		return false, err
	}
	return changed, nil
}

// signals reads the last check-in of the rollout's hosts.
func (f *Fleet) signals(tx Tx, a *autoRollout, st *rollout.State) (map[string]rollout.Signal, error) {
	obs, err := tx.ListObserved()
	if err != nil {
		return nil, err
	}
	out := make(map[string]rollout.Signal, len(st.Hosts))
	for _, o := range obs {
		if _, ok := st.Hosts[o.MAC]; ok || a.inTarget(o.MAC) {
			out[o.MAC] = signalOf(o, a.spec.Digest)
		}
	}
	return out, nil
}

// signalOf is what a check-in says about the image with digest d.
func signalOf(o *Observed, d string) rollout.Signal {
	c := &o.Checkin
	s := rollout.Signal{Seen: o.Time, Running: running(c), Trial: c.Trial, New: c.Images.New, Rebooting: c.Rebooting}
	switch {
	case c.Images.Broken == d:
		s.Failed, s.FailReason = true, "the host reverted the image (it is hn-root-broken.img)"
	case slices.Contains(c.FailedDigests, d):
		s.Failed, s.FailReason = true, "the host lists the image in its failed digests"
		for _, fl := range c.Failures {
			if fl.Digest == d && fl.Reason != "" {
				s.FailReason = "the host remembers the image as failed: " + fl.Reason
			}
		}
	case c.Source == checkin.SourceInit && c.Action == "reject" && c.Images.New == "" && c.Images.Current != d:
		// The init renamed a staged image aside; the agent's failure
		// memory says which, but a host without an agent only says this.
		s.Failed, s.FailReason = true, "the init rejected the staged image at boot (hn-root-new.img.rejected)"
	}
	if c.Health != nil && s.Running == d {
		s.Health, s.HealthWhy = c.Health.State, c.Health.Reason
	}
	if st := c.Staging; st != nil && st.Digest == d {
		s.Staging, s.StagingWhy, s.Done, s.Total = st.State, st.Error, st.Done, st.Total
	}
	return s
}

// revertHostTx is a revert of one host in tx: a new revert ID, and the
// host pinned to the image with digest pin (its old image when pin is
// empty), when that image is declared.
func (f *Fleet) revertHostTx(tx Tx, s *snapshot, h *Host, who, pin string, now time.Time) (RevertResult, error) {
	mac := h.MAC.String()
	r := RevertResult{Host: h.Hostname, MAC: mac, ID: newRevertID(now)}
	obs, err := tx.GetObserved(mac)
	if err != nil {
		return r, err
	}
	if pin == "" && obs != nil {
		pin = obs.Images.Old
	}
	switch {
	case pin == "" && obs == nil:
		r.Note = "host never checked in: no old image known; assignment unchanged"
	case pin == "":
		r.Note = "host reported no old image: the init will boot its current image; assignment unchanged"
	case s.imageByDigest[pin] == nil:
		r.Note = "host's old image " + short(pin) + " is not declared; assignment unchanged"
	default:
		img := s.imageByDigest[pin]
		r.PinnedTo = img.Ref()
		if err := tx.PutOverride(OverrideHost, mac, Override{Image: img.Ref(), By: who, Time: now, Note: "revert " + r.ID}); err != nil {
			return r, err
		}
		tx.Changed(ChangeOverride, OverrideHost+"/"+mac)
	}
	if err := tx.PutRevert(mac, PendingRevert{ID: r.ID, By: who, Time: now}); err != nil {
		return r, err
	}
	tx.Changed(ChangeRevert, mac)
	return r, nil
}

// RolloutStatus is a rollout with waves as `imaged fleet rollout status`
// shows it (GET /api/rollouts/{name}).
type RolloutStatus struct {
	Name    string              `json:"name"`
	Image   string              `json:"image"` // name@version
	Digest  string              `json:"digest"`
	Origin  string              `json:"origin"` // "api" or file:line
	Target  string              `json:"target"` // in words
	State   string              `json:"state"`  // pending, running, paused, halted, aborted, done
	Reason  string              `json:"reason,omitempty"`
	Since   time.Time           `json:"since,omitzero"`
	Wave    int                 `json:"wave"` // the newest started wave, from 1; 0: none yet
	Window  string              `json:"window,omitempty"`
	Version int64               `json:"version"` // of the stored progress
	Waves   []WaveStatus        `json:"waves"`
	Hosts   []RolloutHostStatus `json:"hosts"`
}

// WaveStatus is one wave: its hosts by state and its gate.
type WaveStatus struct {
	Wave    int            `json:"wave"` // from 1
	What    string         `json:"what"` // "hosts web-08", "50%", "10 hosts"
	Gate    string         `json:"gate"`
	State   string         `json:"state"` // waiting, started, gate met, passed
	Hosts   int            `json:"hosts"`
	Count   map[string]int `json:"count"` // by host state
	Started time.Time      `json:"started,omitzero"`
	GateMet time.Time      `json:"gate_met,omitzero"`
	Passed  time.Time      `json:"passed,omitzero"`
}

// RolloutHostStatus is one host in a rollout.
type RolloutHostStatus struct {
	Host   string    `json:"host,omitempty"`
	MAC    string    `json:"mac"`
	Wave   int       `json:"wave"` // from 1
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since,omitzero"`
}

// RolloutStatus reads a rollout with waves and its progress.
func (f *Fleet) RolloutStatus(name string) (RolloutStatus, error) {
	s := f.snap.Load()
	a := s.autos[name]
	if a == nil {
		if s.rolloutNamed(name) {
			return RolloutStatus{}, fmt.Errorf("rollout %s has no waves: imaged fleet rollout lists it with its members", name)
		}
		return RolloutStatus{}, fmt.Errorf("unknown rollout %q", name)
	}
	var st *rollout.State
	var p *RolloutProgress
	ctx, cancel := dbCtx()
	defer cancel()
	err := f.store.View(ctx, func(tx Tx) error {
		var err error
		st, p, err = loadRollout(tx, name)
		return err
	})
	if err != nil {
		return RolloutStatus{}, err
	}
	rs := RolloutStatus{Name: name, Image: a.image.Ref(), Digest: a.image.Digest, Origin: a.origin, Target: a.r.describeTarget(),
		State: rollout.Pending, Window: a.spec.Window.String()}
	if st == nil {
		// Not started: what it would do.
		n := rollout.New(time.Time{})
		st = &n
		for mac, w := range a.spec.Plan(a.target) {
			st.Hosts[mac] = &rollout.Host{Wave: w, State: rollout.HostPending, Reason: "the rollout is not started"}
		}
	} else {
		rs.State, rs.Reason, rs.Since, rs.Version = st.Phase, st.Reason, st.Since, p.Version
	}
	for i, w := range a.spec.Waves {
		ws := WaveStatus{Wave: i + 1, Count: map[string]int{}, State: "waiting", Gate: rollout.GateText(a.spec.Gate)}
		if w.Gate != nil {
			ws.Gate = rollout.GateText(*w.Gate)
		}
		switch {
		case len(w.Hosts) > 0:
			var names []string
			for _, m := range w.Hosts {
				names = append(names, s.hostName(m))
			}
			ws.What = "hosts " + strings.Join(names, ",")
		case w.Percent > 0:
			ws.What = fmt.Sprintf("up to %d%% of the target", w.Percent)
		default:
			ws.What = fmt.Sprintf("%d more hosts", w.Count)
		}
		if i < len(st.Waves) {
			x := st.Waves[i]
			ws.Started, ws.GateMet, ws.Passed = x.Started, x.GateMet, x.Passed
			switch {
			case !x.Passed.IsZero():
				ws.State = "passed"
			case !x.GateMet.IsZero():
				ws.State = "gate met"
			case !x.Started.IsZero():
				ws.State = "started"
				rs.Wave = i + 1
			}
			if !x.Started.IsZero() {
				rs.Wave = i + 1
			}
		}
		rs.Waves = append(rs.Waves, ws)
	}
	macs := make([]string, 0, len(st.Hosts))
	for m := range st.Hosts {
		macs = append(macs, m)
	}
	sort.Slice(macs, func(i, j int) bool {
		hi, hj := st.Hosts[macs[i]], st.Hosts[macs[j]]
		if hi.Wave != hj.Wave {
			return hi.Wave < hj.Wave
		}
		return s.hostName(macs[i]) < s.hostName(macs[j])
	})
	for _, m := range macs {
		h := st.Hosts[m]
		if h.State == "removed" {
			continue
		}
		if h.Wave < len(rs.Waves) {
			rs.Waves[h.Wave].Hosts++
			rs.Waves[h.Wave].Count[h.State]++
		}
		hs := RolloutHostStatus{MAC: m, Wave: h.Wave + 1, State: h.State, Reason: h.Reason, Since: h.Since}
		if hw, err := net.ParseMAC(m); err == nil {
			if hh := s.desired.HostByMAC(hw); hh != nil {
				hs.Host = hh.Hostname
			}
		}
		rs.Hosts = append(rs.Hosts, hs)
	}
	return rs, nil
}

// hostName is the hostname of a MAC, or the MAC.
func (s *snapshot) hostName(mac string) string {
	if hw, err := net.ParseMAC(mac); err == nil {
		if h := s.desired.HostByMAC(hw); h != nil {
			return h.Hostname
		}
	}
	return mac
}

// rolloutNamed reports whether any rollout (with waves or not) has name.
func (s *snapshot) rolloutNamed(name string) bool {
	for _, r := range s.rollouts {
		if r.Name == name {
			return true
		}
	}
	return false
}
