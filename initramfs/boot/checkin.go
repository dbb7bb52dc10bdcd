package boot

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hnboot/hnboot/initramfs/identity"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/stage"
)

// checkinReport gathers this boot's check-in but the MAC. The SSH host
// keys are in it when the identity is ready by ctx's end (on a first boot
// without entropy their generation may still wait for the pool; the
// agent reports them later).
func (b *Boot) checkinReport(ctx context.Context) *checkin.Checkin {
	res := b.res
	rep := &checkin.Checkin{
		Hostname:  b.cfg.Hostname,
		Source:    checkin.SourceInit,
		Action:    res.Action.String(),
		Trial:     res.Trial,
		TriesLeft: res.TriesLeft,
		Notes:     res.Notes,
		Kernel:    b.Sys.Release(),
		Staging:   b.staging,
	}
	if up, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(up)); len(f) > 0 {
			v, _ := strconv.ParseFloat(f[0], 64)
			rep.UptimeSeconds = int64(v)
		}
	}
	dir := b.Paths.Hostpart
	rep.RevertApplied = res.RevertApplied
	if id, err := b.id.wait(ctx); err == nil {
		for _, k := range id.HostKeys {
			rep.SSHHostKeys = append(rep.SSHHostKeys, strings.TrimSpace(string(k.Public)))
			rep.Fingerprints = append(rep.Fingerprints, k.Fingerprint)
		}
	} else {
		rep.Notes = append(rep.Notes, "SSH host keys not reported: "+err.Error())
	}
	if f, err := stage.LoadFailed(dir); err == nil && len(f) > 0 {
		rep.FailedDigests = f.Digests()
	}
	rep.BootedImage, rep.Images = reportImages(ctx, dir, b.cfg.Image, b.digests)
	rep.Booted = rep.Images.Current
	b.saveDigests()
	return rep
}

// reportImages describes the image booting now (dir/image) and the
// digests of the slots. Only the booted image may be hashed, within ctx
// and checkin.HashLimit; the others come from the cache or their manifest.
// New digests go into cache; the caller saves it.
func reportImages(ctx context.Context, dir, image string, cache *digestcache.Cache) (checkin.Image, checkin.Slots) {
	img, d := imageDigest(ctx, dir, image, cache)
	img.File = image
	slots := checkin.Slots{Current: d}
	for slot, name := range map[*string]string{&slots.Old: layout.Old, &slots.New: layout.New, &slots.Broken: layout.Broken} {
		*slot = knownDigest(dir, name, cache)
	}
	return img, slots
}

// postCheckin sends rep to server and remembers server on hostpart (the
// next boot from the local disk asks it what to run).
func (b *Boot) postCheckin(ctx context.Context, server, mac string, rep *checkin.Checkin) error {
	rep.MAC = mac
	rep.Tidy() // rotation notes name files and errors: fit them, or the server refuses it all
	body, _ := json.Marshal(rep)
	url := strings.TrimRight(server, "/") + "/checkin"
	code, err := b.post(ctx, url, body)
	if err != nil {
		return err
	}
	if code/100 != 2 {
		return fmt.Errorf("POST %s: status %d", url, code)
	}
	if old, _ := os.ReadFile(filepath.Join(b.Paths.Hostpart, layout.Server)); strings.TrimSpace(string(old)) != server {
		if err := durable.Root(b.Paths.Hostpart).WriteFile(layout.Server, []byte(server+"\n")); err != nil {
			b.Log.Warn("cannot remember the server on hostpart", "file", layout.Server, "err", err)
		}
	}
	return nil
}

// post posts a check-in, again after a 503 while ctx lasts: the server
// could not store it (its fleet database is away) and said so, so it kept
// nothing.
func (b *Boot) post(ctx context.Context, url string, body []byte) (int, error) {
	for {
		resp, err := b.Sys.HTTP().Post(ctx, url, "application/json", body)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		if resp.StatusCode != 503 || ctx.Err() != nil {
			return resp.StatusCode, nil
		}
		b.Log.Info("check-in: the server cannot store it now (503); retrying", "url", url)
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return resp.StatusCode, nil
		}
	}
}

// manifestDigest is the digest named by the manifest beside the image, if
// its size matches. The init checked it against the image at promotion, and
// it saves hashing gigabytes at boot (so a host whose first boot promotes
// still reports its old image).
func manifestDigest(path string, size int64) string {
	m, err := manifest.ReadFile(layout.ManifestFor(path))
	if err != nil || m.Size != size || len(m.SHA256) != 64 {
		return ""
	}
	return "sha256:" + m.SHA256
}

// knownDigest is the digest of dir/name from the cache or its manifest,
// without hashing; "" when neither knows it (or the slot is empty).
func knownDigest(dir, name string, cache *digestcache.Cache) string {
	path := filepath.Join(dir, name)
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	if d := cache.Lookup(name, st); d != "" {
		return d
	}
	return manifestDigest(path, st.Size())
}

// imageDigest returns the description of the image dir/name and its full
// digest when it is cached or cheap to compute (see checkin.Image).
func imageDigest(ctx context.Context, dir, name string, cache *digestcache.Cache) (checkin.Image, string) {
	img := checkin.Image{Source: "none"}
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if err != nil {
		return img, ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return img, ""
	}
	img.Size = st.Size()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, 1<<20)); err == nil {
		img.Head = digest.Of(h)
	}
	if d := cache.Lookup(name, st); d != "" {
		img.Source = "cache"
		return img, d
	}
	if d := manifestDigest(path, st.Size()); d != "" {
		img.Source = "manifest"
		return img, d
	}
	if st.Size() > checkin.HashLimit {
		return img, ""
	}
	// Continue the same hash over the rest of the file, stopping when the
	// budget runs out.
	buf := make([]byte, 1<<20)
	for {
		if ctx.Err() != nil {
			return img, ""
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return img, ""
		}
	}
	d := digest.Of(h)
	cache.Put(name, st, d)
	img.Source = "computed"
	return img, d
}

// saveDigests writes the digest cache if this boot learnt a digest. A
// failure only costs hashing again.
func (b *Boot) saveDigests() {
	if b.digests == nil {
		return
	}
	if err := saveDigests(b.Paths.Hostpart, b.digests); err != nil {
		b.Log.Warn("digest cache not saved", "file", layout.Digests, "err", err)
	}
}

func saveDigests(dir string, cache *digestcache.Cache) error {
	if !cache.Dirty() {
		return nil
	}
	return cache.Save(dir)
}

// idFuture is the host identity, generated in the background: on a
// first boot without entropy the SSH host keys wait for the kernel's
// pool, and nothing else in the boot should wait with them.
type idFuture struct {
	done  chan struct{}
	id    identity.Identity
	err   error
	start time.Time
	took  time.Duration
}

func startIdentity(dir string, now func() time.Time) *idFuture {
	f := &idFuture{done: make(chan struct{}), start: now()}
	go func() {
		defer close(f.done)
		f.id, f.err = identity.Ensure(filepath.Join(dir, layout.IdentityDir), nil)
		f.took = now().Sub(f.start)
	}()
	return f
}

// wait returns the identity, or an error when ctx ends first.
func (f *idFuture) wait(ctx context.Context) (identity.Identity, error) {
	if f == nil {
		return identity.Identity{}, fmt.Errorf("no identity (hostpart not mounted)")
	}
	select {
	case <-f.done:
		return f.id, f.err
	case <-ctx.Done():
		return identity.Identity{}, fmt.Errorf("host keys still being generated (waiting for the kernel's random pool): %w", ctx.Err())
	}
}
