package main

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/hnboot/hnboot/internal/cli"

	"github.com/hnboot/hnboot/internal/manifest"
)

const keygenHelp = `Usage: mkimage keygen --out KEY

Makes an ed25519 key pair for signing image manifests: KEY (private, mode
0600: keep it where images are built) and KEY.pub (public: give it to
"mkimage verify --key", "mkimage initramfs --trust", or put it on a host
as hostpart/.hnboot/trusted.pub). An existing key is never overwritten.

Examples:
  mkimage keygen --out fleet.key
  mkimage rootfs --from root.tar.zst --out web.img --sign-key fleet.key
  mkimage verify --key fleet.key.pub web.img
`

func runKeygen(_ context.Context, name string, args []string, std cli.IO) error {
	stdout := std.Stdout
	fs := cli.NewFlagSet(name, keygenHelp, std)
	out := fs.String("out", "", "private key file to write; the public key is FILE.pub (required)")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fs.Usagef("--out is required")
	}
	k, err := manifest.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := manifest.WriteKeyPair(*out, k); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintf(stdout, "%s: private key (keep it secret)\n%s.pub: public key, id %s\n", *out, *out, k.Public().ID())
	return nil
}
