package kmodules

import (
	"bytes"
	"github.com/hnboot/hnboot/internal/testkernel"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// kernelDir is the test kernel's module tree (scripts/deps.sh fetches it).
func kernelDir(t *testing.T) string {
	t.Helper()
	return testkernel.Must(t).Modules
}

func TestParseModinfo(t *testing.T) {
	for _, tt := range []struct {
		name, in          string
		wantName          string
		wantDeps, wantPre []string
		wantAliases       []string
	}{
		{
			name:     "ext4",
			in:       "softdep=pre: crypto-crc32c\x00license=GPL\x00depends=jbd2,mbcache,crc16\x00name=ext4\x00alias=fs-ext4\x00",
			wantName: "ext4", wantDeps: []string{"jbd2", "mbcache", "crc16"},
			wantPre: []string{"crypto-crc32c"}, wantAliases: []string{"fs-ext4"},
		},
		{
			name:     "empty depends, pre and post",
			in:       "depends=\x00softdep=pre: a b post: c\x00name=nls-iso8859-1\x00",
			wantName: "nls_iso8859_1", wantPre: []string{"a", "b"},
		},
		{name: "garbage", in: "\x00\x00noequals\x00"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mi := ParseModinfo([]byte(tt.in))
			if mi.Name != tt.wantName {
				t.Errorf("ParseModinfo(%q).Name = %q, want %q", tt.in, mi.Name, tt.wantName)
			}
			if !slices.Equal(mi.Depends, tt.wantDeps) {
				t.Errorf("ParseModinfo(%q).Depends = %q, want %q", tt.in, mi.Depends, tt.wantDeps)
			}
			if !slices.Equal(mi.SoftPre, tt.wantPre) {
				t.Errorf("ParseModinfo(%q).SoftPre = %q, want %q", tt.in, mi.SoftPre, tt.wantPre)
			}
			if !slices.Equal(mi.Aliases, tt.wantAliases) {
				t.Errorf("ParseModinfo(%q).Aliases = %q, want %q", tt.in, mi.Aliases, tt.wantAliases)
			}
		})
	}
}

func TestReadModinfoKernel(t *testing.T) {
	dir := kernelDir(t)
	mi, err := ReadModinfo(filepath.Join(dir, "kernel/fs/ext4/ext4.ko"))
	if err != nil {
		t.Fatal(err)
	}
	if mi.Name != "ext4" {
		t.Errorf("ReadModinfo(ext4.ko).Name = %q, want ext4", mi.Name)
	}
	for _, d := range []string{"jbd2", "mbcache"} {
		if !slices.Contains(mi.Depends, d) {
			t.Errorf("ReadModinfo(ext4.ko).Depends = %q, want it to contain %q", mi.Depends, d)
		}
	}
	if len(mi.SoftPre) == 0 {
		t.Errorf("ReadModinfo(ext4.ko).SoftPre = %q, want a crc32c soft dependency", mi.SoftPre)
	}
}

func TestReadModinfoCompressed(t *testing.T) {
	dir := kernelDir(t)
	src := filepath.Join(dir, "kernel/fs/ext4/ext4.ko")
	tmp := t.TempDir()
	for _, tt := range []struct{ ext, tool string }{
		{".xz", "xz"}, {".zst", "zstd"}, {".gz", "gzip"},
	} {
		t.Run(tt.ext, func(t *testing.T) {
			if _, err := execLookPath(tt.tool); err != nil {
				t.Skipf("%s not installed", tt.tool)
			}
			out := filepath.Join(tmp, "ext4.ko"+tt.ext)
			if err := compressFile(tt.tool, src, out); err != nil {
				t.Fatal(err)
			}
			mi, err := ReadModinfo(out)
			if err != nil {
				t.Fatal(err)
			}
			if mi.Name != "ext4" {
				t.Errorf("ReadModinfo(%s).Name = %q, want ext4", out, mi.Name)
			}
		})
	}
}

func TestClosureKernel(t *testing.T) {
	ix, err := Open(kernelDir(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		top  string
		want []string // must appear in LoadOrder(top), in this relative order
	}{
		{"ext4", []string{"crc32c_generic", "jbd2", "ext4"}},
		{"virtio_blk", []string{"virtio_ring", "virtio", "virtio_blk"}},
		{"vfat", []string{"fat", "vfat"}},
		{"nls_iso8859-1", []string{"nls_iso8859_1"}},
		{"loop", []string{"loop"}},
	} {
		t.Run(tt.top, func(t *testing.T) {
			s, err := ix.Closure([]string{tt.top}, nil)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range s.LoadOrder(tt.top) {
				got = append(got, m.Name)
			}
			pos := -1
			for _, w := range tt.want {
				i := slices.Index(got, w)
				if i < 0 || i < pos {
					t.Fatalf("LoadOrder(%s) = %q, want %q in that order", tt.top, got, tt.want)
				}
				pos = i
			}
			// Every module comes after all its dependencies.
			for i, n := range got {
				for _, d := range s.edges[normalize(n)] { // direct dependencies, hard and soft
					if j := slices.Index(got, d); j < 0 || j > i {
						t.Errorf("LoadOrder(%s) = %q: %s comes before its dependency %s", tt.top, got, n, d)
					}
				}
			}
			if got[len(got)-1] != normalize(tt.top) {
				t.Errorf("LoadOrder(%s) ends with %q, want %q", tt.top, got[len(got)-1], tt.top)
			}
		})
	}
}

func TestArchivePath(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"kernel/fs/nls/nls_iso8859-1.ko", "kernel/fs/nls/nls_iso8859_1.ko"},
		{"kernel/fs/ext4/ext4.ko", "kernel/fs/ext4/ext4.ko"},
		{"kernel/drivers/x/a-b.ko.zst", "kernel/drivers/x/a_b.ko.zst"},
	} {
		m := &Module{Path: tt.in}
		if got := m.ArchivePath(); got != tt.want {
			t.Errorf("ArchivePath(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestClosureErrors(t *testing.T) {
	ix, err := Open(kernelDir(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ix.Closure([]string{"no_such_module"}, nil); err == nil {
		t.Errorf("Closure(no_such_module) = nil error, want ErrNotFound")
	}
	s, err := ix.Closure([]string{"no_such_module", "loop"}, map[string]bool{"no_such_module": true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Missing, []string{"no_such_module"}) {
		t.Errorf("Closure(optional).Missing = %q, want [no_such_module]", s.Missing)
	}
}

func TestWriteModulesDep(t *testing.T) {
	dir := kernelDir(t)
	ix, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ix.Closure([]string{"ext4", "virtio_blk"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := s.WriteModulesDep(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(s.Modules) {
		t.Errorf("modules.dep has %d lines, want %d", len(lines), len(s.Modules))
	}
	byArchive := map[string]string{}
	for _, m := range s.Modules {
		byArchive[m.ArchivePath()] = m.Path
	}
	var ext4Line string
	for _, l := range lines {
		p, deps, ok := strings.Cut(l, ":")
		if !ok {
			t.Fatalf("modules.dep line %q has no ':'", l)
		}
		for _, f := range append([]string{p}, strings.Fields(deps)...) {
			if _, err := os.Stat(filepath.Join(dir, byArchive[f])); err != nil {
				t.Errorf("modules.dep line %q: %v", l, err)
			}
		}
		if strings.HasSuffix(p, "/ext4.ko") {
			ext4Line = l
		}
	}
	// depmod order: the dependency loaded last comes first; crc32c_generic
	// (soft) must be there.
	if !strings.Contains(ext4Line, "crc32c_generic.ko") {
		t.Errorf("modules.dep ext4 line = %q, want crc32c_generic.ko among its deps", ext4Line)
	}
	if !strings.HasSuffix(ext4Line, "crc32c_generic.ko") {
		t.Errorf("modules.dep ext4 line = %q, want crc32c_generic.ko last (it has no deps and loads first)", ext4Line)
	}
}
