package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/hnboot/hnboot/internal/rootfs"
)

const rootfsHelp = `Usage: mkimage rootfs --from DIR --out FILE [--size SIZE]

Builds an ext4 root image (label hn-root) of the directory tree DIR, without
root privileges, loop devices or mounts (e2fsprogs' mkfs.ext4 -d). The image
is written to FILE.tmp and renamed to FILE when complete. With
SOURCE_DATE_EPOCH set, the image is reproducible: the same tree gives the
same bytes (UUID and hash seed are derived from the epoch and the tree, and
all times are clamped to the epoch). Files keep their owners and modes.

The default size is 1.3 times the tree plus 16 MiB.

Examples:
  mkimage rootfs --from ./root --out hn-root.img
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) mkimage rootfs --from ./root --out hn-root.img --size 2G
`

func runRootfs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rootfs", rootfsHelp, stdout, stderr)
	from := fs.String("from", "", "directory tree to put in the image (required)")
	out := fs.String("out", "", "image file to write (required)")
	size := fs.String("size", "", "image size, e.g. 64M, 2G (default: from the tree size)")
	label := fs.String("label", rootfs.DefaultLabel, "filesystem label")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if *from == "" || *out == "" {
		return fmt.Errorf("%w: rootfs: --from and --out are required (see --help)", errUsage)
	}
	o := rootfs.Options{Dir: *from, Out: *out, Label: *label, Log: newLogger(stderr)}
	if *size != "" {
		n, err := parseSize(*size)
		if err != nil {
			return fmt.Errorf("%w: rootfs: --size: %v", errUsage, err)
		}
		o.Size = n
	}
	var err error
	if o.Epoch, o.HasEpoch, err = sourceDateEpoch(); err != nil {
		return err
	}
	start := time.Now()
	res, err := rootfs.Build(ctx, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ext4 root image, %s (%d bytes), %d entries, tree %s", res.Path, human(res.Size), res.Size, res.Entries, human(res.TreeBytes))
	if res.UUID != "" {
		fmt.Fprintf(stdout, ", uuid %s", res.UUID)
	}
	fmt.Fprintf(stdout, ", %s\n", elapsed(start))
	return nil
}
