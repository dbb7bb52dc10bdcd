// Command demo builds hnboot's init, initramfs and two root images, then
// boots one host in QEMU three times: first boot, an update (staged image
// promoted on trial and confirmed), and a revert with system-revert. Run it
// with `make demo`.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/testvm"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// consoleFilter shows the init's log and the image's report, not the
// kernel's chatter.
type consoleFilter struct{ w io.Writer }

func (c consoleFilter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if strings.Contains(l, "hninit:") || strings.Contains(l, "HNTEST") {
			fmt.Fprintln(c.w, "  console| "+l[strings.Index(l, "| ")+2:])
		}
	}
	return len(p), nil
}

func run(args []string, out io.Writer) error {
	dir := "out/demo-host"
	if len(args) > 0 {
		dir = args[0]
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ctx := context.Background()
	step := func(s string) { fmt.Fprintf(out, "\n==> %s\n", s) }

	step("building the init, mkimage and the initramfs for the test kernel")
	f, err := testvm.Build(ctx, dir, out)
	if err != nil {
		return err
	}
	step("building two root images: v1 and v2 (busybox roots that report what the init set up)")
	v1, err := f.RootImage(ctx, testvm.RootOptions{Name: "v1", Confirm: true})
	if err != nil {
		return err
	}
	v2, err := f.RootImage(ctx, testvm.RootOptions{Name: "v2", Confirm: true})
	if err != nil {
		return err
	}
	disk := filepath.Join(dir, "host-disk.img")
	step("building a GPT host disk (EFI-BOOT + hostpart) with v1 as hn-root.img")
	if err := f.Run(ctx, "disk", "--root", v1, "--out", disk, "--size", "2G"); err != nil {
		return err
	}

	boot := func(title string) error {
		step(title)
		vm, err := testvm.Start(ctx, testvm.Options{
			Kernel: f.Kernel, Initrd: f.Initramfs, Disk: disk,
			Append: "hn.hostpart=LABEL=hostpart", Console: consoleFilter{out}, Name: "vm",
			MAC: "52:54:00:12:34:56",
		})
		if err != nil {
			return err
		}
		defer vm.Kill()
		if _, err := vm.Expect("HNTEST end", 3*time.Minute); err != nil {
			return err
		}
		if err := vm.Wait(time.Minute); err != nil {
			return err
		}
		fmt.Fprintf(out, "  (boot took %v under QEMU TCG)\n", vm.Since().Round(100*time.Millisecond))
		return showHostpart(disk, out)
	}

	if err := boot("boot 1: first boot of v1"); err != nil {
		return err
	}
	step("staging v2: its manifest as hn-root-new.img.json, then the image as hn-root-new.img (a temporary name, fsynced, renamed)")
	if err := testvm.WithHostpart(disk, func(hp string) error {
		if err := copyFile(v2+".json", filepath.Join(hp, layout.ManifestFor(layout.New))); err != nil {
			return err
		}
		return copyFile(v2, filepath.Join(hp, layout.New))
	}); err != nil {
		return err
	}
	if err := boot("boot 2: the init promotes v2 on trial; v2's init confirms by removing hn-root.trial"); err != nil {
		return err
	}
	step("requesting a revert: touch /hostpart/system-revert")
	if err := testvm.WithHostpart(disk, func(hp string) error {
		return os.WriteFile(filepath.Join(hp, layout.RevertTrigger), nil, 0o644)
	}); err != nil {
		return err
	}
	if err := boot("boot 3: the init reverts to v1 and keeps v2 as hn-root-broken.img"); err != nil {
		return err
	}
	step("done: the disk is " + disk)
	return nil
}

func showHostpart(disk string, out io.Writer) error {
	return testvm.WithHostpart(disk, func(dir string) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		var lines []string
		for _, e := range ents {
			if e.Name() == "lost+found" {
				continue
			}
			info, err := e.Info()
			if err != nil {
				return err
			}
			desc := fmt.Sprintf("%10d bytes", info.Size())
			if e.IsDir() {
				desc = "       dir      "
			}
			if strings.HasSuffix(e.Name(), ".img") {
				if name, err := imageName(filepath.Join(dir, e.Name())); err == nil {
					desc += "  (image " + name + ")"
				}
			}
			lines = append(lines, fmt.Sprintf("    %-22s %s", e.Name(), desc))
		}
		sort.Strings(lines)
		fmt.Fprintln(out, "  hostpart now holds:")
		fmt.Fprintln(out, strings.Join(lines, "\n"))
		return nil
	})
}

// imageName reads /etc/hn-image out of a test image without mounting it.
func imageName(path string) (string, error) {
	return testvm.ReadImageFile(path, "etc/hn-image")
}

// copyFile stages src as dst the way an updater must: under a temporary
// name, fsynced, then renamed, so the init never sees half an image.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := durable.Create(dst, 0o644)
	if err != nil {
		return err
	}
	defer o.Cleanup()
	if _, err := io.Copy(o, in); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return o.Commit()
}
