// Command init is hnboot's /init: PID 1 of the initramfs. It mounts the
// kernel filesystems, then runs the boot (package initramfs/boot: modules,
// hostpart, the disk checks, the crash-safe rotation, the talk with
// imaged and the download of the assigned image, the read-only loop
// mount, kexec into the image's own kernel when it differs, the host's
// identity on a tmpfs overlay, switch_root) over the real system
// (system.go). DESIGN.md §3 is the contract; every step logs a `hninit:`
// line.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/hnboot/hnboot/initramfs/boot"
	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/internal/httpget"
)

func main() {
	if err := run(os.Args, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "hninit:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if os.Getpid() != 1 {
		if len(args) > 1 && (args[1] == "--help" || args[1] == "-h") {
			fmt.Fprint(stdout, usage)
			return nil
		}
		return fmt.Errorf("this is the initramfs /init and must run as PID 1 (kernel command line reference: %s --help)", args[0])
	}
	h := newConsoleHandler(stdout, false)
	log := slog.New(h)
	routeStdLog(log)
	if in, out := mountKernelFS(log, h); out != nil {
		stdin, stdout = in, out
	}
	sys := &linuxSystem{log: log, stdin: stdin, stdout: stdout, http: &httpget.Client{UserAgent: "hninit"}}
	sys.mods = newModLoader(log)
	b := &boot.Boot{
		Sys: sys, Paths: boot.DefaultPaths, Log: log,
		Lines: h.Lines, SetDebug: func(on bool) { h.debug = on },
	}
	for {
		// Run returns only from the rescue shell, which never ends.
		b.Run(context.Background())
	}
}

// routeStdLog makes the standard logger, which u-root's switch_root and
// kexec write to, log debug records of l: their lines become hninit:
// lines, shown with hn.debug and kept out of the console otherwise. The
// init owns the process's logging and sets it once here, so no library
// call has to swap the logger around its own calls.
func routeStdLog(l *slog.Logger) {
	slog.SetLogLoggerLevel(slog.LevelDebug)
	slog.SetDefault(l)
}

// usage is the --help text; the kernel command line part comes from the
// same table as the parser (cmdline.Keys).
var usage = "hninit: hnboot's initramfs /init (runs as PID 1).\n\n" + cmdline.Usage()
