package testkernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	dir := t.TempDir()
	if _, err := Find(dir); err == nil || !strings.Contains(err.Error(), "scripts/deps.sh") {
		t.Errorf("Find(empty) = %v, want an error pointing at scripts/deps.sh", err)
	}
	os.MkdirAll(filepath.Join(dir, "boot"), 0o755)
	os.WriteFile(filepath.Join(dir, "boot", "vmlinuz-6.1.0-9-amd64"), nil, 0o644)
	if _, err := Find(dir); err == nil || !strings.Contains(err.Error(), "no modules") {
		t.Errorf("Find(no modules) = %v, want an error saying the modules are missing", err)
	}
	os.MkdirAll(filepath.Join(dir, "lib", "modules", "6.1.0-9-amd64"), 0o755)
	k, err := Find(dir)
	if err != nil || k.Release != "6.1.0-9-amd64" || k.Modules != filepath.Join(dir, "lib/modules/6.1.0-9-amd64") {
		t.Errorf("Find = %+v, %v; want release 6.1.0-9-amd64 and its modules dir", k, err)
	}
}

func TestDirs(t *testing.T) {
	t.Setenv("HNBOOT_CACHE", "/c")
	t.Setenv("HNBOOT_KERNEL_DIR", "")
	if got := Dir(); got != "/c/kernel" {
		t.Errorf("Dir() with HNBOOT_CACHE=/c = %q, want /c/kernel", got)
	}
	t.Setenv("HNBOOT_KERNEL_DIR", "/k")
	if got := Dir(); got != "/k" {
		t.Errorf("Dir() with HNBOOT_KERNEL_DIR=/k = %q, want /k", got)
	}
}
