package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/chunkpack"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

// Published images: what "imaged fleet publish" uploads into the images
// directory (Options.Images). The directory is the registry; nothing of
// it is in the database, so servers that share the directory share the
// images:
//
//	blobs/sha256-HEX.img        the image, content-addressed, immutable
//	blobs/sha256-HEX.img.json   its manifest (the first one published with it)
//	blobs/sha256-HEX.img.chunks its chunk index, when the manifest names one (delta updates)
//	refs/NAME@VERSION.json      one manifest per published name@version
//	uploads/HEX.part, HEX.json  an upload in progress and its manifest
//
// Published images join the YAML's images at every load: assignments,
// channels and rollouts name them as name@version, and /blobs serves
// them by digest.
const (
	blobsDir   = "blobs"
	refsDir    = "refs"
	uploadsDir = "uploads"
)

// refPat is what a published name and version may be: they become file
// names, so no '/', no leading '.', no '@'.
var refPat = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)

// readPublished lists the published images in dir (none when dir is ""
// or does not exist yet).
func readPublished(dir string) ([]*Image, error) {
	if dir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(filepath.Join(dir, refsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: published images: %w", err)
	}
	var out []*Image
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, refsDir, e.Name())
		m, err := manifest.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("fleet: published image %s: %w", p, err)
		}
		if e.Name() != m.Name+"@"+m.Version+".json" {
			return nil, fmt.Errorf("fleet: published image %s: names %s@%s: remove the file", p, m.Name, m.Version)
		}
		out = append(out, &Image{
			Name: m.Name, Version: m.Version, Digest: "sha256:" + m.SHA256,
			Path:      blobPath(dir, m.SHA256),
			Pos:       Pos{File: p, Line: 1},
			published: true,
		})
	}
	return out, nil
}

func blobPath(dir, hex string) string {
	return filepath.Join(dir, blobsDir, "sha256-"+hex+".img")
}

// publishedSignature changes when an image is published or pruned,
// also by another server sharing the directory.
func publishedSignature(dir string) string {
	if dir == "" {
		return ""
	}
	return "published\n" + dirSignature(filepath.Join(dir, refsDir))
}

// load reads the desired state: the YAML directory and the published
// images.
func (f *Fleet) load() (*Desired, error) {
	pub, err := readPublished(f.opts.Images)
	if err != nil {
		return nil, err
	}
	return LoadWith(f.opts.Dir, pub)
}

// uploads serializes the writers of one upload.
var uploads sync.Map // hex -> *sync.Mutex

func uploadLock(hex string) func() {
	v, _ := uploads.LoadOrStore(hex, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// PublishReply answers POST /api/images and PATCH /api/uploads/{digest}.
type PublishReply struct {
	Result string `json:"result"` // upload, partial, published, exists
	Image  string `json:"image"`  // name@version
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	Upload string `json:"upload,omitempty"` // where to PATCH the bytes
	Offset int64  `json:"offset"`           // bytes the server has
	Note   string `json:"note,omitempty"`
}

// errPublish carries the HTTP status of a refused publish.
type errPublish struct {
	code int
	msg  string
}

func (e *errPublish) Error() string { return e.msg }

func refused(code int, format string, args ...any) error {
	return &errPublish{code, fmt.Sprintf(format, args...)}
}

func publishCode(err error) int {
	var pe *errPublish
	if errors.As(err, &pe) {
		return pe.code
	}
	return actionCode(err)
}

// startPublish checks a manifest and says what is left to send.
func (f *Fleet) startPublish(who, remote string, body []byte) (*PublishReply, error) {
	if f.opts.Images == "" {
		return nil, refused(http.StatusForbidden, "publishing is off: start imaged serve with --images DIR")
	}
	m, err := manifest.Parse(body)
	if err != nil {
		return nil, refused(http.StatusBadRequest, "manifest: %v", err)
	}
	if !refPat.MatchString(m.Name) || !refPat.MatchString(m.Version) {
		return nil, refused(http.StatusBadRequest, "manifest: name %q and version %q: letters, digits, '.', '_', '+' and '-' only", m.Name, m.Version)
	}
	dg := "sha256:" + m.SHA256
	if !digest.Valid(dg) || m.Size <= 0 {
		return nil, refused(http.StatusBadRequest, "manifest: sha256 %q, size %d: want 64 lowercase hex digits and a positive size", m.SHA256, m.Size)
	}
	if keys := f.opts.TrustedKeys; len(keys) > 0 {
		if err := m.CheckSignature(keys); err != nil {
			return nil, refused(http.StatusForbidden, "%s@%s: %v: this server trusts %d key(s); sign it (mkimage rootfs/build --sign-key)", m.Name, m.Version, err, len(keys))
		}
	}
	ref := m.Name + "@" + m.Version
	rep := &PublishReply{Image: ref, Digest: dg, Size: m.Size}
	if img := f.snap.Load().desired.Image(ref); img != nil {
		if img.Digest != dg {
			return nil, refused(http.StatusConflict, "%s exists with digest %s (%s): publish it as another version", ref, img.Digest, img.Pos)
		}
		if _, err := os.Stat(img.Path); err == nil {
			rep.Result, rep.Offset = "exists", m.Size
			return rep, nil
		}
	}
	unlock := uploadLock(m.SHA256)
	defer unlock()
	if st, err := os.Stat(blobPath(f.opts.Images, m.SHA256)); err == nil && st.Size() == m.Size {
		// The bytes are here already (another name@version has them).
		if err := f.register(who, remote, m, body); err != nil {
			return nil, err
		}
		rep.Result, rep.Offset = "published", m.Size
		return rep, nil
	}
	up := filepath.Join(f.opts.Images, uploadsDir)
	if err := os.MkdirAll(up, 0o755); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	mp := filepath.Join(up, m.SHA256+".json")
	if old, err := manifest.ReadFile(mp); err == nil && (old.Size != m.Size) {
		// An upload of the same digest with another size cannot both be
		// right: start over.
		os.Remove(filepath.Join(up, m.SHA256+".part"))
	}
	if err := durable.WriteFile(mp, body, 0o644); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	part := filepath.Join(up, m.SHA256+".part")
	pf, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	st, err := pf.Stat()
	pf.Close()
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	rep.Result, rep.Upload, rep.Offset = "upload", "/api/uploads/"+dg, st.Size()
	return rep, nil
}

// receive appends an upload's bytes from offset; when the upload is
// complete it checks the digest and the filesystem and registers it.
func (f *Fleet) receive(who, remote, dg string, offset int64, body io.Reader) (*PublishReply, error) {
	if f.opts.Images == "" {
		return nil, refused(http.StatusForbidden, "publishing is off: start imaged serve with --images DIR")
	}
	if !digest.Valid(dg) {
		return nil, refused(http.StatusBadRequest, "upload %q: want sha256: and 64 hex digits", dg)
	}
	hex := strings.TrimPrefix(dg, "sha256:")
	unlock := uploadLock(hex)
	defer unlock()
	up := filepath.Join(f.opts.Images, uploadsDir)
	mb, err := os.ReadFile(filepath.Join(up, hex+".json"))
	if err != nil {
		return nil, refused(http.StatusNotFound, "no upload of %s: start it with POST /api/images (imaged fleet publish)", dg)
	}
	m, err := manifest.Parse(mb)
	if err != nil {
		return nil, fmt.Errorf("publish: upload manifest: %w", err)
	}
	rep := &PublishReply{Image: m.Name + "@" + m.Version, Digest: dg, Size: m.Size}
	part := filepath.Join(up, hex+".part")
	pf, err := os.OpenFile(part, os.O_WRONLY, 0)
	if err != nil {
		return nil, refused(http.StatusNotFound, "no upload of %s: start it with POST /api/images (imaged fleet publish)", dg)
	}
	defer pf.Close()
	st, err := pf.Stat()
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	if offset != st.Size() {
		rep.Result, rep.Offset = "partial", st.Size()
		return rep, refused(http.StatusConflict, "upload of %s: offset %d, but the server has %d bytes: send from %d", dg, offset, st.Size(), st.Size())
	}
	if _, err := pf.Seek(offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	// At most what the manifest says is left; one byte more is refused.
	n, cerr := io.Copy(pf, io.LimitReader(body, m.Size-offset+1))
	if serr := pf.Sync(); serr != nil && cerr == nil {
		cerr = serr
	}
	have := offset + n
	if have > m.Size {
		pf.Truncate(m.Size)
		pf.Sync()
		return nil, refused(http.StatusRequestEntityTooLarge, "upload of %s: more than the manifest's %d bytes", dg, m.Size)
	}
	rep.Offset = have
	if have < m.Size {
		rep.Result = "partial"
		if cerr != nil {
			f.log.Warn("publish: upload interrupted; it can resume", "image", rep.Image, "have", have, "size", m.Size, "err", cerr)
		}
		return rep, nil
	}
	pf.Close()
	blobs := filepath.Join(f.opts.Images, blobsDir)
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	blob := blobPath(f.opts.Images, hex)
	// With a chunk index named in the manifest, the server makes the
	// index and the pack (IMAGE.zst) itself in the same read that checks
	// the digest: the bytes are the same as mkimage's, and so is the
	// encoder, so the index is too, and a host checks it against the
	// signed manifest anyway.
	var ix *chunkindex.Index
	var got string
	if m.Chunks != "" {
		ix, err = chunkpack.BuildFile(part, blob+layout.PackSuffix, 0o444)
		if ix != nil {
			got = ix.Digest()
		}
	} else {
		got, err = digest.File(part, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	size := have
	if got != dg {
		os.Remove(blob + layout.PackSuffix)
		os.Remove(part)
		os.Remove(filepath.Join(up, hex+".json"))
		return nil, refused(http.StatusUnprocessableEntity, "upload of %s: the bytes received have sha256 %s (%d bytes), not the manifest's: nothing registered; publish again", rep.Image, got, size)
	}
	if err := blkid.CheckImageFile(part); err != nil {
		os.Remove(blob + layout.PackSuffix)
		os.Remove(part)
		os.Remove(filepath.Join(up, hex+".json"))
		return nil, refused(http.StatusUnprocessableEntity, "upload of %s: %v: not a root image (build it with mkimage)", rep.Image, err)
	}
	// The index, the pack and the manifest first, then the blob: a blob
	// without its manifest beside it would be served without one. The
	// index is the version the manifest names: with the pack's frames
	// (version 2), or without (an image built before packs: the pack is
	// of no use to a host, which fetches raw ranges).
	if ix != nil {
		b, b1 := ix.Marshal(), ix.Unpacked().Marshal()
		if chunkindex.Sum(b1) == m.Chunks {
			b = b1
			os.Remove(blob + layout.PackSuffix)
		}
		if chunkindex.Sum(b) != m.Chunks {
			os.Remove(blob + layout.PackSuffix)
			f.log.Warn("publish: the manifest names another chunk index than this server makes (another chunking, or another zstd encoder for the pack); hosts download the image whole", "image", rep.Image, "manifest", m.Chunks, "server", chunkindex.Sum(b))
		} else if err := durable.WriteFile(blob+layout.ChunksSuffix, b, 0o444); err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
	}
	if err := durable.WriteFile(layout.ManifestFor(blob), mb, 0o644); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	os.Chmod(part, 0o444)
	if err := os.Rename(part, blob); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	if err := durable.SyncDir(blobs); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	os.Remove(filepath.Join(up, hex+".json"))
	if err := f.register(who, remote, m, mb); err != nil {
		return nil, err
	}
	rep.Result = "published"
	return rep, nil
}

// register records name@version → digest, audits it and reloads.
func (f *Fleet) register(who, remote string, m *manifest.Manifest, mb []byte) error {
	ref := m.Name + "@" + m.Version
	refs := filepath.Join(f.opts.Images, refsDir)
	if err := os.MkdirAll(refs, 0o755); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	p := filepath.Join(refs, ref+".json")
	if old, err := manifest.ReadFile(p); err == nil && old.SHA256 != m.SHA256 {
		return refused(http.StatusConflict, "%s exists with digest sha256:%s (%s): publish it as another version", ref, old.SHA256, p)
	}
	if err := f.audit(AuditEntry{Who: who, Remote: remote, Action: "publish", Target: ref, Detail: "sha256:" + m.SHA256}); err != nil {
		return err
	}
	if err := durable.WriteFile(p, mb, 0o644); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if err := f.Reload(); err != nil {
		return fmt.Errorf("publish: %s is stored, but the fleet directory does not load, so it cannot be named yet: %w", ref, err)
	}
	return nil
}

// ImageListing is one image in GET /api/images.
type ImageListing struct {
	Image     string    `json:"image"` // name@version
	Digest    string    `json:"digest"`
	Size      int64     `json:"size"`
	Source    string    `json:"source"` // "published" or the YAML file:line
	Published bool      `json:"published"`
	Time      time.Time `json:"time"`              // when published (or the file's mtime)
	Running   int       `json:"running"`           // hosts that report it as their current image
	Assigned  int       `json:"assigned"`          // hosts whose desired image it is
	Kept      int       `json:"kept"`              // hosts that hold it in another slot (old, new, broken)
	Missing   bool      `json:"missing,omitempty"` // the file is not there
}

// ListImages lists the fleet's images, YAML and published, with how
// many hosts run, are assigned or keep each.
func (f *Fleet) ListImages() ([]ImageListing, error) {
	st, err := f.status()
	if err != nil {
		return nil, err
	}
	d := f.snap.Load().desired
	var out []ImageListing
	for _, img := range d.Images {
		l := ImageListing{Image: img.Ref(), Digest: img.Digest, Source: img.Pos.String(), Published: img.published}
		if img.published {
			l.Source = "published"
		}
		if fi, err := os.Stat(img.Path); err == nil {
			l.Size, l.Time = fi.Size(), fi.ModTime().UTC()
			if img.published {
				if ri, err := os.Stat(img.Pos.File); err == nil {
					l.Time = ri.ModTime().UTC()
				}
			}
		} else {
			l.Missing = true
		}
		for _, h := range st.Hosts {
			if h.Desired.Ref == l.Image {
				l.Assigned++
			}
			if h.LastCheckin == nil {
				continue
			}
			s := h.LastCheckin.Images
			if running(&h.LastCheckin.Checkin) == img.Digest {
				l.Running++
			} else if s.Old == img.Digest || s.New == img.Digest || s.Broken == img.Digest || s.Current == img.Digest {
				l.Kept++
			}
		}
		out = append(out, l)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Image < out[j].Image })
	return out, nil
}

// PruneResult is one published image in POST /api/prune.
type PruneResult struct {
	Image   string `json:"image"`
	Digest  string `json:"digest"`
	Size    int64  `json:"size"`
	Removed bool   `json:"removed"`
	Kept    string `json:"kept,omitempty"` // why it stays
}

// Prune removes published images that nothing references: no host runs,
// keeps or is assigned it, and no channel, rollout or API assignment
// names it. With apply false it only says what it would remove.
func (f *Fleet) Prune(who, remote string, apply bool) ([]PruneResult, error) {
	imgs, err := f.ListImages()
	if err != nil {
		return nil, err
	}
	refs := map[string]string{} // image ref -> who names it
	d := f.snap.Load().desired
	for c, ref := range d.Channels {
		refs[ref] = "channel " + c
	}
	for _, r := range d.Rollouts {
		refs[r.Image] = "rollout " + r.Name + " (" + r.Pos.String() + ")"
	}
	for _, g := range d.Groups {
		if g.Image != "" {
			refs[g.Image] = "group " + g.Name
		}
	}
	for _, h := range d.Hosts {
		if h.Image != "" {
			refs[h.Image] = "host " + h.Hostname
		}
	}
	var in buildInput
	ctx, cancel := dbCtx()
	defer cancel()
	err = f.store.View(ctx, func(tx Tx) error {
		var err error
		if in.hostOv, err = tx.ListOverrides(OverrideHost); err != nil {
			return err
		}
		if in.groupOv, err = tx.ListOverrides(OverrideGroup); err != nil {
			return err
		}
		in.rollouts, err = tx.ListRollouts()
		return err
	})
	if err != nil {
		return nil, dbErr("prune", err)
	}
	for mac, ov := range in.hostOv {
		refs[ov.Image] = "assignment to " + mac
	}
	for g, ov := range in.groupOv {
		refs[ov.Image] = "assignment to group " + g
	}
	for _, r := range in.rollouts {
		refs[r.Image] = "API rollout " + r.Name
	}
	digestsKept := map[string]bool{}
	var out []PruneResult
	for _, l := range imgs {
		if !l.Published {
			continue
		}
		r := PruneResult{Image: l.Image, Digest: l.Digest, Size: l.Size}
		switch {
		case l.Running > 0:
			r.Kept = fmt.Sprintf("%d hosts run it", l.Running)
		case l.Kept > 0:
			r.Kept = fmt.Sprintf("%d hosts keep it (old, new or broken slot)", l.Kept)
		case l.Assigned > 0:
			r.Kept = fmt.Sprintf("%d hosts are assigned it", l.Assigned)
		case refs[l.Image] != "":
			r.Kept = "named by " + refs[l.Image]
		}
		if r.Kept != "" {
			digestsKept[l.Digest] = true
		}
		out = append(out, r)
	}
	if !apply {
		return out, nil
	}
	for i := range out {
		r := &out[i]
		if r.Kept != "" {
			continue
		}
		if err := f.audit(AuditEntry{Who: who, Remote: remote, Action: "prune", Target: r.Image, Detail: r.Digest}); err != nil {
			return out, err
		}
		hex := strings.TrimPrefix(r.Digest, "sha256:")
		if err := os.Remove(filepath.Join(f.opts.Images, refsDir, r.Image+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return out, fmt.Errorf("prune %s: %w", r.Image, err)
		}
		r.Removed = true
		if !digestsKept[r.Digest] && !sharedDigest(out, r) {
			blob := blobPath(f.opts.Images, hex)
			os.Remove(layout.ManifestFor(blob))
			os.Remove(blob + layout.ChunksSuffix)
			os.Remove(blob + layout.PackSuffix)
			os.Remove(blob)
		}
	}
	durable.SyncDir(filepath.Join(f.opts.Images, refsDir))
	if err := f.Reload(); err != nil {
		return out, fmt.Errorf("prune: removed, but the fleet directory does not load: %w", err)
	}
	return out, nil
}

// sharedDigest: another published name@version, not removed, has r's bytes.
func sharedDigest(all []PruneResult, r *PruneResult) bool {
	for _, o := range all {
		if o.Image != r.Image && o.Digest == r.Digest && !o.Removed {
			return true
		}
	}
	return false
}

// publishHandlers adds the publishing endpoints to mux.
func (f *Fleet) publishHandlers(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/images", f.admin(func(w http.ResponseWriter, r *http.Request, who string) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("request body: %v", err))
			return
		}
		rep, err := f.startPublish(who, r.RemoteAddr, body)
		if err != nil {
			writeErr(w, publishCode(err), err)
			return
		}
		code := http.StatusOK
		if rep.Result == "published" {
			code = http.StatusCreated
		}
		writeJSON(w, code, rep)
	}))
	mux.HandleFunc("PATCH /api/uploads/{digest}", f.admin(func(w http.ResponseWriter, r *http.Request, who string) {
		off, err := strconv.ParseInt(r.Header.Get("Upload-Offset"), 10, 64)
		if err != nil || off < 0 {
			writeErr(w, http.StatusBadRequest, errors.New("Upload-Offset: want the byte offset this body starts at (the offset POST /api/images answered)"))
			return
		}
		rep, err := f.receive(who, r.RemoteAddr, r.PathValue("digest"), off, r.Body)
		if err != nil {
			code := publishCode(err)
			if rep != nil {
				w.Header().Set("Upload-Offset", strconv.FormatInt(rep.Offset, 10))
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				json.NewEncoder(w).Encode(map[string]any{"error": err.Error(), "offset": rep.Offset})
				return
			}
			writeErr(w, code, err)
			return
		}
		w.Header().Set("Upload-Offset", strconv.FormatInt(rep.Offset, 10))
		code := http.StatusOK
		if rep.Result == "published" {
			code = http.StatusCreated
		}
		writeJSON(w, code, rep)
	}))
	mux.HandleFunc("GET /api/images", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		l, err := f.ListImages()
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		if l == nil {
			l = []ImageListing{}
		}
		writeJSON(w, http.StatusOK, l)
	}))
	mux.HandleFunc("POST /api/prune", f.admin(func(w http.ResponseWriter, r *http.Request, who string) {
		var req struct {
			Apply bool `json:"apply"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		res, err := f.Prune(who, r.RemoteAddr, req.Apply)
		if err != nil {
			writeErr(w, actionCode(err), err)
			return
		}
		if res == nil {
			res = []PruneResult{}
		}
		writeJSON(w, http.StatusOK, res)
	}))
}
