// Package afalg hashes with the kernel's crypto API (AF_ALG sockets,
// algif_hash) behind hash.Hash.
//
// Why: under emulation (QEMU TCG, where the project's boots run and where
// many small VMs live) Go's SHA-256 assembly is emulated instruction by
// instruction and runs at ~30 MB/s, while the kernel's C implementation
// runs ~2-3x faster. The init hashes every byte it downloads, so the
// hash, not the network, was the speed of an image download at boot. On
// real hardware Go's SHA-NI code is usually the faster one: callers pick
// with Faster, by measurement, not by assumption.
package afalg

import (
	"fmt"
	"hash"

	"golang.org/x/sys/unix"
)

// Hash is a kernel hash transform as a hash.Hash. Each Write is one
// send(2) with MSG_MORE: the kernel keeps the state between writes.
// Sum clones that state (accept(2) on the operation socket) and reads the
// digest from the clone, so Sum does not change what was written, as
// hash.Hash requires.
type Hash struct {
	alg string
	*sockets
	size  int
	block int
	err   error // the first failed write or reset (see Write)
}

// New opens the kernel's transform alg ("sha256", or a driver name such
// as "sha256-generic"). size and block are the digest and block sizes the
// algorithm has (hash.Hash reports them; the kernel is not asked). It
// fails when the kernel has no AF_ALG (CONFIG_CRYPTO_USER_API_HASH, the
// algif_hash module, not loaded) or no such algorithm.
func New(alg string, size, block int) (*Hash, error) {
	tfm, err := unix.Socket(unix.AF_ALG, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("afalg: socket(AF_ALG): %w (the kernel needs CONFIG_CRYPTO_USER_API_HASH: load algif_hash)", err)
	}
	if err := unix.Bind(tfm, &unix.SockaddrALG{Type: "hash", Name: alg}); err != nil {
		unix.Close(tfm)
		return nil, fmt.Errorf("afalg: bind hash %q: %w", alg, err)
	}
	h := &Hash{alg: alg, sockets: &sockets{tfm: tfm, op: -1}, size: size, block: block}
	if err := h.open(); err != nil {
		unix.Close(tfm)
		return nil, err
	}
	return h, nil
}

// NewSHA256 is New("sha256", 32, 64).
func NewSHA256() (*Hash, error) { return New("sha256", 32, 64) }

func (h *Hash) open() error {
	op, err := accept(h.tfm)
	if err != nil {
		return fmt.Errorf("afalg: accept on hash %q: %w", h.alg, err)
	}
	h.op, h.err = op, nil
	return nil
}

// accept without a peer address: x/sys/unix's Accept decodes one, and
// AF_ALG has none it knows.
func accept(fd int) (int, error) {
	for {
		r, _, e := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(r), nil
	}
}

// Write hashes p. An error from the kernel is kept and returned by every
// later Write and by Digest; Sum, which cannot return one, then returns
// a digest of nothing, so a caller comparing digests sees a mismatch.
func (h *Hash) Write(p []byte) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	n := 0
	for n < len(p) {
		m, err := unix.SendmsgN(h.op, p[n:], nil, nil, unix.MSG_MORE)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			h.err = fmt.Errorf("afalg: %s: send: %w", h.alg, err)
			return n, h.err
		}
		n += m
	}
	return n, nil
}

// Digest is the digest of what was written so far.
func (h *Hash) Digest() ([]byte, error) {
	if h.err != nil {
		return nil, h.err
	}
	clone, err := accept(h.op)
	if err != nil {
		return nil, fmt.Errorf("afalg: %s: clone state: %w", h.alg, err)
	}
	defer unix.Close(clone)
	d := make([]byte, h.size)
	// The clone carries the "more data follows" state; reading finalizes
	// it (an empty clone hashes nothing).
	n, err := unix.Read(clone, d)
	if err != nil {
		return nil, fmt.Errorf("afalg: %s: read digest: %w", h.alg, err)
	}
	if n != h.size {
		return nil, fmt.Errorf("afalg: %s: digest of %d bytes, want %d", h.alg, n, h.size)
	}
	return d, nil
}

// Sum appends the digest to b (see Write for errors).
func (h *Hash) Sum(b []byte) []byte {
	d, err := h.Digest()
	if err != nil {
		return append(b, make([]byte, h.size)...)
	}
	return append(b, d...)
}

// Reset starts over with nothing written.
func (h *Hash) Reset() {
	if h.op >= 0 {
		unix.Close(h.op)
		h.op = -1
	}
	if err := h.open(); err != nil {
		h.err = err
	}
}

func (h *Hash) Size() int      { return h.size }
func (h *Hash) BlockSize() int { return h.block }

// Close releases both sockets.
func (h *Hash) Close() error {
	h.sockets.close()
	return nil
}

// sockets are a Hash's file descriptors, apart so a cleanup can close
// the current ones without keeping the Hash alive.
type sockets struct {
	tfm int // the bound transform socket
	op  int // the operation socket holding the running state; -1 for none
}

func (s *sockets) close() {
	if s.op >= 0 {
		unix.Close(s.op)
		s.op = -1
	}
	if s.tfm >= 0 {
		unix.Close(s.tfm)
		s.tfm = -1
	}
}

var _ hash.Hash = (*Hash)(nil)
