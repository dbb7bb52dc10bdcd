package boot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hnboot/hnboot/initramfs/netup"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/stage"
)

// networkOutcome is what the talk with imaged gave, for tests and logs.
type networkOutcome struct {
	Server, ServerWhy string
	NetErr            error
	Lease             netup.Lease // what NetUp configured, handed over before switch_root
	Assigned          Assigned
	AssignedErr       error
	Fetch             Fetch
	FetchErr          error
	Checkin           bool
	CheckinErr        error
}

// progressEvery is how often a download prints its progress.
const progressEvery = 5 * time.Second

// talkToImaged is the boot's network phase (DESIGN.md §3 step 3): when
// it knows a server, it brings up the boot NIC, asks what this MAC should
// run, downloads and promotes that image when it is not hn-root.img, and
// checks in. The NIC, the question and the check-in share one budget
// (hn.checkin=, 5 s): a server down or slow costs at most that, then the
// local image boots. A download runs as long as bytes arrive; cut, it is
// resumed by the next boot.
func (b *Boot) talkToImaged(ctx context.Context, rotated bool, rotErr error) {
	remembered, _ := os.ReadFile(filepath.Join(b.Paths.Hostpart, layout.Server))
	out := &networkOutcome{}
	b.network = out
	out.Server, out.ServerWhy = ServerDecision(b.cfg, string(remembered))
	if out.Server == "" {
		b.Log.Info("no network at boot: " + out.ServerWhy)
		return
	}
	server := out.Server
	start := b.Sys.Now()
	budget := b.cfg.Network
	bctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	b.Log.Info("asking imaged what to run", "server", server, "because", out.ServerWhy, "budget", budget)

	// hn-root.img's digest (cache, manifest, or hashed when small) while
	// the network comes up.
	type cur struct{ digest string }
	curc := make(chan cur, 1)
	go func() {
		_, d := imageDigest(bctx, b.Paths.Hostpart, layout.Current, b.digests)
		curc <- cur{d}
	}()

	ifname, mac, err := b.bootNIC()
	if err == nil {
		lease, lerr := b.Sys.NetUp(bctx, ifname)
		out.Lease = lease
		if err = lerr; err == nil {
			b.Log.Info("network up", "lease", lease.String(), "mac", mac, "took", b.since(start))
		}
	}
	if err != nil {
		out.NetErr = err
		<-curc
		b.Log.Warn("network not configured; booting the local image (boot continues)", "err", err, "took", b.since(start))
		return
	}
	out.Assigned, out.AssignedErr = AskAssigned(bctx, b.Sys.HTTP(), server, mac)
	current := (<-curc).digest
	if out.AssignedErr != nil {
		b.Log.Warn("imaged did not say what to run; booting the local image", "err", out.AssignedErr, "took", b.since(start))
	} else {
		a := out.Assigned.Image
		b.Log.Info("imaged assigns", "image", a.Label(), "digest", a.Digest, "size", a.Size, "source", out.Assigned.Source, "took", b.since(start))
	}
	failed, ferr := stage.LoadFailed(b.Paths.Hostpart)
	if ferr != nil {
		b.Log.Warn("failure memory unreadable", "err", ferr)
		failed = stage.Failed{}
	}
	for _, d := range out.Assigned.FailedDigests {
		if added, _ := failed.Add(b.Paths.Hostpart, stage.Failure{Digest: d, Time: b.Sys.Now(), Reason: "reported failed by the server"}); added {
			b.Log.Warn("imaged reports an image as failed on this host", "digest", d)
		}
	}
	out.Fetch = FetchDecision(FetchInput{
		NoFetch: b.cfg.NoFetch, Rotation: b.res, RotateErr: rotErr, Rotated: rotated,
		Assigned: out.Assigned, AssignedErr: out.AssignedErr, Current: current,
		Failed: func(d string) string { return failed[d].Reason },
	})
	a := out.Assigned.Image
	switch {
	case out.Fetch.Get:
		b.Log.Info("fetching the assigned image: "+out.Fetch.Why, "url", BlobURL(server, a.Digest))
		out.FetchErr = b.fetchAndPromote(ctx, server, out.Assigned, failed)
		if out.FetchErr == nil {
			// The server answered and served: the check-in gets a
			// budget of its own.
			cancel()
			bctx, cancel = context.WithTimeout(ctx, budget)
			defer cancel()
		}
	case out.Fetch.Refused:
		b.Log.Warn("not fetching: " + out.Fetch.Why)
		b.staging = &checkin.Staging{Digest: a.Digest, Image: a.Label(), State: "refused", Error: out.Fetch.Why}
	case out.AssignedErr == nil:
		b.Log.Info("not fetching: " + out.Fetch.Why)
	}

	ok, why := CheckinDecision(nil, out.AssignedErr)
	if !ok {
		b.Log.Warn("check-in skipped: " + why)
		return
	}
	rep := b.checkinReport(bctx)
	if err := b.postCheckin(bctx, server, mac, rep); err != nil {
		out.CheckinErr = err
		b.Log.Warn("check-in failed (boot continues)", "server", server, "err", err, "took", b.since(start))
		return
	}
	out.Checkin = true
	b.Log.Info("checked in", "server", server, "mac", mac, "interface", ifname,
		"booted", rep.Booted, "digest_source", rep.BootedImage.Source, "took", b.since(start))
}

// bootNIC finds the boot NIC, once its drivers are loaded (loadNICDrivers)
// waiting up to 2 s for them to probe.
func (b *Boot) bootNIC() (ifname, mac string, err error) {
	b.loadNICDrivers()
	for i := 0; ; i++ {
		ifname, mac, err = b.Sys.BootNIC(b.cfg.BootIF)
		if err == nil && (b.cfg.BootIF == "" || mac == b.cfg.BootIF) {
			return ifname, mac, nil
		}
		if i >= 20 {
			if err == nil {
				b.Log.Warn("no interface has the MAC of BOOTIF=; using the first Ethernet one", "bootif", b.cfg.BootIF, "interface", ifname, "mac", mac)
			}
			return ifname, mac, err
		}
		b.Sys.Sleep(100 * time.Millisecond)
	}
}

// fetchAndPromote downloads the assigned image as hn-root-new.img and
// runs the rotation again, which promotes it on trial (verifying it as
// any staged image). A corrupt download is discarded and remembered as
// failed; a cut one stays as hn-root-new.img.part for the next boot.
func (b *Boot) fetchAndPromote(ctx context.Context, server string, as Assigned, failed stage.Failed) error {
	a := as.Image
	b.staging = &checkin.Staging{Digest: a.Digest, Image: a.Label(), State: "downloading", Total: a.Size}
	res, err := b.FetchAssigned(ctx, server, as, b.Paths.Hostpart, layout.New)
	res.Report(b.staging)
	b.staging.Done = res.Reused + res.Downloaded
	if res.Delta != nil {
		b.staging.Done = res.Reused + res.Delta.LocalBytes + res.Delta.FetchedBytes
	}
	if err != nil {
		b.staging.State, b.staging.Error = "failed", err.Error()
		var de *stage.DigestError
		if errors.As(err, &de) {
			reason := fmt.Sprintf("download from %s did not match its digest (got %s)", de.Source, de.Got)
			if _, ferr := failed.Add(b.Paths.Hostpart, stage.Failure{Digest: a.Digest, Time: b.Sys.Now(), Reason: reason}); ferr != nil {
				b.Log.Warn("cannot remember the failed image", "err", ferr)
			}
			b.Log.Error("the assigned image is corrupt: discarded and remembered as failed; booting the current image", "digest", a.Digest, "err", err)
			return err
		}
		b.Log.Error("fetching the assigned image failed; booting the current image", "err", err, "resumes_next_boot", !stage.Permanent(err))
		return err
	}
	b.staging.State, b.staging.Done, b.staging.Total = "staged", res.Size, res.Size
	if res.Already != "" {
		b.Log.Info("the assigned image already is " + res.Already)
		return nil
	}
	res2, err := b.rotate()
	if err != nil {
		b.Log.Error("rotation of the downloaded image failed; booting what is there", "err", err)
		return err
	}
	b.res = res2
	return nil
}

// FetchAssigned downloads the image a into dir/file through the shared
// staging (internal/stage): resumed from a .part an earlier boot left,
// the manifest first (required and signature-checked with a trusted key),
// free space checked, sha256 while writing, fsynced, renamed. Progress
// goes to the console every 5 s. The target is what makes it reusable:
// hn-root-new.img on hostpart for an update, a RAM directory for a
// diskless host, hn-root.img for a recovery.
func (b *Boot) FetchAssigned(ctx context.Context, server string, as Assigned, dir, file string) (stage.Result, error) {
	a := as.Image
	keys, err := b.stageKeys()
	if err != nil {
		return stage.Result{}, err
	}
	var last time.Time
	start := b.Sys.Now()
	var startDone int64 = -1
	req := stage.Request{
		Source: stage.HTTPSource{URL: BlobURL(server, a.Digest), Client: b.Sys.HTTP()},
		Digest: a.Digest, Size: a.Size, Name: a.Name, Version: a.Version, Force: as.Force,
		Keys: keys, File: file, Log: b.Log.With(slog.String("image", a.Label())), Hash: b.Sys.SHA256(),
		Progress: func(done, total int64) {
			now := b.Sys.Now()
			if startDone < 0 {
				startDone = done
			}
			if now.Sub(last) < progressEvery && done != total {
				return
			}
			last = now
			pct := ""
			if total > 0 {
				pct = fmt.Sprintf(" (%d%%)", done*100/total)
			}
			b.Log.Info(fmt.Sprintf("downloading %s: %s of %s%s", a.Label(), stage.SizeString(done), stage.SizeString(total), pct),
				"MB/s", mbps(done-startDone, now.Sub(start)))
		},
	}
	res, err := stage.Stage(ctx, dir, req)
	if err == nil && dir == b.Paths.Hostpart {
		b.reloadDigests() // staging recorded the digest: the checks that follow need not hash the image again
	}
	if err == nil && res.Already == "" {
		b.Log.Info("image downloaded", "file", file, "digest", res.Digest, "bytes", res.Downloaded, "reused", res.Reused,
			"took", res.Took.Round(time.Millisecond), "MB/s", mbps(res.Downloaded, res.Took), "manifest", res.Manifest)
		if d := res.Delta; d != nil {
			b.Log.Info("image built by delta: "+d.String(), "indexed", d.Indexed, "scanned", d.Scanned, "scan", d.Scan.Round(time.Millisecond))
		} else if res.Fallback != "" {
			b.Log.Info("image downloaded whole, not by delta", "why", res.Fallback)
		}
	}
	return res, err
}

func mbps(n int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(n)/1e6/d.Seconds())
}

func (b *Boot) since(t time.Time) time.Duration {
	return b.Sys.Now().Sub(t).Round(time.Millisecond)
}
