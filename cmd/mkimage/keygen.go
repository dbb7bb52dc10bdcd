package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"

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

func runKeygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keygen", keygenHelp, stdout, stderr)
	out := fs.String("out", "", "private key file to write; the public key is FILE.pub (required)")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: keygen: --out is required (see --help)", errUsage)
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
