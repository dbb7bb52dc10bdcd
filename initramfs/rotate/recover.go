package rotate

import (
	"fmt"

	"github.com/hnboot/hnboot/internal/layout"
)

// RecoverImage installs a downloaded image as hn-root.img when no local
// image booted (the init's recovery over the network, DESIGN.md §3 step
// 8). The image is hn-root-recover.img (staged beside its manifest by
// internal/stage); the images that did not boot are kept aside for the
// operator, each with its manifest, replacing those of an earlier
// recovery:
//
//	recover: journal; for hn-root.img, then hn-root-old.img (X):
//	           remove X.broken.json, X.broken (if X.broken exists);
//	           rename X.json->X.broken.json; rename X->X.broken
//	           (an absent X: remove its orphan X.json);
//	         rename recover->current; rename recover.json->current.json;
//	         remove trial and system-revert (they were the broken
//	         images'); remove journal
//
// The installed image is not on trial: there is nothing to revert to.
// Every step is replayed by the next boot's Run from the journal (the
// boot then goes on as a fresh one), choosing each step by looking at the
// files, so a power cut between any two operations ends where an
// uninterrupted recovery does. A recover journal that does not fit the
// files is dropped: before the rename hn-root-recover.img must be
// complete; after it hn-root.img must be complete and hn-root-old.img
// gone.
//
// RecoverImage refuses when hn-root-recover.img is not a complete image
// (Options.Complete) or another rotation's journal is unfinished.
func RecoverImage(fsys FS, opt Options) (Result, error) {
	r := &runner{fs: fsys, opt: opt, tries: opt.Tries}
	ok, err := fsys.Exists(layout.Journal)
	if err != nil {
		return r.res, err
	}
	if ok {
		data, err := fsys.ReadFile(layout.Journal)
		if err != nil {
			return r.res, err
		}
		j, perr := decodeJournal(data)
		if perr != nil || j.op != opRecover {
			return r.res, fmt.Errorf("rotate: recover: %s holds an unfinished rotation (%q); the boot's rotation must finish it first", layout.Journal, data)
		}
		r.note("finishing an interrupted recovery (found %s)", layout.Journal)
		done, err := r.finishRecover(true)
		if err == nil && !done {
			err = fmt.Errorf("%w: the interrupted recovery did not fit the files", ErrNoImage)
		}
		return r.res, err
	}
	complete, why, err := r.complete(layout.Recover)
	if err != nil {
		return r.res, err
	}
	if !complete {
		if why == nil {
			why = fmt.Errorf("missing")
		}
		return r.res, fmt.Errorf("%w: %s is not a complete image (%v)", ErrNoImage, layout.Recover, why)
	}
	r.note("recovering: %s becomes %s; %s and %s are kept aside as %s and %s", layout.Recover, layout.Current,
		layout.Current, layout.Old, layout.CurrentBroken, layout.OldBroken)
	if err := r.writeJournal(journal{op: opRecover}); err != nil {
		return r.res, err
	}
	_, err = r.finishRecover(false)
	return r.res, err
}

// finishRecover runs the remaining steps of a journalled recovery; done
// is false when a replayed journal did not fit the files and was dropped.
func (r *runner) finishRecover(replay bool) (done bool, err error) {
	have, err := r.fs.Exists(layout.Recover)
	if err != nil {
		return false, err
	}
	if have {
		if replay {
			ok, why, err := r.complete(layout.Recover)
			if err != nil {
				return false, err
			}
			if !ok {
				return false, r.dropJournal(journal{op: opRecover}, fmt.Sprintf("%s is not complete (%v)", layout.Recover, why))
			}
		}
		for _, x := range []struct{ img, aside string }{{layout.Current, layout.CurrentBroken}, {layout.Old, layout.OldBroken}} {
			if err := r.setAside(x.img, x.aside); err != nil {
				return false, err
			}
		}
		if err := r.rename(layout.Recover, layout.Current); err != nil {
			return false, err
		}
	} else if replay {
		cur, err := r.currentComplete()
		if err != nil {
			return false, err
		}
		old, err := r.fs.Exists(layout.Old)
		if err != nil {
			return false, err
		}
		switch {
		case !cur:
			return false, r.dropJournal(journal{op: opRecover}, layout.Recover+" is gone and "+layout.Current+" is missing or incomplete")
		case old:
			return false, r.dropJournal(journal{op: opRecover}, layout.Recover+" is gone and "+layout.Old+" is there, which no recovery leaves")
		}
	}
	if err := r.moveManifest(layout.Recover, layout.Current); err != nil {
		return false, err
	}
	r.did(Recover, replay)
	if err := r.remove(layout.Trial, "the trial was the replaced image's"); err != nil {
		return false, err
	}
	if err := r.remove(layout.RevertTrigger, "nothing to revert to after a recovery"); err != nil {
		return false, err
	}
	return true, r.remove(layout.Journal, "recovery done")
}

// setAside renames img (with its manifest) to aside, replacing an
// earlier aside; an absent img leaves only its orphan manifest to remove.
// Each step is chosen from the files, so replaying it is idempotent.
func (r *runner) setAside(img, aside string) error {
	have, err := r.fs.Exists(img)
	if err != nil {
		return err
	}
	if !have {
		return r.remove(layout.ManifestFor(img), "orphan: its image is gone")
	}
	old, err := r.fs.Exists(aside)
	if err != nil {
		return err
	}
	if old {
		if err := r.remove(layout.ManifestFor(aside), "replaced by this recovery"); err != nil {
			return err
		}
		if err := r.remove(aside, "replaced by this recovery"); err != nil {
			return err
		}
	}
	man, err := r.fs.Exists(layout.ManifestFor(img))
	if err != nil {
		return err
	}
	if man {
		if err := r.remove(layout.ManifestFor(aside), "replaced by this recovery"); err != nil {
			return err
		}
		if err := r.rename(layout.ManifestFor(img), layout.ManifestFor(aside)); err != nil {
			return err
		}
	}
	r.logf("keeping %s aside as %s: it did not boot", img, aside)
	return r.rename(img, aside)
}
