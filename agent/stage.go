package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/hostpart"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
)

// DefaultReserve is the free space staging leaves on hostpart for the
// init's journal, logs and host data.
const DefaultReserve = 64 << 20

// Source is where an image comes from.
type Source interface {
	// Open returns the image from byte offset on. start is where the
	// stream really begins (0 when the source cannot resume), total the
	// image's size (-1 when unknown).
	Open(ctx context.Context, offset int64) (rc io.ReadCloser, start, total int64, err error)
	String() string
}

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
	Keys     Keys
	Progress func(done, total int64) // may be nil
	Reserve  int64                   // free space to leave; 0 means DefaultReserve
	Log      *slog.Logger
}

// Result says what Stage did.
type Result struct {
	Digest     string `json:"digest"`
	Size       int64  `json:"size"`
	Reused     int64  `json:"reused"`     // bytes of an earlier interrupted download kept
	Downloaded int64  `json:"downloaded"` // bytes received this time
	// Manifest says what was staged as hn-root-new.img.json: "signed,
	// key ID", "unsigned", ... or "" (the source has none).
	Manifest string `json:"manifest,omitempty"`
	// Already is "current" or "new" when nothing was done because the
	// image already is in that slot.
	Already string `json:"already,omitempty"`
}

// ErrRefused is returned (wrapped) for a digest in the failure memory.
var ErrRefused = errors.New("refused: this image was reverted or rejected on this host before")

// ErrNoSpace is returned (wrapped) when hostpart lacks room for the image.
var ErrNoSpace = errors.New("not enough space on hostpart")

// ErrBusy is returned when another stager holds the lock.
var ErrBusy = errors.New("another imaged is staging on this hostpart")

// DigestError is a download whose content is not the image asked for.
type DigestError struct {
	Want, Got, Source string
	Size              int64
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("download from %s is corrupt: sha256 of its %d bytes is %s, want %s; removed %s, nothing staged", e.Source, e.Size, e.Got, e.Want, layout.NewPart)
}

type staging struct {
	Digest string `json:"digest"`
	Source string `json:"source"`
}

// Stage downloads or copies an image into hn-root-new.img.part (resuming a
// download of the same digest left by an interrupted run), verifies its
// sha256, fsyncs it and renames it to hn-root-new.img, with the directory
// fsynced. hn-root-new.img is never partial: it appears complete or not at
// all.
//
// The source's manifest (ManifestSource; URL.json, FILE.json) is fetched
// first and, with trusted keys (req.Keys, .hnboot/trusted.pub), required
// and its signature checked before anything is downloaded. It must name
// the image's sha256 and size, and is written as hn-root-new.img.json
// (durably) before the image is renamed into place, so the init never
// sees a staged image without it.
func Stage(ctx context.Context, dir string, req Request) (Result, error) {
	log := req.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if req.Reserve == 0 {
		req.Reserve = DefaultReserve
	}
	res := Result{Digest: req.Digest}
	if req.Digest != "" && !digest.Valid(req.Digest) {
		return res, fmt.Errorf("stage: digest %q is not sha256:<64 hex>", req.Digest)
	}
	failed, err := LoadFailed(dir)
	if err != nil {
		return res, err
	}
	st, err := hostpart.Read(dir, hostpart.ReadOptions{Hash: true})
	if err != nil {
		return res, err
	}
	if req.Digest != "" {
		if err := checkRefused(failed, req.Digest, req.Force); err != nil {
			return res, err
		}
		if st.Slot(layout.SlotCurrent).Digest == req.Digest {
			res.Already = layout.SlotCurrent
			return res, nil
		}
		if st.Slot(layout.SlotNew).Digest == req.Digest {
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
	partPath := filepath.Join(dir, layout.NewPart)
	var have int64
	if req.Digest != "" {
		var rec staging
		if b, err := os.ReadFile(filepath.Join(dir, layout.Staging)); err == nil && json.Unmarshal(b, &rec) == nil && rec.Digest == req.Digest {
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
	rec, _ := json.Marshal(staging{Digest: req.Digest, Source: req.Source.String()})
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
	h := sha256.New()
	if have > 0 {
		// Hash what an earlier run downloaded: a local read, no network.
		n, err := io.Copy(h, io.NewSectionReader(part, 0, have))
		if err != nil || n != have {
			return res, fmt.Errorf("stage: read back %s: %v (read %d of %d bytes)", partPath, err, n, have)
		}
	}
	rc, start, total, err := req.Source.Open(ctx, have)
	if err != nil {
		return res, fmt.Errorf("stage: %w", err)
	}
	defer rc.Close()
	if start != have {
		log.Info("stage: source cannot resume; starting over", "source", req.Source.String(), "had", have)
		have, h = 0, sha256.New()
	}
	if _, err := part.Seek(have, io.SeekStart); err != nil {
		return res, err
	}
	if err := part.Truncate(have); err != nil {
		return res, fmt.Errorf("stage: truncate %s: %w", partPath, err)
	}
	res.Reused = have
	if have > 0 {
		log.Info("stage: resuming download", "source", req.Source.String(), "from", have, "total", total)
	}
	if req.Size > 0 && total >= 0 && total != req.Size {
		return res, fmt.Errorf("stage: %s is %d bytes, but the server announced %d for %s", req.Source, total, req.Size, req.Digest)
	}
	if req.Size <= 0 && total > 0 {
		if err := checkSpace(dir, st, total-have, req); err != nil {
			return res, err
		}
	}
	n, err := copyProgress(ctx, part, io.TeeReader(rc, h), have, total, req.Progress)
	res.Downloaded = n
	done := have + n
	if err != nil {
		// Keep what arrived, durably, for the next run to resume from.
		part.Sync()
		return res, fmt.Errorf("stage: download from %s interrupted at %d of %s bytes (kept in %s; staging again resumes): %w", req.Source, done, sizeStr(total), layout.NewPart, err)
	}
	if total >= 0 && done != total {
		part.Sync()
		return res, fmt.Errorf("stage: download from %s ended at %d of %d bytes (kept in %s; staging again resumes)", req.Source, done, total, layout.NewPart)
	}
	res.Size = done
	got := digest.Of(h)
	discard := func() {
		part.Close()
		fsys.Remove(layout.NewPart)
		fsys.Remove(layout.Staging)
	}
	if req.Digest != "" && got != req.Digest {
		discard()
		return res, &DigestError{Want: req.Digest, Got: got, Source: req.Source.String(), Size: done}
	}
	res.Digest = got
	if req.Digest == "" {
		if err := checkRefused(failed, got, req.Force); err != nil {
			discard()
			return res, err
		}
		if st.Slot(layout.SlotCurrent).Digest == got {
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
			return res, fmt.Errorf("stage: %s from %s: %w; removed %s", digest.Short(got), req.Source, err, layout.NewPart)
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
	if err := fsys.Remove(layout.New); err != nil {
		return res, fmt.Errorf("stage: replace the staged image: %w", err)
	}
	if manBytes != nil {
		err = fsys.WriteFile(layout.ManifestFor(layout.New), manBytes)
	} else {
		err = fsys.Remove(layout.ManifestFor(layout.New))
	}
	if err != nil {
		return res, fmt.Errorf("stage: %s: %w", layout.ManifestFor(layout.New), err)
	}
	if err := fsys.Rename(layout.NewPart, layout.New); err != nil {
		return res, fmt.Errorf("stage: %w", err)
	}
	fsys.Remove(layout.Staging)
	if err := hostpart.Remember(dir, layout.New, got); err != nil {
		log.Warn("stage: cannot cache the digest", "err", err)
	}
	if err := hostpart.WriteMeta(dir, hostpart.Meta{Digest: got, Name: req.Name, Version: req.Version, Source: req.Source.String(), Staged: time.Now()}); err != nil {
		log.Warn("stage: cannot record image metadata", "err", err)
	}
	log.Info("stage: staged", "file", layout.New, "digest", got, "size", done, "reused", have, "downloaded", n, "manifest", res.Manifest)
	return res, nil
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
		hint = fmt.Sprintf("remove %s (%s, %s; not needed to revert) or free other space", b.File, b.Label(), sizeStr(b.Size))
	}
	return fmt.Errorf("%w %s to stage %s: need %s more (plus %s kept free), %s available; %s",
		ErrNoSpace, dir, label(req), sizeStr(need), sizeStr(req.Reserve), sizeStr(avail), hint)
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

// sizeStr prints bytes in binary units.
func sizeStr(n int64) string {
	if n < 0 {
		return "unknown"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// SizeString is sizeStr for the operator commands.
func SizeString(n int64) string { return sizeStr(n) }

func copyProgress(ctx context.Context, w io.Writer, r io.Reader, base, total int64, progress func(done, total int64)) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	last := time.Time{}
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			if _, err := w.Write(buf[:m]); err != nil {
				return n, err
			}
			n += int64(m)
			if progress != nil && time.Since(last) > 200*time.Millisecond {
				progress(base+n, total)
				last = time.Now()
			}
		}
		if rerr == io.EOF {
			if progress != nil {
				progress(base+n, total)
			}
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
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

// HTTPSource fetches an image over HTTP, resuming with Range requests.
type HTTPSource struct {
	URL    string
	Client *http.Client // nil: a client with connect and header timeouts
}

func (s HTTPSource) String() string { return s.URL }

var defaultClient = &http.Client{Transport: &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	ResponseHeaderTimeout: 30 * time.Second,
	IdleConnTimeout:       90 * time.Second,
}}

// Open implements Source.
func (s HTTPSource) Open(ctx context.Context, offset int64) (io.ReadCloser, int64, int64, error) {
	c := s.Client
	if c == nil {
		c = defaultClient
	}
	get := func(offset int64) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
		if err != nil {
			return nil, err
		}
		if offset > 0 {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
		}
		return c.Do(req)
	}
	resp, err := get(offset)
	if err != nil {
		return nil, 0, 0, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return resp.Body, 0, resp.ContentLength, nil
	case http.StatusPartialContent:
		start, _, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok {
			resp.Body.Close()
			return nil, 0, 0, fmt.Errorf("GET %s: 206 with bad Content-Range %q", s.URL, resp.Header.Get("Content-Range"))
		}
		return resp.Body, start, total, nil
	case http.StatusRequestedRangeNotSatisfiable:
		resp.Body.Close()
		if _, _, total, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && total == offset {
			return io.NopCloser(strings.NewReader("")), offset, total, nil // we had it all
		}
		if resp, err = get(0); err != nil {
			return nil, 0, 0, err
		}
		if resp.StatusCode == http.StatusOK {
			return resp.Body, 0, resp.ContentLength, nil
		}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return nil, 0, 0, fmt.Errorf("GET %s: %s: %s", s.URL, resp.Status, strings.TrimSpace(string(body)))
}

// parseContentRange parses "bytes a-b/total" and "bytes */total" (start -1).
func parseContentRange(v string) (start, end, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil {
			return 0, 0, 0, false
		}
		total = t
	}
	if rng == "*" {
		return -1, -1, total, true
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	s, err1 := strconv.ParseInt(a, 10, 64)
	e, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, 0, false
	}
	return s, e, total, true
}

// FileSource copies an image from a local file.
type FileSource struct{ Path string }

func (s FileSource) String() string { return s.Path }

// Open implements Source.
func (s FileSource) Open(_ context.Context, offset int64) (io.ReadCloser, int64, int64, error) {
	f, err := os.Open(s.Path)
	if err != nil {
		return nil, 0, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, 0, fmt.Errorf("%s is not a regular file", s.Path)
	}
	if offset > fi.Size() {
		offset = 0
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return nil, 0, 0, err
	}
	return f, offset, fi.Size(), nil
}
