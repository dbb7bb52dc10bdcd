package boot

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/testkernel"
)

// TestImageRelease reads releases out of the real test kernel (scripts/
// deps.sh fetches it), a truncated copy of it, and files that are not
// kernels.
func TestImageRelease(t *testing.T) {
	k := testkernel.Must(t)
	kernel, err := os.ReadFile(k.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		name    string
		path    string
		want    string
		wantErr string
	}{
		{"test kernel", k.Vmlinuz, k.Release, ""},
		// The setup header is there, the version string it points to is not.
		{"truncated", file("truncated", kernel[:1024]), "", "not an x86 bzImage"},
		{"not a kernel", file("initramfs", bytes.Repeat([]byte{0x28, 0xb5, 0x2f, 0xfd}, 256)), "", "not an x86 bzImage"},
		{"short", file("short", []byte("MZ")), "", "not an x86 bzImage"},
		{"missing", filepath.Join(dir, "nope"), "", "image has no /boot/vmlinuz"},
	} {
		got, err := imageRelease(tt.path)
		if got != tt.want || (tt.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("imageRelease(%s) = %q, %v; want %q, error containing %q", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestImageReleaseTestKernels reads every test kernel (scripts/deps.sh
// fetches two, for the kexec test): the release in the bzImage header is
// the one in the package's file name.
func TestImageReleaseTestKernels(t *testing.T) {
	m, _ := filepath.Glob(filepath.Join(testkernel.CacheDir(), "kernel*", "boot", "vmlinuz-*"))
	if len(m) == 0 {
		t.Fatalf("no test kernel under %s: %s", testkernel.CacheDir(), testkernel.Hint)
	}
	for _, p := range m {
		got, err := imageRelease(p)
		if want := strings.TrimPrefix(filepath.Base(p), "vmlinuz-"); got != want || err != nil {
			t.Errorf("imageRelease(%s) = %q, %v; want %q", p, got, err, want)
		}
	}
}

func TestKexecCmdline(t *testing.T) {
	for _, tt := range []struct {
		current, image, want string
	}{
		{"BOOT_IMAGE=(loop)/boot/vmlinuz real_root=/hn-root.img ro console=ttyS0\n", "hn-root.img",
			"BOOT_IMAGE=(loop)/boot/vmlinuz real_root=/hn-root.img ro console=ttyS0 hn.kexeced=hn-root.img"},
		{"console=ttyS0", "hn-root-old.img", "console=ttyS0 hn.kexeced=hn-root-old.img hn.image=hn-root-old.img"},
		{"console=ttyS0 -- single", "hn-root.img", "console=ttyS0 hn.kexeced=hn-root.img -- single"},
	} {
		if got := kexecCmdline(tt.current, tt.image, "hn-root.img"); got != tt.want {
			t.Errorf("kexecCmdline(%q, %q) = %q, want %q", tt.current, tt.image, got, tt.want)
		}
	}
}
