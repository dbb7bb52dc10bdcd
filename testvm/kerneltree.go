package testvm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cavaliergopher/cpio"
	"github.com/diskfs/go-diskfs"
	"github.com/klauspost/compress/zstd"

	"github.com/hnboot/hnboot/internal/initrd"
	"github.com/hnboot/hnboot/internal/kmodules"
	"github.com/hnboot/hnboot/internal/layout"
)

// AddKernel puts a kernel into a root tree the way a distribution package
// does: vmlinuz as boot/vmlinuz-RELEASE and, under lib/modules/RELEASE,
// the modules the hnboot initramfs takes (initrd.DefaultModules except
// without, with their dependencies) plus modules.builtin,
// modules.builtin.modinfo and modules.order. "mkimage rootfs" then finds
// the kernel and makes /boot/vmlinuz and /boot/initramfs itself. Only the
// initramfs's modules are copied: the whole tree would add 390 MB to every
// image. modDir is the kernel's lib/modules/RELEASE; it returns the release.
func AddKernel(tree, vmlinuz, modDir string, without ...string) (string, error) {
	rel := filepath.Base(filepath.Clean(modDir))
	if got := strings.TrimPrefix(filepath.Base(vmlinuz), "vmlinuz-"); got != rel {
		return "", fmt.Errorf("kernel %s is release %q, modules %s are %q", vmlinuz, got, modDir, rel)
	}
	if err := copyTreeFile(vmlinuz, filepath.Join(tree, "boot", "vmlinuz-"+rel)); err != nil {
		return "", err
	}
	ix, err := kmodules.Open(modDir, nil)
	if err != nil {
		return "", err
	}
	optional := map[string]bool{}
	var names []string
	for _, m := range initrd.DefaultModules {
		if !slices.Contains(without, m) {
			names = append(names, m)
			optional[m] = true
		}
	}
	set, err := ix.Closure(names, optional)
	if err != nil {
		return "", err
	}
	files := []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"}
	for _, m := range set.Modules {
		files = append(files, filepath.FromSlash(m.Path))
	}
	dst := filepath.Join(tree, "lib", "modules", rel)
	for _, name := range files {
		src := filepath.Join(modDir, name)
		if _, err := os.Stat(src); os.IsNotExist(err) && !strings.HasSuffix(name, ".ko") {
			continue
		}
		if err := copyTreeFile(src, filepath.Join(dst, name)); err != nil {
			return "", err
		}
	}
	return rel, nil
}

// copyTreeFile copies src to dst (mode 0644), making dst's directories.
func copyTreeFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// CheckBootFiles checks that "mkimage rootfs" made the boot files of image
// from the kernel package in its tree: the manifest names release, the
// image's /boot/vmlinuz is vmlinuz, and its /boot/initramfs is an hnboot
// initramfs (this fixture's init as /init) carrying modules of release and
// of no other.
func (f *Fixture) CheckBootFiles(image, vmlinuz, release string) error {
	mb, err := os.ReadFile(layout.ManifestFor(image))
	if err != nil {
		return err
	}
	var m struct {
		KernelRelease string `json:"kernel_release"`
	}
	if err := json.Unmarshal(mb, &m); err != nil {
		return fmt.Errorf("%s: %w", layout.ManifestFor(image), err)
	}
	if m.KernelRelease != release {
		return fmt.Errorf("%s: kernel_release %q, want %q: mkimage did not find the tree's kernel", layout.ManifestFor(image), m.KernelRelease, release)
	}
	kernel, err := ReadImageBytes(image, "boot/vmlinuz")
	if err != nil {
		return err
	}
	want, err := os.ReadFile(vmlinuz)
	if err != nil {
		return err
	}
	if !bytes.Equal(kernel, want) {
		return fmt.Errorf("%s: /boot/vmlinuz (%d bytes) is not %s (%d bytes)", image, len(kernel), vmlinuz, len(want))
	}
	ird, err := ReadImageBytes(image, "boot/initramfs")
	if err != nil {
		return err
	}
	zr, err := zstd.NewReader(bytes.NewReader(ird))
	if err != nil {
		return err
	}
	defer zr.Close()
	initBin, err := os.ReadFile(f.Init)
	if err != nil {
		return err
	}
	var gotInit, gotDep bool
	mods := 0
	cr := cpio.NewReader(zr)
	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: /boot/initramfs: %w", image, err)
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		switch {
		case name == "init":
			b, err := io.ReadAll(cr)
			if err != nil {
				return err
			}
			gotInit = bytes.Equal(b, initBin)
		case name == "lib/modules/"+release+"/modules.dep":
			gotDep = true
		case strings.HasPrefix(name, "lib/modules/") && !strings.HasPrefix(name, "lib/modules/"+release):
			return fmt.Errorf("%s: /boot/initramfs has %s, not of release %s", image, name, release)
		case strings.HasSuffix(name, ".ko"):
			mods++
		}
	}
	if !gotInit || !gotDep || mods == 0 {
		return fmt.Errorf("%s: /boot/initramfs is not the hnboot initramfs for %s: /init is %s's: %v, modules.dep: %v, %d modules", image, release, f.Init, gotInit, gotDep, mods)
	}
	fmt.Fprintf(f.Log, "testvm: %s: /boot/initramfs made by mkimage for %s (%d bytes, %d modules)\n", image, release, len(ird), mods)
	return nil
}

// ReadImageBytes reads one file out of a root image, as ReadImageFile
// does, without trimming it.
func ReadImageBytes(image, name string) ([]byte, error) {
	d, err := diskfs.Open(image, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", image, err)
	}
	defer d.Close()
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		return nil, fmt.Errorf("%s: filesystem: %w", image, err)
	}
	fh, err := fsys.OpenFile(name, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("%s: open %s: %w", image, name, err)
	}
	defer fh.Close()
	return io.ReadAll(fh)
}
