// Package testkernel finds the Debian kernel that scripts/deps.sh unpacks
// for the tests (boot/vmlinuz-REL and lib/modules/REL under the cache), so
// every test looks in the same place and fails with the same hint.
package testkernel

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Hint is what a test without its kernel tells the user to run.
const Hint = "run scripts/deps.sh (as root) to install the tools and fetch the test kernels"

// CacheDir is HNBOOT_CACHE, else /var/cache/hnboot.
func CacheDir() string {
	if c := os.Getenv("HNBOOT_CACHE"); c != "" {
		return c
	}
	return "/var/cache/hnboot"
}

// Dir is HNBOOT_KERNEL_DIR, else CacheDir()/kernel.
func Dir() string {
	if d := os.Getenv("HNBOOT_KERNEL_DIR"); d != "" {
		return d
	}
	return filepath.Join(CacheDir(), "kernel")
}

// Kernel is one unpacked kernel package.
type Kernel struct {
	Vmlinuz string // boot/vmlinuz-Release
	Release string
	Modules string // lib/modules/Release
}

// Find returns the kernel unpacked in dir.
func Find(dir string) (Kernel, error) {
	m, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(m) == 0 {
		return Kernel{}, fmt.Errorf("no test kernel in %s/boot: %s", dir, Hint)
	}
	k := Kernel{Vmlinuz: m[len(m)-1]}
	k.Release = strings.TrimPrefix(filepath.Base(k.Vmlinuz), "vmlinuz-")
	k.Modules = filepath.Join(dir, "lib", "modules", k.Release)
	if _, err := os.Stat(k.Modules); err != nil {
		return Kernel{}, fmt.Errorf("test kernel %s has no modules: %w (%s)", k.Vmlinuz, err, Hint)
	}
	return k, nil
}

// Must is Find(Dir()) for a test: it fails the test when the kernel is
// missing, never skips it.
func Must(t testing.TB) Kernel {
	t.Helper()
	k, err := Find(Dir())
	if err != nil {
		t.Fatal(err)
	}
	return k
}
