package rotate

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

// The recovery's crash test: RecoverImage on every starting state a boot
// whose images all failed can leave (current and old absent, complete,
// truncated or not a filesystem; leftovers of an earlier recovery;
// matching, stale, orphan or no manifests; a trial and system-revert; a
// revert slot and a download in progress; an interrupted recovery's
// journal), once uninterrupted and then cut after every operation; each
// cut is followed by a boot (Run replays the journal and goes on as a
// fresh boot), itself cut after every operation and followed by one more.
//
// Checked after every operation: the downloaded image R is never lost
// (hn-root-recover.img or hn-root.img holds it) and, once hn-root.img,
// stays there; every image of the start that did not boot is still on
// hostpart (as itself or kept aside as *.broken); the revert slot and the
// .part are untouched; from a start whose manifests describe their
// images, no manifest of hn-root.img, hn-root-old.img or their .broken
// names ever describes another image. Checked after every boot that ran
// to its end: the state equals that of the boot after an uninterrupted
// recovery, exactly; hn-root.img is R, no trial, journal or links are
// left.

const imgRecovered = "R"

type recoverCase struct {
	desc  string
	files map[string]string
}

func recoverStates() []recoverCase {
	conds := []string{condAbsent, condComplete, condTrunc, condNoFS}
	var out []recoverCase
	for _, cur := range conds {
		for _, old := range conds {
			for _, leftovers := range []bool{false, true} {
				for _, mode := range []string{"match", "stale+orphans"} {
					for _, triggers := range []bool{false, true} {
						for _, broken := range []bool{false, true} {
							for _, recMan := range []bool{false, true} {
								for _, journal := range []bool{false, true} {
									f := map[string]string{layout.Recover: imgRecovered}
									desc := []string{"current=" + cur, "old=" + old, "manifests=" + mode}
									for _, s := range []struct{ img, c, cond string }{{layout.Current, "A", cur}, {layout.Old, "C", old}} {
										c := s.c
										switch s.cond {
										case condTrunc:
											c += sufTrunc
										case condNoFS:
											c += sufNoFS
										}
										if s.cond != condAbsent {
											f[s.img] = c
										}
										switch {
										case mode == "match" && s.cond != condAbsent:
											f[layout.ManifestFor(s.img)] = manifestOf(c)
										case mode == "stale+orphans" && s.cond != condAbsent:
											f[layout.ManifestFor(s.img)] = "m:Z"
										case mode == "stale+orphans":
											f[layout.ManifestFor(s.img)] = manifestOf(s.c)
										}
									}
									if leftovers {
										f[layout.CurrentBroken], f[layout.ManifestFor(layout.CurrentBroken)] = "F", "m:F"
										f[layout.OldBroken], f[layout.ManifestFor(layout.OldBroken)] = "G", "m:G"
										desc = append(desc, "earlier-recovery")
									}
									if triggers {
										f[layout.Trial], f[layout.RevertTrigger] = "1\n", ""
										desc = append(desc, "trial+system-revert")
									}
									if broken {
										f[layout.Broken], f[layout.NewPart] = "D", imgPart
										desc = append(desc, "broken+part")
									}
									if recMan {
										f[layout.ManifestFor(layout.Recover)] = manifestOf(imgRecovered)
										desc = append(desc, "recover-manifest")
									}
									if journal {
										f[layout.Journal] = string(encodeJournal(journalOf(opRecover)))
										desc = append(desc, "journal=recover")
									}
									out = append(out, recoverCase{"{" + strings.Join(desc, " ") + "}", f})
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

func journalOf(op string) journal { return journal{op: op} }

var (
	recoverOnce  sync.Once
	recoverStats *crashStats
)

func recoverSuite() *crashStats {
	recoverOnce.Do(func() {
		st := &crashStats{}
		cases := recoverStates()
		var wg sync.WaitGroup
		jobs := make(chan recoverCase)
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for c := range jobs {
					var l local
					recoverState(&l, c)
					st.merge(&l)
				}
			}()
		}
		for _, c := range cases {
			jobs <- c
		}
		close(jobs)
		wg.Wait()
		recoverStats = st
	})
	return recoverStats
}

func recoverOptions(m *memFS) Options {
	return Options{Verify: verifyFake(m), Complete: completeFake(m)}
}

func recoverState(st *local, c recoverCase) {
	base := newMemFS(c.files)
	start := base.snapshot()
	clean := true
	for _, img := range []string{layout.Current, layout.Old} {
		if m, ok := start[layout.ManifestFor(img)]; ok && m != manifestOf(start[img]) {
			clean = false
		}
	}
	// The images of the start that must survive, as themselves or aside.
	var keep []string
	for _, img := range []string{layout.Current, layout.Old} {
		if ct, ok := start[img]; ok {
			keep = append(keep, ct)
		}
	}

	// Uninterrupted: the recovery, then the next boot's rotation.
	u := base.clone()
	cnt := &countFS{FS: u}
	res, err := RecoverImage(cnt, recoverOptions(u))
	if err != nil || res.Action != Recover {
		st.fail("%s: RecoverImage = %s, %v", c.desc, fmtResult(res), err)
		return
	}
	afterRecover := u.snapshot()
	for img, aside := range map[string]string{layout.Current: layout.CurrentBroken, layout.Old: layout.OldBroken} {
		if ct, ok := start[img]; ok && afterRecover[aside] != ct {
			st.fail("%s: %s = %q after the recovery, want %s's %q kept aside", c.desc, aside, afterRecover[aside], img, ct)
		}
		if _, ok := afterRecover[img]; ok && img == layout.Old {
			st.fail("%s: %s still there after the recovery", c.desc, img)
		}
	}
	for _, gone := range []string{layout.Recover, layout.Journal, layout.Trial, layout.RevertTrigger} {
		if _, ok := afterRecover[gone]; ok {
			st.fail("%s: %s left by the recovery: %s", c.desc, gone, fmtState(afterRecover))
		}
	}
	if m, ok := afterRecover[layout.ManifestFor(layout.Current)]; ok != (start[layout.ManifestFor(layout.Recover)] != "") || ok && m != manifestOf(imgRecovered) {
		st.fail("%s: %s = %q after the recovery", c.desc, layout.ManifestFor(layout.Current), m)
	}
	if _, err := Run(u, recoverOptions(u)); err != nil {
		st.fail("%s: the boot after the recovery: Run = %v", c.desc, err)
		return
	}
	want := u.snapshot()
	if want[layout.Current] != imgRecovered {
		st.fail("%s: the boot after the recovery left %s", c.desc, fmtState(want))
	}

	invariant := func(ctx func() string) func(m *memFS, op func() string, prev string) {
		return func(m *memFS, op func() string, prev string) {
			cur := m.content(layout.Current)
			if m.content(layout.Recover) != imgRecovered && cur != imgRecovered {
				st.fail("%s %s, after %q: the downloaded image is lost: %s", c.desc, ctx(), op(), fmtState(m.snapshot()))
			}
			if prev == imgRecovered && cur != imgRecovered {
				st.fail("%s %s, after %q: %s = %q, was the recovered image", c.desc, ctx(), op(), layout.Current, cur)
			}
			for _, k := range keep {
				found := false
				for _, f := range []string{layout.Current, layout.Old, layout.CurrentBroken, layout.OldBroken} {
					if m.content(f) == k {
						found = true
					}
				}
				if !found {
					st.fail("%s %s, after %q: %q is neither in place nor kept aside: %s", c.desc, ctx(), op(), k, fmtState(m.snapshot()))
				}
			}
			if m.content(layout.Broken) != start[layout.Broken] || m.content(layout.NewPart) != start[layout.NewPart] {
				st.fail("%s %s, after %q: %s or %s touched", c.desc, ctx(), op(), layout.Broken, layout.NewPart)
			}
			if clean {
				for _, img := range []string{layout.Current, layout.Old, layout.CurrentBroken, layout.OldBroken} {
					mi, ok := m.files[layout.ManifestFor(img)]
					if ct := m.content(img); ok && ct != "" && mi.data != manifestOf(ct) {
						st.fail("%s %s, after %q: %s = %q beside %q", c.desc, ctx(), op(), layout.ManifestFor(img), mi.data, ct)
					}
				}
			}
		}
	}
	final := func(ctx string, m *memFS, err error) {
		if err != nil {
			st.fail("%s %s: Run = %v", c.desc, ctx, err)
			return
		}
		if got := m.snapshot(); !maps.Equal(got, want) {
			st.fail("%s %s: left %s, want %s (the boot after an uninterrupted recovery)", c.desc, ctx, fmtState(got), fmtState(want))
		}
		if l := m.links(); l != "" {
			st.fail("%s %s: hard links left: %s", c.desc, ctx, l)
		}
	}

	// The uninterrupted recovery again, checked after every operation.
	u2 := base.clone()
	if _, err := RecoverImage(&checkFS{u2, invariant(func() string { return "uninterrupted" })}, recoverOptions(u2)); err != nil {
		st.fail("%s: checked RecoverImage = %v", c.desc, err)
	}

	for k1 := 0; k1 < cnt.ops; k1++ {
		ctx1 := func() string { return fmt.Sprintf("recovery cut after %d of %d ops", k1, cnt.ops) }
		m1 := base.clone()
		if _, err := RecoverImage(CrashAfter(&checkFS{m1, invariant(ctx1)}, k1, nil), recoverOptions(m1)); !errors.Is(err, ErrPowerCut) {
			st.fail("%s %s: RecoverImage = %v, want ErrPowerCut", c.desc, ctx1(), err)
			continue
		}
		if k1 == 0 {
			// Nothing done: the next boot is a fresh one from the start
			// (the other crash test's business), and recovers again.
			if got := m1.snapshot(); !maps.Equal(got, start) {
				st.fail("%s %s: changed %s", c.desc, ctx1(), fmtState(got))
			}
			continue
		}
		st.points++
		r := m1.clone()
		rctx := func() string { return ctx1() + ", next boot" }
		rcnt := &countFS{FS: &checkFS{r, invariant(rctx)}}
		_, err := Run(rcnt, recoverOptions(r))
		final(rctx(), r, err)
		for k2 := 0; k2 < rcnt.ops; k2++ {
			ctx2 := func() string { return fmt.Sprintf("%s, next boot cut after %d of %d ops", ctx1(), k2, rcnt.ops) }
			m2 := m1.clone()
			if _, err := Run(CrashAfter(&checkFS{m2, invariant(ctx2)}, k2, nil), recoverOptions(m2)); !errors.Is(err, ErrPowerCut) {
				st.fail("%s %s: Run = %v, want ErrPowerCut", c.desc, ctx2(), err)
				continue
			}
			st.double++
			ctx3 := func() string { return ctx2() + ", one more boot" }
			_, err := Run(&checkFS{m2, invariant(ctx3)}, recoverOptions(m2))
			final(ctx3(), m2, err)
		}
	}
}

// TestRecoverCrashEveryOp prints the counts for the README and the report:
// go test -count=1 -run TestRecoverCrashEveryOp -v ./initramfs/rotate/
func TestRecoverCrashEveryOp(t *testing.T) {
	st := recoverSuite()
	for _, f := range st.failures {
		t.Error(f)
	}
	if st.nFailures > len(st.failures) {
		t.Errorf("... and %d more failures", st.nFailures-len(st.failures))
	}
	if n := len(recoverStates()); st.states != n || st.points < n || st.double < st.points {
		t.Errorf("covered %d of %d states, %d crash points, %d double: suspiciously few", st.states, n, st.points, st.double)
	}
	t.Logf("recovery: %d starting states, %d crash points, %d double-crash points", st.states, st.points, st.double)
}

// TestRecoverImage: the recovery's end states, and its refusals.
func TestRecoverImage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start map[string]string
		want  map[string]string
		err   string
	}{
		{"garbage current and old are kept aside with their manifests",
			map[string]string{layout.Current: "A" + sufNoFS, layout.Old: "C" + sufTrunc, layout.ManifestFor(layout.Old): "m:C", layout.Recover: "R", layout.ManifestFor(layout.Recover): "m:R", layout.Trial: "0\n"},
			map[string]string{layout.Current: "R", layout.ManifestFor(layout.Current): "m:R", layout.CurrentBroken: "A" + sufNoFS, layout.OldBroken: "C" + sufTrunc, layout.ManifestFor(layout.OldBroken): "m:C"}, ""},
		{"an empty hostpart gets its image",
			map[string]string{layout.Recover: "R"},
			map[string]string{layout.Current: "R"}, ""},
		{"an earlier recovery's leftovers are replaced; the revert slot stays",
			map[string]string{layout.Current: "A", layout.CurrentBroken: "F", layout.ManifestFor(layout.CurrentBroken): "m:F", layout.OldBroken: "G", layout.Broken: "D", layout.Recover: "R"},
			map[string]string{layout.Current: "R", layout.CurrentBroken: "A", layout.OldBroken: "G", layout.Broken: "D"}, ""},
		{"no download: refused, nothing changed",
			map[string]string{layout.Current: "A" + sufNoFS},
			map[string]string{layout.Current: "A" + sufNoFS}, "hn-root-recover.img is not a complete image"},
		{"a truncated download: refused",
			map[string]string{layout.Current: "A" + sufNoFS, layout.Recover: "R" + sufTrunc},
			map[string]string{layout.Current: "A" + sufNoFS, layout.Recover: "R" + sufTrunc}, "not a complete image"},
		{"another rotation unfinished: refused",
			map[string]string{layout.Current: "A", layout.Recover: "R", layout.Journal: "promote\n"},
			map[string]string{layout.Current: "A", layout.Recover: "R", layout.Journal: "promote\n"}, "unfinished rotation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemFS(tc.start)
			res, err := RecoverImage(m, recoverOptions(m))
			if tc.err == "" && (err != nil || res.Action != Recover) || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("RecoverImage = %s, %v; want error %q", fmtResult(res), err, tc.err)
			}
			if got := m.snapshot(); !maps.Equal(got, tc.want) {
				t.Errorf("left %s\nwant %s", fmtState(got), fmtState(tc.want))
			}
		})
	}
}
