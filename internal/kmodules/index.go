package kmodules

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
)

// ErrNotFound is returned (wrapped) for a module that is neither a module
// file in the tree nor built into the kernel.
var ErrNotFound = errors.New("module not found")

// Module is one loadable module file of the tree.
type Module struct {
	Name string // canonical name (ext4, nls_iso8859_1)
	Path string // relative to the tree, e.g. kernel/fs/ext4/ext4.ko
	Info *Modinfo
}

// ArchivePath is where the module goes in an initramfs: Path with the file
// name normalized to underscores (nls_iso8859-1.ko → nls_iso8859_1.ko).
// u-root's kmodule finds a module by file name trying all-dashes or
// all-underscores only, so a mixed name would never be found; the kernel
// takes the name from the module itself, not from the file.
func (m *Module) ArchivePath() string {
	dir, base := path.Split(m.Path)
	for _, e := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(base, e) {
			return dir + normalize(strings.TrimSuffix(base, e)) + e
		}
	}
	return m.Path
}

// Index is every module of one lib/modules/<release> tree with its modinfo.
type Index struct {
	Dir     string // the lib/modules/<release> directory
	Release string // basename of Dir
	Modules map[string]*Module

	builtin        map[string]bool   // names of built-in modules
	builtinAliases map[string]string // alias → built-in module name
	aliases        []alias           // aliases of loadable modules, sorted
	log            *slog.Logger
}

type alias struct{ pattern, name string }

// Open indexes the module tree dir (a lib/modules/<release> directory):
// it reads the .modinfo of every module file (in parallel) and the
// modules.builtin and modules.builtin.modinfo files when present.
func Open(dir string, log *slog.Logger) (*Index, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w (want a lib/modules/<release> directory)", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("kernel modules: %s is not a directory (want a lib/modules/<release> directory)", dir)
	}
	ix := &Index{
		Dir:            dir,
		Release:        filepath.Base(filepath.Clean(dir)),
		Modules:        map[string]*Module{},
		builtin:        map[string]bool{},
		builtinAliases: map[string]string{},
		log:            log,
	}

	var files []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && isModule(d.Name()) {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel modules: walk %s: %w", dir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("kernel modules: no .ko files under %s (want a lib/modules/<release> directory)", dir)
	}
	sort.Strings(files)

	mods := make([]*Module, len(files))
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.NumCPU() {
		wg.Go(func() {
			for i := range next {
				mi, err := ReadModinfo(filepath.Join(dir, files[i]))
				if err != nil {
					errs[i] = err
					continue
				}
				name := mi.Name
				if name == "" {
					name = modName(path.Base(files[i]))
				}
				mods[i] = &Module{Name: name, Path: files[i], Info: mi}
			}
		})
	}
	for i := range files {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	for _, m := range mods {
		if old, ok := ix.Modules[m.Name]; ok {
			log.Warn("duplicate module, keeping the first", "name", m.Name, "kept", old.Path, "ignored", m.Path)
			continue
		}
		ix.Modules[m.Name] = m
		for _, a := range m.Info.Aliases {
			ix.aliases = append(ix.aliases, alias{a, m.Name})
		}
	}
	sort.Slice(ix.aliases, func(i, j int) bool {
		if ix.aliases[i].pattern != ix.aliases[j].pattern {
			return ix.aliases[i].pattern < ix.aliases[j].pattern
		}
		return ix.aliases[i].name < ix.aliases[j].name
	})

	if err := ix.readBuiltin(); err != nil {
		return nil, err
	}
	return ix, nil
}

func (ix *Index) readBuiltin() error {
	p := filepath.Join(ix.Dir, "modules.builtin")
	b, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kernel modules: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			ix.builtin[modName(path.Base(l))] = true
		}
	}

	p = filepath.Join(ix.Dir, "modules.builtin.modinfo")
	b, err = os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kernel modules: %w", err)
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		// "module.key=value"
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		mod, key, ok := strings.Cut(k, ".")
		if !ok {
			continue
		}
		mod = normalize(mod)
		ix.builtin[mod] = true
		if key == "alias" {
			ix.builtinAliases[v] = mod
		}
	}
	return nil
}

// Resolve finds the module a name stands for: a module name, or else an
// alias (such as crypto-crc32c). It returns nil and builtin=true when the
// name or alias is built into the kernel, and ErrNotFound when nothing
// matches. Of several modules with the same alias it prefers one whose
// name ends in _generic (arch-specific variants such as crc32c_intel can
// fail to load on CPUs without the instructions), else the first by name.
func (ix *Index) Resolve(name string) (m *Module, builtin bool, err error) {
	n := normalize(name)
	if m, ok := ix.Modules[n]; ok {
		return m, false, nil
	}
	if ix.builtin[n] {
		return nil, true, nil
	}
	if _, ok := ix.builtinAliases[name]; ok {
		return nil, true, nil
	}
	var cands []string
	for _, a := range ix.aliases {
		if a.pattern == name || (strings.ContainsAny(a.pattern, "*?[") && globMatch(a.pattern, name)) {
			cands = append(cands, a.name)
		}
	}
	if len(cands) == 0 {
		return nil, false, fmt.Errorf("%q in %s: %w", name, ix.Dir, ErrNotFound)
	}
	sort.Strings(cands)
	for _, c := range cands {
		if strings.HasSuffix(c, "_generic") {
			return ix.Modules[c], false, nil
		}
	}
	return ix.Modules[cands[0]], false, nil
}

func globMatch(pattern, name string) bool {
	ok, err := path.Match(pattern, name)
	return err == nil && ok
}

// Set is the dependency closure of some modules.
type Set struct {
	ix       *Index
	Top      []*Module // the requested modules that are loadable, in request order
	Builtin  []string  // requested names built into the kernel
	Missing  []string  // requested names not found (only with Optional)
	Modules  []*Module // every module of the closure, sorted by path
	edges    map[string][]string
	included map[string]*Module
}

// Closure computes the modules needed to load names, with every hard
// dependency (depends=) and every resolvable soft pre-dependency
// (softdep=pre:, resolved through aliases). Soft dependencies become
// ordinary dependencies, except where one would make a cycle. Names in
// optional that are not found are recorded in Missing instead of failing.
func (ix *Index) Closure(names []string, optional map[string]bool) (*Set, error) {
	s := &Set{ix: ix, edges: map[string][]string{}, included: map[string]*Module{}}
	seenTop := map[string]bool{}
	for _, n := range names {
		m, builtin, err := ix.Resolve(n)
		switch {
		case builtin:
			s.Builtin = append(s.Builtin, n)
			continue
		case errors.Is(err, ErrNotFound) && optional[n]:
			s.Missing = append(s.Missing, n)
			continue
		case err != nil:
			return nil, fmt.Errorf("kernel module %w: check the name (modinfo name, file name or alias)", err)
		}
		if !seenTop[m.Name] {
			seenTop[m.Name] = true
			s.Top = append(s.Top, m)
		}
	}

	// Collect nodes and hard edges; queue soft edges.
	type soft struct{ from, to string }
	var softs []soft
	work := append([]*Module(nil), s.Top...)
	for len(work) > 0 {
		m := work[0]
		work = work[1:]
		if _, ok := s.included[m.Name]; ok {
			continue
		}
		s.included[m.Name] = m
		for _, d := range m.Info.Depends {
			dm, ok := ix.Modules[d]
			if !ok {
				if ix.builtin[d] {
					continue
				}
				return nil, fmt.Errorf("kernel module %s (%s) depends on %s, which is not in %s: the module tree is incomplete", m.Name, m.Path, d, ix.Dir)
			}
			s.edges[m.Name] = append(s.edges[m.Name], dm.Name)
			work = append(work, dm)
		}
		for _, sd := range m.Info.SoftPre {
			dm, builtin, err := ix.Resolve(sd)
			if builtin {
				continue
			}
			if err != nil {
				ix.log.Debug("soft dependency not found, skipped", "module", m.Name, "softdep", sd)
				continue
			}
			if dm.Name == m.Name {
				continue
			}
			softs = append(softs, soft{m.Name, dm.Name})
			work = append(work, dm)
		}
	}
	for _, sd := range softs {
		if s.reaches(sd.to, sd.from) || slicesContains(s.edges[sd.from], sd.to) {
			continue
		}
		s.edges[sd.from] = append(s.edges[sd.from], sd.to)
	}

	for _, m := range s.included {
		s.Modules = append(s.Modules, m)
	}
	sort.Slice(s.Modules, func(i, j int) bool { return s.Modules[i].Path < s.Modules[j].Path })
	return s, nil
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// reaches reports whether to is reachable from from.
func (s *Set) reaches(from, to string) bool {
	seen := map[string]bool{}
	var walk func(n string) bool
	walk = func(n string) bool {
		if n == to {
			return true
		}
		if seen[n] {
			return false
		}
		seen[n] = true
		for _, e := range s.edges[n] {
			if walk(e) {
				return true
			}
		}
		return false
	}
	return walk(from)
}

// LoadOrder returns the modules to load for name, dependencies first and
// name itself last.
func (s *Set) LoadOrder(name string) []*Module {
	var out []*Module
	seen := map[string]bool{}
	var walk func(n string)
	walk = func(n string) {
		if seen[n] {
			return
		}
		seen[n] = true
		for _, e := range s.edges[n] {
			walk(e)
		}
		out = append(out, s.included[n])
	}
	walk(normalize(name))
	if len(out) == 0 || out[len(out)-1] == nil {
		return nil
	}
	return out
}

// WriteModulesDep writes modules.dep for the set in depmod's format, with
// the modules' ArchivePath: one line per module, "path: dep dep ...", with the full dependency closure
// listed in the order modprobe loads them from the right (the module to
// load last before this one comes first).
func (s *Set) WriteModulesDep(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, m := range s.Modules {
		order := s.LoadOrder(m.Name)
		deps := order[:len(order)-1]
		fmt.Fprintf(bw, "%s:", m.ArchivePath())
		for i := len(deps) - 1; i >= 0; i-- {
			fmt.Fprintf(bw, " %s", deps[i].ArchivePath())
		}
		fmt.Fprintln(bw)
	}
	return bw.Flush()
}

// WriteModulesAlias writes modules.alias for the set in depmod's format,
// "alias PATTERN NAME", so the init can load drivers for the hardware it
// finds (by each device's modalias) instead of every driver it carries.
func (s *Set) WriteModulesAlias(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, m := range s.Modules {
		if m.Info == nil {
			continue
		}
		for _, a := range m.Info.Aliases {
			fmt.Fprintf(bw, "alias %s %s\n", a, m.Name)
		}
	}
	return bw.Flush()
}
