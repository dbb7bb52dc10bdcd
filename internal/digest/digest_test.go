package digest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	hex64 := strings.Repeat("0a", 32)
	for in, want := range map[string]bool{
		"sha256:" + hex64:                   true,
		hex64:                               false,
		"sha256:" + strings.ToUpper(hex64):  false,
		"sha256:" + hex64[:63]:              false,
		"sha256:" + hex64 + "0":             false,
		"sha256:" + strings.Repeat("g", 64): false,
		"sha512:" + hex64:                   false,
		"":                                  false,
		"sha256:" + hex64[:62] + "\n":       false,
	} {
		if got := Valid(in); got != want {
			t.Errorf("Valid(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("abc"), 0o644)
	var last int64
	got, err := File(p, func(n int64) { last = n })
	// sha256("abc")
	want := "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got != want || err != nil || last != 3 {
		t.Errorf("File = %q, %v (progress %d), want %q, nil (3)", got, err, last, want)
	}
	if Short(got) != "ba7816bf8f01" {
		t.Errorf("Short = %q", Short(got))
	}
	if _, err := File(filepath.Join(t.TempDir(), "none"), nil); err == nil {
		t.Error("File(missing) = nil error")
	}
}
