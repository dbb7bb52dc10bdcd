package initrd

import (
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/u-root/u-root/pkg/kmodule"
)

// TestProberDryRun unpacks the archive and has u-root's kmodule.Prober (a
// modprobe-compatible loader; the init reads the same modules.dep with its
// own finit_module loop) resolve every module of /etc/hnboot-modules in
// dry-run mode: each must resolve, with its dependencies first.
func TestProberDryRun(t *testing.T) {
	kdir := kernelDir(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "initramfs")
	res, err := Build(Options{Out: out, Init: staticBinary(t), ModulesDir: kdir, MTime: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	for name, e := range readArchive(t, out) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch e.hdr.Mode & cpio.ModeType {
		case cpio.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case cpio.TypeReg:
			if err := os.WriteFile(p, e.body, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The Prober loads in parallel: the callback needs a lock.
	var (
		mu     sync.Mutex
		loaded []string
	)
	p, err := kmodule.NewProber(kmodule.ProbeOpts{
		RootDir:        root,
		KVer:           res.Release,
		IgnoreProcMods: true,
		DryRunCB: func(m string) {
			mu.Lock()
			defer mu.Unlock()
			loaded = append(loaded, strings.TrimSuffix(path.Base(m), ".ko"))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range res.Top {
		if err := p.Probe(m, ""); err != nil {
			t.Errorf("Prober.Probe(%s) = %v", m, err)
		}
	}
	for _, tt := range []struct{ before, after string }{
		{"crc32c_generic", "ext4"}, {"jbd2", "ext4"}, {"virtio_ring", "virtio_blk"}, {"fat", "vfat"},
	} {
		i, j := slices.Index(loaded, tt.before), slices.Index(loaded, tt.after)
		if i < 0 || j < 0 || i > j {
			t.Errorf("dry-run load order = %q, want %s before %s", loaded, tt.before, tt.after)
		}
	}
	if len(loaded) != res.Modules {
		t.Errorf("dry run loaded %d modules (%q), want all %d in the archive", len(loaded), loaded, res.Modules)
	}
}
