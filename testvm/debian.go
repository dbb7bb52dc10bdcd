package testvm

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/internal/testkernel"
)

// A real Debian system for the end-to-end tests: debootstrap's minbase
// with systemd, cached between runs, plus the test kernel as a package
// installs it (boot/vmlinuz-RELEASE, lib/modules/RELEASE), from which
// mkimage makes /boot/vmlinuz and /boot/initramfs, and a report service.
const (
	DebianSuite   = "bookworm"
	DebianVariant = "minbase"
)

// DebianPackages are added to minbase: systemd as init, udev, kmod for
// modules, iproute2 for the network the init configures. The images
// enable systemd-networkd (in the systemd package), which applies the
// network files the init writes.
var DebianPackages = []string{"systemd-sysv", "udev", "kmod", "iproute2"}

// CacheDir is where scripts/deps.sh and the tests keep downloads.
func CacheDir() string { return testkernel.CacheDir() }

// DebianMirror is HNBOOT_DEBIAN_MIRROR, else the first Debian (not
// security) URI of the machine's apt sources, else deb.debian.org.
func DebianMirror() string {
	if m := os.Getenv("HNBOOT_DEBIAN_MIRROR"); m != "" {
		return m
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
			if !ok || !strings.EqualFold(k, "URIs") {
				continue
			}
			for _, u := range strings.Fields(v) {
				if strings.HasSuffix(strings.TrimRight(u, "/"), "/debian") {
					f.Close()
					return u
				}
			}
		}
		f.Close()
	}
	return "http://deb.debian.org/debian"
}

// DebianBase returns a debootstrapped Debian root, made once and kept in
// CacheDir()/debian-<hash of suite, variant, packages, mirror>.
func DebianBase(ctx context.Context, log io.Writer) (string, error) {
	if log == nil {
		log = io.Discard
	}
	mirror := DebianMirror()
	key := strings.Join([]string{DebianSuite, DebianVariant, strings.Join(DebianPackages, ","), mirror}, " ")
	sum := sha256.Sum256([]byte(key))
	dir := filepath.Join(CacheDir(), fmt.Sprintf("debian-%x", sum[:6]))
	if _, err := os.Stat(filepath.Join(dir, "sbin", "init")); err == nil {
		fmt.Fprintf(log, "testvm: Debian root cached in %s\n", dir)
		return dir, nil
	}
	ds, err := exec.LookPath("debootstrap")
	if err != nil {
		return "", fmt.Errorf("debootstrap not found: apt-get install debootstrap (%s)", InstallHint)
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return "", err
	}
	start := time.Now()
	fmt.Fprintf(log, "testvm: debootstrap %s (%s) from %s into %s\n", DebianSuite, DebianVariant, mirror, tmp)
	cmd := exec.CommandContext(ctx, ds, "--variant="+DebianVariant, "--include="+strings.Join(DebianPackages, ","), DebianSuite, tmp, mirror)
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("debootstrap %s %s: %v\n%s", DebianSuite, mirror, err, tail(string(out), 20))
	}
	// Downloaded packages are not part of the root.
	debs, _ := filepath.Glob(filepath.Join(tmp, "var/cache/apt/archives/*.deb"))
	for _, d := range debs {
		os.Remove(d)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "testvm: debootstrap took %v\n", time.Since(start).Round(time.Second))
	return dir, nil
}

// debianReport runs once systemd reached multi-user.target: it prints what
// the hnboot init set up, confirms a trial boot, and powers off.
const debianReport = `#!/bin/sh
{
echo "HNTEST booted image=$(cat /etc/hn-image)"
echo "HNTEST hostname=$(cat /etc/hostname) uts=$(hostname)"
echo "HNTEST machine-id=$(cat /etc/machine-id)"
echo "HNTEST uname=$(uname -r)"
echo "HNTEST data0=$(readlink /data0)"
echo "HNTEST hostpart=$(ls /hostpart | tr '\n' ' ')"
echo "HNTEST data0-dir=$(test -d /data0/ && echo yes)"
echo "HNTEST multi-user=$(systemctl is-active multi-user.target)"
echo "HNTEST pid1=$(cat /proc/1/comm)"
# The fleet's files: may name an address the image's networkd is to
# configure (TestPXEIdentityNetworkd): wait for it, then report the
# addresses and the fleet's files.
if [ -f /etc/hntest/want-address ]; then
  want=$(cat /etc/hntest/want-address)
  end=$(($(date +%s) + 60))
  while [ "$(date +%s)" -lt $end ] && ! ip -4 -o addr show | grep -q " inet $want "; do sleep 1; done
fi
echo "HNTEST networkd=$(systemctl is-active systemd-networkd)"
echo "HNTEST addresses=$(ip -4 -o addr show scope global | while read -r n dev fam addr rest; do printf '%s=%s ' "$dev" "$addr"; done)"
for f in /etc/hntest/*; do
  [ -f "$f" ] && echo "HNTEST file $f $(stat -c %a:%U:%G "$f") $(cat "$f" | tr '\n' ' ')"
done
[ -f /etc/hnboot/identity.env ] && echo "HNTEST identity.env $(cat /etc/hnboot/identity.env | tr '\n' ' ')"
if [ -f /hostpart/hn-root.trial ]; then
  echo "HNTEST trial=$(cat /hostpart/hn-root.trial)"
  rm /hostpart/hn-root.trial && echo "HNTEST confirmed"
fi
sync
echo "HNTEST end"
} >/dev/ttyS0 2>&1
systemctl poweroff --no-block
`

const debianReportUnit = `[Unit]
Description=hnboot test report
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/hntest-report

[Install]
WantedBy=multi-user.target
`

// Module directories of the test kernel the Debian image gets (all of
// them would add 390 MB to every image for nothing a VM uses).
var debianModuleDirs = []string{"kernel/fs", "kernel/lib", "kernel/crypto", "kernel/arch", "kernel/block",
	"kernel/drivers/virtio", "kernel/drivers/block", "kernel/drivers/char", "kernel/drivers/net/virtio_net.ko",
	"kernel/drivers/net/net_failover.ko", "kernel/net/core", "kernel/drivers/md",
	"modules.order", "modules.builtin", "modules.builtin.modinfo"}

// DebianImages builds one root image per name (NAME.img in f.Dir) from the
// cached Debian root: the test kernel as boot/vmlinuz-RELEASE with some of
// its modules (debianModuleDirs and the initramfs's, see AddKernel),
// /etc/hn-image = NAME and the report service. "mkimage rootfs --init"
// adds /boot/vmlinuz and /boot/initramfs (checked with CheckBootFiles).
// Only /etc/hn-image differs between them.
func (f *Fixture) DebianImages(ctx context.Context, names ...string) (map[string]string, error) {
	return f.DebianImagesWith(ctx, nil, names...)
}

// File is a file a test adds to an image tree.
type File struct {
	Body []byte
	Mode os.FileMode
}

// DebianImagesWith is DebianImages with extra files (path relative to the
// root: content), written last: "usr/local/sbin/hntest-report" replaces
// the report service's script.
func (f *Fixture) DebianImagesWith(ctx context.Context, extra map[string]File, names ...string) (map[string]string, error) {
	base, err := DebianBase(ctx, f.Log)
	if err != nil {
		return nil, err
	}
	tree := filepath.Join(f.Dir, "debian-tree")
	os.RemoveAll(tree)
	if out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", base, tree).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy %s: %v: %s", base, err, out)
	}
	defer os.RemoveAll(tree)
	mods := filepath.Join(tree, "lib", "modules", f.Release)
	for _, d := range debianModuleDirs {
		src := filepath.Join(f.ModDir, d)
		if _, err := os.Stat(src); err != nil {
			continue
		}
		dst := filepath.Join(mods, d)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		if out, err := exec.CommandContext(ctx, "cp", "-a", src, dst).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("copy modules %s: %v: %s", src, err, out)
		}
	}
	if _, err := AddKernel(tree, f.Kernel, f.ModDir); err != nil {
		return nil, err
	}
	depmod, err := exec.LookPath("depmod")
	if err != nil {
		return nil, fmt.Errorf("depmod not found: apt-get install kmod (%s)", InstallHint)
	}
	if out, err := exec.CommandContext(ctx, depmod, "-b", tree, f.Release).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("depmod -b %s %s: %v: %s", tree, f.Release, err, out)
	}
	files := map[string]File{
		"usr/local/sbin/hntest-report":      {Body: []byte(debianReport), Mode: 0o755},
		"etc/systemd/system/hntest.service": {Body: []byte(debianReportUnit), Mode: 0o644},
	}
	for name, c := range extra {
		files[name] = c
	}
	for name, c := range files {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, c.Body, c.Mode); err != nil {
			return nil, err
		}
	}
	wants := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return nil, err
	}
	for link, unit := range map[string]string{
		filepath.Join(wants, "hntest.service"):                                                 "/etc/systemd/system/hntest.service",
		filepath.Join(wants, "systemd-networkd.service"):                                       "/lib/systemd/system/systemd-networkd.service",
		filepath.Join(tree, "etc/systemd/system/sockets.target.wants/systemd-networkd.socket"): "/lib/systemd/system/systemd-networkd.socket",
	} {
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return nil, err
		}
		if err := os.Symlink(unit, link); err != nil {
			return nil, err
		}
	}
	// No login on the serial console: the getty's vhangup of ttyS0 would
	// cut the report service's output when the report runs long (waiting
	// for networkd).
	if err := os.Symlink("/dev/null", filepath.Join(tree, "etc/systemd/system/serial-getty@ttyS0.service")); err != nil {
		return nil, err
	}
	for _, d := range []string{"hostpart", "boot/loader"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return nil, err
		}
	}
	imgs := map[string]string{}
	for _, name := range names {
		if err := os.WriteFile(filepath.Join(tree, "etc/hn-image"), []byte(name+"\n"), 0o644); err != nil {
			return nil, err
		}
		img := filepath.Join(f.Dir, name+".img")
		start := time.Now()
		if err := f.Run(ctx, "rootfs", "--from", tree, "--out", img, "--init", f.Init); err != nil {
			return nil, err
		}
		if err := f.CheckBootFiles(img, f.Kernel, f.Release); err != nil {
			return nil, err
		}
		fmt.Fprintf(f.Log, "testvm: Debian image %s in %v\n", img, time.Since(start).Round(time.Millisecond))
		imgs[name] = img
	}
	return imgs, nil
}

// DebianUpdateAdd is the package DebianUpdated installs beside the
// upgrades, as an update that adds a tool does.
const DebianUpdateAdd = "less"

// DebianUpdated returns DebianBase after a real security update: inside
// a copy of the tree, apt-get upgrade from the suite, its -updates and
// its -security suites (this machine's Debian and Debian security
// mirrors), and apt-get install DebianUpdateAdd; then apt's lists and
// downloads are removed, as from the base. Made once, kept in
// CacheDir()/debian-update-<hash>. DebianBase is the suite's current
// point release as debootstrap installs it (no -updates, no -security),
// so the difference is the fixes published since that point release.
func DebianUpdated(ctx context.Context, log io.Writer) (string, error) {
	if log == nil {
		log = io.Discard
	}
	base, err := DebianBase(ctx, log)
	if err != nil {
		return "", err
	}
	mirror, security := DebianMirror(), debianSecurityMirror()
	sources := fmt.Sprintf("deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n", mirror, DebianSuite, mirror, DebianSuite, security, DebianSuite)
	sum := sha256.Sum256([]byte(base + "\n" + sources + DebianUpdateAdd))
	dir := filepath.Join(CacheDir(), fmt.Sprintf("debian-update-%x", sum[:6]))
	if _, err := os.Stat(filepath.Join(dir, "sbin", "init")); err == nil {
		fmt.Fprintf(log, "testvm: updated Debian root cached in %s\n", dir)
		return dir, nil
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", base, tmp).CombinedOutput(); err != nil {
		return "", fmt.Errorf("copy %s: %v: %s", base, err, out)
	}
	fail := func(err error) (string, error) { os.RemoveAll(tmp); return "", err }
	if err := os.WriteFile(filepath.Join(tmp, "etc/apt/sources.list"), []byte(sources), 0o644); err != nil {
		return fail(err)
	}
	// No service starts inside the chroot; the resolver of this machine
	// while apt runs.
	policy := filepath.Join(tmp, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return fail(err)
	}
	resolv := filepath.Join(tmp, "etc/resolv.conf")
	oldResolv, rerr := os.ReadFile(resolv)
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		os.Remove(resolv)
		os.WriteFile(resolv, b, 0o644)
	}
	proc := filepath.Join(tmp, "proc")
	if err := unix.Mount("proc", proc, "proc", 0, ""); err != nil {
		return fail(fmt.Errorf("mount proc in %s (needs root): %w", tmp, err))
	}
	start := time.Now()
	fmt.Fprintf(log, "testvm: updating a copy of %s: apt-get upgrade from %s-updates and %s-security, install %s\n", base, DebianSuite, DebianSuite, DebianUpdateAdd)
	var aerr error
	for _, args := range [][]string{
		{"apt-get", "update"},
		{"apt-get", "-y", "-o", "Dpkg::Options::=--force-confold", "upgrade"},
		{"apt-get", "-y", "--no-install-recommends", "install", DebianUpdateAdd},
		{"apt-get", "clean"},
	} {
		cmd := exec.CommandContext(ctx, "chroot", append([]string{tmp}, args...)...)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"}
		if out, err := cmd.CombinedOutput(); err != nil {
			aerr = fmt.Errorf("chroot %s %s: %v\n%s", tmp, strings.Join(args, " "), err, tail(string(out), 20))
			break
		}
	}
	unix.Unmount(proc, unix.MNT_DETACH)
	if aerr != nil {
		return fail(aerr)
	}
	os.Remove(policy)
	os.Remove(resolv)
	if rerr == nil {
		os.WriteFile(resolv, oldResolv, 0o644)
	}
	lists, _ := filepath.Glob(filepath.Join(tmp, "var/lib/apt/lists/*"))
	for _, l := range lists {
		os.RemoveAll(l)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fail(err)
	}
	fmt.Fprintf(log, "testvm: update took %v\n", time.Since(start).Round(time.Second))
	return dir, nil
}

// debianSecurityMirror is the first Debian security URI of the machine's
// apt sources, else deb.debian.org's.
func debianSecurityMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(l), ":")
			if !ok || !strings.EqualFold(k, "URIs") {
				continue
			}
			for _, u := range strings.Fields(v) {
				if strings.HasSuffix(strings.TrimRight(u, "/"), "/debian-security") {
					return u
				}
			}
		}
	}
	return "http://deb.debian.org/debian-security"
}

// DpkgVersions reads a tree's installed packages and their versions.
func DpkgVersions(root string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(root, "var/lib/dpkg/status"))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	var name string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Package: "); ok {
			name = v
		}
		if v, ok := strings.CutPrefix(l, "Version: "); ok && name != "" {
			m[name] = v
		}
	}
	return m, nil
}
