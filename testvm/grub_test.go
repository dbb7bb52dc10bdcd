package testvm

import (
	"context"
	"fmt"
	"github.com/hnboot/hnboot/internal/layout"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Images with a kernel inside, for GRUB's loopback boot and for kexec. They
// are built once per run, on first use, and registered in images so
// inspect() recognises them.
var (
	grubOnce   sync.Once
	grubErr    error
	altRelease string // release of the second Debian kernel (kexec test)
)

// AltKernelDir is where scripts/fetch-kernel.sh unpacks the second kernel:
// a Debian release other than the test kernel's.
func AltKernelDir() string {
	if d := os.Getenv("HNBOOT_ALT_KERNEL_DIR"); d != "" {
		return d
	}
	return filepath.Join(CacheDir(), "kernel-alt")
}

const altKernelHint = "run scripts/fetch-kernel.sh linux-image-6.1.0-55-amd64 /var/cache/hnboot/kernel-alt"

// kernelImage builds root image NAME.img the way real images are built:
// the busybox test root plus a kernel package (boot/vmlinuz-RELEASE and
// the initramfs's modules under lib/modules/RELEASE, see AddKernel), from
// which "mkimage rootfs --init hninit" makes /boot/vmlinuz and
// /boot/initramfs. It checks the image's boot files (checkBootFiles).
func kernelImage(ctx context.Context, f *Fixture, o RootOptions, vmlinuz, modDir string) (string, error) {
	tree := filepath.Join(f.Dir, "tree-"+o.Name)
	os.RemoveAll(tree)
	defer os.RemoveAll(tree)
	if err := RootTree(tree, o); err != nil {
		return "", err
	}
	// btrfs and xfs (8 MB with their dependencies) are left out: no test
	// disk uses them, and without them the image is about the size it was
	// when the test copied the boot files in by hand.
	rel, err := AddKernel(tree, vmlinuz, modDir, "btrfs", "xfs")
	if err != nil {
		return "", err
	}
	img := filepath.Join(f.Dir, o.Name+".img")
	if err := f.Run(ctx, "rootfs", "--from", tree, "--out", img, "--init", f.Init); err != nil {
		return "", err
	}
	if err := f.CheckBootFiles(img, vmlinuz, rel); err != nil {
		return "", err
	}
	images[o.Name] = img
	return img, nil
}

// grubImages builds, once: G (the test kernel inside) and K (the
// alternative kernel inside); mkimage makes each one's /boot/initramfs.
func grubImages(t *testing.T) *Fixture {
	t.Helper()
	f := fixture(t)
	grubOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := kernelImage(ctx, f, RootOptions{Name: "G", Confirm: true}, f.Kernel, f.ModDir); err != nil {
			grubErr = err
			return
		}
		m, _ := filepath.Glob(filepath.Join(AltKernelDir(), "boot", "vmlinuz-*"))
		if len(m) == 0 {
			grubErr = fmt.Errorf("no second kernel in %s: %s", AltKernelDir(), altKernelHint)
			return
		}
		altRelease = strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-")
		if altRelease == f.Release {
			grubErr = fmt.Errorf("the second kernel %s is the test kernel's release: fetch another one (%s)", altRelease, altKernelHint)
			return
		}
		if _, err := kernelImage(ctx, f, RootOptions{Name: "K", Confirm: true}, m[0], filepath.Join(AltKernelDir(), "lib", "modules", altRelease)); err != nil {
			grubErr = err
		}
	})
	if grubErr != nil {
		t.Fatalf("building the GRUB/kexec test images: %v", grubErr)
	}
	return f
}

// firmwareBoot boots disk through its firmware and GRUB (no -kernel) until
// the image reports HNTEST end and powers off. It returns the console and
// the wall time from QEMU's start to the report.
func firmwareBoot(t *testing.T, diskPath string, uefi bool, end string, timeout time.Duration) (string, time.Duration) {
	t.Helper()
	vm, err := Start(context.Background(), Options{Disk: diskPath, UEFI: uefi, Memory: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if _, err := vm.Expect(end, timeout); err != nil {
		t.Fatal(err)
	}
	took := vm.Since()
	if err := vm.Wait(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	fw := "BIOS"
	if uefi {
		fw = "UEFI"
	}
	t.Logf("%s boot: QEMU start to %q in %v", fw, end, took.Round(time.Millisecond))
	return vm.Console(), took
}

// grubDisk builds a host disk with mkimage disk --boot mode.
func grubDisk(t *testing.T, f *Fixture, mode, size string, slots map[string]string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "disk.img")
	args := []string{"disk", "--boot", mode, "--out", out, "--size", size}
	for _, flag := range []string{"root", "new", "old"} {
		if name, ok := slots[flag]; ok {
			args = append(args, "--"+flag, images[name])
		}
	}
	if err := f.Run(context.Background(), args...); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGrubLoopbackBoot(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode string
		uefi bool
	}{
		{"UEFI", "uefi", true},
		{"BIOS", "bios", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := grubImages(t)
			d := grubDisk(t, f, tc.mode, "1G", map[string]string{"root": "G"})
			con, _ := firmwareBoot(t, d, tc.uefi, `HNTEST end`, bootTimeout)
			// GRUB ran (its banner), loaded the kernel from inside the image
			// (the GRUB entry's command line reached the kernel) and the
			// hnboot init booted the image.
			wantConsole(t, con, "GNU GRUB", "hnboot init starting", "real_root=/hn-root.img", "switching root")
			if got := field(t, con, "booted image"); got != "G" {
				t.Errorf("booted image = %q, want G", got)
			}
			if got := field(t, con, "uname"); got != f.Release {
				t.Errorf("uname -r = %q, want the image's kernel %s", got, f.Release)
			}
			wantInitKernel(t, con, f.Release)
			if !strings.Contains(con, "kexec: not needed") {
				t.Errorf("console lacks the init's kexec decision (the image's kernel is running)\n%s", tail(con, 60))
			}
		})
	}
}

// TestKexecIntoImageKernel: the kernel that boots (the test kernel, as if
// GRUB had loaded it from the previous image) is not the staged image's:
// the init promotes the image, kexecs into its kernel and initramfs, and
// the second init boots the image without rotating (or counting) again.
func TestKexecIntoImageKernel(t *testing.T) {
	f := grubImages(t)
	d := disk(t, map[string]string{"root": "A", "new": "K"})
	con := boot(t, d, "")
	if got := field(t, con, "uname"); got != altRelease {
		t.Errorf("uname -r in the booted system = %q, want the image's kernel %s (booted with %s)", got, altRelease, f.Release)
	}
	if got := field(t, con, "booted image"); got != "K" {
		t.Errorf("booted image = %q, want K", got)
	}
	if !regexp.MustCompile(`hninit: .*kexec: the image ships kernel ` + regexp.QuoteMeta(altRelease) + `, running ` + regexp.QuoteMeta(f.Release)).MatchString(con) {
		t.Errorf("console lacks the init's kexec decision\n%s", tail(con, 80))
	}
	wantConsole(t, con, "kexec: loaded; rebooting into it", "hn.kexeced=hn-root.img", "rotation already done by the previous kernel's init")
	if n := strings.Count(con, "hnboot init starting"); n != 2 {
		t.Errorf("the init started %d times, want 2 (before and after kexec)", n)
	}
	// The second init ran from K's /boot/initramfs, which mkimage made for
	// the second kernel.
	wantInitKernel(t, con, altRelease)
	// One trial boot, counted once: 3 tries, 2 left.
	if got := field(t, con, "trial"); got != "2" {
		t.Errorf("tries left = %q, want 2 (the kexec'd boot must not count again)", got)
	}
	st := inspect(t, d)
	wantSlots(t, st, map[string]string{"hn-root.img": "K", "hn-root-old.img": "A"})
}

// Debian images, built once.
var (
	debOnce sync.Once
	debErr  error
)

func debianImages(t *testing.T) *Fixture {
	t.Helper()
	f := fixture(t)
	debOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		start := time.Now()
		imgs, err := f.DebianImages(ctx, "debian1", "debian2")
		if err != nil {
			debErr = err
			return
		}
		for n, p := range imgs {
			images[n] = p
		}
		t.Logf("Debian root and images ready in %v", time.Since(start).Round(time.Second))
	})
	if debErr != nil {
		t.Fatalf("building the Debian images: %v", debErr)
	}
	return f
}

// debianBootTimeout: systemd to multi-user.target under TCG.
const debianBootTimeout = 300 * time.Second

// TestDebianSystem boots a debootstrapped Debian through OVMF and GRUB to
// systemd's multi-user.target, then updates it to a second image,
// confirms, and reverts with system-revert.
func TestDebianSystem(t *testing.T) {
	debianImages(t)
	f := fixture(t)
	d := grubDisk(t, f, "uefi", "4G", map[string]string{"root": "debian1"})

	con, _ := firmwareBoot(t, d, true, `HNTEST end`, debianBootTimeout)
	if got := field(t, con, "booted image"); got != "debian1" {
		t.Fatalf("booted image = %q, want debian1", got)
	}
	// GRUB loaded the kernel and the initramfs mkimage made from the
	// image's kernel package; the init ran on that kernel, and so did
	// systemd.
	wantInitKernel(t, con, f.Release)
	if got := field(t, con, "pid1"); got != "systemd" {
		t.Errorf("PID 1 = %q, want systemd", got)
	}
	if got := field(t, con, "multi-user"); got != "active" {
		t.Errorf("multi-user.target is %q, want active", got)
	}
	m := regexp.MustCompile(`host instantiated hostname=(\S+) machine_id=([0-9a-f]{32})`).FindStringSubmatch(con)
	if m == nil {
		t.Fatalf("console lacks the init's identity line\n%s", tail(con, 80))
	}
	if got := field(t, con, "hostname"); got != m[1] {
		t.Errorf("/etc/hostname = %q, want %q set by the init", got, m[1])
	}
	if !strings.Contains(con, "uts="+m[1]) {
		t.Errorf("the running hostname is not the init's %q\n%s", m[1], tail(con, 40))
	}
	mid := field(t, con, "machine-id")
	if mid != m[2] {
		t.Errorf("/etc/machine-id = %q, want %q set by the init", mid, m[2])
	}
	if got := field(t, con, "data0"); got != "/hostpart/data" {
		t.Errorf("/data0 -> %q, want /hostpart/data", got)
	}
	if got := field(t, con, "data0-dir"); got != "yes" {
		t.Errorf("/data0 is not a directory in the booted system")
	}
	if got := field(t, con, "hostpart"); !strings.Contains(got, "hn-root.img") || !strings.Contains(got, "data") {
		t.Errorf("/hostpart holds %q, want hn-root.img and data", got)
	}

	// Update: stage debian2, boot it on trial; the report service confirms.
	err := WithHostpart(d, func(dir string) error {
		return copyFile(images["debian2"], filepath.Join(dir, "hn-root-new.img"))
	})
	if err != nil {
		t.Fatal(err)
	}
	con, _ = firmwareBoot(t, d, true, `HNTEST end`, debianBootTimeout)
	if got := field(t, con, "booted image"); got != "debian2" {
		t.Fatalf("after staging: booted image = %q, want debian2", got)
	}
	if got := field(t, con, "trial"); got != "2" {
		t.Errorf("tries left on the first trial boot = %q, want 2", got)
	}
	wantConsole(t, con, "HNTEST confirmed")
	if got := field(t, con, "machine-id"); got != mid {
		t.Errorf("machine-id after the update = %q, want unchanged %q", got, mid)
	}
	st := inspect(t, d)
	wantSlots(t, st, map[string]string{"hn-root.img": "debian2", "hn-root-old.img": "debian1"})
	if _, ok := st.Files["hn-root.trial"]; ok {
		t.Errorf("hn-root.trial still present after the system confirmed")
	}

	// Revert.
	writeHostpart(t, d, map[string]string{"system-revert": ""})
	con, _ = firmwareBoot(t, d, true, `HNTEST end`, debianBootTimeout)
	if got := field(t, con, "booted image"); got != "debian1" {
		t.Errorf("after system-revert: booted image = %q, want debian1", got)
	}
	st = inspect(t, d)
	wantSlots(t, st, map[string]string{"hn-root.img": "debian1", "hn-root-broken.img": "debian2"})
}

// wantInitKernel checks the kernel release the last hnboot init logged it
// runs on, and the one the booted system reports (HNTEST uname=), are rel.
func wantInitKernel(t *testing.T, con, rel string) {
	t.Helper()
	m := regexp.MustCompile(`hnboot init starting kernel=(\S+)`).FindAllStringSubmatch(con, -1)
	if len(m) == 0 {
		t.Errorf("console lacks the init's start line with its kernel\n%s", tail(con, 60))
		return
	}
	if got := m[len(m)-1][1]; got != rel {
		t.Errorf("the init ran on kernel %s, want %s", got, rel)
	}
	if got := field(t, con, "uname"); got != rel {
		t.Errorf("uname -r in the booted system = %q, want %s", got, rel)
	}
}

// stageNew puts img and its manifest on disk d's hostpart as the staged
// image (layout.New), as imaged stage leaves them.
func stageNew(d, img string) error {
	return WithHostpart(d, func(dir string) error {
		if err := copyFile(layout.ManifestFor(img), filepath.Join(dir, layout.ManifestFor(layout.New))); err != nil {
			return err
		}
		return copyFile(img, filepath.Join(dir, layout.New))
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := out.ReadFrom(in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
