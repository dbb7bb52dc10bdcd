package testvm

import (
	"fmt"
	"os"

	"github.com/hnboot/hnboot/internal/layout"
	"golang.org/x/sys/unix"
)

// attach binds disk[off:off+size] to a free loop device in one
// LOOP_CONFIGURE call. Setting the offset after the fd (LOOP_SET_FD, then
// LOOP_SET_STATUS, as go-losetup does) leaves the first blocks read at
// offset 0 in the page cache, and mount then finds no filesystem.
func attach(disk string, off, size int64) (dev string, detach func(), err error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open /dev/loop-control: %w (the tests need root)", err)
	}
	defer ctl.Close()
	back, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		return "", nil, err
	}
	defer back.Close()
	for tries := 0; tries < 10; tries++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev = fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return "", nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(back.Fd())}
		cfg.Info.Offset = uint64(off)
		cfg.Info.Sizelimit = uint64(size)
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if err == unix.EBUSY {
			lf.Close() // another process took it first
			continue
		}
		if err != nil {
			lf.Close()
			return "", nil, fmt.Errorf("LOOP_CONFIGURE %s on %s: %w", dev, disk, err)
		}
		// Autoclear detaches once the last user (this fd, then the mount)
		// is gone.
		return dev, func() { lf.Close() }, nil
	}
	return "", nil, fmt.Errorf("no free loop device for %s", disk)
}

// WithHostpart mounts the hostpart partition of a (powered-off) disk image
// read-write on a temporary directory, calls fn, and unmounts it again so
// the next boot sees every change. Needs root, as the tests run in CI.
func WithHostpart(disk string, fn func(dir string) error) error {
	off, size, err := PartitionOffset(disk, layout.HostpartLabel)
	if err != nil {
		return err
	}
	dev, detach, err := attach(disk, off, size)
	if err != nil {
		return err
	}
	defer detach()
	dir, err := os.MkdirTemp("", "hostpart-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s (hostpart of %s) on %s: %w", dev, disk, dir, err)
	}
	ferr := fn(dir)
	unix.Sync()
	if err := unix.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return ferr
}
