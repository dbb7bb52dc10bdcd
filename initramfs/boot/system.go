package boot

import (
	"context"
	"hash"
	"time"

	"github.com/hnboot/hnboot/initramfs/diskcheck"
	"github.com/hnboot/hnboot/initramfs/netup"
	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/httpget"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/randseed"
)

// System is everything the init does to the machine beyond reading and
// writing files under Paths: mounts, loop devices, modules, the network,
// kexec, switch_root, the clock. The init's main package implements it
// with system calls; the tests with a fake that records the calls, so the
// whole boot runs in milliseconds on a temporary directory.
type System interface {
	// Cmdline is /proc/cmdline.
	Cmdline() (string, error)
	// Release is the running kernel's release (uname -r).
	Release() string

	// LoadHardware loads the disk drivers of the devices present, one at
	// a time and the cheapest first, until found (may be nil) is true.
	LoadHardware(found func() bool)
	// LoadNetworkDrivers loads the drivers of the NICs present; the boot
	// calls it in a goroutine of its own, beside the other calls.
	LoadNetworkDrivers()
	// LoadModules loads modules with their dependencies; absent or
	// built-in ones are only logged.
	LoadModules(why string, names ...string)
	// LoadAll loads every module the initramfs carries (a disk whose
	// driver has no known alias).
	LoadAll()

	// FindPartition finds a block device by LABEL=, UUID=, PARTLABEL= or
	// path, as blkid.Find does on /sys/class/block and /dev.
	FindPartition(spec string) (dev string, info blkid.Info, err error)
	// CheckDisk checks the disk holding the partition dev: GPT,
	// EFI-BOOT, a GRUB config naming image. ok is false when dev is not
	// a partition of a disk (nothing was checked).
	CheckDisk(dev, image string) (rep diskcheck.Report, disk string, ok bool)

	Mount(source, target, fstype, data string, flags uintptr) error
	Unmount(target string) error // lazily (MNT_DETACH)
	MoveMount(from, to string) error
	// Remount changes target's read-only flag.
	Remount(target string, readonly bool) error
	// AttachLoop attaches file to a loop device, read-only.
	AttachLoop(file string) (dev string, detach func() error, err error)
	Sync()
	Sethostname(name string) error

	// KexecLoad loads kernel and initrd ("" for none) with cmdline
	// (kexec_file_load); KexecReboot reboots into them and returns only
	// when that failed (the fake returns nil: the boot is over).
	KexecLoad(kernel, initrd, cmdline string) error
	KexecReboot() error
	// SwitchRoot makes newRoot the root and execs init there; it returns
	// only when that failed (the fake returns nil: the boot is over).
	SwitchRoot(newRoot, init string) error
	// Rescue runs a shell on the console with the reason printed, again
	// and again; the real one never returns.
	Rescue(reason error)

	// BootNIC is the interface with the MAC mac (BOOTIF=), or the first
	// Ethernet interface when mac is "" or not found; it does not wait
	// for drivers.
	BootNIC(mac string) (ifname, addr string, err error)
	// NetUp configures ifname (DHCP unless it has an address) by ctx's
	// deadline.
	NetUp(ctx context.Context, ifname string) (netup.Lease, error)
	// NetDown undoes what NetUp configured (not an address that was
	// there before) and sets the link down, for the image's udev and
	// network manager (netup.Down).
	NetDown(lease netup.Lease) error
	// HTTP is the client for imaged: plain http, every wait bounded.
	HTTP() HTTP
	// SHA256 makes the hash that verifies a download: the faster of the
	// kernel's (AF_ALG) and Go's on this machine, decided once.
	SHA256() func() hash.Hash

	// Random is the kernel's random pool, for the seed on hostpart.
	Random() randseed.Kernel

	Now() time.Time
	Sleep(d time.Duration)
}

// HTTP is the init's HTTP client (*httpget.Client).
type HTTP interface {
	Get(ctx context.Context, url string, offset int64) (*httpget.Response, error)
	Post(ctx context.Context, url, contentType string, body []byte) (*httpget.Response, error)
}

// Paths are where the init works. Run changes files below them directly
// (the tests point them at a temporary directory); everything else goes
// through System. /run moves into the new root with switch_root, so the
// image and overlay mounts stay reachable there.
type Paths struct {
	Hostpart  string // mount point of hostpart; the images live here
	Image     string // the image, mounted read-only
	RW        string // the tmpfs for the overlay's upper and work dirs
	NewRoot   string // the overlay: the root switched to
	Initramfs string // the initramfs root, for its trusted key (layout.TrustedKeyInitramfs)
	// RAM is the tmpfs a diskless host downloads its image into (it plays
	// hostpart's part for that boot); under /run, so it moves into the
	// new root with switch_root and the loop device's file stays there.
	RAM string
	// Proc is /proc, for MemAvailable; "" is /proc.
	Proc string
}

// DefaultPaths are the init's.
var DefaultPaths = Paths{
	Hostpart:  layout.HostpartMount,
	Image:     "/run/hnboot/image",
	RW:        "/run/hnboot/rw",
	NewRoot:   "/newroot",
	Initramfs: "/",
	RAM:       "/run/hnboot/ram",
	Proc:      "/proc",
}
