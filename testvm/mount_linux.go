package testvm

import (
	"fmt"
	"os"

	losetup "github.com/freddierice/go-losetup"
	"golang.org/x/sys/unix"
)

// WithHostpart mounts the hostpart partition of a (powered-off) disk image
// read-write on a temporary directory, calls fn, and unmounts it again so
// the next boot sees every change. Needs root, as the tests run in CI.
func WithHostpart(disk string, fn func(dir string) error) error {
	off, _, err := PartitionOffset(disk, "hostpart")
	if err != nil {
		return err
	}
	dev, err := losetup.Attach(disk, uint64(off), false)
	if err != nil {
		return fmt.Errorf("attach %s at offset %d to a loop device: %w (the tests need root)", disk, off, err)
	}
	defer dev.Detach()
	dir, err := os.MkdirTemp("", "hostpart-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := unix.Mount(dev.Path(), dir, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s (hostpart of %s) on %s: %w", dev.Path(), disk, dir, err)
	}
	ferr := fn(dir)
	unix.Sync()
	if err := unix.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return ferr
}
