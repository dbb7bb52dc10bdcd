package main

// DESIGN.md §3 step 5: if the image being booted ships a kernel whose
// release differs from the running one, kexec into the image's kernel and
// initramfs, once, so kernel and modules always match the root. The pure
// part (the image kernel's release, the decision, the new command line)
// is separate from the syscalls; kexec_test.go tests it.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/u-root/u-root/pkg/boot/bzimage"
	"github.com/u-root/u-root/pkg/boot/kexec"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/initramfs/rotate"
)

// Kernel command line flags of the kexec step.
const (
	// kexecedFlag is added to the command line of the kexec'd kernel,
	// with the name of the image it was loaded from: that boot neither
	// kexecs again nor repeats the rotation (a trial would lose two tries).
	kexecedFlag = "hn.kexeced"
	// noKexecFlag turns the step off.
	noKexecFlag = "hn.nokexec"

	imageKernel = "boot/vmlinuz"
	imageInitrd = "boot/initramfs"
)

// kexecDecision says whether to kexec into an image's kernel. args is the
// parsed command line, running the running kernel's release, image the
// image kernel's release ("" when unknown, with imageErr saying why).
func kexecDecision(args map[string]string, running, image string, imageErr error) (bool, string) {
	if v, ok := args[kexecedFlag]; ok {
		return false, fmt.Sprintf("already kexec'd once (%s=%s)", kexecedFlag, v)
	}
	if _, ok := args[noKexecFlag]; ok {
		return false, noKexecFlag + " is set"
	}
	if imageErr != nil {
		return false, "image kernel: " + imageErr.Error()
	}
	if image == "" {
		return false, "image kernel release unknown"
	}
	if image == running {
		return false, "the image's kernel " + image + " is running"
	}
	return true, fmt.Sprintf("the image ships kernel %s, running %s", image, running)
}

// kexecCmdline is the command line for the image's kernel: the current one
// with the loop stopper (and hn.image when a fallback image was chosen).
func kexecCmdline(current, image, defaultImage string) string {
	s := strings.TrimSpace(current)
	extra := kexecedFlag + "=" + image
	if image != defaultImage {
		extra += " hn.image=" + image
	}
	// Words after "--" belong to init: insert before them.
	if i := strings.Index(" "+s+" ", " -- "); i >= 0 {
		return strings.TrimSpace(s[:i]) + " " + extra + " " + strings.TrimSpace(s[i:])
	}
	return strings.TrimSpace(s + " " + extra)
}

// isKexeced is true on the boot that a previous init kexec'd into.
func (b *boot) isKexeced() bool {
	_, ok := b.cfg.Args[kexecedFlag]
	return ok
}

// rotateUnlessKexeced runs the rotation, except on a kexec'd boot: the
// previous kernel's init already rotated (and counted the trial boot).
func (b *boot) rotateUnlessKexeced() (rotate.Result, error) {
	if b.isKexeced() {
		b.log.Info("kexec'd boot: rotation already done by the previous kernel's init", "image", b.cfg.Args[kexecedFlag])
		return rotate.Result{}, nil
	}
	return b.rotate()
}

// maybeKexec runs after the image is mounted read-only at imageDir. When
// the image's kernel differs from the running one it loads that kernel and
// the image's initramfs and reboots into them; it returns only when no
// kexec is wanted or it failed (logged: the boot goes on with the running
// kernel).
func (b *boot) maybeKexec(name string) {
	var uts unix.Utsname
	running := ""
	if err := unix.Uname(&uts); err == nil {
		running = unix.ByteSliceToString(uts.Release[:])
	}
	kpath := filepath.Join(imageDir, imageKernel)
	rel, relErr := imageRelease(kpath)
	ok, why := kexecDecision(b.cfg.Args, running, rel, relErr)
	if !ok {
		b.log.Info("kexec: not needed: " + why)
		return
	}
	b.log.Info("kexec: "+why+"; loading it", "kernel", kpath, "release", rel)
	if err := b.kexec(kpath, filepath.Join(imageDir, imageInitrd), name); err != nil {
		b.log.Error("kexec failed; booting with the running kernel", "running", running, "err", err)
	}
}

// imageRelease reads the release ("6.1.0-55-amd64", as uname -r prints
// it) of the image's kernel at path: the first word of the version string
// that the bzImage setup header points to.
func imageRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("image has no /%s", imageKernel)
		}
		return "", err
	}
	defer f.Close()
	v, err := bzimage.KVer(f)
	if err != nil {
		return "", fmt.Errorf("%s: not an x86 bzImage with a version string: %w", path, err)
	}
	rel, _, _ := strings.Cut(strings.TrimSpace(v), " ")
	if rel == "" {
		return "", fmt.Errorf("%s: the bzImage's version string is empty", path)
	}
	return rel, nil
}

func (b *boot) kexec(kpath, ipath, name string) error {
	k, err := os.Open(kpath)
	if err != nil {
		return fmt.Errorf("open kernel: %w", err)
	}
	defer k.Close()
	var initrd *os.File
	if f, err := os.Open(ipath); err == nil {
		initrd = f
		defer f.Close()
	} else {
		b.log.Warn("kexec: image has no initramfs; loading its kernel without one", "path", ipath, "err", err)
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read /proc/cmdline: %w", err)
	}
	cmd := kexecCmdline(string(raw), name, b.cfg.Image)
	if err := kexec.FileLoad(k, initrd, cmd); err != nil {
		return fmt.Errorf("kexec_file_load %s: %w", kpath, err)
	}
	b.log.Info("kexec: loaded; rebooting into it", "cmdline", cmd)
	b.saveLog(name)
	// Leave hostpart clean: the next kernel replays nothing.
	unix.Sync()
	if err := unix.Mount("", hostpartDir, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOATIME, ""); err != nil {
		b.log.Warn("kexec: remount hostpart read-only", "err", err)
	}
	err = kexec.Reboot()
	// Still here: the reboot failed. Make hostpart writable again.
	if rerr := unix.Mount("", hostpartDir, "", unix.MS_REMOUNT|unix.MS_NOATIME, ""); rerr != nil {
		b.log.Error("remount hostpart read-write after the failed kexec", "err", rerr)
	}
	return fmt.Errorf("reboot into the loaded kernel: %w", err)
}
