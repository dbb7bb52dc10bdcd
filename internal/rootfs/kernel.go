package rootfs

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/initrd"
)

// BootOptions say how the boot files (/boot/vmlinuz, /boot/initramfs) of
// an image that ships a kernel are made.
type BootOptions struct {
	Disabled bool     // leave /boot as it is
	Init     string   // the hnboot init binary (static)
	Busybox  string   // static busybox for the rescue shell; "" for none
	Modules  []string // modules beyond initrd.DefaultModules
	Trust    []byte   // public key installed as the initramfs's trusted key; nil for none
}

// Kernel is a kernel found in a tree.
type Kernel struct {
	Release string
	Image   string // tree path of vmlinuz-RELEASE
	Modules string // tree path of the modules directory
}

// FindKernel looks for boot/vmlinuz-RELEASE with a matching
// lib/modules/RELEASE (or usr/lib/modules/RELEASE in a merged-/usr tree).
// With several, the highest release wins (others are returned in skipped).
func FindKernel(t *Tree) (k Kernel, skipped []string, ok bool) {
	var found []Kernel
	for _, c := range t.Children("boot") {
		name := c[len("boot/"):]
		rel, isK := strings.CutPrefix(name, "vmlinuz-")
		if !isK || rel == "" {
			continue
		}
		e := t.Get(c)
		if e.Link != "" {
			e = t.Get(e.Link)
		}
		if !e.Mode.IsRegular() {
			continue
		}
		for _, m := range []string{"lib/modules/" + rel, "usr/lib/modules/" + rel} {
			if d := t.Get(m); d != nil && d.Mode.IsDir() {
				found = append(found, Kernel{Release: rel, Image: c, Modules: m})
				break
			}
		}
	}
	if len(found) == 0 {
		return Kernel{}, nil, false
	}
	sort.Slice(found, func(i, j int) bool { return versionLess(found[i].Release, found[j].Release) })
	for _, f := range found[:len(found)-1] {
		skipped = append(skipped, f.Release)
	}
	return found[len(found)-1], skipped, true
}

// versionLess compares release strings by their runs of digits as numbers
// ("6.1.0-9" < "6.1.0-10").
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, ra := splitRun(a)
		db, rb := splitRun(b)
		if da != db {
			na, ea := strconv.ParseUint(da, 10, 64)
			nb, eb := strconv.ParseUint(db, 10, 64)
			if ea == nil && eb == nil && na != nb {
				return na < nb
			}
			return da < db
		}
		a, b = ra, rb
	}
	return len(a) < len(b)
}

// splitRun splits s after its leading run of digits or of non-digits.
func splitRun(s string) (string, string) {
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	i := 1
	for i < len(s) && digit(s[i]) == digit(s[0]) {
		i++
	}
	return s[:i], s[i:]
}

type bootFiles struct {
	release   string
	initramfs int64
}

// addBootFiles puts /boot/vmlinuz (a copy of the tree's kernel) and
// /boot/initramfs (the hnboot init with that kernel's modules) in t, so
// GRUB can load both from the loop-mounted image. local is where the
// tree's paths are on disk.
func addBootFiles(t *Tree, local, stage string, o Options, log *slog.Logger) (bootFiles, error) {
	if err := t.Finish(); err != nil {
		return bootFiles{}, err
	}
	k, skipped, ok := FindKernel(t)
	if !ok {
		log.Info("no kernel in the tree (boot/vmlinuz-RELEASE with lib/modules/RELEASE): the image boots with the kernel the loader has")
		return bootFiles{}, nil
	}
	if len(skipped) > 0 {
		log.Warn("several kernels in the tree; the image boots the highest release", "release", k.Release, "skipped", strings.Join(skipped, ","))
	}
	if o.Boot.Init == "" {
		return bootFiles{}, fmt.Errorf("the tree ships kernel %s, and the image needs /boot/initramfs with the hnboot init: give --init PATH (default: hninit beside mkimage), or --no-boot-files", k.Release)
	}
	img := t.Get(k.Image)
	if img.Link != "" {
		img = t.Get(img.Link)
	}
	mtime := img.MTime
	out := filepath.Join(stage, "initramfs")
	mods := filepath.Join(local, filepath.FromSlash(k.Modules))
	log.Info("building /boot/initramfs", "release", k.Release, "modules", mods)
	r, err := initrd.Build(initrd.Options{
		Out:        out,
		Init:       o.Boot.Init,
		Busybox:    o.Boot.Busybox,
		ModulesDir: mods,
		Modules:    o.Boot.Modules,
		Trust:      o.Boot.Trust,
		MTime:      time.Unix(o.Epoch, 0),
		Zstd:       initrd.ZstdCommand(),
		Log:        log,
	})
	if err != nil {
		return bootFiles{}, fmt.Errorf("initramfs for kernel %s: %w", k.Release, err)
	}
	for _, name := range []string{"boot/vmlinuz", "boot/initramfs"} {
		if old := t.Get(name); old != nil {
			log.Info("replacing the tree's own file", "path", "/"+name, "type", old.Type())
			t.unlink(name)
			t.Remove(name)
		}
	}
	t.Add(&Entry{Path: "boot/vmlinuz", Mode: 0o644, MTime: mtime, Size: img.Size, Data: img.Data, dataMode: img.dataMode})
	t.Add(&Entry{Path: "boot/initramfs", Mode: 0o644, MTime: mtime, Size: r.Compressed, Data: out, dataMode: 0o100644})
	log.Info("added /boot/vmlinuz and /boot/initramfs", "release", k.Release, "initramfs_bytes", r.Compressed)
	return bootFiles{release: k.Release, initramfs: r.Compressed}, nil
}
