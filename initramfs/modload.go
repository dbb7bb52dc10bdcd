package main

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Loading every driver the initramfs carries costs seconds under emulation
// and on small machines (btrfs and xfs alone are megabytes of relocations
// and signature checks). Like udev, the init loads drivers for the devices
// it actually sees, by their modalias, then filesystems for what it finds on
// them. Disk drivers go one at a time, the cheapest first, until hostpart
// appears (a q35 machine's AHCI controller costs libata and scsi_mod, 1.4
// MB, for a virtio disk); NIC drivers only when the boot needs the network
// (boot.NetworkDecision), beside the rest of the boot. The full list stays
// as a fallback when no matching disk appears.
//
// Modules are loaded with finit_module from the files mkimage put in, in
// the order of the modules.dep it generated: the init no longer carries
// u-root's kmodule, whose gzip, xz and zstd decoders were 467 KB of the
// binary (162 KB of the zstd archive) for archives that hold plain .ko
// files (a compressed one is handed to the kernel to decompress).

// aliasTable is a parsed modules.alias: patterns in file order.
type aliasTable []aliasEntry

// aliasEntry is one alias line. prefix is the pattern's literal start:
// most devices are told from most patterns by it alone, without
// path.Match (which took 150-300 ms per round under TCG over the ~1,500
// aliases of the default modules).
type aliasEntry struct{ pattern, prefix, module string }

func parseAliases(r io.Reader) aliasTable {
	var t aliasTable
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "alias" {
			prefix := f[1]
			if i := strings.IndexAny(prefix, `*?[\`); i >= 0 {
				prefix = prefix[:i]
			}
			t = append(t, aliasEntry{f[1], prefix, f[2]})
		}
	}
	return t
}

// match returns the modules whose alias patterns match modalias.
func (t aliasTable) match(modalias string) []string {
	var out []string
	for _, e := range t {
		if !strings.HasPrefix(modalias, e.prefix) {
			continue
		}
		if ok, err := path.Match(e.pattern, modalias); err == nil && ok {
			out = append(out, e.module)
		}
	}
	return out
}

// buses are the buses whose devices the table has drivers for: the part
// of each pattern before its ':' (pci, virtio, scsi). Only their devices'
// modaliases are read: /sys/bus also lists hundreds of ACPI, CPU and
// platform devices that no module of the initramfs drives, and reading
// them took ~100 ms per round under TCG.
func (t aliasTable) buses() []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range t {
		bus, _, ok := strings.Cut(e.pattern, ":")
		if i := strings.IndexAny(bus, `*?[\`); i >= 0 {
			bus = bus[:i] // acpi*:PNP0A03:* is for the acpi bus
		}
		if !ok || bus == "" || strings.Contains(bus, "/") || seen[bus] {
			continue
		}
		seen[bus] = true
		out = append(out, bus)
	}
	sort.Strings(out)
	return out
}

// depEntry is one line of modules.dep: the module's file and its
// dependencies' files, in the order modprobe loads them from the right.
type depEntry struct {
	path string
	deps []string
}

// depTable maps a module name to its modules.dep entry.
type depTable map[string]depEntry

func parseModulesDep(r io.Reader) depTable {
	t := depTable{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(p) == "" {
			continue
		}
		p = strings.TrimSpace(p)
		t[moduleName(p)] = depEntry{path: p, deps: strings.Fields(deps)}
	}
	return t
}

// moduleName is the kernel's name for a module file: the base name
// without .ko and a compression suffix, '-' read as '_'.
func moduleName(p string) string {
	b := path.Base(p)
	for _, e := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(b, e) {
			b = strings.TrimSuffix(b, e)
			break
		}
	}
	return strings.ReplaceAll(b, "-", "_")
}

// loadOrder is the files to load for name, dependencies first, without
// those already loaded; nil when name is not in the table.
func (t depTable) loadOrder(name string, loaded map[string]bool) []string {
	e, ok := t[strings.ReplaceAll(name, "-", "_")]
	if !ok {
		return nil
	}
	var out []string
	for i := len(e.deps) - 1; i >= 0; i-- {
		if !loaded[moduleName(e.deps[i])] {
			out = append(out, e.deps[i])
		}
	}
	return append(out, e.path)
}

// isNetDriver tells a NIC driver by where the kernel keeps it.
func isNetDriver(file string) bool {
	return strings.HasPrefix(file, "kernel/drivers/net/")
}

// driversFor decides which modules to load for the devices' modaliases:
// those matching and not loaded already, NIC drivers only when net is
// true (they are the only drivers, of their kind, net asks for).
func driversFor(modaliases []string, t aliasTable, deps depTable, loaded map[string]bool, net bool) []string {
	want := map[string]bool{}
	for _, a := range modaliases {
		for _, m := range t.match(a) {
			if !loaded[m] && isNetDriver(deps[m].path) == net {
				want[m] = true
			}
		}
	}
	out := make([]string, 0, len(want))
	for m := range want {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// cheapest picks the driver whose load costs least (bytes of the module
// and of its dependencies not loaded yet; the name breaks ties), so that a
// virtio disk does not wait for libata and scsi_mod of an AHCI controller
// that has no disk.
func cheapest(cands []string, cost func(string) int64) string {
	best, bestCost := "", int64(-1)
	for _, c := range cands {
		if n := cost(c); bestCost < 0 || n < bestCost || n == bestCost && c < best {
			best, bestCost = c, n
		}
	}
	return best
}

// fsModule is the module that provides a filesystem type as blkid reports it.
func fsModule(fstype string) string {
	switch fstype {
	case "ext2", "ext3", "ext4":
		return "ext4"
	case "vfat":
		return "vfat"
	}
	return fstype
}

// modulesList is what mkimage initramfs put in: every module, in load
// order (the fallback of loadAll).
const modulesList = "/etc/hnboot-modules"

// modLoader loads modules with finit_module (dependencies from
// modules.dep) and remembers what it loaded. The NIC drivers load in a
// goroutine of their own beside the boot: mu guards the rest.
type modLoader struct {
	log     *slog.Logger
	dir     string // /lib/modules/RELEASE
	aliases aliasTable
	buses   []string // aliases.buses()
	deps    depTable

	mu     sync.Mutex
	loaded map[string]bool
	listed []string // /etc/hnboot-modules: everything mkimage put in
	all    bool     // the full list was loaded already
}

func newModLoader(log *slog.Logger) *modLoader {
	m := &modLoader{log: log, loaded: map[string]bool{}, dir: filepath.Join("/lib/modules", runningRelease())}
	if data, err := os.ReadFile(modulesList); err == nil {
		m.listed = strings.Fields(string(data))
	}
	if f, err := os.Open(filepath.Join(m.dir, "modules.dep")); err == nil {
		m.deps = parseModulesDep(f)
		f.Close()
	} else {
		log.Warn("cannot load modules (a kernel with built-in drivers still boots)", "err", err)
	}
	if f, err := os.Open(filepath.Join(m.dir, "modules.alias")); err == nil {
		m.aliases = parseAliases(f)
		m.buses = m.aliases.buses()
		f.Close()
	}
	return m
}

// load loads the named modules with their dependencies; names that are
// built in or absent are only logged.
func (m *modLoader) load(why string, names ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loadLocked(why, names...)
}

func (m *modLoader) loadLocked(why string, names ...string) {
	if len(names) == 0 {
		return
	}
	start := time.Now()
	var done, failed []string
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		if m.loaded[n] {
			continue
		}
		m.loaded[n] = true // tried once, whatever the outcome: hardware's loop ends
		if err := m.insert(n); err != nil {
			failed = append(failed, n)
			m.log.Debug("module", "name", n, "err", err)
			continue
		}
		done = append(done, n)
	}
	if len(done) > 0 {
		m.log.Info("loaded modules for "+why, "modules", strings.Join(done, ","), "took", time.Since(start).Round(time.Millisecond))
	}
	if len(failed) > 0 {
		m.log.Info("modules not loaded (absent or built in)", "names", strings.Join(failed, ","))
	}
}

// insert loads n and what it depends on. A module already in the kernel
// (loaded by the kernel itself, or built in) counts as loaded.
func (m *modLoader) insert(n string) error {
	files := m.deps.loadOrder(n, m.loaded)
	if files == nil {
		return errors.New("not in modules.dep")
	}
	for _, f := range files {
		name := moduleName(f)
		if err := finitModule(filepath.Join(m.dir, f)); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		m.loaded[name] = true
	}
	return nil
}

func finitModule(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(file, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE // the kernel decompresses (CONFIG_MODULE_DECOMPRESS)
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil {
		return &os.PathError{Op: "finit_module", Path: file, Err: err}
	}
	return nil
}

// cost is the bytes a load of name adds to the kernel.
func (m *modLoader) cost(name string) int64 {
	var n int64
	for _, f := range m.deps.loadOrder(name, m.loaded) {
		if st, err := os.Stat(filepath.Join(m.dir, f)); err == nil {
			n += st.Size()
		}
	}
	return n
}

// hardware loads disk drivers for the devices present, one at a time and
// the cheapest first, until found reports the partition the boot waits
// for. A bus driver (virtio_pci) makes new devices (virtio disks) appear,
// so the candidates are read again after each load.
func (m *modLoader) hardware(found func() bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.aliases) == 0 {
		m.log.Info("initramfs has no modules.alias; loading every module it carries")
		m.loadAllLocked()
		return
	}
	for {
		if found != nil && found() {
			return
		}
		want := driversFor(readModaliases(m.buses), m.aliases, m.deps, m.loaded, false)
		if len(want) == 0 {
			return
		}
		m.loadLocked("the devices present", cheapest(want, m.cost))
	}
}

// network loads the drivers of the NICs present.
func (m *modLoader) network() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loadLocked("the network cards", driversFor(readModaliases(m.buses), m.aliases, m.deps, m.loaded, true)...)
}

// loadAll is the fallback: every module mkimage listed.
func (m *modLoader) loadAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loadAllLocked()
}

func (m *modLoader) loadAllLocked() {
	if m.all {
		return
	}
	m.all = true
	m.loadLocked("everything in the initramfs", m.listed...)
}

// readModaliases reads the modaliases of the devices on buses.
func readModaliases(buses []string) []string {
	var out []string
	for _, bus := range buses {
		out = append(out, readBus(bus)...)
	}
	return out
}

func readBus(bus string) []string {
	files, _ := filepath.Glob(filepath.Join("/sys/bus", bus, "devices", "*", "modalias"))
	var out []string
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			if s := strings.TrimSpace(string(b)); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}
