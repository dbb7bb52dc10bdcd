package afalg

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestChoose(t *testing.T) {
	const probe = 1 << 20
	for _, tc := range []struct {
		name            string
		goT, kernT      time.Duration
		err             error
		kernel          bool
		whyHas, whyHas2 string
	}{
		{"kernel faster (emulation)", 35 * time.Millisecond, 12 * time.Millisecond, nil, true, "the kernel's sha256 (87 MB/s", "Go's 30 MB/s"},
		{"Go faster (SHA-NI)", time.Millisecond, 4 * time.Millisecond, nil, false, "Go's sha256 (1049 MB/s", "the kernel's 262 MB/s"},
		{"equal: Go", time.Millisecond, time.Millisecond, nil, false, "Go's", ""},
		{"no AF_ALG", 35 * time.Millisecond, 0, errors.New("address family not supported"), false, "not usable: address family not supported", ""},
	} {
		kernel, why := Choose(probe, tc.goT, tc.kernT, tc.err)
		if kernel != tc.kernel || !strings.Contains(why, tc.whyHas) || !strings.Contains(why, tc.whyHas2) {
			t.Errorf("%s: Choose = %v, %q; want %v with %q and %q", tc.name, kernel, why, tc.kernel, tc.whyHas, tc.whyHas2)
		}
	}
}

// Where the kernel has no AF_ALG (this machine's may not), the picker
// still gives a working SHA-256: Go's.
func TestFastestSHA256Works(t *testing.T) {
	mk, why := FastestSHA256(64 << 10)
	h := mk()
	h.Write([]byte("abc"))
	if got, want := h.Sum(nil), []byte{0xba, 0x78, 0x16, 0xbf}; string(got[:4]) != string(want) {
		t.Errorf("sha256(abc) = %x... (%s)", got[:4], why)
	}
}
