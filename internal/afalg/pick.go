package afalg

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"runtime"
	"time"
)

// FastestSHA256 returns the faster SHA-256 on this machine, the kernel's
// (when AF_ALG works) or Go's, timed on probe bytes each, and why (for
// the log). It hashes 4*probe bytes: with 256 KiB, ~60 ms under QEMU's
// TCG, ~1 ms natively. The constructor never fails: a kernel
// hash that cannot be opened later gives Go's.
func FastestSHA256(probe int) (func() hash.Hash, string) {
	buf := make([]byte, probe)
	for i := range buf {
		buf[i] = byte(i)
	}
	k, err := NewSHA256()
	if err == nil {
		defer k.Close()
		if got, want := k.Sum(nil), sha256.Sum256(nil); string(got) != string(want[:]) {
			err = fmt.Errorf("afalg: the kernel's sha256 of nothing is %x, Go's %x", got, want)
		}
	}
	// The best of two rounds, alternating: under emulation the first
	// pass over either code also pays for translating it, and a busy
	// host can stall either one.
	var goTook, kernTook time.Duration
	for round := 0; round < 2; round++ {
		goTook = minTook(goTook, timeHash(sha256.New(), buf))
		if err == nil {
			k.Reset()
			kernTook = minTook(kernTook, timeHash(k, buf))
		}
	}
	if err == nil {
		if got, want := k.Sum(nil), sha256.Sum256(buf); string(got) != string(want[:]) {
			err = fmt.Errorf("afalg: the kernel's sha256 of %d bytes is %x, Go's %x", probe, got, want)
		}
	}
	kernel, why := Choose(probe, goTook, kernTook, err)
	if !kernel {
		return sha256.New, why
	}
	return newKernelOrGo, why
}

func minTook(a, b time.Duration) time.Duration {
	if a == 0 || b < a {
		return b
	}
	return a
}

// Choose is FastestSHA256's decision: the kernel's hash when it works
// and took less time than Go's on the same bytes.
func Choose(probe int, goTook, kernTook time.Duration, kernErr error) (kernel bool, why string) {
	rate := func(d time.Duration) string {
		if d <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f MB/s", float64(probe)/1e6/d.Seconds())
	}
	switch {
	case kernErr != nil:
		return false, fmt.Sprintf("Go's sha256 (%s); the kernel's is not usable: %v", rate(goTook), kernErr)
	case kernTook < goTook:
		return true, fmt.Sprintf("the kernel's sha256 (%s; Go's %s)", rate(kernTook), rate(goTook))
	default:
		return false, fmt.Sprintf("Go's sha256 (%s; the kernel's %s)", rate(goTook), rate(kernTook))
	}
}

func timeHash(h hash.Hash, b []byte) time.Duration {
	start := time.Now()
	h.Write(b)
	h.Sum(nil)
	return time.Since(start)
}

// newKernelOrGo is a kernel SHA-256 whose sockets close when it is
// garbage (staging does not close its hash), or Go's if that fails.
func newKernelOrGo() hash.Hash {
	h, err := NewSHA256()
	if err != nil {
		return sha256.New()
	}
	runtime.AddCleanup(h, (*sockets).close, h.sockets)
	return h
}
