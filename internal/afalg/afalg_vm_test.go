//go:build vmtest

// These run in QEMU on the test kernel (testvm's TestKernelSHA256 builds
// them with -tags vmtest): the machines the project builds on have no
// AF_ALG in their kernel.

package afalg

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

// The kernel's SHA-256 agrees with Go's over writes of every shape, Sum
// leaves the state alone, and Reset starts over.
func TestSHA256(t *testing.T) {
	h, err := NewSHA256()
	if err != nil {
		t.Fatalf("%v (the test kernel needs AF_ALG hash support: modprobe algif_hash)", err)
	}
	defer h.Close()
	data := make([]byte, 3<<20+17)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	for _, tc := range []struct {
		name   string
		pieces []int
	}{
		{"empty", nil},
		{"one byte", []int{1}},
		{"one block", []int{64}},
		{"odd pieces", []int{1, 63, 65, 4095, 4097, 100000}},
		{"large", []int{len(data)}},
	} {
		h.Reset()
		ref := sha256.New()
		off := 0
		for i, n := range tc.pieces {
			if n, err := h.Write(data[off : off+n]); err != nil || n != tc.pieces[i] {
				t.Fatalf("%s: Write = %d, %v", tc.name, n, err)
			}
			ref.Write(data[off : off+n])
			off += n
			// Sum in the middle must not change the state.
			if got, want := h.Sum(nil), ref.Sum(nil); !bytes.Equal(got, want) {
				t.Fatalf("%s: after %d bytes: Sum = %x, want %x", tc.name, off, got, want)
			}
		}
		if got, want := h.Sum([]byte("x")), ref.Sum([]byte("x")); !bytes.Equal(got, want) {
			t.Errorf("%s: Sum = %x, want %x", tc.name, got, want)
		}
	}
}

func TestUnknownAlgorithm(t *testing.T) {
	if h, err := New("no-such-hash", 32, 64); err == nil {
		h.Close()
		t.Fatal("New(no-such-hash) succeeded")
	}
}
