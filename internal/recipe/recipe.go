// Package recipe reads the image recipes of "mkimage build": a small YAML
// file that says which Debian system to bootstrap (suite, architecture,
// sources, packages, kernel), what to add to it (files, commands) and how
// to pack it (filesystem, name, version, signing key). Parse checks every
// key and names file:line in each error; Plan turns a recipe into the
// mmdebstrap command line that builds its tree.
package recipe

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/hnboot/hnboot/internal/hostconfig"
)

// Recipe is one parsed recipe file.
type Recipe struct {
	File string // the recipe's path, as given
	Dir  string // its directory: relative paths in it are relative to this

	Name         string
	Version      string
	Suite        string
	Architecture string // "" means the building machine's
	Variant      string
	Sources      []Source // nil means the building machine's apt sources
	Debs         string   // a directory of .deb files inside Dir, or ""
	Packages     []string
	Kernel       string // a package name, or "" for no kernel
	PathExclude  []string
	PathInclude  []string
	Files        []File
	Commands     []Command
	FS           string
	Size         string
	SignKey      string // a path (relative to Dir unless absolute), or ""
	Trust        string
	Keep         []string
	Modules      []string

	Lines map[string]int // key -> line, for errors found later (e.g. sign_key)
}

// Source is one apt repository.
type Source struct {
	URI        string
	Suites     []string
	Components []string
	Key        string // an OpenPGP key file inside Dir, or "" (already trusted)
	Line       int
}

// File is one file added to the tree, after the packages and before the
// commands.
type File struct {
	Path    string // absolute and clean, in the image
	Content string // the file's bytes, when Source is ""
	Source  string // a file inside Dir, when set
	Mode    uint32 // permission bits (set-id and sticky allowed)
	Owner   string // user or user:group; default root
	Line    int
}

// Command is one shell command run in the tree (chroot), in order.
type Command struct {
	Run  string
	Line int
}

// Defaults.
const (
	DefaultVariant = "minbase"
	DefaultFS      = "ext4"
	// KernelNone in the kernel key builds an image without a kernel.
	KernelNone = "none"
)

// Variants mmdebstrap accepts that make a bootable system (those that
// install Essential packages and apt).
var Variants = []string{"minbase", "required", "important", "debootstrap", "standard"}

// Keys are the top-level keys of a recipe, in the order README documents
// them.
var Keys = []string{"name", "version", "suite", "architecture", "variant", "sources", "debs",
	"packages", "kernel", "path_exclude", "path_include", "files", "commands", "fs", "size",
	"sign_key", "trust", "keep", "modules"}

var (
	namePat    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)
	suitePat   = regexp.MustCompile(`^[a-z0-9][a-z0-9.+-]*$`)
	archPat    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	compPat    = regexp.MustCompile(`^[a-z0-9][a-z0-9/._-]*$`)
	packagePat = regexp.MustCompile(`^[a-z0-9][a-z0-9.+-]+(=[A-Za-z0-9.+~:-]+)?(/[a-z0-9.-]+)?$`)
	modulePat  = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
	yamlLine   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
)

// Error lists every problem of a recipe, each as FILE:LINE: what.
type Error struct{ Problems []string }

func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0]
	}
	return fmt.Sprintf("recipe has %d problems:\n  %s", len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// ReadFile reads and checks a recipe. Files, keys and .deb directories
// it names are checked to exist inside the recipe's directory.
func ReadFile(file string) (*Recipe, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	r, err := Parse(file, b)
	if err != nil {
		return nil, err
	}
	if err := r.checkFiles(); err != nil {
		return nil, err
	}
	return r, nil
}

type parser struct {
	file     string
	problems []string
}

func (p *parser) errf(line int, format string, args ...any) {
	p.problems = append(p.problems, fmt.Sprintf("%s:%d: ", p.file, line)+fmt.Sprintf(format, args...))
}

// Parse parses recipe text; file names it in errors and its directory is
// the base of relative paths. It checks the syntax and every value, not
// the files the recipe names (ReadFile does).
func Parse(file string, b []byte) (*Recipe, error) {
	p := &parser{file: file}
	r := &Recipe{File: file, Dir: filepath.Dir(file), Variant: DefaultVariant, FS: DefaultFS, Lines: map[string]int{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			return nil, &Error{[]string{file + ":" + m[1] + ": " + m[2]}}
		}
		return nil, &Error{[]string{file + ": " + err.Error()}}
	}
	if len(doc.Content) == 0 {
		return nil, &Error{[]string{file + ":1: empty recipe: want at least name, version and suite"}}
	}
	root := doc.Content[0]
	f := p.mapping(root, "recipe", Keys...)
	for k, n := range f {
		r.Lines[k] = n.Line
	}
	r.Name = p.str(f["name"], "name")
	r.Version = p.str(f["version"], "version")
	r.Suite = p.str(f["suite"], "suite")
	r.Architecture = p.str(f["architecture"], "architecture")
	if n := f["variant"]; n != nil {
		r.Variant = p.str(n, "variant")
	}
	r.Debs = p.str(f["debs"], "debs")
	r.Packages = p.strs(f["packages"], "packages")
	r.PathExclude = p.strs(f["path_exclude"], "path_exclude")
	r.PathInclude = p.strs(f["path_include"], "path_include")
	if n := f["fs"]; n != nil {
		r.FS = p.str(n, "fs")
	}
	r.Size = p.str(f["size"], "size")
	r.SignKey = p.str(f["sign_key"], "sign_key")
	r.Trust = p.str(f["trust"], "trust")
	r.Keep = p.strs(f["keep"], "keep")
	r.Modules = p.strs(f["modules"], "modules")

	line := func(k string) int {
		if n := f[k]; n != nil {
			return n.Line
		}
		return root.Line
	}
	if r.Name == "" {
		p.errf(line("name"), "name: required (the image's name, as in name@version)")
	} else if !namePat.MatchString(r.Name) {
		p.errf(line("name"), "name %q: letters, digits, '.', '_', '+' and '-' only (no '@', '/' or spaces)", r.Name)
	}
	// The version may come from mkimage build --version; Plan checks it is set.
	if r.Version != "" && !namePat.MatchString(r.Version) {
		p.errf(line("version"), "version %q: letters, digits, '.', '_', '+' and '-' only (quote numbers: \"1.10\")", r.Version)
	}
	if r.Suite == "" {
		p.errf(line("suite"), "suite: required (a Debian suite such as bookworm)")
	} else if !suitePat.MatchString(r.Suite) {
		p.errf(line("suite"), "suite %q: not a suite name (bookworm, stable, trixie-updates)", r.Suite)
	}
	if r.Architecture != "" && !archPat.MatchString(r.Architecture) {
		p.errf(line("architecture"), "architecture %q: a Debian architecture such as amd64 or arm64", r.Architecture)
	}
	if !contains(Variants, r.Variant) {
		p.errf(line("variant"), "variant %q: want one of %s", r.Variant, strings.Join(Variants, ", "))
	}
	if n := f["sources"]; n != nil {
		r.Sources = []Source{}
		for _, it := range p.seq(n, "sources") {
			if s, ok := p.source(it); ok {
				r.Sources = append(r.Sources, s)
			}
		}
		if len(r.Sources) == 0 && len(p.problems) == 0 {
			p.errf(n.Line, "sources: empty; leave the key out to use the machine's apt sources")
		}
	}
	if r.Debs != "" {
		if err := relPath(r.Debs); err != nil {
			p.errf(line("debs"), "debs %q: %v", r.Debs, err)
		}
	}
	for i, pkg := range r.Packages {
		if !packagePat.MatchString(pkg) {
			p.errf(itemLine(f["packages"], i), "packages: %q is not a package name (name, name=version or name/suite)", pkg)
		}
	}
	r.Kernel = "linux-image-ARCH"
	if n := f["kernel"]; n != nil {
		r.Kernel = p.str(n, "kernel")
		switch {
		case r.Kernel == KernelNone:
			r.Kernel = ""
		case !packagePat.MatchString(r.Kernel):
			p.errf(n.Line, "kernel %q: a kernel package (linux-image-amd64) or none", r.Kernel)
		}
	}
	for _, k := range []string{"path_exclude", "path_include"} {
		list := r.PathExclude
		if k == "path_include" {
			list = r.PathInclude
		}
		for i, g := range list {
			if !strings.HasPrefix(g, "/") || strings.ContainsAny(g, "\n\x00") {
				p.errf(itemLine(f[k], i), "%s: %q: want an absolute glob as dpkg takes it (/usr/share/doc/*)", k, g)
			}
		}
	}
	if n := f["files"]; n != nil {
		seen := map[string]int{}
		for _, it := range p.seq(n, "files") {
			fl, ok := p.fileEntry(it)
			if !ok {
				continue
			}
			if first, dup := seen[fl.Path]; dup {
				p.errf(fl.Line, "files: %s listed twice (first at line %d)", fl.Path, first)
				continue
			}
			seen[fl.Path] = fl.Line
			r.Files = append(r.Files, fl)
		}
	}
	if n := f["commands"]; n != nil {
		for _, it := range p.seq(n, "commands") {
			c := p.str(it, "commands")
			if strings.TrimSpace(c) == "" {
				p.errf(it.Line, "commands: empty command")
				continue
			}
			r.Commands = append(r.Commands, Command{Run: c, Line: it.Line})
		}
	}
	if r.FS != "ext4" && r.FS != "squashfs" {
		p.errf(line("fs"), "fs %q: want ext4 or squashfs", r.FS)
	}
	for i, k := range r.Keep {
		if err := imagePath(k); err != nil {
			p.errf(itemLine(f["keep"], i), "keep %q: %v", k, err)
		}
	}
	for i, m := range r.Modules {
		if !modulePat.MatchString(m) {
			p.errf(itemLine(f["modules"], i), "modules: %q is not a module name (btrfs, nvme)", m)
		}
	}
	if len(p.problems) > 0 {
		return nil, &Error{p.problems}
	}
	return r, nil
}

func (p *parser) source(n *yaml.Node) (Source, bool) {
	f := p.mapping(n, "sources entry", "uri", "suites", "components", "key")
	s := Source{
		URI:        p.str(f["uri"], "uri"),
		Suites:     p.strs(f["suites"], "suites"),
		Components: p.strs(f["components"], "components"),
		Key:        p.str(f["key"], "key"),
		Line:       n.Line,
	}
	ok := true
	switch {
	case s.URI == "":
		p.errf(n.Line, "sources: uri required (http://mirror.example/debian)")
		ok = false
	case !(strings.HasPrefix(s.URI, "http://") || strings.HasPrefix(s.URI, "https://") || strings.HasPrefix(s.URI, "file:/")) || strings.ContainsAny(s.URI, " \t\n"):
		p.errf(f["uri"].Line, "sources: uri %q: want an http://, https:// or file:/ URL", s.URI)
		ok = false
	}
	if len(s.Suites) == 0 {
		p.errf(n.Line, "sources: suites required (a list, e.g. [bookworm, bookworm-updates])")
		ok = false
	}
	for _, su := range s.Suites {
		if !suitePat.MatchString(su) && su != "./" && su != "/" {
			p.errf(f["suites"].Line, "sources: suite %q: not a suite name", su)
			ok = false
		}
	}
	if len(s.Components) == 0 {
		s.Components = []string{"main"}
	}
	for _, c := range s.Components {
		if !compPat.MatchString(c) {
			p.errf(n.Line, "sources: component %q: not a component name (main, contrib)", c)
			ok = false
		}
	}
	if s.Key != "" {
		if err := relPath(s.Key); err != nil {
			p.errf(f["key"].Line, "sources: key %q: %v", s.Key, err)
			ok = false
		}
	}
	return s, ok
}

func (p *parser) fileEntry(n *yaml.Node) (File, bool) {
	f := p.mapping(n, "files entry", "path", "content", "source", "mode", "owner")
	fl := File{
		Path:    p.str(f["path"], "path"),
		Content: p.str(f["content"], "content"),
		Source:  p.str(f["source"], "source"),
		Mode:    0o644,
		Owner:   p.str(f["owner"], "owner"),
		Line:    n.Line,
	}
	ok := true
	if err := imagePath(fl.Path); err != nil {
		p.errf(n.Line, "files: path %q: %v", fl.Path, err)
		ok = false
	}
	switch {
	case f["content"] != nil && f["source"] != nil:
		p.errf(n.Line, "files: %s: content and source both given: want one", fl.Path)
		ok = false
	case f["content"] == nil && f["source"] == nil:
		p.errf(n.Line, "files: %s: want content (the text) or source (a file beside the recipe)", fl.Path)
		ok = false
	case fl.Source != "":
		if err := relPath(fl.Source); err != nil {
			p.errf(f["source"].Line, "files: source %q: %v", fl.Source, err)
			ok = false
		}
	}
	if m := f["mode"]; m != nil {
		v, err := parseMode(p.str(m, "mode"))
		if err != nil {
			p.errf(m.Line, "files: %s: mode %q: %v", fl.Path, m.Value, err)
			ok = false
		}
		fl.Mode = v
	}
	if fl.Owner != "" {
		if err := hostconfig.CheckOwner(fl.Owner); err != nil {
			p.errf(f["owner"].Line, "files: %s: owner %q: %v", fl.Path, fl.Owner, err)
			ok = false
		}
	}
	return fl, ok
}

// parseMode reads an octal mode such as "0644", "755" or "4755".
func parseMode(s string) (uint32, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	n, err := strconv.ParseUint(t, 8, 32)
	if err != nil || t == "" {
		return 0, errors.New("not an octal mode like \"0644\" (quote it)")
	}
	if n > 0o7777 {
		return 0, errors.New("more than the 12 mode bits (at most 07777)")
	}
	return uint32(n), nil
}

// imagePath checks a path in the image: absolute and clean, not the root.
func imagePath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return errors.New("want an absolute path in the image (/etc/motd)")
	case p == "/":
		return errors.New("not the root itself")
	case path.Clean(p) != p || strings.ContainsAny(p, "\n\x00\\"):
		return errors.New("want a clean path: no '..', '.', '//', trailing '/' or backslash")
	}
	return nil
}

// relPath checks a path beside the recipe: relative, clean, not leaving
// the recipe's directory.
func relPath(p string) error {
	if filepath.IsAbs(p) || !filepath.IsLocal(p) || strings.ContainsAny(p, "\n\x00") {
		return errors.New("want a path inside the recipe's directory (relative, no '..')")
	}
	return nil
}

// checkFiles opens what the recipe names beside it through an os.Root of
// its directory, so no symlink leads outside it.
func (r *Recipe) checkFiles() error {
	root, err := os.OpenRoot(r.Dir)
	if err != nil {
		return fmt.Errorf("recipe: %w", err)
	}
	defer root.Close()
	var problems []string
	bad := func(line int, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s:%d: ", r.File, line)+fmt.Sprintf(format, args...))
	}
	for _, fl := range r.Files {
		if fl.Source == "" {
			continue
		}
		st, err := root.Stat(fl.Source)
		switch {
		case err != nil:
			bad(fl.Line, "files: %s: source: %v", fl.Path, unwrapPath(err))
		case !st.Mode().IsRegular():
			bad(fl.Line, "files: %s: source %s is not a regular file", fl.Path, fl.Source)
		}
	}
	for _, s := range r.Sources {
		if s.Key == "" {
			continue
		}
		b, err := root.ReadFile(s.Key)
		if err != nil {
			bad(s.Line, "sources: key: %v", unwrapPath(err))
			continue
		}
		if _, err := armorKey(b); err != nil {
			bad(s.Line, "sources: key %s: %v", s.Key, err)
		}
	}
	if r.Debs != "" {
		debs, err := r.DebFiles(root)
		switch {
		case err != nil:
			bad(r.Lines["debs"], "debs: %v", unwrapPath(err))
		case len(debs) == 0:
			bad(r.Lines["debs"], "debs: no .deb files in %s", r.Debs)
		}
	}
	if len(problems) > 0 {
		return &Error{problems}
	}
	return nil
}

// DebFiles lists the regular .deb files directly in the recipe's debs
// directory, relative to the recipe's directory, in name order.
func (r *Recipe) DebFiles(root *os.Root) ([]string, error) {
	ents, err := fs.ReadDir(root.FS(), filepath.ToSlash(r.Debs))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".deb") {
			out = append(out, filepath.Join(r.Debs, e.Name()))
		}
	}
	return out, nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// mapping checks that n is a mapping with only the allowed keys and
// returns the value nodes by key.
func (p *parser) mapping(n *yaml.Node, what string, allowed ...string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, "%s: want a mapping with keys %s", what, strings.Join(allowed, ", "))
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if !contains(allowed, k.Value) {
			p.errf(k.Line, "unknown key %q in %s (allowed: %s)", k.Value, what, strings.Join(allowed, ", "))
			continue
		}
		if _, dup := out[k.Value]; dup {
			p.errf(k.Line, "key %q given twice", k.Value)
			continue
		}
		out[k.Value] = n.Content[i+1]
	}
	return out
}

func (p *parser) seq(n *yaml.Node, what string) []*yaml.Node {
	if n.Kind != yaml.SequenceNode {
		p.errf(n.Line, "%s: want a list", what)
		return nil
	}
	return n.Content
}

func (p *parser) str(n *yaml.Node, what string) string {
	if n == nil {
		return ""
	}
	if n.Kind != yaml.ScalarNode {
		p.errf(n.Line, "%s: want a string", what)
		return ""
	}
	return n.Value
}

// strs accepts one string or a list of strings.
func (p *parser) strs(n *yaml.Node, what string) []string {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.ScalarNode {
		return []string{n.Value}
	}
	var out []string
	for _, it := range p.seq(n, what) {
		out = append(out, p.str(it, what))
	}
	return out
}

func itemLine(n *yaml.Node, i int) int {
	if n == nil {
		return 0
	}
	if n.Kind == yaml.SequenceNode && i < len(n.Content) {
		return n.Content[i].Line
	}
	return n.Line
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
