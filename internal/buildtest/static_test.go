package buildtest

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Static reports why the ELF file at path is not statically linked: a
// program interpreter (PT_INTERP, the dynamic loader) or needed shared
// libraries (DT_NEEDED).
func static(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			p.ReadAt(b, 0)
			return fmt.Errorf("%s is dynamically linked: it needs the loader %s", path, string(b[:max(len(b)-1, 0)]))
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(libs) > 0 {
		return fmt.Errorf("%s is dynamically linked: it needs %v", path, libs)
	}
	return nil
}

// repoRoot is the directory of go.mod.
func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// `make build` (the Makefile's own recipe, into a temporary BIN) makes
// three static binaries.
func TestMakeBuildIsStatic(t *testing.T) {
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Fatalf("make is not installed: %v (apt-get install make)", err)
	}
	bin := t.TempDir()
	cmd := exec.Command(makeBin, "-s", "build", "BIN="+bin)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build BIN=%s: %v\n%s", bin, err, out)
	}
	for _, name := range []string{"hninit", "mkimage", "imaged"} {
		if err := static(filepath.Join(bin, name)); err != nil {
			t.Errorf("%v: build it with CGO_ENABLED=0 (the Makefile's GOFLAGS_STATIC)", err)
		}
	}
}

// The check itself: a dynamically linked program fails it.
func TestStaticRejectsDynamic(t *testing.T) {
	for _, p := range []string{"/bin/sh", "/usr/bin/env"} {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if err := static(p); err == nil {
			t.Errorf("static(%s) = nil, want it found dynamically linked", p)
		}
		return
	}
	t.Fatal("no dynamically linked program (/bin/sh, /usr/bin/env) to check the check with")
}
