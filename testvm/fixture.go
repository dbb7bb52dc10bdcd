package testvm

import (
	"bytes"
	"context"
	"fmt"
	"github.com/hnboot/hnboot/internal/testkernel"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// KernelDir is where scripts/deps.sh unpacks the test kernel: Debian's
// linux-image-amd64, with boot/vmlinuz-* and lib/modules/<release>.
func KernelDir() string { return testkernel.Dir() }

// Kernel finds the test kernel and its release.
func Kernel() (vmlinuz, release string, err error) {
	k, err := testkernel.Find(KernelDir())
	return k.Vmlinuz, k.Release, err
}

// Fixture is everything the end-to-end tests boot, built once per run.
type Fixture struct {
	Dir       string
	Kernel    string
	Release   string
	ModDir    string // lib/modules/<release> of the test kernel
	Init      string // the static hnboot init
	MkImage   string
	Imaged    string
	Initramfs string
	Log       io.Writer // build progress; nil discards
}

// ModuleRoot is the directory of this repository's go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the hnboot module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

// Build compiles the init, mkimage and imaged into dir and builds the
// initramfs for the test kernel.
func Build(ctx context.Context, dir string, log io.Writer) (*Fixture, error) {
	if log == nil {
		log = io.Discard
	}
	if _, err := QEMU(); err != nil {
		return nil, err
	}
	kernel, rel, err := Kernel()
	if err != nil {
		return nil, err
	}
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	f := &Fixture{
		Dir: dir, Kernel: kernel, Release: rel,
		ModDir:    filepath.Join(KernelDir(), "lib", "modules", rel),
		Init:      filepath.Join(dir, "bin", "hninit"),
		MkImage:   filepath.Join(dir, "bin", "mkimage"),
		Imaged:    filepath.Join(dir, "bin", "imaged"),
		Initramfs: filepath.Join(dir, "initramfs.cpio.zst"),
		Log:       log,
	}
	for out, pkg := range map[string]string{f.Init: "./initramfs", f.MkImage: "./cmd/mkimage", f.Imaged: "./cmd/imaged"} {
		// Stripped: the init is most of the initramfs.
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOAMD64=v1")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	fmt.Fprintf(log, "testvm: built %s, %s\n", f.Init, f.MkImage)
	if err := f.Run(ctx, "initramfs", "--kernel-modules", f.ModDir, "--init", f.Init, "--out", f.Initramfs); err != nil {
		return nil, err
	}
	return f, nil
}

// Run runs mkimage with args.
func (f *Fixture) Run(ctx context.Context, args ...string) error {
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, f.MkImage, args...)
	cmd.Stdout = io.MultiWriter(&buf, f.Log)
	cmd.Stderr = io.MultiWriter(&buf, f.Log)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("mkimage %s: %v\n%s", strings.Join(args, " "), err, buf.String())
	}
	return nil
}

// RootOptions shape a test root image.
type RootOptions struct {
	Name    string // printed by the image's init as image=NAME
	Confirm bool   // the image's init removes hn-root.trial (a healthy image)
}

// testInit is /sbin/init of the test images: it reports what the hnboot
// init set up, confirms the trial boot when the image is "healthy", and
// powers off so the test can look at the disk.
const testInit = `#!/bin/sh
export PATH=/bin:/sbin
echo "HNTEST booted image=$(cat /etc/hn-image)"
echo "HNTEST hostname=$(cat /etc/hostname)"
echo "HNTEST uts=$(hostname)"
echo "HNTEST machine-id=$(cat /etc/machine-id)"
echo "HNTEST uname=$(uname -r)"
echo "HNTEST sshkey=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub)"
echo "HNTEST data0=$(readlink /data0)"
echo "HNTEST hostpart=$(ls /hostpart | tr '\n' ' ')"
grep -q ' /hostpart ' /proc/mounts && echo "HNTEST hostpart-mounted"
test -e /hostpart || echo "HNTEST no-hostpart"
test -e /data0 || test -L /data0 || echo "HNTEST no-data0"
grep -q 'LABEL=EFI-BOOT /boot/loader' /etc/fstab && echo "HNTEST fstab-ok"
for f in /etc/hntest/*; do
  [ -f "$f" ] && echo "HNTEST file $f $(tr '\n' ' ' <"$f")"
done
[ -f /etc/hnboot/identity.env ] && echo "HNTEST identity.env $(tr '\n' ' ' </etc/hnboot/identity.env)"
if [ -f /hostpart/hn-root.trial ]; then
  echo "HNTEST trial=$(cat /hostpart/hn-root.trial)"
  if [ -e /etc/hn-confirm ]; then rm /hostpart/hn-root.trial && echo "HNTEST confirmed"; fi
fi
sync
echo "HNTEST end"
poweroff -f
`

var applets = []string{"sh", "cat", "echo", "ls", "rm", "cut", "tr", "grep", "readlink",
	"hostname", "sync", "poweroff", "reboot", "mount", "umount", "uname", "sleep", "sha256sum", "mkdir"}

// RootTree writes a small busybox root to dir.
func RootTree(dir string, o RootOptions) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox not found: %s", InstallHint)
	}
	for _, d := range []string{"bin", "sbin", "etc/ssh", "dev", "proc", "sys", "run", "tmp", "hostpart", "boot/loader", "var"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			return err
		}
	}
	files := map[string]string{
		"sbin/init":    testInit,
		"etc/hn-image": o.Name + "\n",
		"etc/fstab":    "# test image\n",
		"etc/hostname": "template\n",
	}
	if o.Confirm {
		files["etc/hn-confirm"] = ""
	}
	for name, body := range files {
		mode := os.FileMode(0o644)
		if name == "sbin/init" {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), mode); err != nil {
			return err
		}
	}
	return nil
}

// RootImage builds a test root image NAME.img in f.Dir.
func (f *Fixture) RootImage(ctx context.Context, o RootOptions) (string, error) {
	tree := filepath.Join(f.Dir, "tree-"+o.Name)
	os.RemoveAll(tree)
	if err := RootTree(tree, o); err != nil {
		return "", err
	}
	img := filepath.Join(f.Dir, o.Name+".img")
	if err := f.Run(ctx, "rootfs", "--from", tree, "--out", img); err != nil {
		return "", err
	}
	return img, nil
}

// PartitionOffset returns the byte offset and size of the GPT partition
// named name in disk.
func PartitionOffset(disk, name string) (off, size int64, err error) {
	d, err := diskfs.Open(disk, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", disk, err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		return 0, 0, fmt.Errorf("%s: partition table: %w", disk, err)
	}
	t, ok := pt.(*gpt.Table)
	if !ok {
		return 0, 0, fmt.Errorf("%s: not a GPT disk", disk)
	}
	for _, p := range t.Partitions {
		if p.Name == name {
			return p.GetStart(), p.GetSize(), nil
		}
	}
	return 0, 0, fmt.Errorf("%s: no partition named %q", disk, name)
}

// dropPartition removes the GPT entry named name (its data stays), to make
// a disk that lacks, say, EFI-BOOT.
func dropPartition(disk, name string) error {
	d, err := diskfs.Open(disk)
	if err != nil {
		return fmt.Errorf("open %s: %w", disk, err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		return fmt.Errorf("%s: partition table: %w", disk, err)
	}
	t, ok := pt.(*gpt.Table)
	if !ok {
		return fmt.Errorf("%s: not a GPT disk", disk)
	}
	var keep []*gpt.Partition
	for _, p := range t.Partitions {
		if p.Name != name {
			keep = append(keep, p)
		}
	}
	if len(keep) == len(t.Partitions) {
		return fmt.Errorf("%s: no partition named %q", disk, name)
	}
	t.Partitions = keep
	if err := d.Partition(t); err != nil {
		return fmt.Errorf("%s: rewrite GPT: %w", disk, err)
	}
	return nil
}

// ReadImageFile reads one file out of an ext4 or squashfs root image with
// go-diskfs, without mounting it. name is relative ("etc/hn-image").
func ReadImageFile(image, name string) (string, error) {
	d, err := diskfs.Open(image, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return "", fmt.Errorf("open %s: %w", image, err)
	}
	defer d.Close()
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		return "", fmt.Errorf("%s: filesystem: %w", image, err)
	}
	f, err := fsys.OpenFile(name, os.O_RDONLY)
	if err != nil {
		return "", fmt.Errorf("%s: open %s: %w", image, name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return strings.TrimSpace(string(b)), err
}
