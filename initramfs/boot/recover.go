package boot

// Recovery over the network (DESIGN.md §3 step 8): when no local image
// boots and a server is known, the init fetches the assigned image,
// installs it as hn-root.img through rotate.RecoverImage (journalled:
// the images that did not boot are kept aside as *.broken), and boots
// it. The rescue shell stays the last resort, with the reason.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/stage"
)

// RecoverServer picks the server a recovery fetches from, or says why
// there is none: hn.server=, else the one remembered on hostpart. Unlike
// the network phase, a kexec'd boot recovers too (its image failed after
// the kexec); hn.checkin=off and hn.fetch=off forbid it.
func RecoverServer(cfg cmdline.Config, remembered string) (server, why string) {
	switch {
	case cfg.NoCheckin:
		return "", "hn.checkin=off: no network at boot"
	case cfg.NoFetch:
		return "", "hn.fetch=off: no download at boot"
	}
	c := cfg
	c.Kexeced = ""
	return ServerDecision(c, remembered)
}

// lastResort is where a boot goes when no local image boots: recovery
// over the network, else the rescue shell with both reasons.
func (b *Boot) lastResort(ctx context.Context, reason error) Outcome {
	b.Log.Error("no local image boots: " + reason.Error())
	out, why, ok := b.recoverOverNetwork(ctx)
	if ok {
		return out
	}
	b.Log.Error("no recovery over the network: " + why)
	return b.rescue(fmt.Errorf("%w; no recovery over the network: %s", reason, why))
}

// recoverOverNetwork fetches the assigned image, installs it as
// hn-root.img and boots it. ok is false (with why) when it did not boot.
func (b *Boot) recoverOverNetwork(ctx context.Context) (out Outcome, why string, ok bool) {
	switch {
	case b.recovering:
		return out, "a recovery was already tried in this boot", false
	case b.diskless:
		return out, "a diskless boot has nothing to recover", false
	case !b.mounted:
		return out, "hostpart is not mounted", false
	}
	b.recovering = true
	dir := b.Paths.Hostpart
	remembered, _ := os.ReadFile(filepath.Join(dir, layout.Server))
	server, swhy := RecoverServer(b.cfg, string(remembered))
	if server == "" {
		return out, swhy, false
	}
	b.Log.Warn("recovering over the network: fetching the assigned image to replace the local ones", "server", server, "because", swhy)
	as, mac, err := b.askServer(ctx, server, swhy)
	failed, ferr := stage.LoadFailed(dir)
	if ferr != nil {
		b.Log.Warn("failure memory unreadable", "err", ferr)
		failed = stage.Failed{}
	}
	f := InstallDecision(InstallInput{Assigned: as, AssignedErr: err, Current: knownDigest(dir, layout.Current, b.digests),
		Failed: func(d string) string { return failed[d].Reason }})
	if !f.Get {
		return out, f.Why, false
	}
	a := as.Image
	b.Log.Info("recovery: fetching the assigned image: "+f.Why, "url", BlobURL(server, a.Digest), "file", layout.Recover)
	b.staging = &checkin.Staging{Digest: a.Digest, Image: a.Label(), State: "downloading", Total: a.Size}
	res, err := b.FetchAssigned(ctx, server, as, dir, layout.Recover)
	b.staging.Reused, b.staging.Done = res.Reused, res.Reused+res.Downloaded
	if err != nil {
		b.staging.State, b.staging.Error = "failed", err.Error()
		var de *stage.DigestError
		if errors.As(err, &de) {
			b.rememberFailed(failed, a.Digest, fmt.Sprintf("recovery download from %s did not match its digest (got %s)", de.Source, de.Got))
		}
		return out, fmt.Sprintf("fetching the assigned image %s failed: %v", a.Label(), err), false
	}
	b.staging.State, b.staging.Done, b.staging.Total = "staged", res.Size, res.Size
	rres, err := rotate.RecoverImage(b.rotateFS(), rotate.Options{
		Complete: completeImage(dir, b.digests),
		Log:      func(msg string) { b.Log.Info("rotate: " + msg) },
	})
	b.saveDigests()
	if err != nil {
		return out, fmt.Sprintf("installing the downloaded image as %s failed: %v", layout.Current, err), false
	}
	b.res = rres
	b.Log.Warn("recovered: the assigned image is "+layout.Current+"; the images that did not boot are kept aside",
		"image", a.Label(), "kept", layout.CurrentBroken+", "+layout.OldBroken)
	b.checkinRecovery(ctx, server, mac)
	out, err = b.bootImage(layout.Current)
	if err == nil {
		return out, "", true
	}
	b.teardownImage()
	b.rememberFailed(failed, a.Digest, "installed by a recovery, did not boot: "+err.Error())
	return Outcome{}, fmt.Sprintf("the recovered image %s does not boot either: %v", a.Label(), err), false
}

// reloadDigests picks up the digest staging recorded in the cache on
// disk, so the checks that follow do not hash the download again (keys
// are inodes: the entry follows the file through the renames).
func (b *Boot) reloadDigests() {
	b.saveDigests()
	b.digests = digestcache.Load(b.Paths.Hostpart)
}

// rememberFailed adds digest to the failure memory, so no later boot
// downloads it again (unless forced).
func (b *Boot) rememberFailed(failed stage.Failed, digest, reason string) {
	if _, err := failed.Add(b.Paths.Hostpart, stage.Failure{Digest: digest, Time: b.Sys.Now(), Reason: reason}); err != nil {
		b.Log.Warn("cannot remember the failed image", "digest", digest, "err", err)
		return
	}
	b.Log.Info("remembering the image as failed: it is not fetched again unless forced", "digest", digest, "reason", reason)
}

// checkinRecovery reports the recovery to imaged (best effort, within
// the network budget).
func (b *Boot) checkinRecovery(ctx context.Context, server, mac string) {
	bctx, cancel := context.WithTimeout(ctx, b.cfg.Network)
	defer cancel()
	rep := b.checkinReport(bctx)
	if err := b.postCheckin(bctx, server, mac, rep); err != nil {
		b.Log.Warn("check-in failed (boot continues)", "server", server, "err", err)
		return
	}
	b.Log.Info("checked in", "server", server, "mac", mac, "booted", rep.Booted, "action", rep.Action)
}
