// Command imaged is hnboot's fleet daemon: `imaged serve` (PXE/TFTP/HTTP
// image server and supervisor) and `imaged agent` (on each host), plus the
// operator's commands on a host (status, stage, revert, mark-good) and
// the admin client of imaged serve (fleet).
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "imaged:", err)
		os.Exit(1)
	}
}

const usage = `usage: imaged COMMAND [flags]

Commands:
  serve      PXE/TFTP/HTTP image server and fleet service supervisor
  agent      host agent: stage updates, confirm good boots, report
  status     the image slots on this host's hostpart
  stage      stage an image as hn-root-new.img
  revert     drop system-revert
  mark-good  confirm the current trial boot
  fleet      admin client of imaged serve: status, assign, revert, rollout, why, known-hosts
`

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	switch args[0] {
	case "fleet":
		return runFleet(args[1:], stdout)
	case "serve":
		return runServe(args[1:], stdout)
	case "agent":
		return runAgent(args[1:], stdout)
	case "status", "stage", "revert", "mark-good":
		return runHost(args[0], args[1:], stdout)
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}
