package main

import (
	"context"
	"fmt"

	"github.com/hnboot/hnboot/internal/cli"

	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

const verifyHelp = `Usage: mkimage verify [--key KEY.pub]... [--manifest FILE] IMAGE

Checks IMAGE against its manifest (default IMAGE.json): size and sha256
and, with --key, an ed25519 signature by one of the given keys (an unsigned
manifest is then an error). Exits 0 and prints the manifest when all hold,
1 with the reason otherwise.

Examples:
  mkimage verify --key fleet.key.pub web.img
  mkimage verify --manifest web.json /hostpart/hn-root-new.img
`

func runVerify(_ context.Context, name string, args []string, std cli.IO) error {
	stdout := std.Stdout
	fs := cli.NewFlagSet(name, verifyHelp, std)
	var keys multiFlag
	fs.Var(&keys, "key", "trusted public key (mkimage keygen); repeatable; with any, a signature is required")
	mpath := fs.String("manifest", "", "manifest file (default IMAGE.json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := fs.WantArgs(1, 1, "IMAGE"); err != nil {
		return err
	}
	image := fs.Arg(0)
	if *mpath == "" {
		*mpath = layout.ManifestFor(image)
	}
	var trusted []manifest.PublicKey
	for _, k := range keys {
		pk, err := manifest.ReadPublicKey(k)
		if err != nil {
			return fmt.Errorf("verify: --key: %w", err)
		}
		trusted = append(trusted, pk)
	}
	m, err := manifest.ReadFile(*mpath)
	if err != nil {
		return fmt.Errorf("verify %s: manifest: %w (build images with mkimage rootfs, which writes IMAGE.json)", image, err)
	}
	if err := m.VerifyFile(image, trusted); err != nil {
		return fmt.Errorf("verify %s: FAILED: %w (manifest %s)", image, err, *mpath)
	}
	sig := "signature not checked (no --key)"
	if len(trusted) > 0 {
		sig = "signature valid, key " + m.KeyID
	} else if m.Signature != "" {
		sig = "signed by key " + m.KeyID + ", not checked (no --key)"
	}
	fmt.Fprintf(stdout, "%s: OK: %s %s, %s, %d bytes, sha256 %s, kernel %q, built %s; %s\n",
		image, m.Name, m.Version, m.FS, m.Size, m.SHA256, m.KernelRelease, m.BuildTime, sig)
	return nil
}
