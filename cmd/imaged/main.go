// Command imaged is hnboot's fleet daemon: `imaged serve` (PXE/TFTP/HTTP
// image server, fleet state, admin API and service supervisor), `imaged
// agent` (on each host), the operator's commands on a host (status, stage,
// revert, mark-good) and `imaged fleet`, the admin client of imaged serve.
package main

import (
	"context"
	"io"
	"os"

	"github.com/hnboot/hnboot/internal/cli"
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return cli.Main(context.Background(), "imaged", program, args, stdin, stdout, stderr)
}

var program = &cli.Group{
	Doc: "imaged is hnboot's fleet daemon: the boot server, the host agent, and the\noperator's commands on a host and on the fleet.",
	Commands: []cli.Command{
		{Name: "serve", Short: "PXE/TFTP/HTTP image server, fleet state, admin API, service supervisor", Run: runServe},
		{Name: "agent", Short: "on each host: stage updates, confirm good boots, report, apply reverts", Run: runAgent},
		{Name: "status", Short: "the image slots on this host's hostpart", Run: runStatus},
		{Name: "stage", Short: "stage an image (file or URL) as hn-root-new.img", Run: runStage},
		{Name: "revert", Short: "drop system-revert: the next boot goes back to hn-root-old.img", Run: runRevert},
		{Name: "mark-good", Short: "confirm the current trial boot", Run: runMarkGood},
		{Name: "passwd", Short: "a bcrypt hash of a password, for imaged serve --users", Run: runPasswd},
		{Name: "fleet", Short: "admin client of imaged serve: status, assign, revert, rollout, why, ...", Group: fleetGroup},
	},
}
