// Package agent is `imaged agent`, the part of hnboot that runs on each
// host (DESIGN.md §1): it reports the host's image slots to the fleet
// server, stages the image the server assigns (resumable, verified, never
// a partial hn-root-new.img), remembers images that failed so it never
// loops reinstalling one, confirms a trial boot only after declared health
// checks pass, reverts when the server asks, reboots according to a
// policy, and supervises the host's local fleet services.
//
// Decisions are pure (Plan, Judge.Observe, Policy.Decide); Agent is the
// I/O around them.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/hostpart"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/stage"
	"github.com/hnboot/hnboot/supervisor"
)

// Agent is one host's agent. Fill the fields, then Run.
type Agent struct {
	Dir      string // hostpart
	Server   Server
	MAC      string
	Hostname string
	Config   Config
	Policy   Policy
	Prober   Prober       // nil: SystemProber
	Reboot   func() error // nil: SystemReboot(Config.RebootCommand)
	Keys     stage.Keys   // staged images must have a manifest signed by one (see Request.Keys)
	System   System
	Log      *slog.Logger
	Services *supervisor.Supervisor // may be nil

	start time.Time
	kick  chan struct{}

	mu        sync.Mutex
	health    *Verdict
	staging   *checkin.Staging
	busy      bool               // a staging goroutine runs
	staged    chan error         // receives the outcome of the staging goroutine, when one runs
	retry     map[string]retryAt // digest → when a failed download may be retried
	rebooting bool
	// facts are the host's facts as last read (refreshFacts), factsSent
	// those the server stored.
	facts, factsSent *checkin.Facts
}

type retryAt struct {
	n    int
	next time.Time
}

func (a *Agent) init() {
	if a.Log == nil {
		a.Log = slog.Default()
	}
	if a.Prober == nil {
		a.Prober = SystemProber{}
	}
	if a.Reboot == nil {
		cmd := a.Config.RebootCommand
		a.Reboot = func() error { return SystemReboot(cmd) }
	}
	if a.System.Root == "" {
		a.System.Root = "/"
	}
	if a.start.IsZero() {
		a.start = time.Now()
	}
	if a.kick == nil {
		a.kick = make(chan struct{}, 1)
	}
	if a.retry == nil {
		a.retry = map[string]retryAt{}
	}
	a.Config.defaults()
}

func (a *Agent) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run checks in at once and then every Config.Interval (and whenever a
// staging or a health check finishes), until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.init()
	a.Log.Info("agent starting", "hostpart", a.Dir, "mac", a.MAC, "reboot", a.Policy.String(), "interval", a.Config.Interval)
	if a.Services != nil {
		go func() {
			if err := a.Services.Run(ctx); err != nil {
				a.Log.Error("agent: services", "err", err)
			}
		}()
	}
	// A failed first look (hostpart busy, a transient I/O error) must not
	// end the agent: it would never confirm the trial nor check in.
	var st hostpart.State
	for {
		var err error
		if st, err = hostpart.Read(a.Dir, hostpart.ReadOptions{}); err == nil {
			break
		}
		a.Log.Warn("agent: cannot read hostpart; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(a.Config.Interval):
		}
	}
	if st.Trial {
		go a.confirmTrial(ctx)
	}
	go a.refreshFacts(ctx)
	t := time.NewTicker(a.Config.Interval)
	defer t.Stop()
	for {
		if err := a.Tick(ctx); err != nil {
			a.Log.Warn("agent: round failed; retrying at the next one", "err", err)
		}
		select {
		case <-ctx.Done():
			// A download in progress stops at ctx and keeps its .part
			// (fsynced) for the next start to resume: wait for that.
			a.waitStaging()
			return nil
		case <-t.C:
		case <-a.kick:
		}
	}
}

// confirmTrial runs the health checks of a trial boot and removes
// hn-root.trial when they pass.
func (a *Agent) confirmTrial(ctx context.Context) {
	checks := a.Config.Health
	if checks.Empty() && systemdRunning() {
		checks.System = true
	}
	a.Log.Info("agent: trial boot: running health checks before confirming", "units", checks.Units, "commands", len(checks.Commands), "settle", checks.Settle, "deadline", checks.Deadline)
	v := RunChecks(ctx, checks, a.Prober, a.start, func(v Verdict) {
		a.mu.Lock()
		a.health = &v
		a.mu.Unlock()
	})
	if v.State == HealthPassed {
		if err := MarkGood(a.Dir); err != nil {
			v = Verdict{State: HealthFailed, Reason: "checks passed but confirming failed: " + err.Error(), Last: v.Last}
		} else {
			a.Log.Info("agent: trial boot confirmed: removed "+layout.Trial, "reason", v.Reason)
		}
	} else if v.State == HealthFailed {
		a.Log.Error("agent: trial boot unhealthy; not confirming it", "reason", v.Reason)
	}
	a.mu.Lock()
	a.health = &v
	a.mu.Unlock()
	a.wake()
}

// MarkGood confirms the current trial boot: it removes hn-root.trial
// (durably), and forgets the current image's digest in the failure memory
// (an image forced back in that now passed).
func MarkGood(dir string) error {
	if err := durable.Root(dir).Remove(layout.Trial); err != nil {
		return err
	}
	st, err := hostpart.Read(dir, hostpart.ReadOptions{})
	if err != nil {
		return err
	}
	failed, err := stage.LoadFailed(dir)
	if err != nil {
		return err
	}
	if d := st.Slot(layout.SlotCurrent).Digest; d != "" {
		_, err = failed.Remove(dir, d)
	}
	return err
}

// Once is `imaged agent --once`: one round that finishes what it starts.
// When the round starts staging an image, Once waits for the download,
// then reports its outcome to the server (and reboots if the policy
// allows) in a second round that starts nothing new. It returns an error
// when the round or the staging failed; a staging interrupted by ctx
// keeps its .part, which the next round resumes.
func (a *Agent) Once(ctx context.Context) error {
	a.init()
	if err := a.tick(ctx, true); err != nil {
		return err
	}
	started, serr := a.waitStaging()
	if !started {
		return nil
	}
	switch {
	case serr != nil && ctx.Err() != nil:
		return fmt.Errorf("agent: staging interrupted (%s is kept; the next round resumes it): %w", layout.NewPart, serr)
	case ctx.Err() != nil:
		return nil // staged just in time; the next round reports it
	}
	if err := a.tick(ctx, false); err != nil {
		return err
	}
	if serr != nil && !errors.Is(serr, stage.ErrRefused) {
		return fmt.Errorf("agent: staging failed: %w", serr)
	}
	return nil
}

// waitStaging waits for the staging goroutine, if one runs, and returns
// its error.
func (a *Agent) waitStaging() (started bool, err error) {
	a.mu.Lock()
	ch := a.staged
	a.mu.Unlock()
	if ch == nil {
		return false, nil
	}
	err = <-ch
	a.mu.Lock()
	if a.staged == ch {
		a.staged = nil
	}
	a.mu.Unlock()
	return true, err
}

// Tick is one round: read hostpart, update the failure memory, ask the
// server, act, report, and reboot if the policy allows. A staging it
// starts goes on in the background (Once waits for it).
func (a *Agent) Tick(ctx context.Context) error {
	return a.tick(ctx, true)
}

// readHashed is hostpart.Read with the digests: hashing an image missing
// from the digest cache takes minutes on a slow host and knows no ctx, so
// a stop (SIGTERM, systemctl stop) returns at once and leaves the hashing
// to end with the process.
func readHashed(ctx context.Context, dir string) (hostpart.State, error) {
	type read struct {
		st  hostpart.State
		err error
	}
	done := make(chan read, 1)
	go func() {
		st, err := hostpart.Read(dir, hostpart.ReadOptions{Hash: true, Boots: 1})
		done <- read{st, err}
	}()
	select {
	case <-ctx.Done():
		return hostpart.State{}, ctx.Err()
	case r := <-done:
		return r.st, r.err
	}
}

// tick is Tick; with startStaging false it starts no staging (Once's report
// round).
func (a *Agent) tick(ctx context.Context, startStaging bool) error {
	a.init()
	st, err := readHashed(ctx, a.Dir)
	if err != nil {
		return err
	}
	failed, err := stage.LoadFailed(a.Dir)
	if err != nil {
		return err
	}
	mem, err := loadMemory(a.Dir)
	if err != nil {
		return err
	}
	var notes []string
	notes = append(notes, a.remember(st, failed, &mem)...)

	des, derr := a.Server.Desired(ctx, a.MAC)
	if derr != nil {
		if errors.Is(derr, ErrUnknownHost) {
			notes = append(notes, "the server does not know this host's MAC "+a.MAC)
		} else {
			notes = append(notes, "cannot ask the server for the desired state: "+derr.Error())
		}
		des = Desired{}
	}
	for _, d := range des.FailedDigests {
		if added, _ := failed.Add(a.Dir, stage.Failure{Digest: d, Time: time.Now(), Reason: "reported failed by the server"}); added {
			a.Log.Warn("agent: server reports an image as failed on this host", "digest", d)
		}
	}
	if img := des.Image; img.Name != "" && digest.Valid(img.Digest) {
		// Name the image in imaged status wherever it sits (A was on
		// the disk before the agent ever staged anything).
		for _, im := range st.Images {
			if im.Digest == img.Digest && im.Name == "" {
				hostpart.WriteMeta(a.Dir, hostpart.Meta{Digest: img.Digest, Name: img.Name, Version: img.Version, Source: "server"})
			}
		}
	}
	obs := Observed{
		Current: st.Slot(layout.SlotCurrent).Digest, Old: st.Slot(layout.SlotOld).Digest,
		New: st.Slot(layout.SlotNew).Digest, Trial: st.Trial, RevertPending: st.RevertPending,
	}
	dec := Plan(obs, des, failed, mem.applied)
	changed := false
	switch {
	case dec.Revert != "":
		a.Log.Warn("agent: server asks for a revert: writing "+layout.RevertTrigger, "id", dec.Revert)
		if err := durable.Root(a.Dir).WriteFile(layout.RevertTrigger, []byte(dec.Revert+"\n")); err != nil {
			return err
		}
		mem.Reverts = append(mem.Reverts, revertRecord{ID: dec.Revert, State: "written", Time: time.Now()})
		changed = true
	case dec.NoOld != "":
		mem.Reverts = append(mem.Reverts, revertRecord{ID: dec.NoOld, State: "applied", Time: time.Now(), Note: "no old image"})
	case dec.Unstage:
		a.Log.Info("agent: the server wants the current image; removing the staged "+layout.New, "digest", obs.New)
		if err := stage.Unstage(a.Dir); err != nil {
			return err
		}
		changed = true
	case dec.Refused != "":
		a.mu.Lock()
		a.staging = &checkin.Staging{Digest: des.Image.Digest, Image: des.Image.Label(), State: "refused", Error: dec.Refused}
		a.mu.Unlock()
	case dec.Stage && startStaging:
		a.startStaging(ctx, des)
	}
	if err := mem.save(a.Dir); err != nil {
		return err
	}
	if changed {
		if st, err = readHashed(ctx, a.Dir); err != nil {
			return err
		}
	}
	rep := a.report(st, failed, mem, dec, notes)
	var why []string
	if dec.Reboot {
		why = append(why, dec.Pending...)
	}
	a.mu.Lock()
	if a.health != nil && a.health.State == HealthFailed && st.Trial {
		why = append(why, "trial boot unhealthy ("+a.health.Reason+"): rebooting uses a try; the init reverts when none are left")
	}
	busy := a.busy
	a.mu.Unlock()
	reboot := false
	if len(why) > 0 && !busy {
		ok, next := a.Policy.Decide(time.Now())
		switch {
		case ok:
			reboot = true
			rep.Rebooting = strings.Join(why, "; ")
		case next.IsZero():
			rep.Pending = append(rep.Pending, "reboot policy never: reboot the host to apply")
		default:
			rep.Pending = append(rep.Pending, "reboot at the next maintenance window, "+next.Format(time.RFC3339))
		}
	}
	// Notes and errors carry text from elsewhere (a proxy's error page, a
	// health command's output): fit them, or the server refuses it all.
	rep.Facts = a.pendingFacts()
	rep.Tidy()
	if err := a.Server.Checkin(ctx, rep); err != nil {
		a.Log.Warn("agent: check-in failed", "err", err)
	} else {
		a.factsDelivered(rep.Facts)
	}
	if reboot {
		a.Log.Warn("agent: rebooting", "why", rep.Rebooting, "policy", a.Policy.String())
		a.mu.Lock()
		a.rebooting = true
		a.mu.Unlock()
		if err := a.Reboot(); err != nil {
			return fmt.Errorf("reboot: %w", err)
		}
	}
	return nil
}

// remember adds the broken image and a rejected staged image to the
// failure memory, once per file (an operator may clear the entry).
func (a *Agent) remember(st hostpart.State, failed stage.Failed, mem *memory) []string {
	var notes []string
	add := func(im hostpart.Image, reason string, seen *string) {
		if !im.Present || im.Digest == "" {
			return
		}
		id := fmt.Sprintf("%d:%d:%d", im.Inode, im.Size, im.ModTime.UnixNano())
		if *seen == id {
			return
		}
		*seen = id
		if added, err := failed.Add(a.Dir, stage.Failure{Digest: im.Digest, Time: time.Now(), Reason: reason}); err != nil {
			notes = append(notes, "cannot record a failed image: "+err.Error())
		} else if added {
			a.Log.Warn("agent: remembering a failed image; it will not be staged again unless forced", "digest", im.Digest, "reason", reason)
		}
	}
	add(st.Slot(layout.SlotBroken), "reverted (found as "+layout.Broken+")", &mem.SeenBroken)
	if st.Rejected != nil {
		add(*st.Rejected, "rejected by the init at boot (found as "+layout.Rejected+")", &mem.SeenRejected)
	}
	// A revert the agent wrote is applied once system-revert is gone.
	for i, r := range mem.Reverts {
		if r.State == "written" && !st.RevertPending {
			mem.Reverts[i].State = "applied"
		}
	}
	return notes
}

func (a *Agent) startStaging(ctx context.Context, des Desired) {
	img := des.Image
	a.mu.Lock()
	if a.busy || a.rebooting {
		a.mu.Unlock()
		return
	}
	if r, ok := a.retry[img.Digest]; ok && time.Now().Before(r.next) {
		a.mu.Unlock()
		return
	}
	a.busy = true
	a.staging = &checkin.Staging{Digest: img.Digest, Image: img.Label(), State: "downloading", Total: img.Size}
	done := make(chan error, 1)
	a.staged = done
	a.mu.Unlock()
	url := a.Server.BlobURL(img)
	a.Log.Info("agent: staging the assigned image", "image", img.Label(), "digest", img.Digest, "url", url)
	go func() {
		res, err := stage.Stage(ctx, a.Dir, stage.Request{
			Source: stage.HTTPSource{URL: url, Client: NetGetter{}}, Digest: img.Digest, Size: img.Size,
			Name: img.Name, Version: img.Version, Force: des.Force, Keys: a.Keys, Log: a.Log, HashSlots: true,
			Progress: func(done, total int64) {
				a.mu.Lock()
				a.staging.Done, a.staging.Total = done, total
				a.mu.Unlock()
			},
		})
		a.mu.Lock()
		s := a.staging
		res.Report(s)
		if err != nil {
			s.State, s.Error = "failed", err.Error()
			if errors.Is(err, stage.ErrRefused) {
				s.State = "refused"
			}
			r := a.retry[img.Digest]
			r.n++
			backoff := a.Config.Interval << min(r.n-1, 6)
			var de *stage.DigestError
			var me *stage.ManifestError
			if !errors.As(err, &de) && !errors.As(err, &me) {
				backoff = a.Config.Interval // a cut connection: resume at the next round
			}
			r.next = time.Now().Add(backoff)
			a.retry[img.Digest] = r
			a.Log.Error("agent: staging failed", "image", img.Label(), "err", err, "retry_in", backoff)
		} else {
			s.State, s.Error = "staged", ""
			s.Done, s.Total = res.Size, res.Size
			delete(a.retry, img.Digest)
		}
		a.busy = false
		a.mu.Unlock()
		done <- err
		a.wake()
	}()
}
