package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hnboot/hnboot/internal/layout"
)

// Mount points and the fstab block of the seed layout.
const (
	fstabBegin = "# hnboot: per-host mounts, rewritten at every boot; edit the image, not these lines"
	fstabEnd   = "# hnboot: end"
	fstabLines = "LABEL=EFI-BOOT /boot/loader vfat noauto,noatime 0 2\n" +
		"LABEL=hostpart /hostpart auto noatime 0 1\n"
	networkFile = "/etc/systemd/network/10-hnboot.network"
	envFile     = "/etc/hnboot/network.env"
)

// Apply writes the host's identity into root, the new root filesystem
// (an overlay whose upper layer is fresh each boot, so nothing here needs
// to survive a crash; it is still idempotent, so the init may retry).
//
// All paths are resolved through os.Root: the image's symlinks can never
// make us write outside root (an absolute symlink inside the image is
// refused rather than followed into the initramfs).
func Apply(root string, id Identity, hc HostConf) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("apply identity: %w", err)
	}
	defer r.Close()
	a := applier{r: r, root: root}

	if hc.Hostname != "" {
		a.write("/etc/hostname", hc.Hostname+"\n", 0o644)
		a.hosts(hc.Hostname)
	}
	if id.MachineID != "" {
		a.write("/etc/machine-id", id.MachineID+"\n", 0o444)
	}
	for _, k := range id.HostKeys {
		base := "/etc/ssh/ssh_host_" + k.Type + "_key"
		a.write(base, string(k.Private), 0o600)
		a.write(base+".pub", string(k.Public), 0o644)
	}
	a.write(networkFile, NetworkdUnit(hc), 0o644)
	a.write(envFile, NetworkEnv(hc), 0o644)
	if hc.IP != "" && hc.IP != DHCP && len(hc.DNS) > 0 {
		a.resolvConf(hc.DNS)
	}
	a.optional("/etc/hnboot/storage-id", hc.StorageID)
	a.optional("/etc/hnboot/cm-id", hc.ConfigMgmtID)

	paths := make([]string, 0, len(hc.Files))
	for p := range hc.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		clean, err := cleanRootPath(p)
		if err != nil {
			a.fail(fmt.Errorf("extra file: %w", err))
			continue
		}
		a.write(clean, hc.Files[p], 0o644)
	}

	a.mkdir(layout.HostpartMount)
	a.mkdir(layout.LoaderMount)
	a.symlink(layout.HostpartMount+"/"+layout.DataDir, layout.DataLink)
	a.fstab()
	return a.err()
}

type applier struct {
	r    *os.Root
	root string
	errs []error
}

func (a *applier) fail(err error) { a.errs = append(a.errs, err) }

func (a *applier) err() error {
	if len(a.errs) == 0 {
		return nil
	}
	return fmt.Errorf("apply identity to %s: %w", a.root, errors.Join(a.errs...))
}

func rel(p string) string { return strings.TrimPrefix(path.Clean(p), "/") }

func (a *applier) mkdir(p string) {
	if err := a.r.MkdirAll(rel(p), 0o755); err != nil {
		a.fail(fmt.Errorf("mkdir %s: %w", p, err))
	}
}

// write replaces p with a new file: whatever the image has at p (a file,
// or a symlink, which is removed rather than followed) goes first.
//
// A plain write, not internal/durable: the upper layer of the root is a
// tmpfs made fresh at every boot, so there is nothing for an fsync to
// make durable, and nothing reads the root until switch_root, so no
// reader can see half a file. Writing through os.Root (which durable,
// taking paths, cannot) is what keeps the image's symlinks from leading
// the write out of the root.
func (a *applier) write(p, content string, mode os.FileMode) {
	name := rel(p)
	if err := a.r.MkdirAll(path.Dir(name), 0o755); err != nil {
		a.fail(fmt.Errorf("write %s: mkdir: %w", p, err))
		return
	}
	if err := a.r.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.fail(fmt.Errorf("write %s: %w", p, err))
		return
	}
	f, err := a.r.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		a.fail(fmt.Errorf("write %s: %w", p, err))
		return
	}
	// OpenFile's mode is filtered by the umask; private keys must be
	// exactly 0600 and public files readable by all.
	cherr := f.Chmod(mode)
	_, werr := f.WriteString(content)
	cerr := f.Close()
	if err := errors.Join(cherr, werr, cerr); err != nil {
		a.fail(fmt.Errorf("write %s: %w", p, err))
	}
}

// optional writes p when content is set and removes a stale copy when not.
func (a *applier) optional(p, content string) {
	if content != "" {
		a.write(p, content+"\n", 0o644)
		return
	}
	if err := a.r.Remove(rel(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.fail(fmt.Errorf("remove %s: %w", p, err))
	}
}

func (a *applier) readOptional(p string) string {
	b, err := a.r.ReadFile(rel(p))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.fail(fmt.Errorf("read %s: %w", p, err))
	}
	return string(b)
}

// hosts keeps the image's /etc/hosts and replaces only the 127.0.1.1
// line, the Debian convention for the host's own name.
func (a *applier) hosts(hostname string) {
	a.write("/etc/hosts", HostsFile(a.readOptional("/etc/hosts"), hostname), 0o644)
}

// HostsFile returns old with its 127.0.1.1 line replaced by one naming
// hostname (and its short form), adding localhost entries if old is empty.
func HostsFile(old, hostname string) string {
	names := hostname
	if short, _, ok := strings.Cut(hostname, "."); ok {
		names += " " + short
	}
	line := "127.0.1.1\t" + names
	var out []string
	replaced := false
	for _, l := range strings.Split(strings.TrimRight(old, "\n"), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "127.0.1.1" {
			if !replaced {
				out = append(out, line)
				replaced = true
			}
			continue
		}
		out = append(out, l)
	}
	if strings.TrimSpace(old) == "" {
		out = []string{"127.0.0.1\tlocalhost", "::1\t\tlocalhost ip6-localhost ip6-loopback"}
	}
	if !replaced {
		out = append(out, line)
	}
	return strings.Join(out, "\n") + "\n"
}

// resolvConf writes static DNS servers for images without a resolver
// daemon. A symlinked resolv.conf belongs to systemd-resolved or
// resolvconf, which get the servers from the networkd file; leave it.
func (a *applier) resolvConf(dns []string) {
	if fi, err := a.r.Lstat("etc/resolv.conf"); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return
	}
	var b strings.Builder
	b.WriteString("# written by hnboot from the host configuration\n")
	for _, d := range dns {
		b.WriteString("nameserver " + d + "\n")
	}
	a.write("/etc/resolv.conf", b.String(), 0o644)
}

// symlink makes link point at target, replacing a different symlink or an
// empty directory the image may have there, but never a non-empty
// directory or a file, which would be someone's data.
func (a *applier) symlink(target, link string) {
	name := rel(link)
	fi, err := a.r.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		a.fail(fmt.Errorf("symlink %s: %w", link, err))
		return
	case fi.Mode()&fs.ModeSymlink != 0:
		if cur, _ := a.r.Readlink(name); cur == target {
			return
		}
		if err := a.r.Remove(name); err != nil {
			a.fail(fmt.Errorf("symlink %s: remove old link: %w", link, err))
			return
		}
	case fi.IsDir():
		if err := a.r.Remove(name); err != nil { // fails unless empty
			a.fail(fmt.Errorf("symlink %s -> %s: the image has a non-empty directory there: %w", link, target, err))
			return
		}
	default:
		a.fail(fmt.Errorf("symlink %s -> %s: the image has a file there", link, target))
		return
	}
	if err := a.r.Symlink(target, name); err != nil {
		a.fail(fmt.Errorf("symlink %s -> %s: %w", link, target, err))
	}
}

func (a *applier) fstab() {
	a.write("/etc/fstab", Fstab(a.readOptional("/etc/fstab")), 0o644)
}

// Fstab returns old with hnboot's block (re)placed at the end. Earlier
// hnboot blocks and any other line mounting /boot/loader or /hostpart (as
// the seed's manual setup wrote them) are dropped, so each appears once.
func Fstab(old string) string {
	var out []string
	in := false
	for _, l := range strings.Split(strings.TrimRight(old, "\n"), "\n") {
		switch {
		case l == fstabBegin:
			in = true
			continue
		case l == fstabEnd:
			in = false
			continue
		case in:
			continue
		}
		if f := strings.Fields(l); len(f) >= 2 && !strings.HasPrefix(f[0], "#") &&
			(path.Clean(f[1]) == layout.LoaderMount || path.Clean(f[1]) == layout.HostpartMount) {
			continue
		}
		out = append(out, l)
	}
	for len(out) > 0 && strings.TrimSpace(out[len(out)-1]) == "" {
		out = out[:len(out)-1]
	}
	s := strings.Join(out, "\n")
	if s != "" {
		s += "\n"
	}
	return s + fstabBegin + "\n" + fstabLines + fstabEnd + "\n"
}

// NetworkdUnit is the systemd-networkd configuration for hc.
func NetworkdUnit(hc HostConf) string {
	var b strings.Builder
	b.WriteString("# written by hnboot at every boot from the host configuration\n[Match]\n")
	if hc.Interface != "" {
		b.WriteString("Name=" + hc.Interface + "\n")
	} else {
		b.WriteString("Name=en* eth*\n")
	}
	b.WriteString("\n[Network]\n")
	if hc.IP == "" || hc.IP == DHCP {
		b.WriteString("DHCP=yes\n")
	} else {
		b.WriteString("Address=" + hc.IP + "\n")
		if hc.Gateway != "" {
			b.WriteString("Gateway=" + hc.Gateway + "\n")
		}
	}
	for _, d := range hc.DNS {
		b.WriteString("DNS=" + d + "\n")
	}
	return b.String()
}

// NetworkEnv is the same configuration as shell variables, for images that
// do not run networkd (sourced by their own network scripts).
func NetworkEnv(hc HostConf) string {
	ip := hc.IP
	if ip == "" {
		ip = DHCP
	}
	var b strings.Builder
	b.WriteString("# written by hnboot at every boot; source it: . /etc/hnboot/network.env\n")
	for _, kv := range [][2]string{
		{"HN_HOSTNAME", hc.Hostname},
		{"HN_INTERFACE", hc.Interface},
		{"HN_IP", ip},
		{"HN_GATEWAY", hc.Gateway},
		{"HN_DNS", strings.Join(hc.DNS, " ")},
	} {
		b.WriteString(kv[0] + "=" + quoteShell(kv[1]) + "\n")
	}
	return b.String()
}

// Bind is a bind mount for the init to perform before switch_root.
type Bind struct {
	Source string // under hostpart/data
	Target string // inside the new root
}

// StateBinds prepares the declared state directories: for each dir (an
// absolute path in the running system, e.g. /var/lib/docker) it creates
// hostpartData/<dir> and root/<dir> and returns the pair to bind-mount.
// Data thus lives where /data0 shows it (/data0/var/lib/docker). A dir
// that cannot be prepared (bad path, or the image has a symlink leading
// out of the root on the way) is skipped and reported; the others still
// come back.
func StateBinds(root, hostpartData string, dirs []string) ([]Bind, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("state dirs: %w", err)
	}
	defer r.Close()
	var binds []Bind
	var errs []error
	seen := map[string]bool{}
	for _, d := range dirs {
		clean, err := cleanRootPath(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("state dir: %w", err))
			continue
		}
		if seen[clean] {
			continue
		}
		seen[clean] = true
		src := filepath.Join(hostpartData, filepath.FromSlash(clean))
		if err := os.MkdirAll(src, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("state dir %s: create source: %w", clean, err))
			continue
		}
		// MkdirAll through os.Root refuses symlinks that leave root, so
		// the target we hand to mount(2) really is inside the new root.
		if err := r.MkdirAll(rel(clean), 0o755); err != nil {
			errs = append(errs, fmt.Errorf("state dir %s: create target in %s: %w", clean, root, err))
			continue
		}
		binds = append(binds, Bind{Source: src, Target: filepath.Join(root, filepath.FromSlash(clean))})
	}
	if len(errs) > 0 {
		return binds, errors.Join(errs...)
	}
	return binds, nil
}
