// Command fleetdemo is `make demo`: imaged serve in a network namespace,
// two QEMU hosts PXE-booting from it, a rollout of an update, the big red
// button, and both hosts back on the old image (testvm.RunFleetDemo).
// Screenshots of the dashboard go to out/demo/ (or the first argument);
// everything else lives in a temporary directory removed at the end, on
// failure and on Ctrl-C too.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hnboot/hnboot/testvm"
)

func main() {
	out := "out/demo"
	if len(os.Args) > 1 {
		out = os.Args[1]
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	err := run(ctx, out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: failed after %v: %v\n", time.Since(start).Round(time.Second), err)
		os.Exit(1)
	}
	fmt.Printf("\nfleet demo: wall time %v (building included); screenshots in %s\n", time.Since(start).Round(time.Second), out)
}

func run(ctx context.Context, out string) error {
	old, _ := filepath.Glob(filepath.Join(out, "*.png"))
	for _, p := range old {
		os.Remove(p)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "hnboot-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	fmt.Printf("==> building the init, mkimage, imaged and the initramfs for the test kernel (in %s)\n", work)
	f, err := testvm.Build(ctx, work, nil)
	if err != nil {
		return err
	}
	res, err := testvm.RunFleetDemo(ctx, testvm.FleetDemoOptions{Fixture: f, Dir: work, Out: os.Stdout, Shots: out})
	if err != nil {
		return err
	}
	for _, h := range []string{"web-1", "web-2"} {
		fmt.Printf("  %s: runs %s, %d boots; audit: %s\n", h, res.Final[h], res.Boots[h], res.RevertID[h])
	}
	return nil
}
