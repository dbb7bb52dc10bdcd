package initrd

import (
	"bytes"
	"github.com/hnboot/hnboot/internal/kmodules"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/testkernel"
	"github.com/klauspost/compress/zstd"

	"github.com/cavaliergopher/cpio"
)

// kernelDir is the test kernel's module tree (scripts/deps.sh fetches it).
func kernelDir(t *testing.T) string {
	t.Helper()
	return testkernel.Must(t).Modules
}

func staticBinary(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatal("no /bin/busybox (a static binary for the test): run scripts/deps.sh")
	}
	return "/bin/busybox"
}

// compressors are the two ways Build compresses: the zstd command and
// the Go encoder (when there is no zstd command).
func compressors(t *testing.T) map[string]string {
	t.Helper()
	z := ZstdCommand()
	if z == "" {
		t.Fatal("no zstd command: run scripts/deps.sh (apt-get install zstd)")
	}
	return map[string]string{"zstd -19": z, "Go zstd": ""}
}

type entry struct {
	hdr  *cpio.Header
	body []byte
}

func readArchive(t *testing.T, p string) map[string]entry {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	r := cpio.NewReader(zr)
	out := map[string]entry{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := out[h.Name]; dup {
			t.Errorf("archive has %s twice", h.Name)
		}
		out[h.Name] = entry{h, b}
	}
	return out
}

func TestBuildRoundTrip(t *testing.T) {
	for name, z := range compressors(t) {
		t.Run(name, func(t *testing.T) { testBuildRoundTrip(t, z, name) })
	}
}

func testBuildRoundTrip(t *testing.T, zstdCmd, compressor string) {
	kdir := kernelDir(t)
	bb := staticBinary(t)
	out := filepath.Join(t.TempDir(), "initramfs")
	res, err := Build(Options{Out: out, Init: bb, Busybox: bb, ModulesDir: kdir, Modules: []string{"isofs"}, MTime: time.Unix(1700000000, 0), Zstd: zstdCmd})
	if err != nil {
		t.Fatal(err)
	}
	if res.Compressor != compressor {
		t.Errorf("Build().Compressor = %q, want %q", res.Compressor, compressor)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != res.Compressed {
		t.Errorf("Build().Compressed = %d, want the file size %d", res.Compressed, st.Size())
	}
	if res.Compressed > 8<<20 {
		t.Errorf("Build().Compressed = %d, want <= 8 MiB", res.Compressed)
	}
	t.Logf("archive: %d bytes compressed, %d uncompressed, %d modules", res.Compressed, res.Uncompressed, res.Modules)

	ents := readArchive(t, out)
	for _, tt := range []struct {
		name string
		mode cpio.FileMode
	}{
		{"init", cpio.TypeReg | 0o755},
		{"bin/busybox", cpio.TypeReg | 0o755},
		{"bin/sh", cpio.TypeSymlink | 0o777},
		{"dev", cpio.TypeDir | 0o755},
		{"proc", cpio.TypeDir | 0o755},
		{"sys", cpio.TypeDir | 0o755},
		{"run", cpio.TypeDir | 0o755},
		{"tmp", cpio.TypeDir | 0o1777},
		{"newroot", cpio.TypeDir | 0o755},
		{ModulesListPath, cpio.TypeReg | 0o644},
	} {
		e, ok := ents[tt.name]
		if !ok {
			t.Errorf("archive has no %s", tt.name)
			continue
		}
		if e.hdr.Mode != tt.mode {
			t.Errorf("archive %s mode = %o, want %o", tt.name, e.hdr.Mode, tt.mode)
		}
		if e.hdr.ModTime.Unix() != 1700000000 || e.hdr.Uid != 0 {
			t.Errorf("archive %s mtime, uid = %v, %d, want 1700000000, 0", tt.name, e.hdr.ModTime.Unix(), e.hdr.Uid)
		}
	}
	if got := ents["bin/sh"].hdr.Linkname; got != "busybox" {
		t.Errorf("archive bin/sh -> %q, want busybox", got)
	}
	want, _ := os.ReadFile(bb)
	if !bytes.Equal(ents["init"].body, want) {
		t.Errorf("archive init differs from %s", bb)
	}

	list := strings.Fields(string(ents[ModulesListPath].body))
	for _, m := range []string{"virtio_blk", "ext4", "loop", "overlay", "virtio_net", "isofs"} {
		if !contains(list, m) {
			t.Errorf("%s = %q, want it to list %s", ModulesListPath, list, m)
		}
	}

	mdir := path.Join("lib/modules", filepath.Base(kdir))
	dep, ok := ents[path.Join(mdir, "modules.dep")]
	if !ok {
		t.Fatalf("archive has no %s/modules.dep", mdir)
	}
	lines := strings.Split(strings.TrimSpace(string(dep.body)), "\n")
	if len(lines) != res.Modules {
		t.Errorf("modules.dep has %d lines, want %d (Result.Modules)", len(lines), res.Modules)
	}
	var ko int
	for name := range ents {
		if strings.HasSuffix(name, ".ko") {
			ko++
		}
	}
	if ko != res.Modules {
		t.Errorf("archive has %d .ko files, want %d", ko, res.Modules)
	}
	for _, l := range lines {
		p, deps, _ := strings.Cut(l, ":")
		for _, f := range append([]string{p}, strings.Fields(deps)...) {
			if _, ok := ents[path.Join(mdir, f)]; !ok {
				t.Errorf("modules.dep line %q: %s not in the archive", l, f)
			}
		}
	}
	for _, f := range []string{"modules.builtin", "modules.order"} {
		if _, err := os.Stat(filepath.Join(kdir, f)); err == nil {
			if _, ok := ents[path.Join(mdir, f)]; !ok {
				t.Errorf("archive has no %s/%s", mdir, f)
			}
		}
	}
	// Every listed top module has an entry in modules.dep (u-root's
	// Prober finds modules by file name from there).
	for _, m := range list {
		found := false
		for _, l := range lines {
			p, _, _ := strings.Cut(l, ":")
			if strings.TrimSuffix(path.Base(p), ".ko") == m {
				found = true
			}
		}
		if !found {
			t.Errorf("%s lists %s, which has no modules.dep line", ModulesListPath, m)
		}
	}
}

func TestBuildReproducible(t *testing.T) {
	for name, z := range compressors(t) {
		t.Run(name, func(t *testing.T) { testBuildReproducible(t, z) })
	}
}

func testBuildReproducible(t *testing.T, zstdCmd string) {
	kdir := kernelDir(t)
	bb := staticBinary(t)
	dir := t.TempDir()
	var got [2][]byte
	for i := range got {
		out := filepath.Join(dir, "initramfs"+string(rune('a'+i)))
		if _, err := Build(Options{Out: out, Init: bb, Busybox: bb, ModulesDir: kdir, MTime: time.Unix(0, 0), Zstd: zstdCmd}); err != nil {
			t.Fatal(err)
		}
		var err error
		if got[i], err = os.ReadFile(out); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got[0], got[1]) {
		t.Errorf("two builds differ, want byte-identical archives")
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	bb := staticBinary(t)
	for _, tt := range []struct {
		name string
		o    Options
		want string
	}{
		{"missing init", Options{Out: filepath.Join(dir, "a"), Init: filepath.Join(dir, "hninit")}, "--init"},
		{"dynamic init", Options{Out: filepath.Join(dir, "b"), Init: "/bin/ls"}, "dynamically linked"},
		{"missing busybox", Options{Out: filepath.Join(dir, "c"), Init: bb, Busybox: filepath.Join(dir, "nobb")}, "--busybox"},
		{"unknown module", Options{Out: filepath.Join(dir, "d"), Init: bb, ModulesDir: kernelDir(t), Modules: []string{"nonesuch"}}, "nonesuch"},
		{"not a module dir", Options{Out: filepath.Join(dir, "e"), Init: bb, ModulesDir: dir}, "no .ko files"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
			if _, err := os.Stat(tt.o.Out); err == nil {
				t.Errorf("Build(%s) left %s behind", tt.name, tt.o.Out)
			}
			if tmps := temporaries(t, tt.o.Out); len(tmps) > 0 {
				t.Errorf("Build(%s) left %v behind", tt.name, tmps)
			}
		})
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// temporaries lists what Build's atomic writer (durable's temporary file,
// .NAME<random> beside out) left behind.
func temporaries(t *testing.T, out string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestOrderOf(t *testing.T) {
	mods := []*kmodules.Module{{Name: "ext4", Path: "kernel/fs/ext4/ext4.ko"}, {Name: "nls_iso8859_1", Path: "kernel/fs/nls/nls_iso8859-1.ko"}}
	order := "kernel/fs/nls/nls_iso8859-1.ko\nkernel/fs/xfs/xfs.ko\n\nkernel/fs/ext4/ext4.ko\n"
	got, want := string(orderOf([]byte(order), mods)), "kernel/fs/nls/nls_iso8859_1.ko\nkernel/fs/ext4/ext4.ko\n"
	if got != want {
		t.Errorf("orderOf = %q, want %q (the kernel's order, archived modules only, archive paths)", got, want)
	}
}
