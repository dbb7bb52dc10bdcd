package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	losetup "github.com/freddierice/go-losetup"
	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/initramfs/diskcheck"
	"github.com/hnboot/hnboot/initramfs/identity"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/nic"
)

// Where things live while the init runs. /run moves into the new root with
// switch_root, so the image and overlay mounts stay reachable there.
const (
	hostpartDir = layout.HostpartMount
	imageDir    = "/run/hnboot/image"
	rwDir       = "/run/hnboot/rw"
	newRoot     = "/newroot"
	modulesList = "/etc/hnboot-modules"
)

type boot struct {
	h      *consoleHandler
	log    *slog.Logger
	stdin  io.Reader
	stdout io.Writer
	cfg    cmdline.Config

	hostpartDev  string
	hostpartInfo blkid.Info
	mods         *modLoader
	digests      *digestcache.Cache // see digestCache
}

func (b *boot) main() {
	// The release shows which kernel (and so which initramfs's modules)
	// this boot runs on: GRUB's from the image, PXE's, or a kexec'd one.
	b.log.Info("hnboot init starting", "kernel", runningRelease())
	b.mountKernelFS()
	b.readCmdline()
	b.loadModules()
	if err := b.findHostpart(); err != nil {
		b.rescue(err)
	}
	b.checkDisk()
	if err := b.mountHostpart(); err != nil {
		b.rescue(err)
	}
	res, err := b.rotateUnlessKexeced()
	if err != nil {
		// The journal makes a failed rotation resumable; boot what is there.
		b.log.Error("rotation failed; booting the current image as it is", "err", err)
	}
	b.checkin(res) // hn.server=: report this boot to imaged (initramfs/checkin.go)
	candidates := []string{b.cfg.Image, layout.Old}
	var lastErr error
	for i, img := range candidates {
		if i > 0 {
			b.log.Warn("falling back to the previous image", "image", img, "reason", lastErr)
		}
		if err := b.bootImage(img); err != nil {
			lastErr = err
			b.log.Error("cannot boot image", "image", img, "err", err)
			b.teardownImage()
			continue
		}
	}
	b.rescue(fmt.Errorf("no image could be booted; last error: %w", lastErr))
}

func (b *boot) mountKernelFS() {
	for _, m := range []struct{ src, dir, typ, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if _, err := mount.Mount(m.src, m.dir, m.typ, m.data, unix.MS_NOSUID); err != nil && !errors.Is(err, unix.EBUSY) {
			b.log.Warn("mount failed", "dir", m.dir, "err", err)
		}
	}
	// Reopen the console now that /dev is real; the kernel's may be absent
	// when the built-in initramfs has none.
	if c, err := os.OpenFile("/dev/console", os.O_RDWR, 0); err == nil {
		b.stdout = c
		b.stdin = c
		b.h.w = c
	}
	b.log.Info("mounted /proc /sys /dev /run")
}

func (b *boot) readCmdline() {
	data, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		b.log.Warn("cannot read /proc/cmdline; using defaults", "err", err)
	}
	cfg, warnings := cmdline.Parse(string(data))
	b.cfg = cfg
	b.h.debug = cfg.Debug
	for _, w := range warnings {
		b.log.Warn("kernel command line: " + w)
	}
	if cfg.Alias {
		b.log.Info("genkernel command line (real_root=, raw_loop_root_host_partition=) accepted as alias")
	}
	b.log.Info("configuration", "hostpart", cfg.Hostpart, "image", cfg.Image, "tries", cfg.Tries)
}

// loadModules loads the drivers for the hardware present, plus any named
// with hn.modules=; filesystems follow once the init knows which it needs.
func (b *boot) loadModules() {
	b.mods = newModLoader(b)
	b.mods.hardware()
	b.mods.load("hn.modules", b.cfg.Modules...)
}

// findHostpart waits for the hostpart device: disk drivers probe
// asynchronously after their modules load.
func (b *boot) findHostpart() error {
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		dev, info, err := blkid.Find(b.cfg.Hostpart, "/sys/class/block", "/dev")
		if err == nil {
			b.hostpartDev, b.hostpartInfo = dev, info
			b.log.Info("found hostpart", "spec", b.cfg.Hostpart, "device", dev, "fs", info.Type)
			b.mods.load("hostpart's filesystem", fsModule(info.Type))
			return nil
		}
		if time.Since(start) > 3*time.Second && !b.mods.all {
			// A disk whose driver has no alias we know: load everything.
			b.log.Info("hostpart not found yet; loading every driver in the initramfs")
			b.mods.loadAll()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no partition matches %s after 30 s: %w. Label the host partition: e2label DEV hostpart, or set hn.hostpart= on the kernel command line", b.cfg.Hostpart, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *boot) checkDisk() {
	name := filepath.Base(b.hostpartDev)
	disk, part, err := blkid.Parent(name, "/sys/class/block")
	if err != nil {
		b.log.Warn("hostpart is not a partition of a disk; skipping the GPT and EFI-BOOT checks", "device", b.hostpartDev, "err", err)
		return
	}
	rep := diskcheck.CheckImage(filepath.Join("/dev", disk), part, b.cfg.Image)
	if len(rep.Problems) == 0 {
		b.log.Info("disk layout ok: GPT, EFI-BOOT with a GRUB config for "+b.cfg.Image, "disk", "/dev/"+disk)
		return
	}
	for _, p := range rep.Problems {
		if p.Fatal {
			b.log.Error("disk check: "+p.Msg, "disk", "/dev/"+disk)
		} else {
			b.log.Warn("disk check: "+p.Msg, "disk", "/dev/"+disk)
		}
	}
}

func (b *boot) mountHostpart() error {
	os.MkdirAll(hostpartDir, 0o755)
	typ := b.hostpartInfo.Type
	if _, err := mount.Mount(b.hostpartDev, hostpartDir, typ, "", unix.MS_NOATIME); err != nil {
		return fmt.Errorf("mount hostpart %s (%s) on %s: %w; run fsck on it from the rescue shell", b.hostpartDev, typ, hostpartDir, err)
	}
	os.MkdirAll(filepath.Join(hostpartDir, layout.StateDir), 0o755)
	os.MkdirAll(filepath.Join(hostpartDir, layout.DataDir), 0o755)
	b.log.Info("mounted hostpart", "device", b.hostpartDev, "dir", hostpartDir)
	return nil
}

func (b *boot) rotate() (rotate.Result, error) {
	fsys := rotate.OSFS(hostpartDir)
	if n := b.cfg.CrashTest; n > 0 {
		// hn.crashtest=N simulates a power cut after N rotation steps: the
		// end-to-end test kills QEMU while the init hangs here.
		fsys = rotate.CrashAfter(fsys, n, func() {
			b.log.Warn("crashtest: power cut simulated, halting", "after_ops", n)
			for {
				time.Sleep(time.Hour)
			}
		})
	}
	cache := b.digestCache()
	opt := rotate.Options{
		Tries:    b.cfg.Tries,
		RevertID: b.cfg.RevertID,
		Verify:   verifyImage(b.log, cache),         // initramfs/verify.go: filesystem, manifest, signature
		Complete: completeImage(hostpartDir, cache), // initramfs/verify.go: filesystem; manifest size and digest
		Log:      func(msg string) { b.log.Info("rotate: " + msg) },
	}
	start := time.Now()
	res, err := rotate.Run(fsys, opt)
	b.saveDigests() // the manifest checks may have hashed an image
	if err != nil {
		return res, err
	}
	args := []any{"action", res.Action.String(), "trial", res.Trial, "tries_left", res.TriesLeft, "took", time.Since(start).Round(time.Microsecond)}
	if res.Repaired != "" {
		args = append(args, "repaired_from", res.Repaired)
	}
	b.log.Info("rotation done", args...)
	return res, nil
}

var loopDev *losetup.Device

// bootImage mounts image read-only, instantiates the host on an overlay and
// switches root. It returns only on failure.
func (b *boot) bootImage(name string) error {
	path := filepath.Join(hostpartDir, name)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open image: %w", err)
	}
	info, err := blkid.Probe(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: unknown filesystem: %w", path, err)
	}
	b.mods.load("the image", "loop", fsModule(info.Type), "overlay")
	dev, err := losetup.Attach(path, 0, true)
	if err != nil {
		return fmt.Errorf("attach %s read-only to a loop device: %w", path, err)
	}
	loopDev = &dev
	os.MkdirAll(imageDir, 0o755)
	if _, err := mount.Mount(dev.Path(), imageDir, info.Type, "", unix.MS_RDONLY); err != nil {
		return fmt.Errorf("mount %s (%s, from %s) read-only: %w", dev.Path(), info.Type, path, err)
	}
	b.log.Info("mounted image read-only", "image", path, "loop", dev.Path(), "fs", info.Type)
	b.maybeKexec(name) // DESIGN.md §3 step 5; returns unless it kexecs

	os.MkdirAll(rwDir, 0o755)
	if _, err := mount.Mount("tmpfs", rwDir, "tmpfs", "mode=0755", 0); err != nil {
		return fmt.Errorf("mount tmpfs for the overlay: %w", err)
	}
	for _, d := range []string{"upper", "work"} {
		os.MkdirAll(filepath.Join(rwDir, d), 0o755)
	}
	os.MkdirAll(newRoot, 0o755)
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", imageDir, rwDir, rwDir)
	if _, err := mount.Mount("overlay", newRoot, "overlay", opts, 0); err != nil {
		return fmt.Errorf("mount overlay root (%s): %w", opts, err)
	}
	b.log.Info("overlay root ready", "lower", imageDir, "upper", "tmpfs")

	if err := b.instantiate(); err != nil {
		return fmt.Errorf("instantiate host: %w", err)
	}
	init := b.cfg.Init
	if _, err := os.Lstat(filepath.Join(newRoot, init)); err != nil { // Lstat: Debian's /sbin/init is an absolute symlink, valid only inside the new root
		return fmt.Errorf("image %s has no %s: %w", name, init, err)
	}
	b.saveLog(name)
	// Move hostpart under the new root rather than mounting it twice.
	os.MkdirAll(filepath.Join(newRoot, hostpartDir), 0o755)
	if err := mount.MoveMount(hostpartDir, filepath.Join(newRoot, hostpartDir)); err != nil {
		return fmt.Errorf("move %s into the new root: %w", hostpartDir, err)
	}
	b.log.Info("switching root", "image", name, "init", init)
	if err := mount.SwitchRoot(newRoot, init); err != nil {
		// The old root is gone at this point; nothing left but rescue.
		b.rescue(fmt.Errorf("switch_root to %s: %w", init, err))
	}
	return nil
}

// teardownImage undoes a failed bootImage so the next candidate starts clean.
func (b *boot) teardownImage() {
	for _, d := range []string{filepath.Join(newRoot, hostpartDir), newRoot, rwDir, imageDir} {
		unix.Unmount(d, unix.MNT_DETACH)
	}
	if loopDev != nil {
		loopDev.Detach()
		loopDev = nil
	}
}

func (b *boot) instantiate() error {
	id, err := identity.Ensure(filepath.Join(hostpartDir, layout.IdentityDir), nil)
	if err != nil {
		return err
	}
	for _, n := range id.Notes {
		b.log.Warn("identity: " + n)
	}
	var cached identity.HostConf
	if f, err := os.Open(filepath.Join(hostpartDir, layout.HostConf)); err == nil {
		// A bad line is reported; the good ones still apply.
		cached, err = identity.ParseHostConf(f)
		f.Close()
		if err != nil {
			b.log.Error("host.conf has errors; using its valid lines", "err", err)
		}
	}
	kc := identity.FromKernelIP(b.cfg.IP)
	if b.cfg.Hostname != "" {
		kc.Hostname = b.cfg.Hostname
	}
	_, mac, _ := nic.FirstEthernet("/sys/class/net")
	hc := identity.Merge(kc, identity.HostConf{}, cached, identity.Defaults(mac))
	if err := identity.Apply(newRoot, id, hc); err != nil {
		return err
	}
	binds, err := identity.StateBinds(newRoot, filepath.Join(hostpartDir, layout.DataDir), hc.StateDirs)
	if err != nil {
		b.log.Error("state directories", "err", err)
	}
	for _, bd := range binds {
		if err := unix.Mount(bd.Source, bd.Target, "", unix.MS_BIND, ""); err != nil {
			b.log.Error("bind state directory", "source", bd.Source, "target", bd.Target, "err", err)
		}
	}
	if err := unix.Sethostname([]byte(hc.Hostname)); err != nil {
		b.log.Warn("sethostname", "err", err)
	}
	b.log.Info("host instantiated", "hostname", hc.Hostname, "machine_id", id.MachineID, "ssh_ed25519", id.Fingerprints["ed25519"], "state_dirs", len(binds))
	return nil
}

// saveLog keeps this boot's init log on hostpart (the last 10 boots), for
// operators and for the agent's report.
func (b *boot) saveLog(image string) {
	dir := filepath.Join(hostpartDir, layout.BootsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	for i := 9; i >= 1; i-- {
		os.Rename(filepath.Join(dir, fmt.Sprintf("boot.%d.log", i-1)), filepath.Join(dir, fmt.Sprintf("boot.%d.log", i)))
	}
	body := strings.Join(b.h.Lines(), "\n") + "\n"
	os.WriteFile(filepath.Join(dir, "boot.0.log"), []byte(body), 0o644)
	unix.Sync()
}

// rescue never returns: PID 1 exiting would panic the kernel. It prints the
// reason and runs a shell on the console, again and again.
func (b *boot) rescue(reason error) {
	b.log.Error("cannot boot: " + reason.Error())
	if _, err := os.Stat(filepath.Join(hostpartDir, layout.StateDir)); err == nil {
		b.saveLog("rescue")
	}
	for {
		fmt.Fprintf(b.stdout, "\nhninit: RESCUE SHELL. Reason: %v\nhninit: hostpart (if found) is at %s. Exit the shell to retry it.\n", reason, hostpartDir)
		sh, err := exec.LookPath("/bin/sh")
		if err != nil {
			fmt.Fprintln(b.stdout, "hninit: no /bin/sh in the initramfs; halting. Rebuild it with mkimage initramfs --busybox.")
			for {
				time.Sleep(time.Hour)
			}
		}
		cmd := exec.Command(sh)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = b.stdin, b.stdout, b.stdout
		cmd.Env = []string{"PATH=/bin:/sbin", "PS1=hnboot-rescue# "}
		cmd.Run()
		// A console without input ends the shell at once: do not spin.
		time.Sleep(time.Second)
	}
}

// runningRelease is the running kernel's release, as uname -r prints it.
func runningRelease() string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(uts.Release[:])
}
