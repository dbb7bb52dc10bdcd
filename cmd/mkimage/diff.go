package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/imagefs"
	"github.com/hnboot/hnboot/internal/manifest"
)

const diffHelp = `Usage: mkimage diff [--json] [--files=false] A B

Compares two root images: the packages added, removed and changed
(version), and the files added, removed and changed (content, mode or
type), reading both images (ext4 or squashfs) without mounting them. A
and B may also be their manifests (IMAGE.json) or package lists
(IMAGE.packages.json): then only the packages are compared, from the
package lists mkimage rootfs wrote.

Examples:
  mkimage diff web-41.img web-42.img
  mkimage diff --files=false web-41.img.json web-42.img.json
`

// ImageDiff is what mkimage diff --json prints.
type ImageDiff struct {
	A, B            string
	PackagesAdded   []manifest.Package       `json:"packages_added"`
	PackagesRemoved []manifest.Package       `json:"packages_removed"`
	PackagesChanged []manifest.PackageChange `json:"packages_changed"`
	PackagesNote    string                   `json:"packages_note,omitempty"`
	FilesCompared   bool                     `json:"files_compared"`
	FilesAdded      []string                 `json:"files_added,omitempty"`
	FilesRemoved    []string                 `json:"files_removed,omitempty"`
	FilesChanged    []FileChange             `json:"files_changed,omitempty"`
}

// FileChange is a path in both images that differs.
type FileChange struct {
	Path string `json:"path"`
	What string `json:"what"` // content, mode 0644 -> 0755, type file -> symlink, size
}

func runDiff(_ context.Context, cmdName string, args []string, std cli.IO) error {
	fl := cli.NewFlagSet(cmdName, diffHelp, std)
	asJSON := fl.Bool("json", false, "print the differences as JSON")
	files := fl.Bool("files", true, "compare the files too (images only)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if err := fl.WantArgs(2, 2, "A and B (images, manifests or package lists)"); err != nil {
		return err
	}
	d, err := diffImages(fl.Arg(0), fl.Arg(1), *files)
	if err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(d, "", "  ")
		_, err := fmt.Fprintf(std.Stdout, "%s\n", b)
		return err
	}
	w := std.Stdout
	fmt.Fprintf(w, "packages: %d added, %d removed, %d changed\n", len(d.PackagesAdded), len(d.PackagesRemoved), len(d.PackagesChanged))
	if d.PackagesNote != "" {
		fmt.Fprintf(w, "  (%s)\n", d.PackagesNote)
	}
	for _, p := range d.PackagesAdded {
		fmt.Fprintf(w, "  + %s %s %s\n", p.Name, p.Version, p.Arch)
	}
	for _, p := range d.PackagesRemoved {
		fmt.Fprintf(w, "  - %s %s %s\n", p.Name, p.Version, p.Arch)
	}
	for _, c := range d.PackagesChanged {
		fmt.Fprintf(w, "  ~ %s %s: %s -> %s\n", c.Name, c.Arch, c.From, c.To)
	}
	if !d.FilesCompared {
		fmt.Fprintln(w, "files: not compared (give the images, not their manifests)")
		return nil
	}
	fmt.Fprintf(w, "files: %d added, %d removed, %d changed\n", len(d.FilesAdded), len(d.FilesRemoved), len(d.FilesChanged))
	for _, p := range d.FilesAdded {
		fmt.Fprintf(w, "  + /%s\n", p)
	}
	for _, p := range d.FilesRemoved {
		fmt.Fprintf(w, "  - /%s\n", p)
	}
	for _, c := range d.FilesChanged {
		fmt.Fprintf(w, "  ~ /%s (%s)\n", c.Path, c.What)
	}
	return nil
}

// side is one of the two things compared.
type side struct {
	image string // "" for a manifest or package list
	pkgs  []manifest.Package
	note  string
}

func openSide(p string) (side, error) {
	var s side
	switch {
	case strings.HasSuffix(p, ".packages.json"):
		l, err := manifest.ReadPackages(p)
		if err != nil {
			return s, err
		}
		s.pkgs, s.note = l.Packages, noteOf(p, l)
	case strings.HasSuffix(p, ".json"):
		img := strings.TrimSuffix(p, ".json")
		if _, err := manifest.ReadFile(p); err != nil {
			return s, err
		}
		l, err := manifest.ReadPackages(manifest.PackagesFor(img))
		if err != nil {
			return s, fmt.Errorf("%s has no package list beside it (%v): build it with a newer mkimage rootfs, or compare the images", p, err)
		}
		s.pkgs, s.note = l.Packages, noteOf(p, l)
	default:
		pkgs, source, note, err := imagePackages(p)
		if err != nil {
			return s, err
		}
		s.image, s.pkgs = p, pkgs
		if source == manifest.SourceNone {
			s.note = p + ": " + note
		}
	}
	return s, nil
}

func noteOf(p string, l *manifest.PackageList) string {
	if l.Source == manifest.SourceNone {
		return p + ": " + l.Note
	}
	return ""
}

func diffImages(a, b string, files bool) (*ImageDiff, error) {
	sa, err := openSide(a)
	if err != nil {
		return nil, err
	}
	sb, err := openSide(b)
	if err != nil {
		return nil, err
	}
	d := &ImageDiff{A: a, B: b}
	d.PackagesAdded, d.PackagesRemoved, d.PackagesChanged = manifest.DiffPackages(sa.pkgs, sb.pkgs)
	d.PackagesNote = strings.TrimSpace(sa.note + " " + sb.note)
	if !files || sa.image == "" || sb.image == "" {
		return d, nil
	}
	ta, err := tree(sa.image)
	if err != nil {
		return nil, err
	}
	tb, err := tree(sb.image)
	if err != nil {
		return nil, err
	}
	d.FilesCompared = true
	for p, eb := range tb {
		ea, ok := ta[p]
		switch {
		case !ok:
			d.FilesAdded = append(d.FilesAdded, p)
		case ea.Mode.Type() != eb.Mode.Type():
			d.FilesChanged = append(d.FilesChanged, FileChange{p, "type " + typeName(ea.Mode) + " -> " + typeName(eb.Mode)})
		case ea.Sum != eb.Sum || ea.Size != eb.Size:
			d.FilesChanged = append(d.FilesChanged, FileChange{p, "content"})
		case ea.Mode.Perm() != eb.Mode.Perm():
			d.FilesChanged = append(d.FilesChanged, FileChange{p, fmt.Sprintf("mode %04o -> %04o", ea.Mode.Perm(), eb.Mode.Perm())})
		}
	}
	for p := range ta {
		if _, ok := tb[p]; !ok {
			d.FilesRemoved = append(d.FilesRemoved, p)
		}
	}
	sort.Strings(d.FilesAdded)
	sort.Strings(d.FilesRemoved)
	sort.Slice(d.FilesChanged, func(i, j int) bool { return d.FilesChanged[i].Path < d.FilesChanged[j].Path })
	return d, nil
}

func tree(image string) (map[string]imagefs.Entry, error) {
	if _, err := os.Stat(image); err != nil {
		return nil, err
	}
	im, err := imagefs.Open(image)
	if err != nil {
		return nil, err
	}
	defer im.Close()
	t, err := imagefs.Tree(im)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	return t, nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m.IsRegular():
		return "file"
	}
	return "special"
}
