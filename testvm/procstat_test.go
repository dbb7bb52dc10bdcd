package testvm

import (
	"os"
	"testing"
)

// PeakRSS(self) is this test binary's VmHWM: above a MiB (a Go binary
// running tests is bigger), and 0 for a process that does not exist.
func TestPeakRSS(t *testing.T) {
	if got := PeakRSS(os.Getpid()); got < 1024 {
		t.Errorf("PeakRSS(self) = %d KiB, want > 1024", got)
	}
	if got := PeakRSS(1 << 30); got != 0 {
		t.Errorf("PeakRSS(no such pid) = %d, want 0", got)
	}
}
