// Command mkimage builds hnboot artifacts: root filesystem images,
// initramfs archives and bootable GPT disks. It runs unprivileged.
//
// Synopsis:
//
//	mkimage build RECIPE.yaml --out FILE [--version V] [--sign-key KEY] [--cache DIR|none] [--mode auto|root|unshare]
//	mkimage rootfs --from DIR|TARBALL --out FILE [--fs ext4|squashfs] [--name N] [--version V] [--sign-key KEY] [--keep PATH]... [--size SIZE]
//	mkimage test IMAGE [--health agent.yaml] [--deadline 10m] [--firmware uefi|bios] [--kvm auto|on|off] [--json]
//	mkimage keygen --out KEY
//	mkimage verify [--key KEY.pub] IMAGE
//	mkimage diff [--json] A B
//	mkimage initramfs --kernel-modules DIR --out FILE [--init PATH] [--busybox PATH] [--modules a,b]
//	mkimage disk --root IMG [--new IMG] [--old IMG] --out DISK --size SIZE [--efi-size 128M] [--hostpart-fs ext4]
//	mkimage version
//
// Every subcommand takes --help. SOURCE_DATE_EPOCH makes the output
// reproducible.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/hnboot/hnboot/internal/cli"
)

// Version is set at link time with -ldflags "-X main.Version=...".
var Version = ""

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.Main(ctx, "mkimage", program, args, stdin, stdout, stderr)
}

var program = &cli.Group{
	Doc: `mkimage builds hnboot root images, initramfs archives and bootable disks,
unprivileged.`,
	Commands: []cli.Command{
		{Name: "build", Short: "a root image from a recipe: mmdebstrap's Debian tree, packages, files, commands, then rootfs", Run: runBuild},
		{Name: "rootfs", Short: "a root image (ext4 or squashfs) and its manifest, from a directory or tarball", Run: runRootfs},
		{Name: "initramfs", Short: "a zstd initramfs: the hnboot init, busybox, a kernel's modules", Run: runInitramfs},
		{Name: "disk", Short: "a sparse, bootable GPT disk: EFI-BOOT with GRUB, hostpart with the images", Run: runDisk},
		{Name: "test", Short: "boot an image in QEMU as a host would; pass only when it is healthy", Run: runTest},
		{Name: "probe", Short: "(inside the VM mkimage test boots) run the health checks and report", Run: runProbe},
		{Name: "keygen", Short: "an ed25519 key pair for signing manifests", Run: runKeygen},
		{Name: "verify", Short: "check an image against its manifest (and signature)", Run: runVerify},
		{Name: "diff", Short: "packages and files added, removed and changed between two images", Run: runDiff},
		{Name: "version", Short: "print mkimage's version", Run: runVersion},
	},
	Footer: "SOURCE_DATE_EPOCH (seconds since 1970) makes every output reproducible.",
}

// parseNoArgs parses a command that takes only flags.
func parseNoArgs(fs *cli.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	return fs.WantArgs(0, 0, "")
}

func newLogger(stderr io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH.
func sourceDateEpoch() (int64, bool, error) {
	v, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || v == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970, e.g. $(git log -1 --format=%%ct)", v)
	}
	return n, true, nil
}

// parseSize parses sizes such as 512, 64M, 2G, 3T, 1.5G (binary units:
// K=KiB, M=MiB, G=GiB, T=TiB; an optional trailing "iB" or "B").
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "iB"), "B")
	mult := 1.0
	if t != "" {
		switch strings.ToUpper(t[len(t)-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 || f*mult > 1<<62 {
		return 0, fmt.Errorf("size %q: want a positive number with an optional unit K, M, G or T (e.g. 64M, 2G, 3T)", s)
	}
	return int64(f * mult), nil
}

// human formats a byte count in binary units (go-humanize: "56 MiB").
func human(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

func runVersion(_ context.Context, name string, args []string, std cli.IO) error {
	fs := cli.NewFlagSet(name, "Usage: mkimage version\n\nPrints mkimage's version and the Go version it was built with.\n", std)
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	v := Version
	goVersion := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if v == "" {
			v = bi.Main.Version
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					v = s.Value
				}
			}
		}
	}
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	fmt.Fprintf(std.Stdout, "mkimage %s %s\n", v, goVersion)
	return nil
}

// elapsed is a short duration for result lines.
func elapsed(start time.Time) string { return time.Since(start).Round(10 * time.Millisecond).String() }
