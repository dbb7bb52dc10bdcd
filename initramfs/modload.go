package main

import (
	"bufio"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// Loading every driver the initramfs carries costs seconds under emulation
// and on small machines (btrfs and xfs alone are megabytes of relocations
// and signature checks). Like udev, the init loads drivers for the devices
// it actually sees, by their modalias, then filesystems for what it finds on
// them. The full list stays as a fallback when no matching disk appears.

// aliasTable is a parsed modules.alias: patterns in file order.
type aliasTable []aliasEntry

type aliasEntry struct{ pattern, module string }

func parseAliases(r io.Reader) aliasTable {
	var t aliasTable
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "alias" {
			t = append(t, aliasEntry{f[1], f[2]})
		}
	}
	return t
}

// match returns the modules whose alias patterns match modalias.
func (t aliasTable) match(modalias string) []string {
	var out []string
	for _, e := range t {
		if ok, err := path.Match(e.pattern, modalias); err == nil && ok {
			out = append(out, e.module)
		}
	}
	return out
}

// driversFor decides which modules to load for the devices' modaliases:
// those matching and not loaded already. NIC drivers are included even
// without hn.server: the default hostname comes from the first MAC.
func driversFor(modaliases []string, t aliasTable, loaded map[string]bool) []string {
	want := map[string]bool{}
	for _, a := range modaliases {
		for _, m := range t.match(a) {
			if !loaded[m] {
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

// modLoader loads modules through u-root's kmodule (dependencies from
// modules.dep) and remembers what it loaded.
type modLoader struct {
	log     *slog.Logger
	prober  *kmodule.Prober
	aliases aliasTable
	loaded  map[string]bool
	listed  []string // /etc/hnboot-modules: everything mkimage put in
	all     bool     // the full list was loaded already
}

func newModLoader(log *slog.Logger) *modLoader {
	m := &modLoader{log: log, loaded: map[string]bool{}}
	if data, err := os.ReadFile(modulesList); err == nil {
		m.listed = strings.Fields(string(data))
	}
	p, err := kmodule.NewProber(kmodule.ProbeOpts{})
	if err != nil {
		log.Warn("cannot load modules (a kernel with built-in drivers still boots)", "err", err)
		return m
	}
	m.prober = p
	var u unix.Utsname
	unix.Uname(&u)
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	if f, err := os.Open(filepath.Join(dir, "modules.alias")); err == nil {
		m.aliases = parseAliases(f)
		f.Close()
	}
	return m
}

// load loads the named modules with their dependencies; names that are
// built in or absent are only logged.
func (m *modLoader) load(why string, names ...string) {
	if m.prober == nil || len(names) == 0 {
		return
	}
	start := time.Now()
	var done, failed []string
	for _, n := range names {
		if m.loaded[n] {
			continue
		}
		m.loaded[n] = true
		if err := m.prober.Probe(n, ""); err != nil {
			failed = append(failed, n)
			m.log.Debug("module", "name", n, "err", err)
			continue
		}
		done = append(done, n)
	}
	m.log.Info("loaded modules for "+why, "modules", strings.Join(done, ","), "took", time.Since(start).Round(time.Millisecond))
	if len(failed) > 0 {
		m.log.Info("modules not loaded (absent or built in)", "names", strings.Join(failed, ","))
	}
}

// hardware loads drivers for the devices present, in rounds: a bus driver
// (virtio_pci) makes new devices (virtio disks) appear.
func (m *modLoader) hardware() {
	if len(m.aliases) == 0 {
		m.log.Info("initramfs has no modules.alias; loading every module it carries")
		m.loadAll()
		return
	}
	for round := 0; round < 4; round++ {
		aliases := readModaliases()
		want := driversFor(aliases, m.aliases, m.loaded)
		if len(want) == 0 {
			return
		}
		m.load("the devices present", want...)
	}
}

// loadAll is the fallback: every module mkimage listed.
func (m *modLoader) loadAll() {
	if m.all {
		return
	}
	m.all = true
	m.load("everything in the initramfs", m.listed...)
}

func readModaliases() []string {
	files, _ := filepath.Glob("/sys/bus/*/devices/*/modalias")
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
