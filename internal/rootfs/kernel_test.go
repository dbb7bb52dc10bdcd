package rootfs

import (
	"bytes"
	"context"
	"github.com/hnboot/hnboot/internal/testkernel"
	"github.com/klauspost/compress/zstd"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// kernelTree writes a tree shipping the test kernel (scripts/deps.sh puts
// Debian's in /var/cache/hnboot/kernel) with a few of its modules.
func kernelTree(t *testing.T, dir string) (release string, vmlinuz []byte) {
	t.Helper()
	k := testkernel.Must(t)
	release, mods := k.Release, k.Modules
	for _, p := range []string{"modules.builtin", "modules.order", "kernel/drivers/block/loop.ko", "kernel/fs/overlayfs/overlay.ko"} {
		b, err := os.ReadFile(filepath.Join(mods, p))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, "usr/lib/modules", release, p)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/lib", filepath.Join(dir, "lib")); err != nil {
		t.Fatal(err)
	}
	vmlinuz, err := os.ReadFile(k.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "boot"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "boot", "vmlinuz-"+release), vmlinuz, 0o644); err != nil {
		t.Fatal(err)
	}
	return release, vmlinuz
}

func TestBootFiles(t *testing.T) {
	tmp := t.TempDir()
	tree := filepath.Join(tmp, "tree")
	release, vmlinuz := kernelTree(t, tree)
	init := filepath.Join(tmp, "init")
	if err := os.WriteFile(init, []byte("#!/bin/sh\necho test init\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(tmp, "k.img")
	trust := []byte("hnboot-ed25519-public AAAA\n")
	res, err := Build(context.Background(), Options{From: tree, Out: img, Epoch: 1700000000, HasEpoch: true,
		Boot: BootOptions{Init: init, Trust: trust}})
	if err != nil {
		t.Fatal(err)
	}
	if res.KernelRelease != release || res.Initramfs == 0 {
		t.Errorf("Build().KernelRelease, Initramfs = %q, %d, want %q and an initramfs", res.KernelRelease, res.Initramfs, release)
	}
	dir := t.TempDir()
	for _, p := range []string{"vmlinuz", "initramfs"} {
		if out, err := exec.Command("/sbin/debugfs", "-R", "dump /boot/"+p+" "+filepath.Join(dir, p), img).CombinedOutput(); err != nil {
			t.Fatalf("debugfs dump /boot/%s: %v: %s", p, err, out)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "vmlinuz")); !bytes.Equal(got, vmlinuz) {
		t.Errorf("image /boot/vmlinuz: %d bytes, want the tree's vmlinuz-%s (%d bytes)", len(got), release, len(vmlinuz))
	}
	f, err := os.Open(filepath.Join(dir, "initramfs"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		t.Fatalf("image /boot/initramfs: %v", err)
	}
	defer zr.Close()
	cpio, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("image /boot/initramfs is not zstd: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]byte{[]byte("echo test init"), []byte("lib/modules/" + release + "/kernel/drivers/block/loop.ko"), []byte("etc/hnboot/trusted.pub"), trust} {
		if !bytes.Contains(cpio, want) {
			t.Errorf("image /boot/initramfs lacks %q", want)
		}
	}
	// Without an init the build says how to get one.
	if _, err := Build(context.Background(), Options{From: tree, Out: filepath.Join(tmp, "x.img")}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("--init")) {
		t.Errorf("Build(kernel tree, no init) = %v, want an error naming --init", err)
	}
	if res, err := Build(context.Background(), Options{From: tree, Out: filepath.Join(tmp, "y.img"), Boot: BootOptions{Disabled: true}}); err != nil || res.KernelRelease != "" {
		t.Errorf("Build(--no-boot-files) = %+v, %v, want no kernel handling", res, err)
	}
}
