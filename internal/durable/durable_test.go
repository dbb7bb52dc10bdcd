package durable

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "f")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, data := range []string{"one", "two, longer", ""} {
		if err := WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != data {
			t.Fatalf("ReadFile = %q, %v, want %q", got, err, data)
		}
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want 1 (no temporary file left)", len(ents))
	}
}

func TestWriteFileConcurrent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- WriteFile(p, []byte(strings.Repeat("x", i+1)), 0o644)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	got, _ := os.ReadFile(p)
	if len(got) == 0 || strings.Trim(string(got), "x") != "" {
		t.Errorf("content %q is not one writer's", got)
	}
}

func TestCreateCleanup(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "big")
	f, err := Create(p, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("partial"))
	f.Cleanup()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("Cleanup left %v", ents)
	}
}

func TestErrorsNameThePath(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no", "such")
	for name, err := range map[string]error{
		"WriteFile": WriteFile(missing, nil, 0o644),
		"Rename":    Rename(missing, filepath.Join(dir, "x")),
		"Link":      Link(missing, filepath.Join(dir, "x")),
	} {
		var pe *os.PathError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), missing) || strings.Count(err.Error(), missing) != 1 {
			t.Errorf("%s: error %v: want one *os.PathError naming %s once", name, err, missing)
		}
	}
	if err := Remove(missing); err != nil {
		t.Errorf("Remove of a missing file in a missing directory: %v, want nil", err)
	}
}
