package boot

// DESIGN.md §3 step 5: if the image being booted ships a kernel whose
// release differs from the running one, kexec into the image's kernel and
// initramfs, once, so kernel and modules always match the root. The
// decision is KexecDecision (decide.go); the system call is System.Kexec.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

const (
	imageKernel = "boot/vmlinuz"
	imageInitrd = "boot/initramfs"
)

// bzImageVersion reads the version string of an x86 bzImage, as the
// boot protocol (Documentation/arch/x86/boot.rst) places it: the setup
// header's "HdrS" at 0x202, protocol 2.00 or later, and kernel_version at
// 0x20e, the string's offset minus 0x200. Two small reads: u-root's
// bzimage package, which parses the whole image to answer this, brought
// its cpio, ls and xz packages into the init (496 KB of the binary, 171
// KB of the zstd archive).
func bzImageVersion(r io.ReaderAt) (string, error) {
	var h [0x10]byte
	if _, err := r.ReadAt(h[:], 0x200); err != nil {
		return "", fmt.Errorf("setup header: %w", err)
	}
	if string(h[2:6]) != "HdrS" {
		return "", errors.New("no HdrS setup header at 0x202")
	}
	if v := binary.LittleEndian.Uint16(h[6:8]); v < 0x200 {
		return "", fmt.Errorf("boot protocol %#x has no kernel_version", v)
	}
	off := int64(binary.LittleEndian.Uint16(h[0xe:0x10])) + 0x200
	var s [256]byte
	n, err := r.ReadAt(s[:], off)
	if n == 0 {
		return "", fmt.Errorf("version string at %#x: %w", off, err)
	}
	v, _, ok := bytes.Cut(s[:n], []byte{0})
	if !ok {
		return "", fmt.Errorf("version string at %#x: no end within %d bytes", off, n)
	}
	return string(v), nil
}

// kexecCmdline is the command line for the image's kernel: the current one
// with the loop stopper (and hn.image when a fallback image was chosen).
func kexecCmdline(current, image, defaultImage string) string {
	s := strings.TrimSpace(current)
	extra := "hn.kexeced=" + image
	if image != defaultImage {
		extra += " hn.image=" + image
	}
	// Words after "--" belong to init: insert before them.
	if i := strings.Index(" "+s+" ", " -- "); i >= 0 {
		return strings.TrimSpace(s[:i]) + " " + extra + " " + strings.TrimSpace(s[i:])
	}
	return strings.TrimSpace(s + " " + extra)
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
	v, err := bzImageVersion(f)
	if err != nil {
		return "", fmt.Errorf("%s: not an x86 bzImage with a version string: %w", path, err)
	}
	rel, _, _ := strings.Cut(strings.TrimSpace(v), " ")
	if rel == "" {
		return "", fmt.Errorf("%s: the bzImage's version string is empty", path)
	}
	return rel, nil
}

// maybeKexec runs after the image is mounted read-only at Paths.Image.
// When the image's kernel differs from the running one it loads that
// kernel and the image's initramfs and reboots into them; it reports
// whether it did (the fake System returns from Kexec) and returns false
// when no kexec is wanted or it failed (logged: the boot goes on with the
// running kernel).
func (b *Boot) maybeKexec(name string) bool {
	running := b.Sys.Release()
	kpath := filepath.Join(b.Paths.Image, imageKernel)
	rel, relErr := imageRelease(kpath)
	ok, why := KexecDecision(b.cfg, running, rel, relErr)
	if !ok {
		b.Log.Info("kexec: not needed: " + why)
		return false
	}
	b.Log.Info("kexec: "+why+"; loading it", "kernel", kpath, "release", rel)
	ipath := filepath.Join(b.Paths.Image, imageInitrd)
	if _, err := os.Stat(ipath); err != nil {
		b.Log.Warn("kexec: image has no initramfs; loading its kernel without one", "path", ipath, "err", err)
		ipath = ""
	}
	cmd := kexecCmdline(b.rawCmdline, name, b.cfg.Image)
	if err := b.Sys.KexecLoad(kpath, ipath, cmd); err != nil {
		b.Log.Error("kexec failed; booting with the running kernel", "running", running, "err", fmt.Errorf("kexec_file_load %s: %w", kpath, err))
		return false
	}
	b.Log.Info("kexec: loaded; rebooting into it", "cmdline", cmd)
	b.saveLog(name)
	// Leave hostpart clean: the next kernel replays nothing.
	b.Sys.Sync()
	if err := b.Sys.Remount(b.Paths.Hostpart, true); err != nil {
		b.Log.Warn("kexec: remount hostpart read-only", "err", err)
	}
	err := b.Sys.KexecReboot()
	if err == nil {
		return true
	}
	// Still here: the reboot failed. Make hostpart writable again.
	if rerr := b.Sys.Remount(b.Paths.Hostpart, false); rerr != nil {
		b.Log.Error("remount hostpart read-write after the failed kexec", "err", rerr)
	}
	b.Log.Error("kexec failed; booting with the running kernel", "running", running, "err", fmt.Errorf("reboot into the loaded kernel: %w", err))
	return false
}
