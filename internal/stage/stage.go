// Package stage downloads or copies an image onto hostpart as
// hn-root-new.img, crash-safely: the agent (in the running system), `imaged
// stage` and the init at boot (the assigned image) all stage through it,
// so resume, verification and the failure memory behave the same
// everywhere.
//
// A staging fetches the image's manifest first and, with trusted keys,
// refuses it before any byte of the image moves unless it is signed by one
// of them; it checks free space, writes hn-root-new.img.part (resuming,
// with an HTTP Range request, a download of the same digest that an
// earlier run or boot left), hashes while writing, fsyncs, writes the
// manifest durably and only then renames the part into place, with the
// directory fsynced. hn-root-new.img is never partial, and never without
// the manifest it was checked against.
//
// The package is part of the init: it uses no net/http (internal/httpget
// is its HTTP client; the agent plugs net/http in through Getter) and it
// never hashes an image already on hostpart unless asked (HashSlots):
// digests come from the digest cache and the manifests.
package stage

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dustin/go-humanize"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/hostpart"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

// DefaultReserve is the free space staging leaves on hostpart for the
// init's journal, logs and host data.
const DefaultReserve = 64 << 20

// Request is one staging.
type Request struct {
	Source  Source
	Digest  string // expected sha256:<hex>; empty: accept what arrives (then checked against the failure memory)
	Size    int64  // expected size, when known: checked against free space before connecting
	Name    string // for .hnboot/images/<hex>.json and messages
	Version string
	Force   bool // stage a digest in the failure memory anyway
	// Keys, with hostpart's .hnboot/trusted.pub, are the keys the image's
	// manifest must be signed with. With none, a manifest is staged when
	// the source has one (and must match the image), but not required.
	Keys Keys
	// Progress is called with the bytes done (including those resumed)
	// and the total (-1 when unknown) at most every 200 ms and at the end;
	// may be nil.
	Progress func(done, total int64)
	Reserve  int64 // free space to leave; 0 means DefaultReserve
	Log      *slog.Logger
	// HashSlots computes the digests of hn-root.img and hn-root-new.img
	// when neither the digest cache nor a manifest knows them, so an image
	// already there is not downloaded again. A multi-GiB read: the agent
	// and imaged stage do it, the init at boot does not.
	HashSlots bool
	// File is the name the image gets in dir, relative to it; default
	// hn-root-new.img (staged, promoted by the next rotation). The part
	// file is File.part and the manifest File.json. Another target (an
	// image in RAM for a diskless host, a replacement during recovery)
	// stages through the same code.
	File string
	// NoDelta stages by full download only. By default an HTTP source
	// whose manifest names a chunk index is staged by delta: the chunks
	// of the images already in dir are copied and only the others fetched.
	NoDelta bool
	// Hash makes the SHA-256 that verifies the image (every byte staged
	// goes through it); nil is crypto/sha256. The init passes the
	// kernel's where that is faster (internal/afalg: under emulation).
	Hash func() hash.Hash
}

func (r Request) newHash() hash.Hash {
	if r.Hash != nil {
		return r.Hash()
	}
	return sha256.New()
}

// Result says what Stage did.
type Result struct {
	Digest     string `json:"digest"`
	Size       int64  `json:"size"`
	Reused     int64  `json:"reused"`     // bytes of an earlier interrupted download kept
	Downloaded int64  `json:"downloaded"` // bytes received this time (compressed, for chunks from the pack)
	// Manifest says what was staged beside the image: "signed, key ID",
	// "unsigned", ... or "" (the source has none).
	Manifest string `json:"manifest,omitempty"`
	// Already is "current" or "new" when nothing was done because the
	// image already is in that slot.
	Already string `json:"already,omitempty"`
	// Took is the time from connecting to the rename (or the failure).
	Took time.Duration `json:"took,omitempty"`
	// Delta says how a delta staging built the image (nil: a full
	// download); Fallback why the image was not staged by delta, when
	// one was possible or tried, or, for a delta, why its chunks came as
	// raw ranges of the image and not from the pack.
	Delta    *DeltaStats `json:"delta,omitempty"`
	Fallback string      `json:"fallback,omitempty"`
}

// ErrRefused is returned (wrapped) for a digest in the failure memory.
var ErrRefused = errors.New("refused: this image was reverted or rejected on this host before")

// ErrNoSpace is returned (wrapped) when hostpart lacks room for the image.
var ErrNoSpace = errors.New("not enough space on hostpart")

// ErrBusy is returned when another stager holds the lock.
var ErrBusy = errors.New("another imaged is staging on this hostpart")

// DigestError is a download whose content is not the image asked for.
type DigestError struct {
	Want, Got, Source, Part string
	Size                    int64
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("download from %s is corrupt: sha256 of its %d bytes is %s, want %s; removed %s, nothing staged", e.Source, e.Size, e.Got, e.Want, e.Part)
}

// Permanent reports whether err means that staging the same image from
// the same source again will fail the same way (a corrupt download, a
// manifest that is missing, unsigned or wrong, a refused digest), as
// opposed to an interruption that the next try resumes.
func Permanent(err error) bool {
	var de *DigestError
	var me *ManifestError
	return errors.As(err, &de) || errors.As(err, &me) || errors.Is(err, ErrRefused)
}

type staging struct {
	Digest string `json:"digest"`
	Source string `json:"source"`
	File   string `json:"file,omitempty"` // empty: hn-root-new.img
}

// Stage downloads or copies an image into File.part (resuming a download
// of the same digest left by an interrupted run), verifies its sha256,
// fsyncs it and renames it to File (hn-root-new.img), with the directory
// fsynced. File is never partial: it appears complete or not at all.
//
// The source's manifest (ManifestSource; URL.json, FILE.json) is fetched
// first and, with trusted keys (req.Keys, .hnboot/trusted.pub), required
// and its signature checked before anything is downloaded. It must name
// the image's sha256 and size, and is written as File.json (durably)
// before the image is renamed into place, so the init never sees a staged
// image without it. The digest goes into the digest cache, so the
// rotation that promotes the image does not hash it again.
func Stage(ctx context.Context, dir string, req Request) (Result, error) {
	start := time.Now()
	res, err := stageImage(ctx, dir, req)
	res.Took = time.Since(start)
	return res, err
}

func stageImage(ctx context.Context, dir string, req Request) (Result, error) {
	log := req.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if req.Reserve == 0 {
		req.Reserve = DefaultReserve
	}
	file := req.File
	if file == "" {
		file = layout.New
	}
	if !filepath.IsLocal(file) || strings.HasSuffix(file, layout.PartSuffix) {
		return Result{}, fmt.Errorf("stage: %q is not a file name inside %s", file, dir)
	}
	partName := file + layout.PartSuffix
	res := Result{Digest: req.Digest}
	if req.Digest != "" && !digest.Valid(req.Digest) {
		return res, fmt.Errorf("stage: digest %q is not sha256:<64 hex>", req.Digest)
	}
	failed, err := LoadFailed(dir)
	if err != nil {
		return res, err
	}
	st, err := hostpart.Read(dir, hostpart.ReadOptions{Hash: req.HashSlots})
	if err != nil {
		return res, err
	}
	current, staged := SlotDigest(dir, st.Slot(layout.SlotCurrent)), SlotDigest(dir, st.Slot(layout.SlotNew))
	if req.Digest != "" {
		if err := checkRefused(failed, req.Digest, req.Force); err != nil {
			return res, err
		}
		if file == layout.New && current == req.Digest {
			res.Already = layout.SlotCurrent
			return res, nil
		}
		if file == layout.New && staged == req.Digest {
			res.Already = layout.SlotNew
			return res, nil
		}
	}
	unlock, err := lock(dir)
	if err != nil {
		return res, err
	}
	defer unlock()

	keys, err := trusted(dir, req.Keys)
	if err != nil {
		return res, err
	}
	man, manBytes, err := fetchManifest(ctx, req, keys)
	if err != nil {
		return res, err
	}

	fsys := durable.Root(dir)
	partPath := filepath.Join(dir, partName)
	var have int64
	if req.Digest != "" {
		var rec staging
		if b, err := os.ReadFile(filepath.Join(dir, layout.Staging)); err == nil && json.Unmarshal(b, &rec) == nil && rec.Digest == req.Digest && rec.File == req.File {
			if fi, err := os.Stat(partPath); err == nil {
				have = fi.Size()
			}
		}
	}
	if req.Size > 0 {
		if have > req.Size {
			have = 0
		}
		if err := checkSpace(dir, st, req.Size-have, req); err != nil {
			return res, err
		}
	}
	rec, _ := json.Marshal(staging{Digest: req.Digest, Source: req.Source.String(), File: req.File})
	if err := fsys.WriteFile(layout.Staging, rec); err != nil {
		return res, err
	}
	flags := os.O_RDWR | os.O_CREATE
	if have == 0 {
		flags |= os.O_TRUNC
	}
	part, err := os.OpenFile(partPath, flags, 0o644)
	if err != nil {
		return res, fmt.Errorf("stage: %w", err)
	}
	defer part.Close()
	var got string
	var done, n int64
	hs, rg, why := deltaSource(req, man)
	if rg != nil {
		got, err = stageDelta(ctx, dir, st, &res, req, hs, rg, man, part, have, log)
		switch {
		case err == nil:
			done, n = man.Size, res.Downloaded
		case isFallback(err) && ctx.Err() == nil:
			why = err.Error()
			// The image comes whole after all: Result.Report (the
			// check-in) says so, not how far the delta got.
			res.Delta = nil
			fi, serr := part.Stat()
			if serr != nil {
				return res, fmt.Errorf("stage: %w", serr)
			}
			have = fi.Size() // a prefix of the image: the full download resumes after it
		default:
			part.Sync()
			return res, fmt.Errorf("stage: delta update from %s interrupted (what arrived is kept in %s; staging again resumes): %w", req.Source, partName, err)
		}
	}
	if why != "" && got == "" {
		res.Fallback = why
		log.Info("stage: full download, not a delta", "source", req.Source.String(), "why", why)
	}
	if got == "" {
		got, done, n, err = stageFull(ctx, &res, req, part, partPath, partName, have, dir, st, log)
		if err != nil {
			return res, err
		}
	}
	res.Size = done
	discard := func() {
		part.Close()
		fsys.Remove(partName)
		fsys.Remove(layout.Staging)
	}
	if req.Digest != "" && got != req.Digest {
		discard()
		return res, &DigestError{Want: req.Digest, Got: got, Source: req.Source.String(), Part: partName, Size: done}
	}
	res.Digest = got
	if req.Digest == "" {
		if err := checkRefused(failed, got, req.Force); err != nil {
			discard()
			return res, err
		}
		if file == layout.New && current == got {
			discard()
			res.Already = layout.SlotCurrent
			return res, nil
		}
	}
	if man != nil {
		name := req.Source.String() + layout.ManifestSuffix
		if ms, ok := req.Source.(ManifestSource); ok {
			name = ms.ManifestName()
		}
		if err := checkManifest(man, name, got, done); err != nil {
			discard()
			return res, fmt.Errorf("stage: %s from %s: %w; removed %s", digest.Short(got), req.Source, err, partName)
		}
		switch {
		case len(keys.Keys) > 0:
			res.Manifest = "signed, key " + man.KeyID
		case man.Signature != "":
			res.Manifest = "signed by key " + man.KeyID + ", not checked: no trusted key"
		default:
			res.Manifest = "unsigned"
		}
	}
	if err := part.Sync(); err != nil {
		return res, fmt.Errorf("stage: fsync %s: %w", partPath, err)
	}
	if err := part.Close(); err != nil {
		return res, fmt.Errorf("stage: close %s: %w", partPath, err)
	}
	// An earlier staged image goes first, so no manifest ever sits beside
	// an image it does not describe; then the manifest (or a stale one
	// goes), so the init never sees the new image without it.
	if err := fsys.Remove(file); err != nil {
		return res, fmt.Errorf("stage: replace the staged image: %w", err)
	}
	if manBytes != nil {
		err = fsys.WriteFile(layout.ManifestFor(file), manBytes)
	} else {
		err = fsys.Remove(layout.ManifestFor(file))
	}
	if err != nil {
		return res, fmt.Errorf("stage: %s: %w", layout.ManifestFor(file), err)
	}
	if err := fsys.Rename(partName, file); err != nil {
		return res, fmt.Errorf("stage: %w", err)
	}
	fsys.Remove(layout.Staging)
	if err := hostpart.Remember(dir, file, got); err != nil {
		log.Warn("stage: cannot cache the digest", "err", err)
	}
	if err := hostpart.WriteMeta(dir, hostpart.Meta{Digest: got, Name: req.Name, Version: req.Version, Source: req.Source.String(), Staged: time.Now()}); err != nil {
		log.Warn("stage: cannot record image metadata", "err", err)
	}
	log.Info("stage: staged", "file", file, "digest", got, "size", done, "reused", have, "downloaded", n, "manifest", res.Manifest)
	return res, nil
}

// stageFull downloads the image into part from have on (what an earlier
// run left), hashing while writing; it returns the digest, the size and
// the bytes received.
func stageFull(ctx context.Context, res *Result, req Request, part *os.File, partPath, partName string, have int64, dir string, st hostpart.State, log *slog.Logger) (string, int64, int64, error) {
	h := req.newHash()
	if have > 0 {
		// Hash what an earlier run downloaded: a local read, no network.
		n, err := io.Copy(h, io.NewSectionReader(part, 0, have))
		if err != nil || n != have {
			return "", 0, 0, fmt.Errorf("stage: read back %s: %v (read %d of %d bytes)", partPath, err, n, have)
		}
	}
	rc, from, total, err := req.Source.Open(ctx, have)
	if err != nil {
		return "", 0, 0, fmt.Errorf("stage: %w", err)
	}
	defer rc.Close()
	if from != have {
		log.Info("stage: source cannot resume; starting over", "source", req.Source.String(), "had", have)
		have, h = 0, req.newHash()
	}
	if _, err := part.Seek(have, io.SeekStart); err != nil {
		return "", 0, 0, fmt.Errorf("stage: seek %s: %w", partPath, err)
	}
	if err := part.Truncate(have); err != nil {
		return "", 0, 0, fmt.Errorf("stage: truncate %s: %w", partPath, err)
	}
	res.Reused = have
	if have > 0 {
		log.Info("stage: resuming download", "source", req.Source.String(), "from", have, "total", total)
	}
	if req.Size > 0 && total >= 0 && total != req.Size {
		return "", 0, 0, fmt.Errorf("stage: %s is %d bytes, but the server announced %d for %s", req.Source, total, req.Size, req.Digest)
	}
	if req.Size <= 0 && total > 0 {
		if err := checkSpace(dir, st, total-have, req); err != nil {
			return "", 0, 0, err
		}
	}
	n, err := copyHashing(ctx, part, rc, h, have, total, req.Progress)
	res.Downloaded += n
	done := have + n
	if err != nil {
		// Keep what arrived, durably, for the next run to resume from.
		part.Sync()
		return "", 0, 0, fmt.Errorf("stage: download from %s interrupted at %d of %s bytes (kept in %s; staging again resumes): %w", req.Source, done, SizeString(total), partName, err)
	}
	if total >= 0 && done != total {
		part.Sync()
		return "", 0, 0, fmt.Errorf("stage: download from %s ended at %d of %d bytes (kept in %s; staging again resumes)", req.Source, done, total, partName)
	}
	return digest.Of(h), done, n, nil
}

// SlotDigest is the digest of an image on hostpart without hashing it:
// the digest cache's (im.Digest, from hostpart.Read), else the manifest
// beside the image when its size matches (the init checked that manifest
// against the image when it promoted it). "" when neither knows.
func SlotDigest(dir string, im hostpart.Image) string {
	if im.Digest != "" || !im.Present {
		return im.Digest
	}
	m, err := manifest.ReadFile(filepath.Join(dir, layout.ManifestFor(im.File)))
	if err != nil || m.Size != im.Size || len(m.SHA256) != 64 {
		return ""
	}
	return "sha256:" + m.SHA256
}

func checkRefused(failed Failed, digest string, force bool) error {
	fl, ok := failed[digest]
	if !ok {
		return nil
	}
	if force {
		return nil
	}
	when := ""
	if !fl.Time.IsZero() {
		when = " on " + fl.Time.UTC().Format(time.RFC3339)
	}
	return fmt.Errorf("%w: %s is in %s (%s%s); stage it anyway with imaged stage --force, or have the server send force", ErrRefused, digest, layout.FailedDigests, fl.Reason, when)
}

// Unstage removes hn-root-new.img and then its manifest (the server now
// wants the current image).
func Unstage(dir string) error {
	fsys := durable.Root(dir)
	if err := fsys.Remove(layout.New); err != nil {
		return err
	}
	return fsys.Remove(layout.ManifestFor(layout.New))
}

func checkSpace(dir string, st hostpart.State, need int64, req Request) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("stage: statfs %s: %w", dir, err)
	}
	avail := int64(fs.Bavail) * int64(fs.Bsize)
	// Replacing an earlier staged image frees its space at the rename, not
	// before: do not count it.
	if need+req.Reserve <= avail {
		return nil
	}
	hint := "free space on it"
	if b := st.Slot(layout.SlotBroken); b.Present {
		hint = fmt.Sprintf("remove %s (%s, %s; not needed to revert) or free other space", b.File, b.Label(), SizeString(b.Size))
	}
	return fmt.Errorf("%w %s to stage %s: need %s more (plus %s kept free), %s available; %s",
		ErrNoSpace, dir, label(req), SizeString(need), SizeString(req.Reserve), SizeString(avail), hint)
}

func label(req Request) string {
	if req.Name != "" {
		return strings.TrimSpace(req.Name + " " + req.Version)
	}
	if req.Digest != "" {
		return digest.Short(req.Digest)
	}
	return req.Source.String()
}

// SizeString prints bytes in binary units ("1.5 GiB", go-humanize), or
// "unknown" for a negative count (a server that sent no length).
func SizeString(n int64) string {
	if n < 0 {
		return "unknown"
	}
	return humanize.IBytes(uint64(n))
}

// copyHashing copies r to w and into h. Reading the network, hashing and
// writing the disk run side by side (three goroutines passing 1 MiB
// buffers in order), so on a host with more than one CPU the download
// runs at the speed of its slowest part, not of their sum: under
// emulation, or on a CPU without SHA instructions, SHA-256 is slower than
// a gigabit link.
func copyHashing(ctx context.Context, w io.Writer, r io.Reader, h hash.Hash, base, total int64, progress func(done, total int64)) (int64, error) {
	const bufSize, nbuf = 1 << 20, 8
	type chunk struct {
		b    []byte
		err  error
		refs *atomic.Int32 // the hasher and the writer; the last one frees b
	}
	free := make(chan []byte, nbuf)
	for i := 0; i < nbuf; i++ {
		free <- make([]byte, bufSize)
	}
	release := func(c chunk) {
		if c.refs.Add(-1) == 0 {
			free <- c.b[:cap(c.b)]
		}
	}
	toHash, toWrite := make(chan chunk, nbuf), make(chan chunk, nbuf)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // reader
		defer close(toHash)
		defer close(toWrite)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			// One read: what arrived is written at once, so a stalled or
			// dying server leaves every byte it sent in the part file.
			n, err := r.Read(buf)
			if err == nil && ctx.Err() != nil {
				err = ctx.Err()
			}
			c := chunk{b: buf[:n], err: err, refs: new(atomic.Int32)}
			c.refs.Store(2)
			toHash <- c // buffered as deep as the pool: never blocks
			toWrite <- c
			if err != nil {
				return
			}
		}
	}()
	hashed := make(chan struct{})
	go func() { // hasher
		defer close(hashed)
		for c := range toHash {
			h.Write(c.b)
			release(c)
		}
	}()
	var n int64
	var werr error
	last := time.Time{}
	for c := range toWrite {
		if werr == nil && len(c.b) > 0 {
			if _, err := w.Write(c.b); err != nil {
				werr = err
			} else {
				n += int64(len(c.b))
			}
			if progress != nil && time.Since(last) > 200*time.Millisecond {
				progress(base+n, total)
				last = time.Now()
			}
		}
		release(c)
		if werr != nil {
			break
		}
		if c.err == io.EOF {
			<-hashed // the digest covers every byte
			if progress != nil {
				progress(base+n, total)
			}
			return n, nil
		}
		if c.err != nil {
			werr = c.err
			break
		}
	}
	if werr == nil {
		werr = ctx.Err()
	}
	if werr == nil {
		werr = io.ErrUnexpectedEOF
	}
	return n, werr
}

func lock(dir string) (func(), error) {
	p := filepath.Join(dir, layout.StageLock)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (%s is locked); wait for it to finish", ErrBusy, p)
	}
	return func() { f.Close() }, nil
}
