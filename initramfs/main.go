// Command init is hnboot's /init: PID 1 of the initramfs. It mounts the
// kernel filesystems, loads the modules it needs, finds the hostpart
// partition, checks the disk layout, rotates or reverts the root images
// (crash-safely), checks in with imaged when it knows one, loop-mounts
// hn-root.img read-only, kexecs into the image's own kernel when that
// differs from the running one, writes this host's identity into a tmpfs
// overlay of the image and switches root. DESIGN.md §3 is the contract;
// every step logs a `hninit:` line.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/hnboot/hnboot/initramfs/cmdline"
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
	b := &boot{h: h, log: slog.New(h), stdin: stdin, stdout: stdout}
	routeStdLog(b.log)
	b.main() // never returns
	return nil
}

// routeStdLog makes the standard logger, which u-root's dhclient,
// switch_root and kexec write to, log debug records of l: their lines
// become hninit: lines, shown with hn.debug and kept out of the console
// otherwise. The init owns the process's logging and sets it once here,
// so no library call has to swap the logger around its own calls.
func routeStdLog(l *slog.Logger) {
	slog.SetLogLoggerLevel(slog.LevelDebug)
	slog.SetDefault(l)
}

// usage is the --help text; the kernel command line part comes from the
// same table as the parser (cmdline.Keys).
var usage = "hninit: hnboot's initramfs /init (runs as PID 1).\n\n" + cmdline.Usage()
