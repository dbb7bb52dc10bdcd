// Package boot is the hnboot init as a library: DESIGN.md §3 from the
// kernel command line to switch_root, over a System (mounts, loop
// devices, modules, the network, kexec, switch_root, the clock) and the
// files under Paths. The decisions are pure functions (decide.go) that
// return what to do and why; Boot gathers their inputs and carries them
// out, logging every step as a `hninit:` line. The init's main package
// gives it the real system; the tests a fake one and a temporary
// directory, so a whole boot runs in milliseconds.
//
// FetchAssigned downloads the assigned image into any directory and file
// name: hn-root-new.img on hostpart for an update (network.go), a
// diskless host's RAM (diskless.go), a recovery's hn-root-recover.img
// (recover.go), where the boot goes when no local image boots.
package boot

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/initramfs/identity"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/randseed"
	"github.com/hnboot/hnboot/internal/stage"
)

// Boot is one boot of a host.
type Boot struct {
	Sys   System
	Paths Paths
	Log   *slog.Logger
	// Lines returns the log so far, kept on hostpart (.hnboot/boots);
	// may be nil.
	Lines func() []string
	// SetDebug turns the debug records on (hn.debug); may be nil.
	SetDebug func(bool)

	cfg           cmdline.Config
	rawCmdline    string
	dev           string
	info          blkid.Info
	detach        func() error // the loop device of the image being booted
	digests       *digestcache.Cache
	id            *idFuture
	res           rotate.Result    // this boot's rotation (the last one, when a download was promoted)
	staging       *checkin.Staging // this boot's download, for the check-in
	mounted       bool             // hostpart is mounted
	network       *networkOutcome  // what the talk with imaged gave
	diskless      bool             // the image runs from RAM (Paths.Hostpart is Paths.RAM)
	recovering    bool             // a recovery over the network was tried
	nicDrivers    chan struct{}    // closed when the NIC drivers are loaded; nil when this boot does not load them
	rememberedMAC string           // layout.DefaultMAC
}

// Outcome is how a boot ended. With the real System only a rescue
// returns (and only to the caller that loops on it); the fake returns
// from SwitchRoot and KexecReboot too.
type Outcome struct {
	Image  string // the image switched to, or kexec'd into
	Kexec  bool
	Rescue error // the boot ended in the rescue shell, with this reason
}

// Config is the command line as parsed by Run.
func (b *Boot) Config() cmdline.Config { return b.cfg }

// Run boots: DESIGN.md §3 steps 1 to 8.
func (b *Boot) Run(ctx context.Context) Outcome {
	b.Log.Info("hnboot init starting", "kernel", b.Sys.Release())
	b.readCmdline()
	b.Sys.LoadHardware(func() bool {
		// Kept for findHostpart, which then need not scan again.
		dev, info, err := b.Sys.FindPartition(b.cfg.Hostpart)
		if err == nil {
			b.dev, b.info = dev, info
		}
		return err == nil
	})
	b.Sys.LoadModules("hn.modules", b.cfg.Modules...)
	if b.cfg.Diskless {
		return b.withoutHostpart(ctx, DiskInput{Cfg: b.cfg})
	}
	if err := b.findHostpart(); err != nil {
		return b.withoutHostpart(ctx, DiskInput{Cfg: b.cfg, FindErr: err})
	}
	// The disk check reads the GPT and EFI-BOOT while the kernel loads
	// the filesystem's module: its reads wait on the disk, the module's
	// relocations on the CPU.
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		b.checkDisk()
	}()
	b.Sys.LoadModules("hostpart's filesystem", fsModule(b.info.Type))
	<-checked
	if err := b.mountHostpart(); err != nil {
		return b.withoutHostpart(ctx, DiskInput{Cfg: b.cfg, MountErr: err})
	}
	b.seedRandom()
	b.startNICDrivers()
	// SSH host keys and machine-id: generated once; on a first boot
	// without entropy this waits for the pool, beside everything else.
	b.id = startIdentity(b.Paths.Hostpart, b.Sys.Now)
	b.digests = digestcache.Load(b.Paths.Hostpart)

	var rotErr error
	rotated, why := RotateDecision(b.cfg)
	if rotated {
		b.res, rotErr = b.rotate()
		if rotErr != nil {
			// The journal makes a failed rotation resumable; boot what is there.
			b.Log.Error("rotation failed; booting the current image as it is", "err", rotErr)
		}
		b.rememberFailure(b.res.Action)
	} else {
		b.Log.Info(why)
	}
	b.talkToImaged(ctx, rotated, rotErr)

	var lastErr error
	for i, img := range Candidates(b.cfg) {
		if i > 0 {
			b.Log.Warn("falling back to the previous image", "image", img, "reason", lastErr)
		}
		out, err := b.bootImage(img)
		if err == nil {
			return out
		}
		lastErr = err
		b.Log.Error("cannot boot image", "image", img, "err", err)
		b.teardownImage()
	}
	return b.lastResort(ctx, fmt.Errorf("no image could be booted; last error: %w", lastErr))
}

// rescue is the end of a boot that found nothing to boot (recover.go's
// lastResort tries the network first): the rescue shell with the reason.
func (b *Boot) rescue(reason error) Outcome {
	b.Log.Error("cannot boot: " + reason.Error())
	b.loadNICDrivers() // the rescue shell has the network cards
	if b.mounted {
		b.saveLog("rescue")
	}
	b.Sys.Rescue(reason)
	return Outcome{Rescue: reason}
}

func (b *Boot) readCmdline() {
	raw, err := b.Sys.Cmdline()
	if err != nil {
		b.Log.Warn("cannot read /proc/cmdline; using defaults", "err", err)
	}
	b.rawCmdline = raw
	cfg, warnings := cmdline.Parse(raw)
	b.cfg = cfg
	if b.SetDebug != nil {
		b.SetDebug(cfg.Debug)
	}
	for _, w := range warnings {
		b.Log.Warn("kernel command line: " + w)
	}
	if cfg.Alias {
		b.Log.Info("genkernel command line (real_root=, raw_loop_root_host_partition=) accepted as alias")
	}
	b.Log.Info("configuration", "hostpart", cfg.Hostpart, "image", cfg.Image, "tries", cfg.Tries)
}

// findHostpart waits for the hostpart device: disk drivers probe
// asynchronously after their modules load.
func (b *Boot) findHostpart() error {
	start := b.Sys.Now()
	wait, why := HostpartWait(b.cfg)
	all := false
	var allDone time.Time
	for {
		dev, info, err := b.dev, b.info, error(nil)
		if dev == "" {
			dev, info, err = b.Sys.FindPartition(b.cfg.Hostpart)
		}
		if err == nil {
			b.dev, b.info = dev, info
			b.Log.Info("found hostpart", "spec", b.cfg.Hostpart, "device", dev, "fs", info.Type)
			return nil
		}
		waited := b.Sys.Now().Sub(start)
		if waited > 3*time.Second && !all {
			// A disk whose driver has no alias we know: load everything.
			b.Log.Info("hostpart not found yet; loading every driver in the initramfs")
			b.Sys.LoadAll()
			all, allDone = true, b.Sys.Now()
		}
		// Drivers loaded late get time to probe, however long loading took.
		if waited > wait && (!all || b.Sys.Now().Sub(allDone) > time.Second) {
			return fmt.Errorf("no partition matches %s after %v (%s): %w. Label the host partition: e2label DEV hostpart, or set hn.hostpart= on the kernel command line", b.cfg.Hostpart, wait, why, err)
		}
		b.Sys.Sleep(20 * time.Millisecond)
	}
}

// startNICDrivers loads the NIC drivers in the background when this boot
// needs the network (NetworkDecision): the rotation, the disk checks and
// the image's mount go on meanwhile, and whoever needs a NIC waits for
// them (waitNICDrivers).
func (b *Boot) startNICDrivers() {
	remembered, _ := os.ReadFile(filepath.Join(b.Paths.Hostpart, layout.Server))
	server, _ := ServerDecision(b.cfg, string(remembered))
	if mac, err := os.ReadFile(filepath.Join(b.Paths.Hostpart, layout.DefaultMAC)); err == nil {
		b.rememberedMAC = strings.TrimSpace(string(mac))
	}
	load, why := NetworkDecision(server, b.cfg.BootIF, b.rememberedMAC)
	b.Log.Info(why)
	if load {
		b.beginNICDrivers()
	}
}

func (b *Boot) beginNICDrivers() {
	done := make(chan struct{})
	b.nicDrivers = done
	go func() {
		defer close(done)
		b.Sys.LoadNetworkDrivers()
	}()
}

// loadNICDrivers loads the NIC drivers (unless a goroutine does already)
// and waits for them: whatever needs a NIC calls it, also where
// NetworkDecision was not asked (no hostpart, the rescue shell).
func (b *Boot) loadNICDrivers() {
	if b.nicDrivers == nil {
		b.beginNICDrivers()
	}
	<-b.nicDrivers
}

// waitNICDrivers waits for the NIC drivers startNICDrivers loads; it
// reports whether they were loaded at all.
func (b *Boot) waitNICDrivers() bool {
	if b.nicDrivers == nil {
		return false
	}
	<-b.nicDrivers
	return true
}

// bootMAC is the boot NIC's MAC for the default hostname: BOOTIF=, else
// the NIC's (remembered on hostpart for the next boot, which then loads
// no NIC driver for it), else the one remembered.
func (b *Boot) bootMAC() string {
	if b.cfg.BootIF != "" {
		return b.cfg.BootIF
	}
	if !b.waitNICDrivers() {
		return b.rememberedMAC
	}
	_, mac, err := b.Sys.BootNIC("")
	if err != nil || mac == "" {
		return b.rememberedMAC
	}
	if mac != b.rememberedMAC && b.mounted && !b.diskless {
		if err := os.WriteFile(filepath.Join(b.Paths.Hostpart, layout.DefaultMAC), []byte(mac+"\n"), 0o644); err != nil {
			b.Log.Warn("cannot remember the boot NIC's MAC", "err", err)
		}
	}
	return mac
}

func (b *Boot) checkDisk() {
	rep, disk, ok := b.Sys.CheckDisk(b.dev, b.cfg.Image)
	if !ok {
		b.Log.Warn("hostpart is not a partition of a disk; skipping the GPT and EFI-BOOT checks", "device", b.dev)
		return
	}
	if len(rep.Problems) == 0 {
		b.Log.Info("disk layout ok: GPT, EFI-BOOT with a GRUB config for "+b.cfg.Image, "disk", disk)
		return
	}
	for _, p := range rep.Problems {
		if p.Fatal {
			b.Log.Error("disk check: "+p.Msg, "disk", disk)
		} else {
			b.Log.Warn("disk check: "+p.Msg, "disk", disk)
		}
	}
}

func (b *Boot) mountHostpart() error {
	dir := b.Paths.Hostpart
	os.MkdirAll(dir, 0o755)
	if err := b.Sys.Mount(b.dev, dir, b.info.Type, "", unix.MS_NOATIME); err != nil {
		return fmt.Errorf("mount hostpart %s (%s) on %s: %w; run fsck on it from the rescue shell", b.dev, b.info.Type, dir, err)
	}
	b.mounted = true
	os.MkdirAll(filepath.Join(dir, layout.StateDir), 0o755)
	os.MkdirAll(filepath.Join(dir, layout.DataDir), 0o755)
	b.Log.Info("mounted hostpart", "device", b.dev, "dir", dir)
	return nil
}

// seedRandom feeds the seed on hostpart to the kernel's pool (and leaves
// a new one), so that on every boot but the first nothing waits for
// entropy, with or without RDRAND or virtio-rng.
func (b *Boot) seedRandom() {
	r, err := randseed.Load(b.Paths.Hostpart, b.Sys.Random())
	if err != nil {
		b.Log.Warn("random seed", "err", err)
		return
	}
	b.Log.Info("random seed", "credited", r.Credited, "why", r.Why, "pool_ready", r.Ready, "next_creditable", r.Next)
}

// rotateFS is hostpart for the rotation.
func (b *Boot) rotateFS() rotate.FS {
	fsys := rotate.OSFS(b.Paths.Hostpart)
	if n := b.cfg.CrashTest; n > 0 {
		// hn.crashtest=N simulates a power cut after N rotation steps: the
		// end-to-end test kills QEMU while the init hangs here.
		fsys = rotate.CrashAfter(fsys, n, func() {
			b.Log.Warn("crashtest: power cut simulated, halting", "after_ops", n)
			for {
				b.Sys.Sleep(time.Hour)
			}
		})
	}
	return fsys
}

func (b *Boot) rotate() (rotate.Result, error) {
	fsys := b.rotateFS()
	tr := loadTrust(filepath.Join(b.Paths.Initramfs, layout.TrustedKeyInitramfs), filepath.Join(b.Paths.Hostpart, layout.TrustedKey))
	if tr.required() {
		b.Log.Info("staged images must be signed", "trusted", tr.describe())
	}
	opt := rotate.Options{
		Tries:    b.cfg.Tries,
		RevertID: b.cfg.RevertID,
		Verify: func(name string) error { // filesystem, manifest, signature
			return verifyStaged(b.Paths.Hostpart, name, tr, b.digests, b.Log)
		},
		Complete: completeImage(b.Paths.Hostpart, b.digests), // filesystem; manifest size and digest
		Log:      func(msg string) { b.Log.Info("rotate: " + msg) },
	}
	start := b.Sys.Now()
	res, err := rotate.Run(fsys, opt)
	b.saveDigests() // verification may have hashed the staged image
	if err != nil {
		return res, err
	}
	args := []any{"action", res.Action.String(), "trial", res.Trial, "tries_left", res.TriesLeft, "took", b.Sys.Now().Sub(start).Round(time.Microsecond)}
	if res.Repaired != "" {
		args = append(args, "repaired_from", res.Repaired)
	}
	b.Log.Info("rotation done", args...)
	return res, nil
}

// rememberFailure adds the image a revert or a rejection set aside to the
// failure memory, so that neither this init's next boot nor the agent
// stages it again (unless forced): otherwise a fleet that still assigns
// it would get it downloaded, promoted and reverted forever.
func (b *Boot) rememberFailure(a rotate.Action) {
	var file, reason string
	switch a {
	case rotate.Revert:
		file, reason = layout.Broken, "reverted (found as "+layout.Broken+")"
	case rotate.Reject:
		file, reason = layout.Rejected, "rejected by the init at boot (found as "+layout.Rejected+")"
	default:
		return
	}
	d := knownDigest(b.Paths.Hostpart, file, b.digests)
	if d == "" {
		return // the agent hashes it later
	}
	f, err := stage.LoadFailed(b.Paths.Hostpart)
	if err == nil {
		_, err = f.Add(b.Paths.Hostpart, stage.Failure{Digest: d, Time: b.Sys.Now(), Reason: reason})
	}
	if err != nil {
		b.Log.Warn("cannot remember the failed image", "digest", d, "err", err)
		return
	}
	b.Log.Info("remembering the image as failed: it is not staged again unless forced", "digest", d, "reason", reason)
}

// bootImage mounts image read-only, kexecs into its kernel when that
// differs from the running one, instantiates the host on an overlay and
// switches root. It returns an error only when the image cannot boot
// (the next candidate is tried).
func (b *Boot) bootImage(name string) (Outcome, error) {
	path := filepath.Join(b.Paths.Hostpart, name)
	f, err := os.Open(path)
	if err != nil {
		return Outcome{}, fmt.Errorf("open image: %w", err)
	}
	info, err := blkid.Probe(f)
	f.Close()
	if err != nil {
		return Outcome{}, fmt.Errorf("%s: unknown filesystem: %w", path, err)
	}
	b.Sys.LoadModules("the image", "loop", fsModule(info.Type), "overlay")
	dev, detach, err := b.Sys.AttachLoop(path)
	if err != nil {
		return Outcome{}, fmt.Errorf("attach %s read-only to a loop device: %w", path, err)
	}
	b.detach = detach
	os.MkdirAll(b.Paths.Image, 0o755)
	if err := b.Sys.Mount(dev, b.Paths.Image, info.Type, "", unix.MS_RDONLY); err != nil {
		return Outcome{}, fmt.Errorf("mount %s (%s, from %s) read-only: %w", dev, info.Type, path, err)
	}
	b.Log.Info("mounted image read-only", "image", path, "loop", dev, "fs", info.Type)
	if !b.diskless && b.maybeKexec(name) { // DESIGN.md §3 step 5; the image in RAM would not survive a kexec
		return Outcome{Image: name, Kexec: true}, nil
	}

	rw := b.Paths.RW
	os.MkdirAll(rw, 0o755)
	if err := b.Sys.Mount("tmpfs", rw, "tmpfs", "mode=0755", 0); err != nil {
		return Outcome{}, fmt.Errorf("mount tmpfs for the overlay: %w", err)
	}
	for _, d := range []string{"upper", "work"} {
		os.MkdirAll(filepath.Join(rw, d), 0o755)
	}
	root := b.Paths.NewRoot
	os.MkdirAll(root, 0o755)
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", b.Paths.Image, rw, rw)
	if err := b.Sys.Mount("overlay", root, "overlay", opts, 0); err != nil {
		return Outcome{}, fmt.Errorf("mount overlay root (%s): %w", opts, err)
	}
	b.Log.Info("overlay root ready", "lower", b.Paths.Image, "upper", "tmpfs")

	if err := b.instantiate(); err != nil {
		return Outcome{}, fmt.Errorf("instantiate host: %w", err)
	}
	b.disklessRoot()
	init := b.cfg.Init
	if _, err := os.Lstat(filepath.Join(root, init)); err != nil { // Lstat: Debian's /sbin/init is an absolute symlink, valid only inside the new root
		return Outcome{}, fmt.Errorf("image %s has no %s: %w", name, init, err)
	}
	if ok, err := randseed.Refresh(b.Paths.Hostpart, b.Sys.Random()); err != nil {
		b.Log.Warn("random seed", "err", err)
	} else if ok {
		b.Log.Info("random seed: the pool is ready now; the next boot credits the seed left for it")
	}
	b.saveLog(name)
	// Move hostpart under the new root rather than mounting it twice.
	if hp := filepath.Join(root, b.Paths.Hostpart); !b.diskless {
		os.MkdirAll(hp, 0o755)
		if err := b.Sys.MoveMount(b.Paths.Hostpart, hp); err != nil {
			return Outcome{}, fmt.Errorf("move %s into the new root: %w", b.Paths.Hostpart, err)
		}
	}
	b.handOverNIC()
	b.Log.Info("switching root", "image", name, "init", init)
	if err := b.Sys.SwitchRoot(root, init); err != nil {
		// The old root is gone at this point; nothing left but rescue.
		return b.rescue(fmt.Errorf("switch_root to %s: %w", init, err)), nil
	}
	return Outcome{Image: name}, nil
}

// teardownImage undoes a failed bootImage so the next candidate starts clean.
func (b *Boot) teardownImage() {
	for _, d := range []string{filepath.Join(b.Paths.NewRoot, b.Paths.Hostpart), b.Paths.NewRoot, b.Paths.RW, b.Paths.Image} {
		b.Sys.Unmount(d)
	}
	if b.detach != nil {
		b.detach()
		b.detach = nil
	}
}

func (b *Boot) instantiate() error {
	waitStart := b.Sys.Now()
	id, err := b.id.wait(context.Background())
	if err != nil {
		return err
	}
	if w := b.Sys.Now().Sub(waitStart); w > 100*time.Millisecond {
		b.Log.Info("waited for the host keys (the kernel's random pool was not ready)", "waited", w.Round(time.Millisecond), "generation_took", b.id.took.Round(time.Millisecond))
	}
	for _, n := range id.Notes {
		b.Log.Warn("identity: " + n)
	}
	hc, err := b.applyIdentity(id)
	if err != nil {
		return err
	}
	root := b.Paths.NewRoot
	binds, err := identity.StateBinds(root, filepath.Join(b.Paths.Hostpart, layout.DataDir), hc.StateDirs)
	if err != nil {
		b.Log.Error("state directories", "err", err)
	}
	for _, bd := range binds {
		if err := b.Sys.Mount(bd.Source, bd.Target, "", "", unix.MS_BIND); err != nil {
			b.Log.Error("bind state directory", "source", bd.Source, "target", bd.Target, "err", err)
		}
	}
	if err := b.Sys.Sethostname(hc.Hostname); err != nil {
		b.Log.Warn("sethostname", "err", err)
	}
	b.Log.Info("host instantiated", "hostname", hc.Hostname, "machine_id", id.MachineID, "ssh_ed25519", id.Fingerprints["ed25519"], "state_dirs", len(binds))
	return nil
}

// saveLog keeps this boot's init log on hostpart (the last 10 boots), for
// operators and for the agent's report.
func (b *Boot) saveLog(image string) {
	dir := filepath.Join(b.Paths.Hostpart, layout.BootsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil || b.Lines == nil {
		return
	}
	for i := 9; i >= 1; i-- {
		os.Rename(filepath.Join(dir, fmt.Sprintf("boot.%d.log", i-1)), filepath.Join(dir, fmt.Sprintf("boot.%d.log", i)))
	}
	body := strings.Join(b.Lines(), "\n") + "\n"
	os.WriteFile(filepath.Join(dir, "boot.0.log"), []byte(body), 0o644)
	b.Sys.Sync()
}

// fsModule is the module that provides a filesystem type as blkid reports it.
func fsModule(fstype string) string {
	switch fstype {
	case "ext2", "ext3", "ext4":
		return "ext4"
	case "vfat":
		return "vfat"
	}
	return fstype
}
