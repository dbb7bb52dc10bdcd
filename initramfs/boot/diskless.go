package boot

// Diskless hosts (DESIGN.md §4): a host without hostpart, or with
// hn.diskless, downloads its assigned image into RAM and boots it
// read-only under the same tmpfs overlay and identity flow. The RAM
// directory plays hostpart's part for the boot (the download, the
// identity, the boot log), and is gone at the next one: the host's
// secrets are generated anew at every boot, and nothing it writes
// survives a reboot.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/procfs"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/initramfs/identity"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/stage"
)

// DisklessMargin is the memory a diskless host needs beyond its image:
// the overlay's writes, the image's own services, and staging's reserve.
const DisklessMargin = 256 << 20

// DiskMode is where a boot takes its image from.
type DiskMode int

const (
	// OnDisk: hostpart, as DESIGN.md §3.
	OnDisk DiskMode = iota
	// FromRAM: the assigned image, downloaded into RAM (diskless).
	FromRAM
	// NoBoot: neither; the rescue shell.
	NoBoot
)

func (m DiskMode) String() string {
	switch m {
	case OnDisk:
		return "disk"
	case FromRAM:
		return "diskless"
	}
	return "rescue"
}

// DiskInput is what the disk decision looks at.
type DiskInput struct {
	Cfg cmdline.Config
	// FindErr: no hostpart within the wait; MountErr: found, but it does
	// not mount. Both nil: hostpart is mounted (or, with hn.diskless,
	// not looked for).
	FindErr, MountErr error
}

// DiskDecision says whether this boot uses hostpart, runs from RAM or
// can do neither, and why. Only a server named on the command line can
// serve a host without hostpart: the remembered one lives on hostpart.
func DiskDecision(in DiskInput) (DiskMode, string) {
	c := in.Cfg
	var problem string
	switch {
	case c.Diskless:
		problem = "hn.diskless is set"
	case in.FindErr != nil:
		problem = "no hostpart: " + in.FindErr.Error()
	case in.MountErr != nil:
		problem = "hostpart does not mount: " + in.MountErr.Error()
	default:
		return OnDisk, "hostpart is mounted"
	}
	switch {
	case c.Server == "":
		return NoBoot, problem + "; booting from RAM needs hn.server= (the imaged to fetch the assigned image from)"
	case c.NoCheckin:
		return NoBoot, problem + "; booting from RAM needs the network, and hn.checkin=off forbids it"
	case c.NoFetch:
		return NoBoot, problem + "; booting from RAM needs a download, and hn.fetch=off forbids it"
	case c.Kexeced != "":
		// The image in RAM did not survive the kexec: never reached, since
		// a diskless boot does not kexec.
		return NoBoot, problem + "; a kexec'd boot has no image in RAM (hn.kexeced=" + c.Kexeced + ")"
	}
	return FromRAM, problem + "; booting the assigned image from RAM"
}

// HostpartWait is how long the init waits for hostpart, and why: a short
// wait when a server could serve the host from RAM, the full one when a
// missing disk means the rescue shell anyway.
func HostpartWait(cfg cmdline.Config) (time.Duration, string) {
	switch {
	case cfg.DiskWait > 0:
		return cfg.DiskWait, "hn.diskwait="
	case cfg.Server != "" && !cfg.NoCheckin && !cfg.NoFetch:
		return cmdline.DefaultDisklessWait, "hn.server= is set: without hostpart the host boots from RAM"
	}
	return cmdline.DefaultDiskWait, "the default"
}

// MemoryDecision says whether an image of size bytes fits in RAM with
// DisklessMargin to spare, given MemAvailable (avail, or availErr), and
// says both numbers and what to do when not.
func MemoryDecision(size, avail int64, availErr error) (bool, string) {
	need := size + DisklessMargin
	switch {
	case availErr != nil:
		return false, fmt.Sprintf("cannot read MemAvailable (%v): not downloading a %s image into RAM blind", availErr, stage.SizeString(size))
	case size <= 0:
		return false, "imaged did not say the image's size: cannot check it fits in RAM"
	case need > avail:
		return false, fmt.Sprintf("not enough memory to run from RAM: the image needs %s (%s image + %s margin), MemAvailable is %s; give the host more memory, assign a smaller image, or give it a disk with a hostpart partition",
			stage.SizeString(need), stage.SizeString(size), stage.SizeString(DisklessMargin), stage.SizeString(avail))
	}
	return true, fmt.Sprintf("the image needs %s in RAM (%s + %s margin), MemAvailable is %s", stage.SizeString(need), stage.SizeString(size), stage.SizeString(DisklessMargin), stage.SizeString(avail))
}

// InstallInput is what the decision to install the assigned image (into
// RAM for a diskless host, over broken local images for a recovery)
// looks at.
type InstallInput struct {
	Assigned    Assigned
	AssignedErr error
	// Current is hn-root.img's digest when known ("" unknown or none).
	Current string
	// Failed is why a digest is in the failure memory, "" if it is not;
	// may be nil.
	Failed func(digest string) string
}

// InstallDecision decides whether to download the assigned image to boot
// it now (Fetch.Get), and why.
func InstallDecision(in InstallInput) Fetch {
	a := in.Assigned.Image
	switch {
	case in.AssignedErr != nil:
		return Fetch{Why: "imaged did not say what to run: " + in.AssignedErr.Error()}
	case a.Digest == "":
		return Fetch{Why: "imaged assigns no image to this host"}
	case !digest.Valid(a.Digest):
		return Fetch{Why: fmt.Sprintf("imaged's digest %q is not sha256:<64 hex>", a.Digest)}
	case in.Current == a.Digest:
		return Fetch{Why: fmt.Sprintf("%s already is the assigned image %s, and it does not boot", layout.Current, a.Label())}
	}
	if in.Failed != nil {
		if r := in.Failed(a.Digest); r != "" && !in.Assigned.Force {
			return Fetch{Refused: true, Why: fmt.Sprintf("the assigned image %s is remembered as failed on this host (%s, in %s); imaged stage --force overrides", a.Label(), r, layout.FailedDigests)}
		}
	}
	return Fetch{Get: true, Why: "imaged assigns " + a.Label()}
}

// withoutHostpart is the boot when hostpart is not to be used (in says
// why): from RAM, or the rescue shell.
func (b *Boot) withoutHostpart(ctx context.Context, in DiskInput) Outcome {
	mode, why := DiskDecision(in)
	if mode != FromRAM {
		return b.rescue(errors.New(why))
	}
	return b.bootDiskless(ctx, why)
}

// bootDiskless downloads the assigned image into a tmpfs sized for it
// and boots it from there.
func (b *Boot) bootDiskless(ctx context.Context, why string) Outcome {
	b.diskless = true
	// Said once: the running system has no /hostpart and no /data0.
	b.Log.Warn("diskless: "+why+"; /hostpart and /data0 are absent in the running system, and nothing it writes survives a reboot", "ram", b.Paths.RAM)
	server := b.cfg.Server
	as, mac, err := b.askServer(ctx, server, "hn.server=")
	f := InstallDecision(InstallInput{Assigned: as, AssignedErr: err})
	b.network.Fetch = f
	if !f.Get {
		return b.rescue(fmt.Errorf("diskless: nothing to boot from RAM: %s", f.Why))
	}
	a := as.Image
	avail, aerr := memAvailable(b.Paths.Proc)
	ok, mwhy := MemoryDecision(a.Size, avail, aerr)
	if !ok {
		return b.rescue(fmt.Errorf("diskless: %s", mwhy))
	}
	b.Log.Info("diskless: " + mwhy)

	ram := b.Paths.RAM
	os.MkdirAll(ram, 0o700)
	// Sized for the image and staging's reserve: a bigger download than
	// announced stops at the tmpfs's end, not at the machine's.
	opts := fmt.Sprintf("mode=0700,size=%d", a.Size+stage.DefaultReserve+1<<20)
	if err := b.Sys.Mount("tmpfs", ram, "tmpfs", opts, 0); err != nil {
		return b.rescue(fmt.Errorf("diskless: mount tmpfs on %s (%s): %w", ram, opts, err))
	}
	os.MkdirAll(filepath.Join(ram, layout.StateDir), 0o755)
	// RAM is this boot's hostpart: the image, the identity, the log.
	b.Paths.Hostpart = ram
	b.digests = digestcache.Load(ram)
	b.Log.Info("fetching the assigned image into RAM: "+f.Why, "url", BlobURL(server, a.Digest))
	res, err := b.FetchAssigned(ctx, server, as, ram, layout.Current)
	if err != nil {
		b.network.FetchErr = err
		return b.rescue(fmt.Errorf("diskless: downloading the assigned image %s into RAM: %w", a.Label(), err))
	}
	b.Log.Info("diskless: the assigned image is in RAM", "image", a.Label(), "bytes", res.Size)
	// Generated anew at every boot: there is nowhere to keep them.
	b.id = startIdentity(ram, b.Sys.Now)
	b.checkinDiskless(ctx, server, mac)
	out, err := b.bootImage(layout.Current)
	if err != nil {
		b.teardownImage()
		return b.rescue(fmt.Errorf("diskless: the assigned image %s does not boot: %w", a.Label(), err))
	}
	return out
}

// askServer brings up the boot NIC and asks server what this MAC should
// run, within the network budget (hn.checkin=), and keeps the outcome as
// the boot's network phase's (the identity step applies imaged's answer;
// the lease is handed over before switch_root). A recovery reuses what
// this boot's network phase already learnt from the same server.
func (b *Boot) askServer(ctx context.Context, server, why string) (Assigned, string, error) {
	if n := b.network; n != nil && n.Server == server && n.NetErr == nil && n.AssignedErr == nil {
		_, mac, err := b.Sys.BootNIC(b.cfg.BootIF)
		return n.Assigned, mac, err
	}
	out := &networkOutcome{Server: server, ServerWhy: why}
	if old := b.network; old != nil && old.Lease.Ours() {
		out.Lease = old.Lease // configured by the network phase; NetUp keeps an address it finds
	}
	b.network = out
	start := b.Sys.Now()
	bctx, cancel := context.WithTimeout(ctx, b.cfg.Network)
	defer cancel()
	ifname, mac, err := b.bootNIC()
	if err != nil {
		out.NetErr = fmt.Errorf("no network interface: %w", err)
		return Assigned{}, mac, out.NetErr
	}
	lease, err := b.Sys.NetUp(bctx, ifname)
	if lease.Ours() || !out.Lease.Ours() {
		out.Lease = lease
	}
	if err != nil {
		out.NetErr = fmt.Errorf("network not configured: %w", err)
		return Assigned{}, mac, out.NetErr
	}
	b.Log.Info("network up", "lease", lease.String(), "mac", mac, "took", b.since(start))
	out.Assigned, out.AssignedErr = AskAssigned(bctx, b.Sys.HTTP(), server, mac)
	if out.AssignedErr == nil {
		a := out.Assigned.Image
		b.Log.Info("imaged assigns", "image", a.Label(), "digest", a.Digest, "size", a.Size, "source", out.Assigned.Source, "took", b.since(start))
	}
	return out.Assigned, mac, out.AssignedErr
}

// checkinDiskless tells imaged the host runs from RAM (best effort,
// within the network budget).
func (b *Boot) checkinDiskless(ctx context.Context, server, mac string) {
	bctx, cancel := context.WithTimeout(ctx, b.cfg.Network)
	defer cancel()
	rep := b.checkinReport(bctx)
	rep.Action = FromRAM.String()
	rep.Notes = append(rep.Notes, "diskless: running from RAM, no hostpart")
	if err := b.postCheckin(bctx, server, mac, rep); err != nil {
		b.network.CheckinErr = err
		b.Log.Warn("check-in failed (boot continues)", "server", server, "err", err)
		return
	}
	b.network.Checkin = true
	b.Log.Info("checked in", "server", server, "mac", mac, "booted", rep.Booted, "action", rep.Action)
}

// disklessRoot removes /hostpart and /data0 from a diskless host's root.
func (b *Boot) disklessRoot() {
	if !b.diskless {
		return
	}
	if err := identity.Diskless(b.Paths.NewRoot); err != nil {
		b.Log.Warn("diskless: the root keeps some of hostpart's setup", "err", err)
	}
}

// memAvailable is MemAvailable from proc's meminfo, in bytes.
func memAvailable(proc string) (int64, error) {
	if proc == "" {
		proc = "/proc"
	}
	fs, err := procfs.NewFS(proc)
	if err != nil {
		return 0, err
	}
	m, err := fs.Meminfo()
	if err != nil {
		return 0, err
	}
	if m.MemAvailableBytes == nil {
		return 0, fmt.Errorf("%s/meminfo has no MemAvailable", proc)
	}
	return int64(*m.MemAvailableBytes), nil
}
