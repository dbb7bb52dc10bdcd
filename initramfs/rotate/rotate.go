// Package rotate is the boot-time image rotation of the hnboot /init
// (DESIGN.md §3 step 3): it finishes a half-done rotation from the journal,
// repairs a hostpart whose hn-root.img is missing or incomplete, reverts,
// promotes or rejects a staged image, keeps each manifest (IMAGE.json)
// beside its image, and counts trial boots.
//
// It is pure logic behind the small FS interface, so every filesystem
// operation can be interrupted in tests (see CrashAfter); whether an image
// is complete and whether its manifest describes it are asked through
// Options.Complete and Options.Verify. The invariants kept after every
// single operation: once hn-root.img is a complete image it stays one, no
// complete image is lost except the one the policy replaces (the previous
// old image on a promotion, the previous broken image on a revert, the
// previous rejected image on a rejection), and no manifest the rotation
// moves ever sits beside an image it does not describe. After every boot
// that runs to its end, hn-root.img is complete whenever any image that
// may boot was on hostpart, and every manifest describes its image.
//
// Rotations use hard links and an intent record (.hnboot/journal). A
// manifest moves with its image: the destination's manifest goes before
// the image is replaced, the image's own follows it.
//
//	promote: journal; remove old.json, old; link current->old;
//	         rename current.json->old.json; rename new->current;
//	         rename new.json->current.json; write trial (Tries);
//	         remove journal; then the trial decrement
//	revert:  journal; remove broken.json, broken; link current->broken;
//	         rename current.json->broken.json; rename old->current;
//	         rename old.json->current.json; remove trial and system-revert;
//	         record the hn.revert ID; remove journal
//	revert requested, no complete old image:
//	         journal (with the trial's next value); remove system-revert;
//	         remove the trial if exhausted, else write its decrement;
//	         record the hn.revert ID; remove journal
//	reject:  journal; remove rejected.json; rename new->rejected;
//	         rename new.json->rejected.json; remove journal
//	repair (hn-root.img missing or incomplete; see repair for the choice):
//	         journal (which image, and whether it answers a revert
//	         request); remove current.json, current; rename IMG->current;
//	         rename IMG.json->current.json; write the trial (for a staged
//	         image) or remove it; for a revert request remove system-revert
//	         and record the ID; remove journal
//	recover (RecoverImage, when no local image boots and a downloaded
//	         one replaces them): see recover.go
//
// Each boot also removes manifests that describe no image (an orphan, or
// one Complete says describes another image); the staged image's own
// manifest is left to Verify, and stays while hn-root-new.img.part exists,
// since staging writes it before renaming the download into place.
//
// A boot that finds the journal re-runs the remaining steps; each step is
// chosen by looking at the files (Exists, SameFile), so replaying is
// idempotent and always rolls forward. A journal that does not fit the
// files (a copy from another host, an edit, a state no rotation leaves) is
// dropped and the boot decides from the files alone: replay re-checks the
// image it would move (Verify or Complete) and never replaces a complete
// hn-root.img except by the promotion or revert the journal names.
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
//   - After finishing a promotion, rejection or repair from the journal,
//     the boot goes on exactly as a fresh boot would from that state
//     (revert checks, trial decrement), since a cut right after the
//     journal's removal leads to such a fresh boot.
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

// Errors of Options.Complete, wrapped with the details.
var (
	// ErrIncomplete: the file is not a complete image (not a filesystem,
	// or shorter than its superblock says); it can never boot.
	ErrIncomplete = errors.New("not a complete image")
	// ErrStaleManifest: the image is complete, but the manifest beside it
	// (IMAGE.json) describes another image.
	ErrStaleManifest = errors.New("manifest describes another image")
)

// ErrNoImage is returned (wrapped) by Run when hn-root.img is missing or
// incomplete and no other image can take its place.
var ErrNoImage = errors.New("rotate: no complete image to boot")

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
	// Complete checks an image that exists (current, old or broken; name
	// relative to the FS root) and its manifest, name.json, if there is
	// one. It returns nil, an error wrapping ErrIncomplete or
	// ErrStaleManifest, or any other error (reading failed), which stops
	// Run before it acts on a guess. nil takes every image as complete and
	// every manifest as matching.
	Complete func(name string) error
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
	// Repair: hn-root.img was missing or incomplete; another image
	// (Result.Repaired) became hn-root.img.
	Repair
	// Recover: no local image booted; a downloaded one became hn-root.img
	// and the others were kept aside (RecoverImage).
	Recover
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
	case Repair:
		return "repair"
	case Recover:
		return "recover"
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
	// Repaired is the file that became hn-root.img because hn-root.img was
	// missing or incomplete (Action Repair), else "".
	Repaired string
	// RevertApplied is the hn.revert ID this boot recorded as applied
	// (also one finished from the journal), or Options.RevertID when an
	// earlier boot recorded it: imaged clears a pending revert only when a
	// check-in acknowledges it, and the check-in of the boot that applied
	// it may never have reached the server.
	RevertApplied string
	// Trial is true when the booted image is on trial; TriesLeft is then the
	// number of tries left after this boot (0: the next boot reverts).
	Trial     bool
	TriesLeft int
	// Notes are the things an operator should see on the console, e.g.
	// "revert requested but no hn-root-old.img: booting current".
	Notes []string
}

// Journal operations.
const (
	opPromote       = "promote"
	opRevert        = "revert"
	opRevertWithout = "revert-without-old" // revert requested, no old image: clear the triggers only
	opReject        = "reject"
	opRepair        = "repair"
	opRecover       = "recover" // RecoverImage
)

type journal struct {
	op string
	id string // hn.revert ID to record, may be empty
	// trial, for opRevertWithout only: "" leaves hn-root.trial alone, "-"
	// removes it, a number is written to it (this boot's try, already
	// counted, so that removing the journal is the boot's last operation).
	trial string
	// from, for opRepair only: the slot (layout.SlotNew, SlotOld,
	// SlotBroken) whose image becomes current.
	from string
	// revert, for opRepair only: the repair answers a revert request
	// (system-revert, hn.revert=ID or an exhausted trial) and clears it.
	revert bool
}

func encodeJournal(j journal) []byte {
	s := j.op + "\n"
	if j.from != "" {
		s += "from " + j.from + "\n"
	}
	if j.revert {
		s += "revert\n"
	}
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
	case opPromote, opRevert, opRevertWithout, opReject, opRepair, opRecover:
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
		if f, ok := strings.CutPrefix(l, "from "); ok && j.op == opRepair && slotFile(f) != "" {
			j.from = f
			continue
		}
		if l == "revert" && j.op == opRepair {
			j.revert = true
			continue
		}
		return j, fmt.Errorf("bad line %q", l)
	}
	if j.op == opRepair && j.from == "" {
		return j, errors.New("repair without a from line")
	}
	return j, nil
}

// slotFile is the image file of a repair's source slot, "" for another.
func slotFile(slot string) string {
	switch slot {
	case layout.SlotNew:
		return layout.New
	case layout.SlotOld:
		return layout.Old
	case layout.SlotBroken:
		return layout.Broken
	}
	return ""
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
//  1. Replay the journal, if any: finish the interrupted promotion,
//     revert, rejection or repair. A boot that finished a revert stops
//     there. A promotion or revert journal found while hn-root.img is
//     missing or incomplete is dropped: neither leaves that.
//  2. Repair: if hn-root.img is missing or incomplete, another image takes
//     its place (see repair); an incomplete hn-root.img is removed. With
//     none, Run changes nothing more and returns ErrNoImage.
//  3. Remove manifests that describe no image, or another image.
//  4. Revert if hn.revert=ID is new, system-revert exists, or hn-root.trial
//     holds no tries (0, negative or not a number): current becomes
//     hn-root-broken.img, old becomes current, trial and trigger go, the ID
//     is recorded. Without a complete hn-root-old.img the current image
//     stays; the triggers and an exhausted trial file are removed (a trial
//     with tries left is kept and counted) and a note says so. Either way
//     a staged hn-root-new.img stays staged for the next boot.
//  5. Otherwise, if hn-root-new.img exists: if Verify fails, rename it to
//     hn-root-new.img.rejected (replacing an earlier one); else promote it
//     (replacing the previous old image) with a trial of Tries boots.
//  6. If hn-root.trial exists, this boot uses one try (Trial, TriesLeft).
//
// Manifests move with their images in every step. On error (including
// ErrPowerCut) Run stops at once and returns what it did so far; every
// state Run can leave behind keeps the invariants of the package comment,
// and the next Run finishes the work. Files named *.img.part, data/ and
// anything else on hostpart are never touched.
func Run(fsys FS, opt Options) (Result, error) {
	r := &runner{fs: fsys, opt: opt, tries: opt.Tries}
	if r.tries <= 0 {
		r.tries = DefaultTries
	}
	err := r.run()
	if err == nil && r.res.RevertApplied == "" && validID(opt.RevertID) {
		// A boot that finished a journalled step and stopped did not look.
		if done, rerr := r.revertRecorded(opt.RevertID); rerr == nil && done {
			r.res.RevertApplied = opt.RevertID
		}
	}
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
	ended, err := r.replay()
	if err != nil || ended {
		// A boot that finishes a revert from the journal is the boot that
		// began it: removing the journal was that boot's last operation
		// and stays this one's. New triggers wait for the next boot.
		if err == nil {
			err = r.keepStaged()
		}
		return err
	}

	ok, err := r.currentComplete()
	if err != nil {
		return err
	}
	if !ok {
		ended, err := r.repair()
		if err != nil || ended {
			if err == nil {
				err = r.keepStaged()
			}
			return err
		}
	}
	if err := r.tidy(); err != nil {
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

// check asks Options.Complete about name, which exists. complete is false
// for an image that can never boot; stale is true for a complete image
// whose manifest describes another one; why says what is wrong.
func (r *runner) check(name string) (complete, stale bool, why error, err error) {
	if r.opt.Complete == nil {
		return true, false, nil, nil
	}
	cerr := r.opt.Complete(name)
	switch {
	case cerr == nil:
		return true, false, nil, nil
	case errors.Is(cerr, ErrIncomplete):
		return false, false, cerr, nil
	case errors.Is(cerr, ErrStaleManifest):
		return true, true, cerr, nil
	}
	return false, false, nil, fmt.Errorf("rotate: checking %s: %w", name, cerr)
}

// complete reports whether name exists and is a complete image.
func (r *runner) complete(name string) (ok bool, why error, err error) {
	exists, err := r.fs.Exists(name)
	if err != nil || !exists {
		return false, nil, err
	}
	ok, _, why, err = r.check(name)
	return ok, why, err
}

func (r *runner) currentComplete() (bool, error) {
	ok, _, err := r.complete(layout.Current)
	return ok, err
}

// verify runs Options.Verify on the staged image.
func (r *runner) verify() error {
	if r.opt.Verify == nil {
		return nil
	}
	r.logf("verifying %s", layout.New)
	return r.opt.Verify(layout.New)
}

// replay finishes the rotation recorded in the journal. ended is true when
// that ends the boot (a revert, or a repair that answered one).
func (r *runner) replay() (ended bool, err error) {
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
	switch j.op {
	case opRepair:
		r.note("finishing an interrupted repair of %s from %s (found %s)", layout.Current, slotFile(j.from), layout.Journal)
		return r.finishRepair(j, true)
	case opReject:
		// Rejecting does not touch hn-root.img: a repair may reject on
		// its way, so this journal may be found beside a missing current.
		r.note("finishing an interrupted rejection of %s (found %s)", layout.New, layout.Journal)
		return false, r.finishReject(true)
	case opRecover:
		// A recovery sets hn-root.img aside before the downloaded image
		// takes its place. Finished, the boot goes on as a fresh one.
		r.note("finishing an interrupted recovery from %s (found %s)", layout.Recover, layout.Journal)
		_, err := r.finishRecover(true)
		return false, err
	}
	cur, err := r.currentComplete()
	if err != nil {
		return false, err
	}
	if !cur {
		// Every step of these rotations keeps a complete hn-root.img.
		return false, r.dropJournal(j, layout.Current+" is missing or incomplete, which no "+j.op+" leaves")
	}
	switch j.op {
	case opPromote:
		r.note("finishing an interrupted promotion of %s (found %s)", layout.New, layout.Journal)
		return false, r.finishPromote(true)
	case opRevert:
		r.note("finishing an interrupted revert to %s (found %s)", layout.Old, layout.Journal)
		return r.finishRevert(j.id, true)
	default: // opRevertWithout
		r.note("finishing an interrupted revert request without %s (found %s)", layout.Old, layout.Journal)
		r.did(Boot, true)
		return true, r.finishRevertWithout(j)
	}
}

// did records the action of a step; replay says it came from the journal.
func (r *runner) did(a Action, replay bool) {
	r.res.Action = a
	r.res.Replayed = r.res.Replayed || replay
}

// dropJournal removes a journal that does not fit the files.
func (r *runner) dropJournal(j journal, why string) error {
	r.note("%s names a %s, but %s: removed; deciding from the files alone", layout.Journal, j.op, why)
	return r.remove(layout.Journal, "does not fit the files")
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
	if err != nil {
		return err
	}
	if !done {
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
		if err := r.fs.WriteFile(layout.Reverts, b); err != nil {
			return err
		}
	}
	r.res.RevertApplied = id
	return nil
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
				r.res.RevertApplied = r.opt.RevertID
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

func (r *runner) rename(from, to string) error {
	r.logf("renaming %s to %s", from, to)
	return r.fs.Rename(from, to)
}

// moveManifest renames img's manifest to dst's, if img's exists and dst
// has none; it runs after img itself was renamed to dst (or linked).
func (r *runner) moveManifest(img, dst string) error {
	src := layout.ManifestFor(img)
	ok, err := r.fs.Exists(src)
	if err != nil || !ok {
		return err
	}
	if taken, err := r.fs.Exists(layout.ManifestFor(dst)); err != nil || taken {
		// Only when a journal was not ours: tidy decides about both.
		return err
	}
	return r.rename(src, layout.ManifestFor(dst))
}

// replaceWithLink makes dst a hard link of current (the first half of a
// promotion or revert), removing dst and its manifest unless dst already is
// that link, then moves current's manifest to dst's: from here until
// current is replaced, both names hold the same image, and current has no
// manifest, so none can describe what is renamed onto it next.
func (r *runner) replaceWithLink(dst, why string) error {
	linked, err := r.fs.SameFile(dst, layout.Current)
	if err != nil {
		return err
	}
	if !linked {
		if err := r.remove(layout.ManifestFor(dst), why); err != nil {
			return err
		}
		ok, err := r.fs.Exists(dst)
		if err != nil {
			return err
		}
		if ok {
			if err := r.remove(dst, why); err != nil {
				return err
			}
		}
		r.logf("linking %s to %s", layout.Current, dst)
		if err := r.fs.Link(layout.Current, dst); err != nil {
			return err
		}
	}
	ok, err := r.fs.Exists(layout.ManifestFor(layout.Current))
	if err != nil || !ok {
		return err
	}
	return r.rename(layout.ManifestFor(layout.Current), layout.ManifestFor(dst))
}

// oldUsable reports whether hn-root-old.img can be reverted to; if not,
// why says why not (in a note's words).
func (r *runner) oldUsable() (ok bool, why string, err error) {
	exists, err := r.fs.Exists(layout.Old)
	if err != nil || !exists {
		return false, "no " + layout.Old, err
	}
	same, err := r.fs.SameFile(layout.Old, layout.Current)
	if err != nil {
		return false, "", err
	}
	if same {
		return false, layout.Old + " is the same file as " + layout.Current, nil
	}
	complete, _, cwhy, err := r.check(layout.Old)
	if err != nil {
		return false, "", err
	}
	if !complete {
		return false, fmt.Sprintf("%s is not complete (%v)", layout.Old, cwhy), nil
	}
	return true, "", nil
}

func (r *runner) revert(reasons, id string) error {
	ok, why, err := r.oldUsable()
	if err != nil {
		return err
	}
	if !ok {
		r.note("revert requested (%s) but %s: booting current %s", reasons, why, layout.Current)
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
	_, err = r.finishRevert(id, false)
	return err
}

// finishRevert runs the remaining steps of a journalled revert. On replay
// the old image is checked again: a journal that would make an incomplete
// image current is not ours, and is dropped (done is then false).
func (r *runner) finishRevert(id string, replay bool) (done bool, err error) {
	hasOld, err := r.fs.Exists(layout.Old)
	if err != nil {
		return false, err
	}
	if hasOld {
		if replay {
			ok, why, err := r.oldUsable()
			if err != nil {
				return false, err
			}
			if !ok {
				return false, r.dropJournal(journal{op: opRevert}, why)
			}
		}
		if err := r.replaceWithLink(layout.Broken, "replaced by this revert"); err != nil {
			return false, err
		}
		if err := r.rename(layout.Old, layout.Current); err != nil {
			return false, err
		}
	}
	if err := r.moveManifest(layout.Old, layout.Current); err != nil {
		return false, err
	}
	r.did(Revert, replay)
	if err := r.remove(layout.Trial, "a reverted image is not on trial"); err != nil {
		return true, err
	}
	if err := r.remove(layout.RevertTrigger, "revert done"); err != nil {
		return true, err
	}
	if err := r.recordRevert(id); err != nil {
		return true, err
	}
	if err := r.tidy(); err != nil {
		return true, err
	}
	return true, r.remove(layout.Journal, "revert done")
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
	if err := r.tidy(); err != nil {
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
		// The manifest first: alone, it would be an orphan.
		if err := r.remove(layout.ManifestFor(layout.New), "its image is already current"); err != nil {
			return err
		}
		return r.remove(layout.New, "already current")
	}
	if verr := r.verify(); verr != nil {
		return r.reject(verr)
	}
	r.note("promoting %s: %s becomes %s, on trial for %d boots", layout.New, layout.Current, layout.Old, r.tries)
	if err := r.writeJournal(journal{op: opPromote}); err != nil {
		return err
	}
	return r.finishPromote(false)
}

// reject renames the staged image that failed verification, with its
// manifest, to hn-root-new.img.rejected.
func (r *runner) reject(verr error) error {
	r.note("%s rejected (%v): renamed to %s", layout.New, verr, layout.Rejected)
	if err := r.writeJournal(journal{op: opReject}); err != nil {
		return err
	}
	return r.finishReject(false)
}

// finishReject runs the remaining steps of a journalled rejection. On
// replay the staged image is verified again: if it passes, the journal was
// not this image's and is dropped (the boot then promotes it).
func (r *runner) finishReject(replay bool) error {
	staged, err := r.fs.Exists(layout.New)
	if err != nil {
		return err
	}
	if staged {
		if replay && r.verify() == nil {
			return r.dropJournal(journal{op: opReject}, layout.New+" verifies")
		}
		if err := r.remove(layout.ManifestFor(layout.Rejected), "replaced by this rejection"); err != nil {
			return err
		}
		if err := r.rename(layout.New, layout.Rejected); err != nil {
			return err
		}
	}
	if err := r.moveManifest(layout.New, layout.Rejected); err != nil {
		return err
	}
	r.did(Reject, replay)
	return r.remove(layout.Journal, "rejection done")
}

// finishPromote runs the remaining steps of a journalled promotion. On
// replay a staged image still in place is verified again: a journal that
// would promote an image that fails is not ours, and is dropped (the boot
// then rejects the image).
func (r *runner) finishPromote(replay bool) error {
	staged, err := r.fs.Exists(layout.New)
	if err != nil {
		return err
	}
	if staged {
		if replay {
			if verr := r.verify(); verr != nil {
				return r.dropJournal(journal{op: opPromote}, fmt.Sprintf("%s does not verify (%v)", layout.New, verr))
			}
		}
		if err := r.replaceWithLink(layout.Old, "replaced by this promotion"); err != nil {
			return err
		}
		if err := r.rename(layout.New, layout.Current); err != nil {
			return err
		}
	}
	if err := r.moveManifest(layout.New, layout.Current); err != nil {
		return err
	}
	r.did(Promote, replay)
	r.logf("writing %s: %d tries", layout.Trial, r.tries)
	if err := r.fs.WriteFile(layout.Trial, []byte(strconv.Itoa(r.tries)+"\n")); err != nil {
		return err
	}
	return r.remove(layout.Journal, "promotion done")
}

// repair puts a complete image in place of a missing or incomplete
// hn-root.img. It reports whether that ends the boot (it answered a revert
// request and a staged image may still be there).
//
// The order of the candidates:
//   - hn-root-new.img, if it verifies, boots on trial with old as its
//     fallback, exactly as after a promotion. A staged image and no
//     current is what a promotion cut between its two renames leaves (the
//     original genkernel linuxrc's `mv current old; mv new current`): the
//     host was about to boot it. Such a cut leaves old = the previous
//     current, which stays old, as a completed promotion would leave it.
//   - hn-root-old.img was current before the last promotion and was
//     replaced by choice, not because it failed.
//   - hn-root-broken.img was current before the last revert, i.e. it was
//     given up on; still better than a rescue shell.
//
// A revert request (system-revert, a new hn.revert ID, an exhausted trial)
// asks for the old image, so old then goes first, and the request is
// answered by the repair. hn-root-new.img.rejected is never booted.
// A staged image that fails verification is rejected on the way.
func (r *runner) repair() (ended bool, err error) {
	cur, err := r.fs.Exists(layout.Current)
	if err != nil {
		return false, err
	}
	what := layout.Current + " is missing"
	if cur {
		_, why, err := r.complete(layout.Current)
		if err != nil {
			return false, err
		}
		what = fmt.Sprintf("%s is not complete (%v)", layout.Current, why)
	}
	reasons, id, err := r.revertReasons()
	if err != nil {
		return false, err
	}
	revert := len(reasons) > 0
	order := []string{layout.SlotNew, layout.SlotOld, layout.SlotBroken}
	if revert {
		order = []string{layout.SlotOld, layout.SlotNew, layout.SlotBroken}
	}
	// Choose first, so that with no candidate nothing changes: the
	// operator in the rescue shell finds the disk as it was.
	var from string
	var rejectNew error // the staged image failed Verify before the choice
	for _, slot := range order {
		name := slotFile(slot)
		ok, err := r.fs.Exists(name)
		if err != nil {
			return false, err
		}
		if !ok {
			continue
		}
		if slot == layout.SlotNew {
			if rejectNew = r.verify(); rejectNew == nil {
				from = slot
				break
			}
			continue
		}
		ok, why, err := r.complete(name)
		if err != nil {
			return false, err
		}
		if ok {
			from = slot
			break
		}
		r.note("%s cannot replace it: not complete (%v)", name, why)
	}
	if from == "" {
		r.note("%s, and no other complete image is on hostpart: nothing to boot, nothing changed", what)
		return false, fmt.Errorf("%w: %s", ErrNoImage, what)
	}
	if rejectNew != nil {
		if err := r.reject(rejectNew); err != nil {
			return false, err
		}
	}
	name := slotFile(from)
	j := journal{op: opRepair, from: from, revert: revert, id: id}
	if revert {
		r.note("%s; revert requested (%s): %s becomes %s", what, strings.Join(reasons, ", "), name, layout.Current)
	} else {
		r.note("%s: %s becomes %s", what, name, layout.Current)
	}
	if err := r.writeJournal(j); err != nil {
		return false, err
	}
	return r.finishRepair(j, false)
}

// finishRepair runs the remaining steps of a journalled repair. On replay
// the source image, if still in place, is checked again, and a complete
// hn-root.img is never removed: a journal that does not fit is dropped and
// the boot decides from the files.
func (r *runner) finishRepair(j journal, replay bool) (ended bool, err error) {
	src := slotFile(j.from)
	have, err := r.fs.Exists(src)
	if err != nil {
		return false, err
	}
	if replay {
		why, err := r.repairMisfit(j, have)
		if err != nil {
			return false, err
		}
		if why != "" {
			return false, r.dropJournal(j, why)
		}
	}
	if have {
		cur, err := r.fs.Exists(layout.Current)
		if err != nil {
			return false, err
		}
		// Its manifest first: it describes the image being replaced, or
		// another one, never src's.
		if err := r.remove(layout.ManifestFor(layout.Current), "replaced by this repair"); err != nil {
			return false, err
		}
		if cur {
			if err := r.remove(layout.Current, "not complete: it can never boot"); err != nil {
				return false, err
			}
		}
		if err := r.rename(src, layout.Current); err != nil {
			return false, err
		}
	}
	if err := r.moveManifest(src, layout.Current); err != nil {
		return false, err
	}
	r.did(Repair, replay)
	r.res.Repaired = src
	if j.from == layout.SlotNew {
		r.logf("writing %s: %d tries", layout.Trial, r.tries)
		if err := r.fs.WriteFile(layout.Trial, []byte(strconv.Itoa(r.tries)+"\n")); err != nil {
			return false, err
		}
	} else if err := r.remove(layout.Trial, "the trial was the replaced image's"); err != nil {
		return false, err
	}
	if j.revert {
		if err := r.remove(layout.RevertTrigger, "revert request answered by the repair"); err != nil {
			return false, err
		}
		if err := r.recordRevert(j.id); err != nil {
			return false, err
		}
	}
	// A repair that answered a revert request ends the boot as a revert
	// does, unless it promoted the staged image (nothing is left staged,
	// and the boot counts its first try as after any promotion).
	ended = j.revert && j.from != layout.SlotNew
	if ended {
		if err := r.tidy(); err != nil {
			return false, err
		}
	}
	return ended, r.remove(layout.Journal, "repair done")
}

// repairMisfit says why a repair journal does not fit the files, or "".
// Before the rename the source must still pass its check and
// hn-root.img must not be complete; after it hn-root.img must be.
func (r *runner) repairMisfit(j journal, have bool) (string, error) {
	src := slotFile(j.from)
	cur, err := r.currentComplete()
	if err != nil {
		return "", err
	}
	switch {
	case !have && !cur:
		return src + " is gone and " + layout.Current + " is missing or incomplete", nil
	case !have:
		return "", nil
	case cur:
		return layout.Current + " is complete", nil
	case j.from == layout.SlotNew:
		if verr := r.verify(); verr != nil {
			return fmt.Sprintf("%s does not verify (%v)", src, verr), nil
		}
		return "", nil
	}
	ok, why, err := r.complete(src)
	if err != nil || ok {
		return "", err
	}
	return fmt.Sprintf("%s is not complete (%v)", src, why), nil
}

// tidy removes manifests that describe no image: an orphan (its image is
// gone), the manifest of an incomplete current, old or broken image, and
// one that Complete says describes another image. The staged image's
// manifest is Verify's to judge, and an orphan one stays while a download
// (hn-root-new.img.part) is in progress, since staging writes it first.
func (r *runner) tidy() error {
	for _, img := range []string{layout.Current, layout.Old, layout.Broken, layout.New, layout.Rejected} {
		m := layout.ManifestFor(img)
		ok, err := r.fs.Exists(m)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		have, err := r.fs.Exists(img)
		if err != nil {
			return err
		}
		if !have {
			part := false
			if img == layout.New {
				if part, err = r.fs.Exists(layout.NewPart); err != nil {
					return err
				}
			}
			if part {
				r.logf("keeping %s: %s is being staged", m, layout.NewPart)
				continue
			}
			r.note("%s has no image beside it: removed", m)
			if err := r.remove(m, "orphan"); err != nil {
				return err
			}
			continue
		}
		if img == layout.New || img == layout.Rejected {
			continue
		}
		complete, stale, why, err := r.check(img)
		if err != nil {
			return err
		}
		if !complete || stale {
			r.note("%s does not describe %s (%v): removed", m, img, why)
			if err := r.remove(m, "describes another image"); err != nil {
				return err
			}
		}
	}
	return nil
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
