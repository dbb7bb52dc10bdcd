package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/recipe"
	"github.com/hnboot/hnboot/internal/rootfs"
	"github.com/hnboot/hnboot/internal/testkernel"
)

const buildHelp = `Usage: mkimage build RECIPE.yaml --out FILE [--version V] [--sign-key KEY]
                     [--cache DIR|none] [--mode auto|root|unshare]

Builds a root image from a recipe: the Debian tree is made by mmdebstrap
(Debian's own bootstrap tool; as root in its root mode, otherwise in its
unshare mode, which needs /etc/subuid and /etc/subgid entries), with the
recipe's sources, packages, kernel, files and commands; then everything
"mkimage rootfs" does: generalize, /boot/vmlinuz and /boot/initramfs
from the kernel, the image (ext4 or squashfs), FILE.json, the signature.

The recipe's keys (README: "Recipes" lists each with an example):
  name, version, suite          required (version may come from --version)
  architecture, variant         default: this machine's, minbase
  sources                       default: this machine's apt sources for the suite
  debs                          a directory of .deb files beside the recipe
  packages, kernel              kernel default linux-image-ARCH; "none" for no kernel
  path_exclude, path_include    dpkg path filters (/usr/share/doc/*)
  files                         path, content or source, mode, owner
  commands                      shell commands run in the tree, in order
  fs, size, sign_key, trust, keep, modules   as "mkimage rootfs" takes them
Relative paths are relative to the recipe's directory; files' sources,
keys and debs must be inside it. Errors name the recipe's file and line.

Downloaded packages are kept in --cache (default $HNBOOT_CACHE/apt, i.e.
/var/cache/hnboot/apt, for root; ~/.cache/hnboot/apt otherwise) and used
by the next build: it then downloads only what changed. Delete the
directory at any time to free its space.

With SOURCE_DATE_EPOCH set and the same package versions (a snapshot
mirror in sources: pins them), two builds give the same bytes.

Examples:
  mkimage build web.yaml --out web.img --sign-key fleet.key
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) mkimage build examples/ci/web.yaml \
      --out web-$(git rev-parse --short HEAD).img --version $(git rev-parse --short HEAD)
`

func defaultCache() string {
	if os.Geteuid() == 0 {
		return filepath.Join(testkernel.CacheDir(), "apt")
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "hnboot", "apt")
	}
	return ""
}

func runBuild(ctx context.Context, cmdName string, args []string, std cli.IO) error {
	stdout, stderr := std.Stdout, std.Stderr
	defBusybox := ""
	if st, err := os.Stat("/bin/busybox"); err == nil && st.Mode().IsRegular() {
		defBusybox = "/bin/busybox"
	}
	fs := cli.NewFlagSet(cmdName, buildHelp, std)
	out := fs.String("out", "", "image file to write (required); the manifest is FILE.json")
	version := fs.String("version", "", "the image's version (overrides the recipe's)")
	signKey := fs.String("sign-key", "", "ed25519 private key (mkimage keygen) to sign the manifest with (overrides the recipe's sign_key)")
	cache := fs.String("cache", defaultCache(), "directory of downloaded packages kept between builds; none to keep nothing")
	mode := fs.String("mode", "auto", "mmdebstrap --mode: auto (root as root, else unshare), root or unshare")
	initPath := fs.String("init", defaultInit(), "the hnboot init for /boot/initramfs")
	busybox := fs.String("busybox", defBusybox, "static busybox for /boot/initramfs's rescue shell; \"\" for none")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := fs.WantArgs(1, 1, "RECIPE.yaml"); err != nil {
		return err
	}
	if *out == "" {
		return fs.Usagef("--out is required")
	}
	switch *mode {
	case "auto", "root", "unshare":
	default:
		return fs.Usagef("--mode %q: want auto, root or unshare", *mode)
	}
	r, err := recipe.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	epoch, hasEpoch, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	o := rootfs.Options{Out: *out, FS: r.FS, Keep: r.Keep, Epoch: epoch, HasEpoch: hasEpoch, Log: newLogger(stderr)}
	o.Boot = rootfs.BootOptions{Init: *initPath, Busybox: *busybox, Modules: r.Modules}
	if r.Size != "" {
		if o.Size, err = parseSize(r.Size); err != nil {
			return fmt.Errorf("%s:%d: size: %v", r.File, r.Lines["size"], err)
		}
	}
	keyPath := *signKey
	if keyPath == "" && r.SignKey != "" {
		keyPath = besideRecipe(r, r.SignKey)
	}
	var signer *manifest.PrivateKey
	if keyPath != "" {
		if signer, err = manifest.ReadPrivateKey(keyPath); err != nil {
			return fmt.Errorf("build: signing key: %w", err)
		}
	}
	if r.Trust != "" {
		pub, err := manifest.ReadPublicKey(besideRecipe(r, r.Trust))
		if err != nil {
			return fmt.Errorf("%s:%d: trust: %w", r.File, r.Lines["trust"], err)
		}
		o.Boot.Trust = pub.Marshal()
	}
	if r.Kernel != "" {
		if _, err := os.Stat(o.Boot.Init); err != nil {
			return fmt.Errorf("build: the hnboot init for /boot/initramfs: %w (make build puts it in bin/hninit; --init PATH)", err)
		}
	}

	var po recipe.PlanOptions
	po.Version, po.Mode = *version, *mode
	if r.Architecture == "" {
		if po.Arch, err = machineArch(ctx); err != nil {
			return err
		}
	}
	if r.Sources == nil {
		if po.Machine, po.AptFiles, err = recipe.MachineSources("/etc/apt"); err != nil {
			return err
		}
	}
	if *cache != "none" && *cache != "" {
		if po.Cache, err = filepath.Abs(*cache); err != nil {
			return err
		}
		if strings.ContainsAny(po.Cache, " \t\n'\"") {
			return fs.Usagef("--cache %q: a path without spaces or quotes (mmdebstrap's hooks split on them)", *cache)
		}
	}
	// The staging directory (the tree's tarball, mmdebstrap's working
	// tree) is beside the image: the same filesystem, with room for it.
	stage, err := os.MkdirTemp(filepath.Dir(*out), ".hnboot-build-")
	if err != nil {
		return fmt.Errorf("build: staging directory: %w", err)
	}
	defer os.RemoveAll(stage)
	if po.Stage, err = filepath.Abs(stage); err != nil {
		return err
	}
	// mmdebstrap's apt drops privileges to _apt where it can; the
	// staging directory must be readable for it.
	os.Chmod(po.Stage, 0o755)
	po.Out = filepath.Join(po.Stage, "tree.tar")
	fmt.Fprintf(stderr, "build: %s: %s %s, %s on %s\n", r.File, r.Name, firstNonEmpty(po.Version, r.Version), r.Suite, firstNonEmpty(r.Architecture, po.Arch))
	start := time.Now()
	tr, err := r.Tree(ctx, recipe.TreeOptions{PlanOptions: po, Stdout: stderr, Stderr: stderr})
	if err != nil {
		return err
	}
	cacheNote := "no package cache"
	if po.Cache != "" {
		cacheNote = fmt.Sprintf("package cache %s: %d packages (%s) were there, %d (%s) downloaded and added",
			po.Cache, tr.Cache.Packages, human(tr.Cache.Bytes), tr.CacheNew.Packages, human(tr.CacheNew.Bytes))
	}
	fmt.Fprintf(stdout, "%s: tree by mmdebstrap in %s; %s\n", r.File, tr.Took.Round(10*time.Millisecond), cacheNote)
	o.From = po.Out
	if err := buildImage(ctx, o, manifest.Fields{Name: r.Name, Version: tr.Plan.Version}, signer, std); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: built in %s\n", *out, elapsed(start))
	return nil
}

// besideRecipe resolves a path the recipe gives: relative to its
// directory unless absolute.
func besideRecipe(r *recipe.Recipe, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(r.Dir, p)
}

// machineArch is dpkg's name of this machine's architecture.
func machineArch(ctx context.Context) (string, error) {
	b, err := exec.CommandContext(ctx, "dpkg", "--print-architecture").Output()
	if err != nil {
		return "", fmt.Errorf("dpkg --print-architecture: %v (mkimage build runs on Debian; or give architecture: in the recipe)", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}
