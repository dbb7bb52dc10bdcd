package rotate

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

// The crash test runs Run on many starting states of hostpart: once
// uninterrupted, to learn the intended end state; then, for every k, cut
// the power after k mutating operations and boot again to completion; and
// for every point of that recovery boot, cut the power a second time and
// boot once more. Two families of starting states:
//
//   - the state machine's own (machineStates): a complete current, any
//     mix of staged, old, broken and rejected images, triggers, trial
//     counts, hn.revert IDs and journals, with and without manifests;
//   - what a crash of another tool or a hand can leave (handStates): every
//     combination of absent / complete / truncated / not-a-filesystem for
//     each of the five image files (and a staged image that fails
//     verification), crossed with manifests that match, describe another
//     image or have no image, a download in progress, triggers, and stale
//     or garbage journals.
//
// Checked after every single operation: once hn-root.img is complete it
// stays complete; no complete image is lost except the ones a journalled
// promotion, revert or rejection replaces; the .part file is untouched;
// and, from a start whose manifests all describe their images, no manifest
// ever describes another image. Checked after every boot that ran to the
// end: the state equals the uninterrupted end state exactly (trial count
// included: a power cut inside Run never eats a try), no hard links are
// left, hn-root.img is complete whenever any bootable image existed at the
// start (the current, old or broken image if complete, a staged image that
// verifies; a rejected one never boots), a manifest of the current, old or
// broken image describes it, and no manifest is left without its image
// (but the staged image's while its download is in progress). With
// nothing bootable and no journal, Run changes nothing. (A cut after Run
// returns is a real boot attempt and does use a try; that is not a crash
// point of Run.)

// crashCase is one starting state.
type crashCase struct {
	desc     string
	files    map[string]string
	revertID string // Options.RevertID
}

func (c crashCase) options(m *memFS) Options {
	return Options{Verify: verifyFake(m), Complete: completeFake(m), RevertID: c.revertID}
}

// Image contents of the starting states, by slot.
var slotImage = map[string]string{
	layout.Current: "A", layout.New: "B", layout.Old: "C", layout.Broken: "D", layout.Rejected: "E",
}

const imgPart = "P"

// machineState is a state the rotation itself produces or must cope with
// after a rescue system edited triggers between boots.
type machineState struct {
	newImg                           string // "", "B", "bad-X"
	old, broken, rejected, sysRevert bool
	trial                            string // "", "0\n", "1\n", "3\n"
	revertID                         string // "unset", "pending", "applied"
	journal                          string // "", opPromote, opRevert, opRevertWithout
	manifests                        bool   // every image has its manifest
}

func (s machineState) String() string {
	var b []string
	if s.newImg != "" {
		b = append(b, "new="+s.newImg)
	}
	for _, f := range []struct {
		on   bool
		name string
	}{{s.old, "old"}, {s.broken, "broken"}, {s.rejected, "rejected"}, {s.sysRevert, "system-revert"}, {s.manifests, "manifests"}} {
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

// machineStates are generated with every image a separate file; the
// hard-linked states in the middle of a rotation are reached by the crash
// points themselves. Journals come with any combination of files, even
// ones no rotation leaves (a promotion journal with an image that fails
// verification, with neither new nor old, ...): replay must cope.
func machineStates() []crashCase {
	var out []crashCase
	for _, n := range []string{"", "B", "bad-X"} {
		for _, old := range []bool{false, true} {
			for _, broken := range []bool{false, true} {
				for _, rej := range []bool{false, true} {
					for _, rv := range []bool{false, true} {
						for _, tr := range []string{"", "0\n", "1\n", "3\n"} {
							for _, id := range []string{"unset", "pending", "applied"} {
								for _, j := range []string{"", opPromote, opRevert, opRevertWithout} {
									for _, man := range []bool{false, true} {
										out = append(out, machineState{n, old, broken, rej, rv, tr, id, j, man}.build())
									}
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

func (s machineState) build() crashCase {
	f := map[string]string{layout.Current: "A", layout.NewPart: imgPart}
	if s.newImg != "" {
		f[layout.New] = s.newImg
	}
	if s.old {
		f[layout.Old] = "C"
	}
	if s.broken {
		f[layout.Broken] = "D"
	}
	if s.rejected {
		f[layout.Rejected] = "E"
	}
	if s.manifests {
		for _, img := range []string{layout.Current, layout.New, layout.Old, layout.Broken, layout.Rejected} {
			if c, ok := f[img]; ok {
				f[layout.ManifestFor(img)] = manifestOf(c)
			}
		}
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
	c := crashCase{desc: s.String(), files: f}
	if s.revertID != "unset" {
		c.revertID = "r1"
	}
	return c
}

// Conditions of an image file in handStates.
const (
	condAbsent   = "absent"
	condComplete = "complete"
	condBad      = "bad" // complete, fails Verify (staged image only)
	condTrunc    = "truncated"
	condNoFS     = "notfs"
)

// Manifest modes of handStates: what the manifest beside each image file
// (or in place of an absent one) says. A stale manifest describes the
// image of another slot, as one left behind by a rename would.
//
// Each slot combination is crossed with handVariants: every trigger and
// journal of handExtras with matching manifests (from there the test also
// checks every operation never puts a manifest beside another image) and
// with stale and orphan ones; and the rarer mixes (no manifests, a
// download in progress, stale and matching ones side by side) with the
// extras that change most what a repair does.
var handVariants = []struct {
	mode   string
	part   bool // hn-root-new.img.part exists: a staging is in progress
	extras []string
}{
	{"match", false, nil}, // nil: all of handExtras
	{"stale+orphans", false, nil},
	{"none", false, []string{"plain", "system-revert+hn.revert=r1", "journal=repair-from-old"}},
	{"stale+orphans", true, []string{"plain", "system-revert+hn.revert=r1", "journal=repair-from-old"}},
	{"mixed", true, []string{"plain", "system-revert+hn.revert=r1", "journal=repair-from-old"}},
}

var staleOf = map[string]string{
	layout.Current: "m:C", layout.New: "m:A", layout.Old: "m:D", layout.Broken: "m:A", layout.Rejected: "m:B",
}

// handExtras are the triggers and journals crossed with each handState.
var handExtras = []struct {
	name     string
	files    map[string]string
	revertID string
}{
	{"plain", nil, ""},
	{"system-revert+hn.revert=r1", map[string]string{layout.RevertTrigger: ""}, "r1"},
	{"trial=0", map[string]string{layout.Trial: "0\n"}, ""},
	{"trial=2", map[string]string{layout.Trial: "2\n"}, ""},
	{"journal=promote", map[string]string{layout.Journal: "promote\n"}, ""},
	{"journal=revert", map[string]string{layout.Journal: "revert\nid r1\n"}, "r1"},
	{"journal=reject", map[string]string{layout.Journal: "reject\n"}, ""},
	{"journal=repair-from-old", map[string]string{layout.Journal: "repair\nfrom old\n"}, ""},
	{"journal=repair-from-new-revert", map[string]string{layout.Journal: "repair\nfrom new\nrevert\n", layout.RevertTrigger: ""}, ""},
	{"journal=garbage", map[string]string{layout.Journal: "frobnicate\nx y\n"}, ""},
	{"journal=recover", map[string]string{layout.Journal: "recover\n"}, ""}, // a recovery's, without its download
}

func handStates() []crashCase {
	slots := []string{layout.Current, layout.New, layout.Old, layout.Broken, layout.Rejected}
	conds := func(img string) []string {
		if img == layout.New {
			return []string{condAbsent, condComplete, condBad, condTrunc, condNoFS}
		}
		return []string{condAbsent, condComplete, condTrunc, condNoFS}
	}
	var out []crashCase
	var rec func(i int, pick []string)
	rec = func(i int, pick []string) {
		if i < len(slots) {
			for _, c := range conds(slots[i]) {
				rec(i+1, append(pick, c))
			}
			return
		}
		for _, v := range handVariants {
			mode, part := v.mode, v.part
			for _, ex := range handExtras {
				if v.extras != nil && !slices.Contains(v.extras, ex.name) {
					continue
				}
				f := map[string]string{}
				var desc []string
				for k, img := range slots {
					c := slotImage[img]
					switch pick[k] {
					case condBad:
						c = "bad-" + c
					case condTrunc:
						c += sufTrunc
					case condNoFS:
						c += sufNoFS
					}
					if pick[k] != condAbsent {
						f[img] = c
					}
					desc = append(desc, img+"="+pick[k])
					m := manifestFor(mode, k, img, pick[k] != condAbsent, c)
					if m != "" {
						f[layout.ManifestFor(img)] = m
					}
				}
				if part {
					f[layout.NewPart] = imgPart
				}
				maps.Copy(f, ex.files)
				desc = append(desc, "manifests="+mode, fmt.Sprintf("part=%v", part), ex.name)
				out = append(out, crashCase{desc: "{" + strings.Join(desc, " ") + "}", files: f, revertID: ex.revertID})
			}
		}
	}
	rec(0, nil)
	return out
}

// manifestFor is the manifest content of slot img (index k) in a mode, ""
// for none.
func manifestFor(mode string, k int, img string, present bool, content string) string {
	match, orphan := manifestOf(content), manifestOf(slotImage[img])
	switch mode {
	case "match":
		if present {
			return match
		}
	case "stale+orphans":
		if present {
			return staleOf[img]
		}
		return orphan
	case "mixed":
		if k%2 == 0 {
			if present {
				return staleOf[img]
			}
			return orphan
		}
		if present {
			return match
		}
	}
	return ""
}

type crashStats struct {
	mu                     sync.Mutex
	states, points, double int
	failures               []string
	nFailures              int
}

// local collects one state's counts and failures without locking.
type local struct {
	points, double int
	failures       []string
	nFailures      int
}

func (l *local) fail(format string, args ...any) {
	l.nFailures++
	if len(l.failures) < 3 {
		l.failures = append(l.failures, fmt.Sprintf(format, args...))
	}
}

func (c *crashStats) merge(l *local) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.states++
	c.points += l.points
	c.double += l.double
	c.nFailures += l.nFailures
	for _, f := range l.failures {
		if len(c.failures) < 40 {
			c.failures = append(c.failures, f)
		}
	}
}

var (
	crashOnce   sync.Once
	crashResult map[string]*crashStats
)

// crashSuites runs both families once per test binary, spread over the
// CPUs.
func crashSuites() map[string]*crashStats {
	crashOnce.Do(func() {
		// Millions of short Runs: collect garbage less often.
		defer debug.SetGCPercent(debug.SetGCPercent(400))
		crashResult = map[string]*crashStats{}
		cases := map[string][]crashCase{"machine": machineStates(), "hand": handStates()}
		type job struct {
			st *crashStats
			c  crashCase
		}
		jobs := make(chan job)
		var wg sync.WaitGroup
		for range runtime.GOMAXPROCS(0) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range jobs {
					var l local
					crashState(&l, j.c)
					j.st.merge(&l)
				}
			}()
		}
		for _, name := range slices.Sorted(maps.Keys(cases)) {
			st := &crashStats{}
			crashResult[name] = st
			for _, c := range cases[name] {
				jobs <- job{st, c}
			}
		}
		close(jobs)
		wg.Wait()
	})
	return crashResult
}

// bootable are the images a boot may make current: complete current, old
// and broken images, and a staged image that verifies.
func bootable(m *memFS) []string {
	var out []string
	for _, img := range []string{layout.Current, layout.Old, layout.Broken} {
		if ino, ok := m.files[img]; ok && isComplete(ino.data) {
			out = append(out, ino.data)
		}
	}
	if _, ok := m.files[layout.New]; ok && verifyFake(m)(layout.New) == nil {
		out = append(out, m.files[layout.New].data)
	}
	return out
}

// manifestsMatch says how a manifest on m does not describe its image, or
// "". Current, old and broken manifests must describe the image beside
// them (strict: a complete one); the staged image's may wait for its
// download (the .part), and its and a rejected image's content are
// Verify's business, not the manifest's (strict: just not orphans).
func manifestsMatch(m *memFS, strict bool) string {
	for _, img := range []string{layout.Current, layout.Old, layout.Broken, layout.New, layout.Rejected} {
		mi, ok := m.files[layout.ManifestFor(img)]
		if !ok {
			continue
		}
		c := m.content(img)
		switch {
		case c == "" && strict && !(img == layout.New && m.content(layout.NewPart) != ""):
			return fmt.Sprintf("%s = %q has no image", layout.ManifestFor(img), mi.data)
		case c == "":
		case strict && (img == layout.New || img == layout.Rejected):
		case mi.data != manifestOf(c) || (strict && !isComplete(c)):
			return fmt.Sprintf("%s = %q beside %s = %q", layout.ManifestFor(img), mi.data, img, c)
		}
	}
	return ""
}

// cleanStart reports whether every manifest describes the image beside it.
func cleanStart(s map[string]string) bool {
	for _, img := range []string{layout.Current, layout.Old, layout.Broken, layout.New, layout.Rejected} {
		if m, ok := s[layout.ManifestFor(img)]; ok && (s[img] == "" || m != manifestOf(s[img])) {
			return false
		}
	}
	return true
}

func crashState(st *local, c crashCase) {
	base := newMemFS(c.files)
	start := base.snapshot()
	boot := bootable(base)
	clean := cleanStart(start)
	startJournal, _ := decodeJournal([]byte(start[layout.Journal]))

	// Uninterrupted boot. Only a journalled promotion, revert or rejection
	// may replace an image, each the image of one slot at the time its
	// journal is written; each journal is also checked against the files
	// it is written beside.
	u := base.clone()
	allowed := map[string]bool{}
	cnt := &countFS{FS: u, onJournal: func(op string) {
		ok := true
		switch op {
		case opPromote:
			ok = verifyFake(u)(layout.New) == nil
			allowed[u.content(layout.Old)] = true
		case opRevert:
			ok = isComplete(u.content(layout.Old))
			allowed[u.content(layout.Broken)] = true
		case opReject:
			ok = verifyFake(u)(layout.New) != nil
			allowed[u.content(layout.Rejected)] = true
		case opRepair:
			ok = !isComplete(u.content(layout.Current))
		}
		if !ok {
			st.fail("%s: journal %s written beside %s", c.desc, op, fmtState(u.snapshot()))
		}
	}}
	ures, uerr := Run(cnt, c.options(u))
	if uerr != nil && !errors.Is(uerr, ErrNoImage) {
		st.fail("%s: uninterrupted Run = %v", c.desc, uerr)
		return
	}
	if errors.Is(uerr, ErrNoImage) != (len(boot) == 0) {
		st.fail("%s: uninterrupted Run = %v with bootable images %q", c.desc, uerr, boot)
	}
	if ures.Replayed {
		switch startJournal.op {
		case opPromote:
			allowed[start[layout.Old]] = true
		case opRevert:
			allowed[start[layout.Broken]] = true
		case opReject:
			allowed[start[layout.Rejected]] = true
		}
	}
	uEnd := u.snapshot()
	if len(boot) == 0 && start[layout.Journal] == "" {
		// Nothing can boot: the disk stays as it was for the rescue shell.
		if !maps.Equal(uEnd, start) {
			st.fail("%s: nothing bootable, Run left %s", c.desc, fmtState(uEnd))
		}
	}
	var images []string // complete start images that must survive
	imageSet := map[string]bool{}
	for _, img := range []string{layout.Current, layout.New, layout.Old, layout.Broken, layout.Rejected} {
		if ct, ok := start[img]; ok {
			imageSet[ct] = true
			if isComplete(ct) && !allowed[ct] {
				images = append(images, ct)
			}
		}
	}
	startPart := start[layout.NewPart]

	invariant := func(ctx func() string) func(m *memFS, op func() string, prev string) {
		return func(m *memFS, op func() string, prev string) {
			cur := m.content(layout.Current)
			if isComplete(prev) && !isComplete(cur) {
				st.fail("%s %s, after %q: %s = %q, was complete", c.desc, ctx(), op(), layout.Current, cur)
			}
			if cur != "" && !imageSet[cur] {
				st.fail("%s %s, after %q: %s = %q, not an image of the start", c.desc, ctx(), op(), layout.Current, cur)
			}
			if m.content(layout.NewPart) != startPart {
				st.fail("%s %s, after %q: %s = %q, want it untouched", c.desc, ctx(), op(), layout.NewPart, m.content(layout.NewPart))
			}
			if !m.holdsAll(images) {
				st.fail("%s %s, after %q: an image of %q lost (files %s)", c.desc, ctx(), op(), images, fmtState(m.snapshot()))
			}
			if clean {
				if why := manifestsMatch(m, false); why != "" {
					st.fail("%s %s, after %q: %s", c.desc, ctx(), op(), why)
				}
			}
		}
	}
	final := func(ctxf func() string, m *memFS, res Result, err error) {
		if (err == nil) != (uerr == nil) || errors.Is(err, ErrNoImage) != errors.Is(uerr, ErrNoImage) {
			st.fail("%s %s: Run = %v, want %v", c.desc, ctxf(), err, uerr)
			return
		}
		if got := m.snapshot(); !maps.Equal(got, uEnd) {
			st.fail("%s %s: Run(...) left %s, want %s (uninterrupted)", c.desc, ctxf(), fmtState(got), fmtState(uEnd))
		}
		if l := m.links(); l != "" {
			st.fail("%s %s: hard links left: %s", c.desc, ctxf(), l)
		}
		if len(boot) > 0 {
			if cur := m.content(layout.Current); !isComplete(cur) {
				st.fail("%s %s: %s = %q, want a complete image (bootable at the start: %q)", c.desc, ctxf(), layout.Current, cur, boot)
			}
			if why := manifestsMatch(m, true); why != "" {
				st.fail("%s %s: %s", c.desc, ctxf(), why)
			}
		}
		if res.Trial != ures.Trial || res.TriesLeft != ures.TriesLeft || res.RevertApplied != ures.RevertApplied {
			st.fail("%s %s: Run(...) = %s, want trial %v left %d revert_applied %q as uninterrupted", c.desc, ctxf(), fmtResult(res), ures.Trial, ures.TriesLeft, ures.RevertApplied)
		}
	}

	// The uninterrupted boot again, checked after every operation.
	u2 := base.clone()
	res, err := Run(&checkFS{u2, invariant(func() string { return "uninterrupted" })}, c.options(u2))
	final(func() string { return "uninterrupted" }, u2, res, err)
	if !u.holdsAll(images) {
		st.fail("%s: an image of %q lost: %s", c.desc, images, fmtState(uEnd))
	}

	for k1 := range cnt.ops {
		ctx1 := func() string { return fmt.Sprintf("cut after %d of %d ops", k1, cnt.ops) }
		m1 := base.clone()
		if _, err := Run(CrashAfter(&checkFS{m1, invariant(ctx1)}, k1, nil), c.options(m1)); !errors.Is(err, ErrPowerCut) {
			st.fail("%s %s: Run = %v, want ErrPowerCut", c.desc, ctx1(), err)
			continue
		}
		st.points++

		// Recovery boot to completion.
		r := m1.clone()
		rctx := func() string { return ctx1() + ", recovery" }
		rcnt := &countFS{FS: &checkFS{r, invariant(rctx)}}
		res, err := Run(rcnt, c.options(r))
		final(rctx, r, res, err)

		// Recovery boot cut again at every point, then one more boot.
		for k2 := range rcnt.ops {
			ctx2 := func() string { return fmt.Sprintf("%s, recovery cut after %d of %d ops", ctx1(), k2, rcnt.ops) }
			m2 := m1.clone()
			if _, err := Run(CrashAfter(&checkFS{m2, invariant(ctx2)}, k2, nil), c.options(m2)); !errors.Is(err, ErrPowerCut) {
				st.fail("%s %s: Run = %v, want ErrPowerCut", c.desc, ctx2(), err)
				continue
			}
			st.double++
			ctx3 := func() string { return ctx2() + ", second recovery" }
			res, err := Run(&checkFS{m2, invariant(ctx3)}, c.options(m2))
			final(ctx3, m2, res, err)
		}
	}
}

// TestCrashEveryOp prints the counts for the README and the issue notes:
// go test -count=1 -run TestCrashEveryOp -v ./initramfs/rotate/
func TestCrashEveryOp(t *testing.T) {
	suites := crashSuites()
	total := crashStats{}
	for _, name := range slices.Sorted(maps.Keys(suites)) {
		st := suites[name]
		for _, f := range st.failures {
			t.Error(f)
		}
		if st.nFailures > len(st.failures) {
			t.Errorf("... and %d more failures", st.nFailures-len(st.failures))
		}
		t.Logf("%s states: %d starting states, %d crash points, %d double-crash points", name, st.states, st.points, st.double)
		total.states += st.states
		total.points += st.points
		total.double += st.double
	}
	t.Logf("covered %d starting states, %d crash points (%d double-crash points)", total.states, total.points, total.double)
}

func TestCrashPointCount(t *testing.T) {
	suites := crashSuites()
	for name, want := range map[string]int{"machine": len(machineStates()), "hand": len(handStates())} {
		st := suites[name]
		if st.states != want {
			t.Errorf("%s: covered %d states, generated %d", name, st.states, want)
		}
		if st.points < st.states || st.double < st.points {
			t.Errorf("%s: covered %d states, %d crash points, %d double: suspiciously few", name, st.states, st.points, st.double)
		}
	}
	variants := 0
	for _, v := range handVariants {
		variants += cmp.Or(len(v.extras), len(handExtras))
	}
	if n := len(handStates()); n != 4*5*4*4*4*variants {
		t.Errorf("handStates() = %d states, want every combination", n)
	}
}
