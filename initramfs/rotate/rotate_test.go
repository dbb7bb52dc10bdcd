package rotate

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

const part = "hn-root-new.img.part"

// Image contents in memFS tests: a letter ("A") or "bad-X" is a complete
// image ("bad-X" fails Verify); a suffix marks one that is not complete.
// A manifest's content names the image it describes: "m:A".
const (
	sufTrunc = "~truncated"
	sufNoFS  = "~notfs"
)

// baseOf is the image a content was meant to be: "A" for "A~truncated".
func baseOf(c string) string { b, _, _ := strings.Cut(c, "~"); return b }

func isComplete(c string) bool { return c != "" && !strings.Contains(c, "~") }

func manifestOf(c string) string {
	if len(c) == 1 && c[0] >= 'A' && c[0] <= 'Z' {
		return manifestNames[c[0]-'A'] // no allocation in the crash test's hot path
	}
	return "m:" + baseOf(c)
}

var manifestNames = func() (s [26]string) {
	for i := range s {
		s[i] = "m:" + string(rune('A'+i))
	}
	return s
}()

// The fakes' errors are made once: the crash test calls them millions of
// times.
var (
	errFakeMissing    = &fs.PathError{Op: "check", Path: "image", Err: fs.ErrNotExist}
	errFakeIncomplete = fmt.Errorf("%w: truncated or not a filesystem", ErrIncomplete)
	errFakeStale      = fmt.Errorf("%w: the manifest names another image", ErrStaleManifest)
	errFakeNotFS      = errors.New("truncated or not a filesystem")
	errFakeBad        = errors.New("bad superblock")
	errFakeMismatch   = errors.New("does not match its manifest")
)

// completeFake is Options.Complete on m.
func completeFake(m *memFS) func(string) error {
	return func(name string) error {
		ino, ok := m.files[name]
		switch {
		case !ok:
			return errFakeMissing
		case !isComplete(ino.data):
			return errFakeIncomplete
		}
		if mi, ok := m.files[layout.ManifestFor(name)]; ok && mi.data != manifestOf(ino.data) {
			return errFakeStale
		}
		return nil
	}
}

// verifyFake is Options.Verify on m: it rejects an incomplete image, one
// whose content starts with "bad", and one its manifest does not describe.
func verifyFake(m *memFS) func(string) error {
	return func(name string) error {
		c := m.files[name].data
		switch {
		case !isComplete(c):
			return errFakeNotFS
		case strings.HasPrefix(c, "bad"):
			return errFakeBad
		}
		if mi, ok := m.files[layout.ManifestFor(name)]; ok && mi.data != manifestOf(c) {
			return errFakeMismatch
		}
		return nil
	}
}

func fmtState(s map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s)) {
		fmt.Fprintf(&b, "%s=%q ", k, s[k])
	}
	return strings.TrimSpace(b.String())
}

func fmtResult(r Result) string {
	return fmt.Sprintf("{%v repaired=%q replayed=%v trial=%v left=%d revert_applied=%q notes=%q}", r.Action, r.Repaired, r.Replayed, r.Trial, r.TriesLeft, r.RevertApplied, r.Notes)
}

func TestRun(t *testing.T) {
	promoteJ := string(encodeJournal(journal{op: opPromote}))
	revertJ := string(encodeJournal(journal{op: opRevert, id: "r1"}))
	tests := []struct {
		name   string
		start  map[string]string
		links  map[string]string // new name -> existing name, made after start
		opt    Options
		want   Result
		note   string // a note must contain this
		end    map[string]string
		endErr error
	}{
		{
			name:  "plain boot",
			start: map[string]string{layout.Current: "A", part: "P"},
			want:  Result{Action: Boot},
			end:   map[string]string{layout.Current: "A", part: "P"},
		},
		{
			name:  "trial boot uses one try",
			start: map[string]string{layout.Current: "A", layout.Trial: "2\n"},
			want:  Result{Action: Boot, Trial: true, TriesLeft: 1},
			end:   map[string]string{layout.Current: "A", layout.Trial: "1\n"},
		},
		{
			name:  "trial boot with the last try",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Trial: "1"},
			want:  Result{Action: Boot, Trial: true, TriesLeft: 0},
			end:   map[string]string{layout.Current: "A", layout.Old: "C", layout.Trial: "0\n"},
		},
		{
			name:  "promote replaces the previous old",
			start: map[string]string{layout.Current: "A", layout.New: "B", layout.Old: "C", layout.Broken: "D", part: "P"},
			want:  Result{Action: Promote, Trial: true, TriesLeft: 2},
			end:   map[string]string{layout.Current: "B", layout.Old: "A", layout.Broken: "D", layout.Trial: "2\n", part: "P"},
		},
		{
			name:  "promote without previous old, hn.tries=5",
			start: map[string]string{layout.Current: "A", layout.New: "B"},
			opt:   Options{Tries: 5},
			want:  Result{Action: Promote, Trial: true, TriesLeft: 4},
			end:   map[string]string{layout.Current: "B", layout.Old: "A", layout.Trial: "4\n"},
		},
		{
			name:  "promote while current is on trial restarts the count",
			start: map[string]string{layout.Current: "A", layout.New: "B", layout.Trial: "1\n"},
			want:  Result{Action: Promote, Trial: true, TriesLeft: 2},
			end:   map[string]string{layout.Current: "B", layout.Old: "A", layout.Trial: "2\n"},
		},
		{
			name:  "reject replaces the previous rejected",
			start: map[string]string{layout.Current: "A", layout.New: "bad-B", layout.Old: "C", layout.Rejected: "E", layout.Trial: "3\n"},
			want:  Result{Action: Reject, Trial: true, TriesLeft: 2},
			note:  "bad superblock",
			end:   map[string]string{layout.Current: "A", layout.Old: "C", layout.Rejected: "bad-B", layout.Trial: "2\n"},
		},
		{
			name:  "system-revert",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Broken: "D", layout.RevertTrigger: "", layout.Trial: "2\n", part: "P"},
			want:  Result{Action: Revert},
			note:  "system-revert present",
			end:   map[string]string{layout.Current: "C", layout.Broken: "A", part: "P"},
		},
		{
			name:  "trial exhausted reverts",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Trial: "0\n"},
			want:  Result{Action: Revert},
			note:  "no tries left",
			end:   map[string]string{layout.Current: "C", layout.Broken: "A"},
		},
		{
			name:  "negative trial reverts",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Trial: "-1\n"},
			want:  Result{Action: Revert},
			end:   map[string]string{layout.Current: "C", layout.Broken: "A"},
		},
		{
			name:  "garbage trial reverts",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Trial: "two"},
			want:  Result{Action: Revert},
			note:  "unreadable",
			end:   map[string]string{layout.Current: "C", layout.Broken: "A"},
		},
		{
			name:  "hn.revert with a new ID reverts and records it",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Reverts: "r0\n"},
			opt:   Options{RevertID: "r1"},
			want:  Result{Action: Revert, RevertApplied: "r1"},
			note:  "hn.revert=r1",
			end:   map[string]string{layout.Current: "C", layout.Broken: "A", layout.Reverts: "r0\nr1\n"},
		},
		{
			name:  "hn.revert with an applied ID does nothing",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Reverts: "r0\nr1\n"},
			opt:   Options{RevertID: "r1"},
			want:  Result{Action: Boot},
			end:   map[string]string{layout.Current: "A", layout.Old: "C", layout.Reverts: "r0\nr1\n"},
		},
		{
			name:  "hn.revert with white space is ignored",
			start: map[string]string{layout.Current: "A", layout.Old: "C"},
			opt:   Options{RevertID: "r 1"},
			want:  Result{Action: Boot},
			note:  "ignoring hn.revert",
			end:   map[string]string{layout.Current: "A", layout.Old: "C"},
		},
		{
			name:  "revert leaves a staged image staged",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.New: "B", layout.RevertTrigger: ""},
			want:  Result{Action: Revert},
			note:  "stays staged",
			end:   map[string]string{layout.Current: "C", layout.Broken: "A", layout.New: "B"},
		},
		{
			name:  "system-revert without old keeps current",
			start: map[string]string{layout.Current: "A", layout.Broken: "D", layout.RevertTrigger: ""},
			want:  Result{Action: Boot},
			note:  "revert requested (system-revert present) but no hn-root-old.img: booting current",
			end:   map[string]string{layout.Current: "A", layout.Broken: "D"},
		},
		{
			name:  "system-revert without old keeps a trial with tries",
			start: map[string]string{layout.Current: "A", layout.RevertTrigger: "", layout.Trial: "2\n"},
			want:  Result{Action: Boot, Trial: true, TriesLeft: 1},
			note:  "no hn-root-old.img",
			end:   map[string]string{layout.Current: "A", layout.Trial: "1\n"},
		},
		{
			name:  "exhausted trial without old removes the trial file",
			start: map[string]string{layout.Current: "A", layout.Trial: "0\n"},
			want:  Result{Action: Boot},
			note:  "no hn-root-old.img",
			end:   map[string]string{layout.Current: "A"},
		},
		{
			name:  "hn.revert without old is recorded and does not promote",
			start: map[string]string{layout.Current: "A", layout.New: "B"},
			opt:   Options{RevertID: "r1"},
			want:  Result{Action: Boot},
			note:  "stays staged",
			end:   map[string]string{layout.Current: "A", layout.New: "B", layout.Reverts: "r1\n"},
		},
		{
			name:  "staged image that is the current file is dropped",
			start: map[string]string{layout.Current: "A"},
			links: map[string]string{layout.New: layout.Current},
			want:  Result{Action: Boot},
			note:  "same file",
			end:   map[string]string{layout.Current: "A"},
		},
		{
			name:  "journal: promotion interrupted after the link",
			start: map[string]string{layout.Current: "A", layout.New: "B", layout.Journal: promoteJ},
			links: map[string]string{layout.Old: layout.Current},
			want:  Result{Action: Promote, Replayed: true, Trial: true, TriesLeft: 2},
			note:  "interrupted promotion",
			end:   map[string]string{layout.Current: "B", layout.Old: "A", layout.Trial: "2\n"},
		},
		{
			name:  "journal: promotion interrupted after the rename",
			start: map[string]string{layout.Current: "B", layout.Old: "A", layout.Trial: "1\n", layout.Journal: promoteJ},
			want:  Result{Action: Promote, Replayed: true, Trial: true, TriesLeft: 2},
			end:   map[string]string{layout.Current: "B", layout.Old: "A", layout.Trial: "2\n"},
		},
		{
			name:  "journal: revert interrupted after the link keeps new staged",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.New: "B", layout.Broken: "D", layout.RevertTrigger: "", layout.Journal: revertJ},
			links: map[string]string{layout.Broken: layout.Current},
			opt:   Options{RevertID: "r1"},
			want:  Result{Action: Revert, Replayed: true},
			note:  "stays staged",
			end:   map[string]string{layout.Current: "C", layout.Broken: "A", layout.New: "B", layout.Reverts: "r1\n"},
		},
		{
			name:  "journal: revert request without old finishes and counts the try once",
			start: map[string]string{layout.Current: "A", layout.New: "B", layout.Trial: "3\n", layout.Journal: "revert-without-old\nid r1\ntrial 2\n"},
			opt:   Options{RevertID: "r1"},
			want:  Result{Action: Boot, Replayed: true, Trial: true, TriesLeft: 2},
			note:  "stays staged",
			end:   map[string]string{layout.Current: "A", layout.New: "B", layout.Trial: "2\n", layout.Reverts: "r1\n"},
		},
		{
			name:  "journal: a finished revert ends the boot, a new hn.revert waits",
			start: map[string]string{layout.Current: "C", layout.Broken: "A", layout.Journal: "revert\nid r1\n"},
			opt:   Options{RevertID: "r2"},
			want:  Result{Action: Revert, Replayed: true},
			end:   map[string]string{layout.Current: "C", layout.Broken: "A", layout.Reverts: "r1\n"},
		},
		{
			name:  "journal: finished promotion, then system-revert put there by a rescue system",
			start: map[string]string{layout.Current: "A", layout.New: "B", layout.Old: "C", layout.Broken: "D", layout.RevertTrigger: "", layout.Journal: promoteJ},
			want:  Result{Action: Revert, Replayed: true},
			end:   map[string]string{layout.Current: "A", layout.Broken: "B"},
		},
		{
			name:  "journal: unreadable journal is dropped",
			start: map[string]string{layout.Current: "A", layout.Journal: "frobnicate\n"},
			want:  Result{Action: Boot},
			note:  "unreadable",
			end:   map[string]string{layout.Current: "A"},
		},
		{
			name:  "journal: a rejection cut after the image's rename moves its manifest",
			start: map[string]string{layout.Current: "A", layout.Rejected: "bad-B", layout.ManifestFor(layout.New): "m:bad-B", layout.Journal: "reject\n"},
			want:  Result{Action: Reject, Replayed: true},
			end:   map[string]string{layout.Current: "A", layout.Rejected: "bad-B", layout.ManifestFor(layout.Rejected): "m:bad-B"},
		},
		{
			name:  "journal: a rejection journal whose staged image verifies is dropped",
			start: map[string]string{layout.Current: "A", layout.New: "B", layout.Journal: "reject\n"},
			want:  Result{Action: Promote, Trial: true, TriesLeft: 2},
			note:  "verifies",
			end:   map[string]string{layout.Current: "B", layout.Old: "A", layout.Trial: "2\n"},
		},
		{
			name:  "journal: a promotion journal whose staged image fails is dropped, the image rejected",
			start: map[string]string{layout.Current: "A", layout.New: "bad-B", layout.Old: "C", layout.Journal: promoteJ},
			want:  Result{Action: Reject},
			note:  "does not verify",
			end:   map[string]string{layout.Current: "A", layout.Old: "C", layout.Rejected: "bad-B"},
		},
		{
			name:  "manifests follow a promotion",
			start: map[string]string{layout.Current: "A", layout.New: "B", layout.Old: "C", "hn-root.img.json": "m:A", "hn-root-new.img.json": "m:B", "hn-root-old.img.json": "m:C"},
			want:  Result{Action: Promote, Trial: true, TriesLeft: 2},
			end:   map[string]string{layout.Current: "B", layout.Old: "A", "hn-root.img.json": "m:B", "hn-root-old.img.json": "m:A", layout.Trial: "2\n"},
		},
		{
			name:  "manifests follow a revert; the previous broken's goes",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Broken: "D", "hn-root.img.json": "m:A", "hn-root-old.img.json": "m:C", "hn-root-broken.img.json": "m:D", layout.RevertTrigger: ""},
			want:  Result{Action: Revert},
			end:   map[string]string{layout.Current: "C", layout.Broken: "A", "hn-root.img.json": "m:C", "hn-root-broken.img.json": "m:A"},
		},
		{
			name:  "a rejected image takes its manifest; the previous rejected's goes",
			start: map[string]string{layout.Current: "A", layout.New: "bad-B", layout.Rejected: "E", "hn-root-new.img.json": "m:bad-B", "hn-root-new.img.rejected.json": "m:E"},
			want:  Result{Action: Reject},
			end:   map[string]string{layout.Current: "A", layout.Rejected: "bad-B", "hn-root-new.img.rejected.json": "m:bad-B"},
		},
		{
			name:  "a staged image whose manifest describes another is rejected with it",
			start: map[string]string{layout.Current: "A", layout.New: "B", "hn-root-new.img.json": "m:Z"},
			want:  Result{Action: Reject},
			note:  "does not match its manifest",
			end:   map[string]string{layout.Current: "A", layout.Rejected: "B", "hn-root-new.img.rejected.json": "m:Z"},
		},
		{
			name:  "stale and orphan manifests go; the staged one stays while a download runs",
			start: map[string]string{layout.Current: "A", layout.Old: "C", "hn-root.img.json": "m:C", "hn-root-old.img.json": "m:C", "hn-root-broken.img.json": "m:D", "hn-root-new.img.json": "m:B", part: "P"},
			want:  Result{Action: Boot},
			note:  "does not describe hn-root.img",
			end:   map[string]string{layout.Current: "A", layout.Old: "C", "hn-root-old.img.json": "m:C", "hn-root-new.img.json": "m:B", part: "P"},
		},
		{
			name:  "the manifest of an incomplete old image goes; a revert to it does not happen",
			start: map[string]string{layout.Current: "A", layout.Old: "C" + sufTrunc, "hn-root-old.img.json": "m:C", layout.RevertTrigger: ""},
			want:  Result{Action: Boot},
			note:  "hn-root-old.img is not complete",
			end:   map[string]string{layout.Current: "A", layout.Old: "C" + sufTrunc},
		},
		{
			name:  "repair: genkernel's half mv (no current; old and new) promotes new, keeps old",
			start: map[string]string{layout.Old: "A", layout.New: "B", "hn-root.img.json": "m:A", "hn-root-old.img.json": "m:C", "hn-root-new.img.json": "m:B"},
			want:  Result{Action: Repair, Repaired: layout.New, Trial: true, TriesLeft: 2},
			note:  "hn-root.img is missing: hn-root-new.img becomes hn-root.img",
			end:   map[string]string{layout.Current: "B", layout.Old: "A", "hn-root.img.json": "m:B", layout.Trial: "2\n"},
		},
		{
			name:  "repair: a truncated current is replaced by old, a bad staged image rejected on the way",
			start: map[string]string{layout.Current: "A" + sufTrunc, layout.New: "bad-B", layout.Old: "C", layout.Broken: "D", "hn-root.img.json": "m:A", layout.Trial: "2\n"},
			want:  Result{Action: Repair, Repaired: layout.Old},
			note:  "hn-root.img is not complete",
			end:   map[string]string{layout.Current: "C", layout.Broken: "D", layout.Rejected: "bad-B"},
		},
		{
			name:  "repair: a revert request takes old first; new stays staged",
			start: map[string]string{layout.Old: "C", layout.New: "B", layout.RevertTrigger: ""},
			opt:   Options{RevertID: "r1"},
			want:  Result{Action: Repair, Repaired: layout.Old, RevertApplied: "r1"},
			note:  "stays staged",
			end:   map[string]string{layout.Current: "C", layout.New: "B", layout.Reverts: "r1\n"},
		},
		{
			name:  "repair: broken when nothing else is complete",
			start: map[string]string{layout.Current: "A" + sufNoFS, layout.Old: "C" + sufTrunc, layout.Broken: "D", layout.Rejected: "E"},
			want:  Result{Action: Repair, Repaired: layout.Broken},
			end:   map[string]string{layout.Current: "D", layout.Old: "C" + sufTrunc, layout.Rejected: "E"},
		},
		{
			name:  "journal: repair cut after the rename finishes",
			start: map[string]string{layout.Current: "B", layout.Old: "A", "hn-root-new.img.json": "m:B", layout.Journal: "repair\nfrom new\n"},
			want:  Result{Action: Repair, Repaired: layout.New, Replayed: true, Trial: true, TriesLeft: 2},
			end:   map[string]string{layout.Current: "B", layout.Old: "A", "hn-root.img.json": "m:B", layout.Trial: "2\n"},
		},
		{
			name:  "journal: a repair journal beside a complete current is dropped",
			start: map[string]string{layout.Current: "A", layout.Old: "C", layout.Journal: "repair\nfrom old\n"},
			want:  Result{Action: Boot},
			note:  "hn-root.img is complete",
			end:   map[string]string{layout.Current: "A", layout.Old: "C"},
		},
		{
			name:  "journal: a promotion journal with no current is dropped, then repaired",
			start: map[string]string{layout.Old: "C", layout.New: "B", layout.Journal: promoteJ},
			want:  Result{Action: Repair, Repaired: layout.New, Trial: true, TriesLeft: 2},
			note:  "which no promote leaves",
			end:   map[string]string{layout.Current: "B", layout.Old: "C", layout.Trial: "2\n"},
		},
		{
			name:   "nothing complete to boot",
			start:  map[string]string{layout.Current: "A" + sufTrunc, layout.Old: "C" + sufNoFS, layout.Rejected: "E", layout.RevertTrigger: ""},
			want:   Result{Action: Boot},
			note:   "nothing to boot",
			end:    map[string]string{layout.Current: "A" + sufTrunc, layout.Old: "C" + sufNoFS, layout.Rejected: "E", layout.RevertTrigger: ""},
			endErr: ErrNoImage,
		},
		{
			name:  "hn.revert applied by an earlier boot is acknowledged again",
			start: map[string]string{layout.Current: "C", layout.Broken: "A", layout.Reverts: "r1\n"},
			opt:   Options{RevertID: "r1"},
			want:  Result{Action: Boot, RevertApplied: "r1"},
			end:   map[string]string{layout.Current: "C", layout.Broken: "A", layout.Reverts: "r1\n"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemFS(tc.start)
			for n, o := range tc.links {
				delete(m.files, n)
				if err := m.Link(o, n); err != nil {
					t.Fatal(err)
				}
			}
			opt := tc.opt
			opt.Verify, opt.Complete = verifyFake(m), completeFake(m)
			var log []string
			opt.Log = func(s string) { log = append(log, s) }
			got, err := Run(m, opt)
			if !errors.Is(err, tc.endErr) {
				t.Fatalf("Run(%s) error = %v, want %v", fmtState(tc.start), err, tc.endErr)
			}
			if got.Action != tc.want.Action || got.Replayed != tc.want.Replayed || got.Trial != tc.want.Trial || got.TriesLeft != tc.want.TriesLeft ||
				got.Repaired != tc.want.Repaired || (tc.want.RevertApplied != "" && got.RevertApplied != tc.want.RevertApplied) {
				t.Errorf("Run(%s) = %s, want %s", fmtState(tc.start), fmtResult(got), fmtResult(tc.want))
			}
			if tc.note != "" && !slices.ContainsFunc(got.Notes, func(n string) bool { return strings.Contains(n, tc.note) }) {
				t.Errorf("Run(%s) notes = %q, want one containing %q", fmtState(tc.start), got.Notes, tc.note)
			}
			if s := m.snapshot(); !maps.Equal(s, tc.end) {
				t.Errorf("Run(%s) left %s, want %s", fmtState(tc.start), fmtState(s), fmtState(tc.end))
			}
			if l := m.links(); l != "" && tc.endErr == nil {
				t.Errorf("Run(%s) left hard links %s, want none", fmtState(tc.start), l)
			}
			if tc.endErr == nil && len(log) == 0 {
				t.Errorf("Run(%s) logged nothing", fmtState(tc.start))
			}
		})
	}
}

// TestTrialCountdown: Tries=3 gives three trial boots, the fourth reverts.
func TestTrialCountdown(t *testing.T) {
	m := newMemFS(map[string]string{layout.Current: "A", layout.New: "B"})
	want := []Result{
		{Action: Promote, Trial: true, TriesLeft: 2},
		{Action: Boot, Trial: true, TriesLeft: 1},
		{Action: Boot, Trial: true, TriesLeft: 0},
		{Action: Revert},
		{Action: Boot},
	}
	for i, w := range want {
		got, err := Run(m, Options{Tries: 3})
		if err != nil {
			t.Fatalf("boot %d: Run = %v", i+1, err)
		}
		if got.Action != w.Action || got.Trial != w.Trial || got.TriesLeft != w.TriesLeft {
			t.Errorf("boot %d: Run(...) = %s, want %s", i+1, fmtResult(got), fmtResult(w))
		}
	}
	wantEnd := map[string]string{layout.Current: "A", layout.Broken: "B"}
	if s := m.snapshot(); !maps.Equal(s, wantEnd) {
		t.Errorf("after countdown: %s, want %s", fmtState(s), fmtState(wantEnd))
	}
}

func TestJournalRoundTrip(t *testing.T) {
	for _, j := range []journal{{op: opPromote}, {op: opRevert}, {op: opRevert, id: "r1"}, {op: opRevertWithout, id: "x-2"},
		{op: opRevertWithout, trial: "-"}, {op: opRevertWithout, id: "r1", trial: "0"}, {op: opRevertWithout, trial: "12"}} {
		got, err := decodeJournal(encodeJournal(j))
		if err != nil || got != j {
			t.Errorf("decodeJournal(encodeJournal(%+v)) = %+v, %v", j, got, err)
		}
	}
	for _, bad := range []string{"", "\n", "promote\nid \n", "revert\nfoo bar\n", "demote\n", "promote\ntrial 2\n", "revert-without-old\ntrial -1\n", "revert-without-old\ntrial x\n"} {
		if j, err := decodeJournal([]byte(bad)); err == nil {
			t.Errorf("decodeJournal(%q) = %+v, nil; want error", bad, j)
		}
	}
}

func TestCrashAfter(t *testing.T) {
	m := newMemFS(map[string]string{layout.Current: "A"})
	cuts := 0
	c := CrashAfter(m, 2, func() { cuts++ })
	if err := c.WriteFile("x", []byte("1")); err != nil {
		t.Fatalf("op 1: %v", err)
	}
	if ok, err := c.Exists("x"); !ok || err != nil {
		t.Fatalf("Exists after op 1 = %v, %v", ok, err)
	}
	if err := c.Remove("x"); err != nil {
		t.Fatalf("op 2: %v", err)
	}
	if _, err := c.Exists(layout.Current); !errors.Is(err, ErrPowerCut) {
		t.Errorf("read after 2 ops = %v, want ErrPowerCut", err)
	}
	if err := c.WriteFile("y", nil); !errors.Is(err, ErrPowerCut) {
		t.Errorf("op 3 = %v, want ErrPowerCut", err)
	}
	if _, ok := m.files["y"]; ok {
		t.Errorf("op 3 reached the FS after the cut")
	}
	if cuts != 1 {
		t.Errorf("onCut called %d times, want 1", cuts)
	}
	never := CrashAfter(m, -1, nil)
	for i := range 100 {
		if err := never.WriteFile("z", []byte{byte(i)}); err != nil {
			t.Fatalf("CrashAfter(-1) op %d: %v", i, err)
		}
	}
}
