// Command bench measures the boot path side by side with a reference: the
// hnboot init against a busybox shell /init doing the same steps (load the
// same modules, find and mount hostpart, rotate with mv, loop-mount the
// image read-only, overlay, switch_root), median of 5 QEMU boots each, plus
// the initramfs sizes. Run it with `make bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/hnboot/hnboot/testvm"
)

// options are the flags: -boots and -only make a shorter run while
// working on one table.
type options struct {
	boots int
	only  string // "", "boot" or "fetch"
	// console prints the hnboot init's lines of every boot to stderr:
	// with their timestamps, the time of each step.
	console bool
	// fetchRuns is the download table's boots per vCPU count.
	fetchRuns int
}

// refInit is the reference: what a careful shell linuxrc does.
const refInit = `#!/bin/sh
/bin/busybox mkdir -p /proc /sys /dev /run
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
echo "REF init-start $(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /etc/hnboot-modules); do modprobe $m 2>/dev/null; done
until dev=$(findfs LABEL=hostpart 2>/dev/null); do sleep 0.1; done
mkdir -p /hostpart /run/img /run/rw /newroot
mount -t ext4 -o noatime $dev /hostpart
cd /hostpart
if [ -f hn-root-new.img ]; then mv hn-root.img hn-root-old.img; mv hn-root-new.img hn-root.img; fi
cd /
loop=$(losetup -f)
losetup -r $loop /hostpart/hn-root.img
mount -t ext4 -o ro $loop /run/img
mount -t tmpfs tmpfs /run/rw
mkdir -p /run/rw/u /run/rw/w
mount -t overlay overlay -o lowerdir=/run/img,upperdir=/run/rw/u,workdir=/run/rw/w /newroot
mkdir -p /newroot/hostpart
mount --move /hostpart /newroot/hostpart
echo "REF switch-root $(cut -d' ' -f1 /proc/uptime)"
exec switch_root /newroot /sbin/init
`

func main() {
	var o options
	flag.IntVar(&o.boots, "boots", 5, "QEMU boots per side (the median is reported)")
	flag.StringVar(&o.only, "only", "", `"boot" or "fetch": only that table`)
	flag.IntVar(&o.fetchRuns, "fetch-runs", 3, "QEMU boots per vCPU count of the download table (the median is reported)")
	flag.BoolVar(&o.console, "console", false, "print the hnboot init's console lines of each boot (the step profile)")
	flag.Parse()
	if err := run(os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type sample struct{ start, switchRoot, wall float64 }

func run(out io.Writer, o options) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "hnboot-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f, err := testvm.Build(ctx, dir, io.Discard)
	if err != nil {
		return err
	}
	if o.only == "fetch" || os.Getenv("HNBENCH_ONLY") == "fetch" {
		return fetchBench(ctx, f, dir, o.fetchRuns, o.console, out) // fetch.go
	}
	refScript := filepath.Join(dir, "ref-init.sh")
	if err := os.WriteFile(refScript, []byte(refInit), 0o755); err != nil {
		return err
	}
	refInitrd := filepath.Join(dir, "ref-initramfs.cpio.zst")
	if err := f.Run(ctx, "initramfs", "--kernel-modules", f.ModDir, "--init", refScript, "--busybox", "/bin/busybox", "--out", refInitrd); err != nil {
		return err
	}
	img, err := f.RootImage(ctx, testvm.RootOptions{Name: "bench", Confirm: true})
	if err != nil {
		return err
	}
	base := filepath.Join(dir, "disk.img")
	if err := f.Run(ctx, "disk", "--root", img, "--out", base, "--size", "1G"); err != nil {
		return err
	}

	hnRx := []string{`hninit: \[\s*([0-9.]+)\] hnboot init starting`, `hninit: \[\s*([0-9.]+)\] switching root`}
	refRx := []string{`REF init-start ([0-9.]+)`, `REF switch-root ([0-9.]+)`}
	// A host boots its disk again and again; its first boot alone makes
	// the SSH host keys and hashes hn-root.img for the digest cache. The
	// measured boots start from a disk booted once (warm), each from a
	// fresh copy of it; the first boot of the pristine disk is a row of
	// its own.
	warm := filepath.Join(dir, "warm.img")
	if err := copySparse(base, warm); err != nil {
		return err
	}
	var hn, ref, first []sample
	for i := 0; i < o.boots; i++ {
		s, err := bootOnce(ctx, f, f.Initramfs, base, dir, hnRx, o.console)
		if err != nil {
			return fmt.Errorf("hnboot first boot %d: %w", i+1, err)
		}
		first = append(first, s)
		if i == 0 {
			// The warm disk: boot.img as that first boot left it.
			if err := copySparse(filepath.Join(dir, "boot.img"), warm); err != nil {
				return err
			}
		}
	}
	for i := 0; i < o.boots; i++ {
		s, err := bootOnce(ctx, f, f.Initramfs, warm, dir, hnRx, o.console)
		if err != nil {
			return fmt.Errorf("hnboot boot %d: %w", i+1, err)
		}
		hn = append(hn, s)
		s, err = bootOnce(ctx, f, refInitrd, warm, dir, refRx, false)
		if err != nil {
			return fmt.Errorf("reference boot %d: %w", i+1, err)
		}
		ref = append(ref, s)
		fmt.Fprintf(os.Stderr, "bench: boot pair %d/%d done\n", i+1, o.boots)
	}
	hnC, hnU, err := sizes(f.Initramfs)
	if err != nil {
		return err
	}
	refC, refU, err := sizes(refInitrd)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nBoot to switch_root, median of %d QEMU (TCG) boots each, kernel %s\n\n", o.boots, f.Release)
	fmt.Fprintf(out, "| %-40s | %14s | %18s |\n", "metric", "hnboot init", "busybox sh init")
	fmt.Fprintf(out, "|%s|%s|%s|\n", dashes(42), dashes(16), dashes(20))
	row := func(name string, a, b float64, unit string) {
		fmt.Fprintf(out, "| %-40s | %14s | %18s |\n", name, fmt.Sprintf("%.3f %s", a, unit), fmt.Sprintf("%.3f %s", b, unit))
	}
	row("kernel start -> switch_root (uptime)", med(hn, func(s sample) float64 { return s.switchRoot }), med(ref, func(s sample) float64 { return s.switchRoot }), "s")
	phase := func(s sample) float64 { return s.switchRoot - s.start }
	row("init phase: /init start -> switch_root", med(hn, phase), med(ref, phase), "s")
	fmt.Fprintf(out, "| %-40s | %14s | %18s |\n", "init phase, first boot of the disk", fmt.Sprintf("%.3f s", med(first, phase)), "-")
	row("QEMU start -> image's init done (wall)", med(hn, func(s sample) float64 { return s.wall }), med(ref, func(s sample) float64 { return s.wall }), "s")
	row("initramfs size, zstd", float64(hnC)/(1<<20), float64(refC)/(1<<20), "MiB")
	row("initramfs size, uncompressed", float64(hnU)/(1<<20), float64(refU)/(1<<20), "MiB")
	fmt.Fprintln(out, "\nBoth carry the same modules. The reference loads every one (modprobe in a loop); the hnboot init loads the drivers")
	fmt.Fprintln(out, "for the devices present (by modalias) and the filesystems it finds, and also checks GPT/EFI-BOOT, journals and")
	fmt.Fprintln(out, "fsyncs the rotation and writes the host identity, which the reference does not. Both boot a disk booted once")
	fmt.Fprintf(out, "before (ratio of the init phases: %.2fx); the first boot of a disk also makes the SSH host keys and hashes the image.\n", med(hn, phase)/med(ref, phase))

	if o.only == "boot" {
		return nil
	}
	fmt.Fprintf(out, "\nRotation (promote staged image: journal, link, rename, trial, all fsynced), %d runs, on %s\n\n", o.boots, os.TempDir())
	fmt.Fprintf(out, "| %-28s | %12s |\n|%s|%s|\n", "image", "rotation", dashes(30), dashes(14))
	rows, err := rotationTimes(ctx, o.boots)
	if err != nil {
		return err
	}
	for _, r := range rows {
		fmt.Fprintf(out, "| %-28s | %9.2f ms |\n", r.name, r.ms)
	}
	return fetchBench(ctx, f, dir, o.fetchRuns, o.console, out) // fetch.go
}

// rotationTimes runs the rotation package's own benchmark (BenchmarkRotate:
// the init's rotation code on the real filesystem), so the bench measures
// exactly what the init runs.
func rotationTimes(ctx context.Context, boots int) ([]struct {
	name string
	ms   float64
}, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkRotate$", "-benchtime", strconv.Itoa(boots)+"x", "./initramfs/rotate")
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go test -bench BenchmarkRotate ./initramfs/rotate: %w", err)
	}
	var rows []struct {
		name string
		ms   float64
	}
	// BenchmarkRotate/100MiB-2   5   1234567 ns/op
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[3] == "ns/op" && strings.HasPrefix(f[0], "BenchmarkRotate/") {
			ns, err := strconv.ParseFloat(f[2], 64)
			if err != nil {
				continue
			}
			name := strings.TrimPrefix(f[0], "BenchmarkRotate/")
			if k := strings.LastIndex(name, "-"); k > 0 {
				name = name[:k]
			}
			rows = append(rows, struct {
				name string
				ms   float64
			}{name, ns / 1e6})
		}
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("go test -bench BenchmarkRotate printed no results:\n%s", b)
	}
	return rows, nil
}

func bootOnce(ctx context.Context, f *testvm.Fixture, initrd, base, dir string, rx []string, console bool) (sample, error) {
	disk := filepath.Join(dir, "boot.img")
	if err := copySparse(base, disk); err != nil {
		return sample{}, err
	}
	vm, err := testvm.Start(ctx, testvm.Options{Kernel: f.Kernel, Initrd: initrd, Disk: disk, Append: "quiet", MAC: "52:54:00:12:34:56"})
	if err != nil {
		return sample{}, err
	}
	defer vm.Kill()
	var vals []float64
	for _, r := range rx {
		m, err := vm.Expect(r, 3*time.Minute)
		if err != nil {
			return sample{}, err
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		vals = append(vals, v)
	}
	if _, err := vm.Expect(`HNTEST end`, 3*time.Minute); err != nil {
		return sample{}, err
	}
	wall := vm.Since().Seconds()
	vm.Wait(time.Minute)
	if console {
		for _, l := range strings.Split(vm.Console(), "\n") {
			if strings.Contains(l, "hninit:") {
				fmt.Fprintln(os.Stderr, strings.TrimRight(l, "\r"))
			}
		}
	}
	return sample{start: vals[0], switchRoot: vals[1], wall: wall}, nil
}

func med(s []sample, f func(sample) float64) float64 {
	v := make([]float64, len(s))
	for i := range s {
		v[i] = f(s[i])
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

func sizes(path string) (compressed, uncompressed int64, err error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return 0, 0, err
	}
	zr, err := zstd.NewReader(fh)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	defer zr.Close()
	n, err := io.Copy(io.Discard, zr)
	return st.Size(), n, err
}

func dashes(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '-'
	}
	return string(b)
}

// copySparse copies a mostly empty disk image keeping holes, so each boot
// starts from the same state quickly.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	o, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer o.Close()
	if err := o.Truncate(st.Size()); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, 1<<20)
	for off := int64(0); off < st.Size(); off += int64(len(buf)) {
		n, err := in.ReadAt(buf, off)
		if n > 0 && string(buf[:n]) != string(zero[:n]) {
			if _, werr := o.WriteAt(buf[:n], off); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return nil
}
