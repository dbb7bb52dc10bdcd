// Command mkimage builds hnboot artifacts: root filesystem images,
// initramfs archives and bootable GPT disks. It runs unprivileged.
//
// Synopsis:
//
//	mkimage rootfs --from DIR|TARBALL --out FILE [--fs ext4|squashfs] [--name N] [--version V] [--sign-key KEY] [--keep PATH]... [--size SIZE]
//	mkimage keygen --out KEY
//	mkimage verify [--key KEY.pub] IMAGE
//	mkimage initramfs --kernel-modules DIR --out FILE [--init PATH] [--busybox PATH] [--modules a,b]
//	mkimage disk --root IMG [--new IMG] [--old IMG] --out DISK --size SIZE [--efi-size 128M] [--hostpart-fs ext4]
//	mkimage version
//
// Every subcommand takes --help. SOURCE_DATE_EPOCH makes the output
// reproducible.
package main

import (
	"context"
	"errors"
	"flag"
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
)

// Version is set at link time with -ldflags "-X main.Version=...".
var Version = ""

func main() {
	err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	os.Exit(exitCode(err, os.Stderr))
}

// errUsage marks an error in how mkimage was called (exit status 2).
var errUsage = errors.New("usage")

func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "mkimage: %v\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "mkimage: %v\n", err)
		return 1
	}
}

const usage = `mkimage builds hnboot root images, initramfs archives and bootable disks.

Usage:
  mkimage rootfs    --from DIR|TARBALL --out FILE [--fs ext4|squashfs] [--name N] [--version V]
                    [--sign-key KEY] [--keep PATH]... [--size SIZE]
  mkimage keygen    --out KEY
  mkimage verify    [--key KEY.pub] IMAGE
  mkimage initramfs --kernel-modules DIR --out FILE [--init PATH] [--busybox PATH] [--modules a,b]
                    [--trust KEY.pub]
  mkimage disk      --root IMG [--new IMG] [--old IMG] --out DISK --size SIZE [--efi-size 128M]
                    [--boot both|uefi|bios|none]
  mkimage version

Run "mkimage COMMAND --help" for the flags and examples of a command.
SOURCE_DATE_EPOCH (seconds since 1970) makes every output reproducible.
`

type command struct {
	name string
	run  func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"rootfs", runRootfs},
	{"initramfs", runInitramfs},
	{"disk", runDisk},
	{"keygen", runKeygen},
	{"verify", runVerify},
	{"version", runVersion},
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command given", errUsage)
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}

// newFlags returns a FlagSet whose --help prints help (with examples) to
// stdout and whose errors go to stderr.
func newFlags(name, help string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("mkimage "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help)
		fmt.Fprintln(fs.Output(), "\nFlags:")
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args; --help prints to stdout and returns flag.ErrHelp.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(stdout)
			fs.Usage()
			return flag.ErrHelp
		}
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected argument %q (see --help)", errUsage, fs.Name(), fs.Arg(0))
	}
	return nil
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

// human formats a byte count.
func human(n int64) string {
	switch {
	case n >= 1<<40:
		return fmt.Sprintf("%.2f TiB", float64(n)/(1<<40))
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "Usage: mkimage version\n\nPrints mkimage's version and the Go version it was built with.\n", stdout, stderr)
	if err := parse(fs, args, stdout); err != nil {
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
	fmt.Fprintf(stdout, "mkimage %s %s\n", v, goVersion)
	return nil
}

// elapsed is a short duration for result lines.
func elapsed(start time.Time) string { return time.Since(start).Round(10 * time.Millisecond).String() }
