package randseed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux is the running kernel's pool: getrandom(2), and /dev/urandom's
// RNDADDENTROPY ioctl (root only) to credit a seed.
type Linux struct{}

// BootID implements Kernel.
func (Linux) BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b)), err
}

// Ready implements Kernel.
func (Linux) Ready(n int) ([]byte, bool, error) {
	b := make([]byte, n)
	got, err := unix.Getrandom(b, unix.GRND_NONBLOCK)
	if errors.Is(err, unix.EAGAIN) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return b[:got], true, nil
}

// Insecure implements Kernel.
func (Linux) Insecure(n int) ([]byte, error) {
	b := make([]byte, n)
	got, err := unix.Getrandom(b, unix.GRND_INSECURE)
	if errors.Is(err, unix.EINVAL) {
		// Before Linux 5.6: /dev/urandom never blocks either.
		f, err := os.Open("/dev/urandom")
		if err != nil {
			return nil, err
		}
		defer f.Close()
		got, err = f.Read(b)
		return b[:got], err
	}
	return b[:got], err
}

// Add implements Kernel.
func (Linux) Add(b []byte, bits int) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if bits == 0 {
		_, err := f.Write(b) // mixed in, not credited
		return err
	}
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+(len(b)+3)&^3)
	binary.NativeEndian.PutUint32(info[0:], uint32(bits))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		return fmt.Errorf("ioctl RNDADDENTROPY: %w", errno)
	}
	return nil
}
