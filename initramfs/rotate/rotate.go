// Package rotate is the boot-time image rotation of the hnboot /init
// (DESIGN.md §3 step 3): it finishes a half-done rotation from the journal,
// reverts, promotes or rejects a staged image, and counts trial boots.
//
// It is pure logic behind the small FS interface, so every filesystem
// operation can be interrupted in tests (see CrashAfter). The invariant kept
// after every single operation: hn-root.img exists and is a complete image,
// and no image is lost except the one the policy replaces (the previous old
// image on a promotion, the previous broken image on a revert, the previous
// rejected image on a rejection).
//
// Rotations use hard links and an intent record (.hnboot/journal):
//
//	promote: journal; remove old; link current->old; rename new->current;
//	         write trial (Tries); remove journal; then the trial decrement
//	revert:  journal; remove broken; link current->broken; rename old->current;
//	         remove trial and system-revert; record the hn.revert ID; remove journal
//	revert requested, no old image:
//	         journal (with the trial's next value); remove system-revert;
//	         remove the trial if exhausted, else write its decrement;
//	         record the hn.revert ID; remove journal
//
// A boot that finds the journal re-runs the remaining steps; each step is
// chosen by looking at the files (Exists, SameFile), so replaying is
// idempotent and always rolls forward.
//
// Ordering rules that make an interrupted boot end exactly where an
// uninterrupted one would (checked by the crash test):
//   - The trial decrement is the last operation of a boot, after the
//     journal is gone, so a power cut inside Run never eats a try.
//   - Removing the journal is the last operation of a revert boot (the
//     no-old case counts its try inside the journalled step), and a boot
//     that finishes a revert from the journal does nothing else. Otherwise
//     a cut right after the journal's removal would let the next boot
//     promote a staged image the revert boot was to leave alone.
//   - After finishing a promotion from the journal, the boot goes on
//     exactly as a fresh boot would from that state (revert checks, trial
//     decrement), since a cut right after the journal's removal leads to
//     such a fresh boot.
package rotate

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hnboot/hnboot/internal/layout"
)

// DefaultTries is the number of trial boots of a freshly promoted image when
// Options.Tries is not set.
const DefaultTries = 3

// FS is the hostpart filesystem as the rotation needs it. Names are relative
// to the hostpart root and use forward slashes. Every mutating operation must
// be atomic and durable when it returns.
type FS interface {
	Exists(name string) (bool, error)
	ReadFile(name string) ([]byte, error)
	WriteFile(name string, data []byte) error // atomic and durable (tmp + fsync + rename + dir fsync in OSFS)
	Rename(oldname, newname string) error     // atomic replace, durable
	Link(oldname, newname string) error       // hard link, durable; newname must not exist
	Remove(name string) error                 // removing a missing file is not an error
	SameFile(a, b string) (bool, error)       // same inode; false if either is missing
}

// Options are the inputs of one boot's rotation.
type Options struct {
	// Tries is the number of trial boots for a freshly promoted image
	// (hn.tries=N); 0 or less means DefaultTries.
	Tries int
	// RevertID comes from hn.revert=ID: revert as if system-revert were
	// present, once per ID (applied IDs are kept in .hnboot/reverts).
	RevertID string
	// Verify checks the staged image before promotion. It is called with the
	// name relative to the FS root (always New). nil accepts.
	Verify func(name string) error
	// Log receives each decision and step in plain words; may be nil.
	Log func(msg string)
}

// Action is what a boot did to the images.
type Action int

const (
	// Boot: the current image is booted unchanged.
	Boot Action = iota
	// Promote: hn-root-new.img became hn-root.img (current became old).
	Promote
	// Revert: hn-root-old.img became hn-root.img (current became broken).
	Revert
	// Reject: hn-root-new.img failed verification and was renamed to
	// hn-root-new.img.rejected; the current image is booted.
	Reject
)

func (a Action) String() string {
	switch a {
	case Boot:
		return "boot"
	case Promote:
		return "promote"
	case Revert:
		return "revert"
	case Reject:
		return "reject"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// Result describes what Run did.
type Result struct {
	// Action is the rotation this boot performed or finished. When a journal
	// replay is followed by another rotation in the same boot, the later one.
	Action Action
	// Replayed is true when an interrupted rotation was found in the journal
	// and finished.
	Replayed bool
	// Trial is true when the booted image is on trial; TriesLeft is then the
	// number of tries left after this boot (0: the next boot reverts).
	Trial     bool
	TriesLeft int
	// Notes are the things an operator should see on the console, e.g.
	// "revert requested but no hn-root-old.img: booting current".
	Notes []string
}

// ErrNoCurrent is returned (wrapped) by Run when hn-root.img is missing at
// the start. Run changes nothing in that case.
var ErrNoCurrent = errors.New("rotate: " + layout.Current + " is missing")

// Journal operations.
const (
	opPromote       = "promote"
	opRevert        = "revert"
	opRevertWithout = "revert-without-old" // revert requested, no old image: clear the triggers only
)

type journal struct {
	op string
	id string // hn.revert ID to record, may be empty
	// trial, for opRevertWithout only: "" leaves hn-root.trial alone, "-"
	// removes it, a number is written to it (this boot's try, already
	// counted, so that removing the journal is the boot's last operation).
	trial string
}

func encodeJournal(j journal) []byte {
	s := j.op + "\n"
	if j.id != "" {
		s += "id " + j.id + "\n"
	}
	if j.trial != "" {
		s += "trial " + j.trial + "\n"
	}
	return []byte(s)
}

func decodeJournal(b []byte) (journal, error) {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	var j journal
	switch lines[0] {
	case opPromote, opRevert, opRevertWithout:
		j.op = lines[0]
	default:
		return j, fmt.Errorf("unknown operation %q", lines[0])
	}
	for _, l := range lines[1:] {
		if id, ok := strings.CutPrefix(l, "id "); ok && validID(id) {
			j.id = id
			continue
		}
		if t, ok := strings.CutPrefix(l, "trial "); ok && j.op == opRevertWithout {
			if n, err := strconv.Atoi(t); t == "-" || (err == nil && n >= 0) {
				j.trial = t
				continue
			}
		}
		return j, fmt.Errorf("bad line %q", l)
	}
	return j, nil
}

func validID(id string) bool {
	return id != "" && !strings.ContainsAny(id, " \t\r\n")
}

type runner struct {
	fs    FS
	opt   Options
	tries int
	res   Result
}

// Run performs one boot's rotation on fsys (DESIGN.md §3 step 3):
//
//  1. Replay the journal, if any: finish the interrupted promotion or
//     revert. A boot that finished a revert stops there.
//  2. Revert if hn.revert=ID is new, system-revert exists, or hn-root.trial
//     holds no tries (0, negative or not a number): current becomes
//     hn-root-broken.img, old becomes current, trial and trigger go, the ID
//     is recorded. Without hn-root-old.img the current image stays; the
//     triggers and an exhausted trial file are removed (a trial with tries
//     left is kept and counted) and a note says so. Either way a staged
//     hn-root-new.img stays staged for the next boot.
//  3. Otherwise, if hn-root-new.img exists: if Verify fails, rename it to
//     hn-root-new.img.rejected (replacing an earlier one); else promote it
//     (replacing the previous old image) with a trial of Tries boots.
//  4. If hn-root.trial exists, this boot uses one try (Trial, TriesLeft).
//
// On error (including ErrPowerCut) Run stops at once and returns what it
// did so far; hn-root.img is complete in every state Run can leave behind,
// and the next Run finishes the work. Files named *.img.part, data/ and
// anything else on hostpart are never touched.
func Run(fsys FS, opt Options) (Result, error) {
	r := &runner{fs: fsys, opt: opt, tries: opt.Tries}
	if r.tries <= 0 {
		r.tries = DefaultTries
	}
	err := r.run()
	return r.res, err
}

func (r *runner) logf(format string, args ...any) {
	if r.opt.Log != nil {
		r.opt.Log(fmt.Sprintf(format, args...))
	}
}

func (r *runner) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.res.Notes = append(r.res.Notes, msg)
	r.logf("%s", msg)
}

func (r *runner) run() error {
	ok, err := r.fs.Exists(layout.Current)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: nothing to boot, rotation skipped", ErrNoCurrent)
	}

	reverted, err := r.replay()
	if err != nil || reverted {
		// A boot that finishes a revert from the journal is the boot that
		// began it: removing the journal was that boot's last operation
		// and stays this one's. New triggers wait for the next boot.
		if err == nil {
			err = r.keepStaged()
		}
		return err
	}

	reasons, id, err := r.revertReasons()
	if err != nil {
		return err
	}
	if len(reasons) > 0 {
		// Removing the journal is the last operation of a revert boot, so
		// a power cut after it cannot let the next boot skip the revert's
		// "no promotion" rule.
		if err := r.revert(strings.Join(reasons, ", "), id); err != nil {
			return err
		}
		return r.keepStaged()
	}

	staged, err := r.fs.Exists(layout.New)
	if err != nil {
		return err
	}
	if staged {
		if err := r.stage(); err != nil {
			return err
		}
	} else {
		r.logf("no %s staged", layout.New)
	}
	return r.countTry()
}

// keepStaged notes a staged image left alone by a revert boot. It only reads.
func (r *runner) keepStaged() error {
	staged, err := r.fs.Exists(layout.New)
	if err == nil && staged {
		r.note("%s stays staged: a revert boot does not also promote", layout.New)
	}
	return err
}

// replay finishes the rotation recorded in the journal. It reports whether
// that was a revert (with or without an old image): then the boot is over.
func (r *runner) replay() (reverted bool, err error) {
	ok, err := r.fs.Exists(layout.Journal)
	if err != nil || !ok {
		return false, err
	}
	data, err := r.fs.ReadFile(layout.Journal)
	if err != nil {
		return false, err
	}
	j, perr := decodeJournal(data)
	if perr != nil {
		// WriteFile is atomic, so this is not a torn write of ours; the
		// image files are consistent in every state, so drop it.
		r.note("unreadable %s (%v) removed; deciding from the files alone", layout.Journal, perr)
		return false, r.remove(layout.Journal, "unreadable journal")
	}
	r.res.Replayed = true
	switch j.op {
	case opPromote:
		r.note("finishing an interrupted promotion of %s (found %s)", layout.New, layout.Journal)
		if err := r.finishPromote(); err != nil {
			return false, err
		}
		r.res.Action = Promote
		return false, nil
	case opRevert:
		r.note("finishing an interrupted revert to %s (found %s)", layout.Old, layout.Journal)
		if err := r.finishRevert(j.id); err != nil {
			return true, err
		}
		r.res.Action = Revert
		return true, nil
	default: // opRevertWithout
		r.note("finishing an interrupted revert request without %s (found %s)", layout.Old, layout.Journal)
		return true, r.finishRevertWithout(j)
	}
}

// readTrial reads hn-root.trial. valid is false for content that is not an
// integer.
func (r *runner) readTrial() (exists bool, n int, valid bool, err error) {
	exists, err = r.fs.Exists(layout.Trial)
	if err != nil || !exists {
		return exists, 0, false, err
	}
	b, err := r.fs.ReadFile(layout.Trial)
	if err != nil {
		return true, 0, false, err
	}
	n, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	return true, n, perr == nil, nil
}

func (r *runner) revertRecorded(id string) (bool, error) {
	ok, err := r.fs.Exists(layout.Reverts)
	if err != nil || !ok {
		return false, err
	}
	b, err := r.fs.ReadFile(layout.Reverts)
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) == id {
			return true, nil
		}
	}
	return false, nil
}

func (r *runner) recordRevert(id string) error {
	if id == "" {
		return nil
	}
	done, err := r.revertRecorded(id)
	if err != nil || done {
		return err
	}
	var b []byte
	ok, err := r.fs.Exists(layout.Reverts)
	if err != nil {
		return err
	}
	if ok {
		if b, err = r.fs.ReadFile(layout.Reverts); err != nil {
			return err
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
	}
	b = append(b, id+"\n"...)
	r.logf("recording hn.revert=%s as applied in %s", id, layout.Reverts)
	return r.fs.WriteFile(layout.Reverts, b)
}

// revertReasons lists why this boot must revert, and the hn.revert ID to
// record (empty if none is pending).
func (r *runner) revertReasons() (reasons []string, id string, err error) {
	if r.opt.RevertID != "" {
		if !validID(r.opt.RevertID) {
			r.note("ignoring hn.revert=%q: an ID must not contain white space", r.opt.RevertID)
		} else {
			done, err := r.revertRecorded(r.opt.RevertID)
			if err != nil {
				return nil, "", err
			}
			if done {
				r.logf("hn.revert=%s was already applied; ignoring it", r.opt.RevertID)
			} else {
				id = r.opt.RevertID
				reasons = append(reasons, "hn.revert="+id)
			}
		}
	}
	ok, err := r.fs.Exists(layout.RevertTrigger)
	if err != nil {
		return nil, "", err
	}
	if ok {
		reasons = append(reasons, layout.RevertTrigger+" present")
	}
	exists, n, valid, err := r.readTrial()
	if err != nil {
		return nil, "", err
	}
	switch {
	case exists && !valid:
		reasons = append(reasons, layout.Trial+" unreadable (counted as no tries left)")
	case exists && n <= 0:
		reasons = append(reasons, layout.Trial+" has no tries left")
	}
	return reasons, id, nil
}

func (r *runner) writeJournal(j journal) error {
	r.logf("writing intent record %s: %s", layout.Journal, j.op)
	return r.fs.WriteFile(layout.Journal, encodeJournal(j))
}

func (r *runner) remove(name, why string) error {
	r.logf("removing %s (%s)", name, why)
	return r.fs.Remove(name)
}

func (r *runner) revert(reasons, id string) error {
	hasOld, err := r.fs.Exists(layout.Old)
	if err != nil {
		return err
	}
	if hasOld {
		same, err := r.fs.SameFile(layout.Old, layout.Current)
		if err != nil {
			return err
		}
		if same {
			r.note("%s is the same file as %s: nothing to revert to", layout.Old, layout.Current)
			hasOld = false
		}
	}
	if !hasOld {
		r.note("revert requested (%s) but no %s: booting current %s", reasons, layout.Old, layout.Current)
		j := journal{op: opRevertWithout, id: id}
		exists, n, valid, err := r.readTrial()
		if err != nil {
			return err
		}
		switch {
		case !exists:
		case !valid || n <= 0:
			j.trial = "-"
		default:
			j.trial = strconv.Itoa(n - 1)
		}
		if err := r.writeJournal(j); err != nil {
			return err
		}
		return r.finishRevertWithout(j)
	}
	r.note("reverting (%s): %s becomes %s, %s becomes %s", reasons, layout.Current, layout.Broken, layout.Old, layout.Current)
	if err := r.writeJournal(journal{op: opRevert, id: id}); err != nil {
		return err
	}
	if err := r.finishRevert(id); err != nil {
		return err
	}
	r.res.Action = Revert
	return nil
}

// finishRevert runs the remaining steps of a journalled revert.
func (r *runner) finishRevert(id string) error {
	hasOld, err := r.fs.Exists(layout.Old)
	if err != nil {
		return err
	}
	if hasOld {
		linked := false
		ok, err := r.fs.Exists(layout.Broken)
		if err != nil {
			return err
		}
		if ok {
			if linked, err = r.fs.SameFile(layout.Broken, layout.Current); err != nil {
				return err
			}
			if !linked {
				if err := r.remove(layout.Broken, "replaced by this revert"); err != nil {
					return err
				}
			}
		}
		if !linked {
			r.logf("linking %s to %s", layout.Current, layout.Broken)
			if err := r.fs.Link(layout.Current, layout.Broken); err != nil {
				return err
			}
		}
		r.logf("renaming %s to %s", layout.Old, layout.Current)
		if err := r.fs.Rename(layout.Old, layout.Current); err != nil {
			return err
		}
	}
	if err := r.remove(layout.Trial, "a reverted image is not on trial"); err != nil {
		return err
	}
	if err := r.remove(layout.RevertTrigger, "revert done"); err != nil {
		return err
	}
	if err := r.recordRevert(id); err != nil {
		return err
	}
	return r.remove(layout.Journal, "revert done")
}

// finishRevertWithout clears the revert triggers when there is no old image.
// A trial file that still has tries is kept (the current image stays on
// trial) and this boot's try is counted here, inside the journalled step,
// because the journal's removal must be the last operation of a revert
// boot. An exhausted trial file is removed, as there is nothing to fall
// back to.
func (r *runner) finishRevertWithout(j journal) error {
	if err := r.remove(layout.RevertTrigger, "revert request handled"); err != nil {
		return err
	}
	switch j.trial {
	case "":
	case "-":
		if err := r.remove(layout.Trial, "no tries left and nothing to revert to"); err != nil {
			return err
		}
	default:
		n, _ := strconv.Atoi(j.trial) // checked by decodeJournal
		r.res.Trial, r.res.TriesLeft = true, n
		r.logf("trial boot of %s: %d tries left after this one", layout.Current, n)
		if err := r.fs.WriteFile(layout.Trial, []byte(j.trial+"\n")); err != nil {
			return err
		}
	}
	if err := r.recordRevert(j.id); err != nil {
		return err
	}
	return r.remove(layout.Journal, "revert request handled")
}

// stage verifies and promotes (or rejects) hn-root-new.img.
func (r *runner) stage() error {
	same, err := r.fs.SameFile(layout.New, layout.Current)
	if err != nil {
		return err
	}
	if same {
		r.note("%s is the same file as %s: nothing to promote", layout.New, layout.Current)
		return r.remove(layout.New, "already current")
	}
	if r.opt.Verify != nil {
		r.logf("verifying %s", layout.New)
		if verr := r.opt.Verify(layout.New); verr != nil {
			r.note("%s rejected (%v): renamed to %s, booting current %s", layout.New, verr, layout.Rejected, layout.Current)
			if err := r.fs.Rename(layout.New, layout.Rejected); err != nil {
				return err
			}
			r.res.Action = Reject
			return nil
		}
	}
	r.note("promoting %s: %s becomes %s, on trial for %d boots", layout.New, layout.Current, layout.Old, r.tries)
	if err := r.writeJournal(journal{op: opPromote}); err != nil {
		return err
	}
	if err := r.finishPromote(); err != nil {
		return err
	}
	r.res.Action = Promote
	return nil
}

// finishPromote runs the remaining steps of a journalled promotion.
func (r *runner) finishPromote() error {
	staged, err := r.fs.Exists(layout.New)
	if err != nil {
		return err
	}
	if staged {
		linked := false
		ok, err := r.fs.Exists(layout.Old)
		if err != nil {
			return err
		}
		if ok {
			if linked, err = r.fs.SameFile(layout.Old, layout.Current); err != nil {
				return err
			}
			if !linked {
				if err := r.remove(layout.Old, "replaced by this promotion"); err != nil {
					return err
				}
			}
		}
		if !linked {
			r.logf("linking %s to %s", layout.Current, layout.Old)
			if err := r.fs.Link(layout.Current, layout.Old); err != nil {
				return err
			}
		}
		r.logf("renaming %s to %s", layout.New, layout.Current)
		if err := r.fs.Rename(layout.New, layout.Current); err != nil {
			return err
		}
	}
	r.logf("writing %s: %d tries", layout.Trial, r.tries)
	if err := r.fs.WriteFile(layout.Trial, []byte(strconv.Itoa(r.tries)+"\n")); err != nil {
		return err
	}
	return r.remove(layout.Journal, "promotion done")
}

// countTry uses one try of a trial image. It is the last operation of Run.
func (r *runner) countTry() error {
	exists, n, valid, err := r.readTrial()
	if err != nil {
		return err
	}
	if !exists {
		r.logf("no %s: %s is confirmed", layout.Trial, layout.Current)
		return nil
	}
	if !valid || n <= 0 {
		// Unreachable: such a trial file triggers a revert above, which
		// removes it. Leave it for the next boot rather than guess.
		r.note("%s has no tries left after the revert checks; leaving it", layout.Trial)
		return nil
	}
	r.res.Trial, r.res.TriesLeft = true, n-1
	r.logf("trial boot of %s: %d tries left after this one", layout.Current, n-1)
	return r.fs.WriteFile(layout.Trial, []byte(strconv.Itoa(n-1)+"\n"))
}
