package main

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	losetup "github.com/freddierice/go-losetup"
	"github.com/u-root/u-root/pkg/boot/kexec"
	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/initramfs/boot"
	"github.com/hnboot/hnboot/initramfs/diskcheck"
	"github.com/hnboot/hnboot/initramfs/netup"
	"github.com/hnboot/hnboot/internal/afalg"
	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/httpget"
	"github.com/hnboot/hnboot/internal/nic"
	"github.com/hnboot/hnboot/internal/randseed"
)

// linuxSystem is boot.System on the machine: system calls, u-root's
// mount, kexec and switch_root, go-losetup, the module loader.
type linuxSystem struct {
	log    *slog.Logger
	mods   *modLoader
	stdin  io.Reader
	stdout io.Writer
	http   *httpget.Client

	sha256Once sync.Once
	sha256     func() hash.Hash
}

var _ boot.System = (*linuxSystem)(nil)

func (s *linuxSystem) Cmdline() (string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	return string(b), err
}

func (s *linuxSystem) Release() string { return runningRelease() }

func (s *linuxSystem) LoadHardware(found func() bool) { s.mods.hardware(found) }

func (s *linuxSystem) LoadNetworkDrivers() { s.mods.network() }

func (s *linuxSystem) LoadModules(why string, names ...string) { s.mods.load(why, names...) }

func (s *linuxSystem) LoadAll() { s.mods.loadAll() }

func (s *linuxSystem) FindPartition(spec string) (string, blkid.Info, error) {
	return blkid.Find(spec, "/sys/class/block", "/dev")
}

func (s *linuxSystem) CheckDisk(dev, image string) (diskcheck.Report, string, bool) {
	disk, part, err := blkid.Parent(filepath.Base(dev), "/sys/class/block")
	if err != nil {
		s.log.Debug("hostpart's disk", "device", dev, "err", err)
		return diskcheck.Report{}, "", false
	}
	d := filepath.Join("/dev", disk)
	return diskcheck.CheckImage(d, part, image), d, true
}

func (s *linuxSystem) Mount(source, target, fstype, data string, flags uintptr) error {
	_, err := mount.Mount(source, target, fstype, data, flags)
	return err
}

func (s *linuxSystem) Unmount(target string) error { return unix.Unmount(target, unix.MNT_DETACH) }

func (s *linuxSystem) MoveMount(from, to string) error { return mount.MoveMount(from, to) }

func (s *linuxSystem) Remount(target string, readonly bool) error {
	flags := uintptr(unix.MS_REMOUNT | unix.MS_NOATIME)
	if readonly {
		flags |= unix.MS_RDONLY
	}
	return unix.Mount("", target, "", flags, "")
}

func (s *linuxSystem) AttachLoop(file string) (string, func() error, error) {
	dev, err := losetup.Attach(file, 0, true)
	if err != nil {
		return "", nil, err
	}
	return dev.Path(), dev.Detach, nil
}

func (s *linuxSystem) Sync() { unix.Sync() }

func (s *linuxSystem) Sethostname(name string) error { return unix.Sethostname([]byte(name)) }

func (s *linuxSystem) KexecLoad(kernel, initrd, cmdline string) error {
	k, err := os.Open(kernel)
	if err != nil {
		return err
	}
	defer k.Close()
	var i *os.File
	if initrd != "" {
		if i, err = os.Open(initrd); err != nil {
			return err
		}
		defer i.Close()
	}
	return kexec.FileLoad(k, i, cmdline)
}

func (s *linuxSystem) KexecReboot() error { return kexec.Reboot() }

func (s *linuxSystem) SwitchRoot(newRoot, init string) error { return mount.SwitchRoot(newRoot, init) }

// Rescue never returns: PID 1 exiting would panic the kernel. It prints
// the reason and runs a shell on the console, again and again.
func (s *linuxSystem) Rescue(reason error) {
	for {
		fmt.Fprintf(s.stdout, "\nhninit: RESCUE SHELL. Reason: %v\nhninit: hostpart (if found) is at %s. Exit the shell to retry it.\n", reason, boot.DefaultPaths.Hostpart)
		sh, err := exec.LookPath("/bin/sh")
		if err != nil {
			fmt.Fprintln(s.stdout, "hninit: no /bin/sh in the initramfs; halting. Rebuild it with mkimage initramfs --busybox.")
			for {
				time.Sleep(time.Hour)
			}
		}
		cmd := exec.Command(sh)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = s.stdin, s.stdout, s.stdout
		cmd.Env = []string{"PATH=/bin:/sbin", "PS1=hnboot-rescue# "}
		cmd.Run()
		// A console without input ends the shell at once: do not spin.
		time.Sleep(time.Second)
	}
}

// BootNIC picks the interface with BOOTIF='s MAC, else the first Ethernet
// interface.
func (s *linuxSystem) BootNIC(mac string) (string, string, error) {
	const sys = "/sys/class/net"
	if mac != "" {
		if name := nic.ByMAC(sys, mac); name != "" {
			return name, mac, nil
		}
	}
	return nic.FirstEthernet(sys)
}

func (s *linuxSystem) NetUp(ctx context.Context, ifname string) (netup.Lease, error) {
	return netup.Up(ctx, ifname)
}

func (s *linuxSystem) NetDown(l netup.Lease) error { return netup.Down(l) }

func (s *linuxSystem) HTTP() boot.HTTP { return s.http }

// SHA256 times the kernel's SHA-256 against Go's, the best of two rounds
// on 256 KiB each (~100 ms under QEMU's TCG, where the kernel's C is
// 2-3x faster than Go's emulated assembly; natively Go's SHA-NI code
// usually wins), once per boot.
func (s *linuxSystem) SHA256() func() hash.Hash {
	s.sha256Once.Do(func() {
		s.mods.load("the kernel's sha256", "algif_hash")
		start := time.Now()
		var why string
		s.sha256, why = afalg.FastestSHA256(256 << 10)
		s.log.Info("downloads are verified with "+why, "took", time.Since(start).Round(time.Millisecond))
	})
	return s.sha256
}

func (s *linuxSystem) Random() randseed.Kernel { return randseed.Linux{} }

func (s *linuxSystem) Now() time.Time { return time.Now() }

func (s *linuxSystem) Sleep(d time.Duration) { time.Sleep(d) }

// mountKernelFS mounts /proc, /sys, /dev and /run, and reopens the
// console on the real /dev/console (the kernel's may be absent when the
// built-in initramfs has none).
func mountKernelFS(log *slog.Logger, h *consoleHandler) (stdin io.Reader, stdout io.Writer) {
	for _, m := range []struct{ src, dir, typ, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if _, err := mount.Mount(m.src, m.dir, m.typ, m.data, unix.MS_NOSUID); err != nil && !errors.Is(err, unix.EBUSY) {
			log.Warn("mount failed", "dir", m.dir, "err", err)
		}
	}
	if c, err := os.OpenFile("/dev/console", os.O_RDWR, 0); err == nil {
		h.w = c
		log.Info("mounted /proc /sys /dev /run")
		return c, c
	}
	log.Info("mounted /proc /sys /dev /run")
	return nil, nil
}

// runningRelease is the running kernel's release, as uname -r prints it.
func runningRelease() string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(uts.Release[:])
}
