package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/testkernel"
)

// bzImage makes the first bytes of an x86 bzImage whose version string is
// ver (at 0x200 + ptr).
func bzImage(ver string, ptr uint16) []byte {
	b := make([]byte, 0x200+int(ptr)+len(ver)+1+100)
	binary.LittleEndian.PutUint16(b[bzBootFlag:], 0xaa55)
	copy(b[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(b[bzVersion:], 0x020f)
	binary.LittleEndian.PutUint16(b[bzKernelVersion:], ptr)
	copy(b[0x200+int(ptr):], ver)
	return b
}

func TestKernelRelease(t *testing.T) {
	noMagic := bzImage("6.1.0-55-amd64", 0x3000)
	copy(noMagic[bzHeaderMagic:], "XXXX")
	oldProto := bzImage("6.1.0-55-amd64", 0x3000)
	binary.LittleEndian.PutUint16(oldProto[bzVersion:], 0x0100)
	for _, tt := range []struct {
		name    string
		img     []byte
		want    string
		wantErr string
	}{
		{"debian", bzImage("6.1.0-55-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-1", 0x3020), "6.1.0-55-amd64", ""},
		{"bare", bzImage("6.12.9", 0x100), "6.12.9", ""},
		{"no magic", noMagic, "", "not an x86 bzImage"},
		{"old protocol", oldProto, "", "boot protocol"},
		{"no pointer", bzImage("x", 0), "", "no kernel version string"},
		{"empty string", bzImage("", 0x100), "", "empty"},
		{"short", []byte("MZ"), "", "read bzImage header"},
	} {
		got, err := KernelRelease(bytes.NewReader(tt.img))
		if got != tt.want || (tt.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("KernelRelease(%s) = %q, %v; want %q, error containing %q", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestKernelReleaseTestKernel reads the real test kernels (scripts/deps.sh
// fetches both): the release in the bzImage header is the one in the
// package's file name.
func TestKernelReleaseTestKernel(t *testing.T) {
	m, _ := filepath.Glob(filepath.Join(testkernel.CacheDir(), "kernel*", "boot", "vmlinuz-*"))
	if len(m) == 0 {
		t.Fatalf("no test kernel under %s: %s", testkernel.CacheDir(), testkernel.Hint)
	}
	for _, p := range m {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := KernelRelease(f)
		f.Close()
		if want := strings.TrimPrefix(filepath.Base(p), "vmlinuz-"); got != want || err != nil {
			t.Errorf("KernelRelease(%s) = %q, %v; want %q", p, got, err, want)
		}
	}
}

func TestKexecDecision(t *testing.T) {
	for _, tt := range []struct {
		name     string
		args     map[string]string
		running  string
		image    string
		imageErr error
		want     bool
		why      string
	}{
		{"other release", nil, "6.1.0-56-amd64", "6.1.0-55-amd64", nil, true, "ships kernel 6.1.0-55-amd64, running 6.1.0-56-amd64"},
		{"same release", nil, "6.1.0-56-amd64", "6.1.0-56-amd64", nil, false, "is running"},
		{"already kexeced", map[string]string{"hn.kexeced": "hn-root.img"}, "6.1.0-56-amd64", "6.1.0-55-amd64", nil, false, "already kexec'd once"},
		{"turned off", map[string]string{"hn.nokexec": ""}, "6.1.0-56-amd64", "6.1.0-55-amd64", nil, false, "hn.nokexec"},
		{"no kernel in image", nil, "6.1.0-56-amd64", "", errors.New("image has no /boot/vmlinuz"), false, "no /boot/vmlinuz"},
		{"unknown release", nil, "6.1.0-56-amd64", "", nil, false, "unknown"},
	} {
		got, why := kexecDecision(tt.args, tt.running, tt.image, tt.imageErr)
		if got != tt.want || !strings.Contains(why, tt.why) {
			t.Errorf("kexecDecision(%s) = %v, %q; want %v, reason containing %q", tt.name, got, why, tt.want, tt.why)
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
