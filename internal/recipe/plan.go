package recipe

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// PlanOptions are what a plan needs to know about the building machine.
type PlanOptions struct {
	Arch     string      // the machine's architecture, for recipes without one
	Machine  []AptSource // the machine's apt sources (MachineSources)
	AptFiles []string    // the files they came from, for messages
	Stage    string      // an absolute, empty staging directory (the plan's files go here)
	Out      string      // the tarball mmdebstrap writes
	Cache    string      // an absolute directory of downloaded packages kept between builds; "" for none
	Mode     string      // mmdebstrap --mode: root, unshare or auto
	Version  string      // overrides the recipe's version when set
}

// Plan is how to build a recipe's tree: files to write into the staging
// directory, then one mmdebstrap run.
type Plan struct {
	Args []string // mmdebstrap's arguments
	Env  []string // added to its environment
	// Stage holds the files to write, by path relative to the staging
	// directory; Copy the recipe's files to copy there (to <- from, from
	// relative to the recipe's directory).
	Stage map[string][]byte
	Copy  map[string]string

	Arch, Version, Kernel string
	Sources               []AptSource
}

// The directory the recipe's files are copied to in the tree while it is
// built (under /run, which mmdebstrap empties at the end anyway); the
// staging directory has it under the same name.
const filesInTree = "/run/hnboot-recipe-files"

// FileMirrorHook is mmdebstrap's hook that makes .deb files given to
// --include visible inside the tree.
const FileMirrorHook = "/usr/share/mmdebstrap/hooks/file-mirror-automount"

// Plan turns the recipe into an mmdebstrap run. Keys of sources are read
// from the recipe's directory by the caller (Keys), so Plan itself reads
// no file.
func (r *Recipe) Plan(o PlanOptions, keys map[string]string, debs []string) (*Plan, error) {
	p := &Plan{Stage: map[string][]byte{}, Copy: map[string]string{}, Arch: r.Architecture, Version: r.Version}
	if o.Version != "" {
		p.Version = o.Version
	}
	if p.Version == "" {
		return nil, fmt.Errorf("%s:%d: version: required (in the recipe, or mkimage build --version)", r.File, r.Lines["name"])
	}
	if p.Arch == "" {
		p.Arch = o.Arch
	}
	p.Kernel = strings.ReplaceAll(r.Kernel, "ARCH", p.Arch)
	if r.Sources == nil {
		p.Sources = forSuite(o.Machine, r.Suite)
		if len(p.Sources) == 0 {
			return nil, fmt.Errorf("%s: suite %s: the machine's apt sources (%s) have no entry for it: add sources: to the recipe",
				r.File, r.Suite, strings.Join(o.AptFiles, ", "))
		}
	} else {
		for _, s := range r.Sources {
			as := AptSource{URIs: []string{s.URI}, Suites: s.Suites, Components: s.Components, From: fmt.Sprintf("%s:%d", r.File, s.Line)}
			if s.Key != "" {
				as.SignedBy = keys[s.Key]
			}
			p.Sources = append(p.Sources, as)
		}
	}
	p.Stage["sources.sources"] = Deb822(p.Sources)

	mode := o.Mode
	if mode == "" {
		mode = "auto"
	}
	a := []string{"--mode=" + mode, "--variant=" + r.Variant, "--architectures=" + p.Arch, "--format=tar"}
	var include []string
	include = append(include, r.Packages...)
	if p.Kernel != "" {
		include = append(include, p.Kernel)
	}
	if len(include) > 0 {
		a = append(a, "--include="+strings.Join(include, ","))
	}
	if len(debs) > 0 {
		// Each .deb by its own --include (a path is never split on commas),
		// from the staging copy: mmdebstrap's hook makes it visible inside.
		a = append(a, "--hook-dir="+FileMirrorHook)
		for _, d := range debs {
			name := "debs/" + filepath.Base(d)
			p.Copy[name] = d
			a = append(a, "--include="+filepath.Join(o.Stage, name))
		}
	}
	for _, g := range r.PathExclude {
		a = append(a, "--dpkgopt=path-exclude="+g)
	}
	for _, g := range r.PathInclude {
		a = append(a, "--dpkgopt=path-include="+g)
	}
	if o.Cache != "" {
		// mmdebstrap's documented cache: what the cache holds is put where
		// apt looks first, kept there (essential/unlink skipped), and what
		// apt downloaded is copied back before the tree is packed.
		a = append(a, "--skip=essential/unlink",
			"--setup-hook=mkdir -p "+shq(o.Cache)+` "$1"/var/cache/apt/archives/`,
			"--setup-hook=sync-in "+o.Cache+" /var/cache/apt/archives/")
	}
	if len(r.Files) > 0 {
		// copy-in resolves /run inside the tree.
		a = append(a, "--customize-hook=copy-in "+filepath.Join(o.Stage, filepath.Base(filesInTree))+" /run")
	}
	for i, f := range r.Files {
		name := filepath.Base(filesInTree) + "/" + strconv.Itoa(i)
		if f.Source != "" {
			p.Copy[name] = f.Source
		} else {
			p.Stage[name] = []byte(f.Content)
		}
		user, group := "0", "0"
		if f.Owner != "" {
			u, g, ok := strings.Cut(f.Owner, ":")
			user = u
			if ok {
				group = g
			}
		}
		// install runs inside the tree: names resolve against the tree's
		// passwd and group, and no symlink in the tree leads outside it.
		cmd := fmt.Sprintf("chroot \"$1\" install -D -m %04o -o %s -g %s %s %s", f.Mode, shq(user), shq(group),
			filesInTree+"/"+strconv.Itoa(i), shq(f.Path))
		msg := fmt.Sprintf("%s:%d: files: %s: could not install it", r.File, f.Line, f.Path)
		if f.Owner != "" {
			msg += fmt.Sprintf(" (is owner %s in the tree's passwd and group?)", f.Owner)
		}
		a = append(a, "--customize-hook="+orFail(cmd, msg))
	}
	if len(r.Files) > 0 {
		a = append(a, "--customize-hook=chroot \"$1\" rm -r "+filesInTree)
	}
	for _, c := range r.Commands {
		cmd := "chroot \"$1\" /bin/sh -ec " + shq(c.Run)
		a = append(a, "--customize-hook="+orFail(cmd, fmt.Sprintf("%s:%d: commands: %q failed", r.File, c.Line, oneLine(c.Run))))
	}
	if o.Cache != "" {
		a = append(a, "--customize-hook=sync-out /var/cache/apt/archives "+o.Cache)
	}
	// mmdebstrap copies the build machine's resolv.conf in; an image
	// carries none of its own unless a package made it (a symlink of
	// systemd-resolved's or resolvconf's).
	a = append(a, `--customize-hook=if [ -f "$1"/etc/resolv.conf ] && [ ! -L "$1"/etc/resolv.conf ]; then rm "$1"/etc/resolv.conf; fi`)
	a = append(a, r.Suite, o.Out, filepath.Join(o.Stage, "sources.sources"))
	p.Args = a
	// The kernel package's postinst would run initramfs-tools for its
	// own initrd.img; hnboot puts its /boot/initramfs in instead.
	p.Env = []string{"INITRD=No"}
	return p, nil
}

// orFail runs cmd in a hook and, when it fails, prints msg with its exit
// status and fails the hook.
func orFail(cmd, msg string) string {
	return cmd + " || { rc=$?; echo " + shq(msg) + "\" (exit $rc)\" >&2; exit 1; }"
}

// shq quotes s for sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " ..."
	}
	return s
}
