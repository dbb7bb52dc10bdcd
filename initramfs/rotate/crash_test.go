package rotate

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

// The crash test enumerates starting states of hostpart, runs Run once
// uninterrupted to learn the intended end state, then for every k cuts the
// power after k mutating operations and boots again to completion; and for
// every point of that recovery boot cuts the power a second time and boots
// once more. After every single operation hn-root.img must hold a complete
// image, and no image may be missing except the ones the policy replaces.
//
// Trial counting: the try of a boot is written by the last operation of Run
// (or, for a revert request without an old image, inside the journalled step
// whose end is the last operation), so a power cut inside Run never eats a
// try. The end state after any number of cut boots must therefore equal the
// uninterrupted end state exactly, trial count included. (A cut after Run
// returns is a real boot attempt and does use a try; that is not a crash
// point of Run.)

// Image contents. Images are identified by content.
const (
	imgCurrent  = "A"
	imgNew      = "B"
	imgNewBad   = "bad-X"
	imgOld      = "C"
	imgBroken   = "D"
	imgRejected = "E"
	imgPart     = "P"
)

type startState struct {
	newImg                           string // "", imgNew, imgNewBad
	old, broken, rejected, sysRevert bool
	trial                            string // "", "0\n", "1\n", "3\n"
	revertID                         string // "unset", "pending", "applied"
	journal                          string // "", opPromote, opRevert, opRevertWithout
}

func (s startState) String() string {
	var b []string
	if s.newImg != "" {
		b = append(b, "new="+s.newImg)
	}
	for _, f := range []struct {
		on   bool
		name string
	}{{s.old, "old"}, {s.broken, "broken"}, {s.rejected, "rejected"}, {s.sysRevert, "system-revert"}} {
		if f.on {
			b = append(b, f.name)
		}
	}
	if s.trial != "" {
		b = append(b, "trial="+strings.TrimSpace(s.trial))
	}
	b = append(b, "hn.revert="+s.revertID)
	if s.journal != "" {
		b = append(b, "journal="+s.journal)
	}
	return "{" + strings.Join(b, " ") + "}"
}

func allStartStates() []startState {
	var out []startState
	for _, n := range []string{"", imgNew, imgNewBad} {
		for _, old := range []bool{false, true} {
			for _, broken := range []bool{false, true} {
				for _, rej := range []bool{false, true} {
					for _, rv := range []bool{false, true} {
						for _, tr := range []string{"", "0\n", "1\n", "3\n"} {
							for _, id := range []string{"unset", "pending", "applied"} {
								for _, j := range []string{"", opPromote, opRevert, opRevertWithout} {
									out = append(out, startState{n, old, broken, rej, rv, tr, id, j})
								}
							}
						}
					}
				}
			}
		}
	}
	return out
}

// skip says why a state cannot arise, or "". Journal states are generated
// with every image a separate file; the hard-linked states in the middle of
// a rotation are reached by the crash points themselves. Journals are kept
// with any trigger combination, even ones only a rescue system editing the
// disk between boots could produce, because Run must cope with those too.
func (s startState) skip() string {
	switch {
	case s.journal == opPromote && s.newImg == imgNewBad:
		return "promote journal with an image that fails Verify (the journal is written only after Verify accepted it; replay does not re-verify)"
	case s.journal == opPromote && s.newImg == "" && !s.old:
		return "promote journal with neither new nor old (once new is renamed away, old holds the previous current until the journal is removed)"
	case s.journal == opRevert && !s.old && !s.broken:
		return "revert journal with neither old nor broken (once old is renamed away, broken holds the previous current until the journal is removed)"
	case s.journal == opRevertWithout && s.old:
		return "revert-without-old journal with an old image (written only when there is no old image; nothing creates one before it is removed)"
	}
	return ""
}

func (s startState) build() *memFS {
	f := map[string]string{layout.Current: imgCurrent, part: imgPart}
	if s.newImg != "" {
		f[layout.New] = s.newImg
	}
	if s.old {
		f[layout.Old] = imgOld
	}
	if s.broken {
		f[layout.Broken] = imgBroken
	}
	if s.rejected {
		f[layout.Rejected] = imgRejected
	}
	if s.sysRevert {
		f[layout.RevertTrigger] = ""
	}
	if s.trial != "" {
		f[layout.Trial] = s.trial
	}
	if s.revertID == "applied" {
		f[layout.Reverts] = "r0\nr1\n"
	}
	if s.journal != "" {
		j := journal{op: s.journal}
		if s.revertID != "unset" && s.journal != opPromote {
			j.id = "r1"
		}
		if s.journal == opRevertWithout {
			switch s.trial {
			case "0\n":
				j.trial = "-"
			case "1\n":
				j.trial = "0" // already written, or about to be
			case "3\n":
				j.trial = "2"
			}
		}
		f[layout.Journal] = string(encodeJournal(j))
	}
	return newMemFS(f)
}

func (s startState) options(m *memFS) Options {
	opt := Options{Verify: verifyBad(m)}
	if s.revertID != "unset" {
		opt.RevertID = "r1"
	}
	return opt
}

type crashStats struct {
	states, points, double int
	skipped                map[string]int
	failures               []string
	nFailures              int
}

func (c *crashStats) fail(format string, args ...any) {
	c.nFailures++
	if len(c.failures) < 40 {
		c.failures = append(c.failures, fmt.Sprintf(format, args...))
	}
}

var (
	crashOnce   sync.Once
	crashResult *crashStats
)

func crashSuite() *crashStats {
	crashOnce.Do(func() { crashResult = runCrashSuite() })
	return crashResult
}

func runCrashSuite() *crashStats {
	st := &crashStats{skipped: map[string]int{}}
	for _, s := range allStartStates() {
		if why := s.skip(); why != "" {
			st.skipped[why]++
			continue
		}
		st.states++
		crashState(st, s)
	}
	return st
}

func crashState(st *crashStats, s startState) {
	base := s.build()
	start := base.snapshot()

	// Uninterrupted boot.
	u := base.clone()
	cnt := &countFS{FS: u}
	ures, err := Run(cnt, s.options(u))
	if err != nil {
		st.fail("%v: uninterrupted Run = %v", s, err)
		return
	}
	uEnd := u.snapshot()

	// Images the policy may replace in this boot.
	allowed := map[string]bool{}
	if ures.Action == Promote || s.journal == opPromote {
		allowed[start[layout.Old]] = true
	}
	if ures.Action == Revert || s.journal == opRevert {
		allowed[start[layout.Broken]] = true
	}
	if ures.Action == Reject {
		allowed[start[layout.Rejected]] = true
	}
	var images []string // start images that must survive
	for _, name := range []string{layout.Current, layout.New, layout.Old, layout.Broken, layout.Rejected} {
		if c, ok := start[name]; ok && !allowed[c] {
			images = append(images, c)
		}
	}
	imageSet := map[string]bool{}
	for _, name := range []string{layout.Current, layout.New, layout.Old, layout.Broken, layout.Rejected} {
		if c, ok := start[name]; ok {
			imageSet[c] = true
		}
	}

	invariant := func(ctx string) func(m *memFS, op string) {
		return func(m *memFS, op string) {
			snap := m.snapshot()
			cur, ok := snap[layout.Current]
			if !ok || !imageSet[cur] {
				st.fail("%v %s, after %q: %s = %q (present %v), want a complete image", s, ctx, op, layout.Current, cur, ok)
			}
			if snap[part] != imgPart {
				st.fail("%v %s, after %q: %s = %q, want it untouched", s, ctx, op, part, snap[part])
			}
			have := map[string]bool{}
			for _, c := range snap {
				have[c] = true
			}
			for _, img := range images {
				if !have[img] {
					st.fail("%v %s, after %q: image %q lost (files %s)", s, ctx, op, img, fmtState(snap))
				}
			}
		}
	}
	final := func(ctx string, m *memFS, res Result, err error) {
		if err != nil {
			st.fail("%v %s: Run = %v, want nil", s, ctx, err)
			return
		}
		if got := m.snapshot(); !maps.Equal(got, uEnd) {
			st.fail("%v %s: Run(...) left %s, want %s (uninterrupted)", s, ctx, fmtState(got), fmtState(uEnd))
		}
		if l := m.links(); l != "" {
			st.fail("%v %s: hard links left: %s", s, ctx, l)
		}
		if res.Trial != ures.Trial || res.TriesLeft != ures.TriesLeft {
			st.fail("%v %s: Run(...) = %s, want trial %v left %d as uninterrupted", s, ctx, fmtResult(res), ures.Trial, ures.TriesLeft)
		}
	}

	// The uninterrupted boot again, checked after every operation.
	u2 := base.clone()
	res, err := Run(&checkFS{u2, invariant("uninterrupted")}, s.options(u2))
	final("uninterrupted", u2, res, err)
	for _, c := range start {
		if !imageSet[c] || allowed[c] {
			continue
		}
		if !slices.Contains(slices.Collect(maps.Values(uEnd)), c) {
			st.fail("%v: image %q lost", s, c)
		}
	}

	for k1 := range cnt.ops {
		ctx1 := fmt.Sprintf("cut after %d of %d ops", k1, cnt.ops)
		m1 := base.clone()
		if _, err := Run(CrashAfter(&checkFS{m1, invariant(ctx1)}, k1, nil), s.options(m1)); !errors.Is(err, ErrPowerCut) {
			st.fail("%v %s: Run = %v, want ErrPowerCut", s, ctx1, err)
			continue
		}
		st.points++

		// Recovery boot to completion.
		r := m1.clone()
		rcnt := &countFS{FS: &checkFS{r, invariant(ctx1 + ", recovery")}}
		res, err := Run(rcnt, s.options(r))
		final(ctx1+", recovery", r, res, err)

		// Recovery boot cut again at every point, then one more boot.
		for k2 := range rcnt.ops {
			ctx2 := fmt.Sprintf("%s, recovery cut after %d of %d ops", ctx1, k2, rcnt.ops)
			m2 := m1.clone()
			if _, err := Run(CrashAfter(&checkFS{m2, invariant(ctx2)}, k2, nil), s.options(m2)); !errors.Is(err, ErrPowerCut) {
				st.fail("%v %s: Run = %v, want ErrPowerCut", s, ctx2, err)
				continue
			}
			st.double++
			res, err := Run(&checkFS{m2, invariant(ctx2 + ", second recovery")}, s.options(m2))
			final(ctx2+", second recovery", m2, res, err)
		}
	}
}

func TestCrashEveryOp(t *testing.T) {
	st := crashSuite()
	for _, f := range st.failures {
		t.Error(f)
	}
	if st.nFailures > len(st.failures) {
		t.Errorf("... and %d more failures", st.nFailures-len(st.failures))
	}
	t.Logf("covered %d starting states, %d crash points (%d double-crash points)", st.states, st.points, st.double)
}

func TestCrashPointCount(t *testing.T) {
	st := crashSuite()
	total := len(allStartStates())
	skipped := 0
	for _, why := range slices.Sorted(maps.Keys(st.skipped)) {
		t.Logf("skipped %d states: %s", st.skipped[why], why)
		skipped += st.skipped[why]
	}
	if st.states+skipped != total {
		t.Errorf("states %d + skipped %d != generated %d", st.states, skipped, total)
	}
	if st.states < 1500 || st.points < st.states || st.double < st.points {
		t.Errorf("covered %d states, %d crash points, %d double: suspiciously few", st.states, st.points, st.double)
	}
	t.Logf("covered %d starting states (of %d generated), %d crash points (%d double-crash points)", st.states, total, st.points, st.double)
}
