package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hnboot/hnboot/internal/hostconfig"
	"github.com/hnboot/hnboot/internal/layout"
)

// Mount points and the fstab block of the seed layout.
const (
	fstabBegin = "# hnboot: per-host mounts, rewritten at every boot; edit the image, not these lines"
	fstabEnd   = "# hnboot: end"
	fstabLines = "LABEL=EFI-BOOT /boot/loader vfat noauto,noatime 0 2\n" +
		"LABEL=hostpart /hostpart auto noatime 0 1\n"
	networkFile = layout.NetworkdMain
	envFile     = layout.NetworkEnv
)

// Applied says what ApplyConfig wrote, for the log.
type Applied struct {
	Network string   // "networkd", or "networkd and ifupdown" for an image with ifupdown and without networkd enabled
	Files   []string // the configuration's files: written
	// Problems are values refused and files left out (an owner the image
	// does not know); log each as an error and go on.
	Problems []string
	Notes    []string // what the log should say besides
}

// ApplyConfig writes the host's identity into root, the new root
// filesystem (an overlay whose upper layer is fresh each boot, so nothing
// here needs to survive a crash; it is still idempotent, so the init may
// retry): hostname and /etc/hosts, machine-id, SSH host keys, the
// network, layout.NetworkEnv, resolv.conf for static DNS,
// layout.IdentityEnv, the configuration's files (after hnboot's own, with
// their mode and owner; owners by name come from the image's passwd and
// group), the mount points, /data0 and the fstab block.
//
// The network is hostconfig.Networkd always, and hostconfig.Ifupdown too
// when the image has ifupdown and does not enable networkd (two managers
// must not configure one NIC) and c says more than DHCP on any NIC (which
// the image's own ifupdown file does already). bootMAC is the NIC an
// ifupdown image configures when c names none.
//
// c is validated again (the init's last line against a bad value from
// any layer): what is refused is in Applied.Problems, the rest is
// written. The error says what could not be written (the root is not
// what it should be). All paths are resolved through os.Root: the
// image's symlinks can never make us write outside root (an absolute
// symlink inside the image is refused rather than followed into the
// initramfs).
func ApplyConfig(root string, id Identity, c hostconfig.Config, bootMAC string) (Applied, error) {
	var res Applied
	r, err := os.OpenRoot(root)
	if err != nil {
		return res, fmt.Errorf("apply identity: %w", err)
	}
	defer r.Close()
	a := applier{r: r, root: root}
	c, problems := c.Validate(bootMAC)
	for _, p := range problems {
		res.Problems = append(res.Problems, "refused "+p.String())
	}

	if c.Hostname != "" {
		a.write(layout.HostnameFile, c.Hostname+"\n", 0o644)
		a.hosts(c.Hostname)
	}
	if id.MachineID != "" {
		a.write(layout.MachineIDFile, id.MachineID+"\n", 0o444)
	}
	for _, k := range id.HostKeys {
		base := "/etc/ssh/ssh_host_" + k.Type + "_key"
		a.write(base, string(k.Private), 0o600)
		a.write(base+".pub", string(k.Public), 0o644)
	}

	res.Network = "networkd"
	a.removeStaleNetworkd()
	for _, o := range hostconfig.Networkd(c.Network) {
		a.write(o.Path, o.Content, o.Mode)
	}
	switch {
	case !a.hasIfupdown() || a.networkdEnabled():
		a.remove(layout.IfupdownFile) // one the image was built with
	case ifupdownDefault(c.Network):
		// DHCP on whatever NIC: what the image's own ifupdown
		// configuration does already, and a stanza of ours beside its
		// own would fight it for the NIC.
		a.remove(layout.IfupdownFile)
	default:
		outs, err := hostconfig.Ifupdown(c.Network, bootMAC)
		if err != nil {
			res.Notes = append(res.Notes, err.Error()+"; the image's own ifupdown configuration applies")
		} else {
			res.Network = "networkd and ifupdown"
			for _, o := range outs {
				a.write(o.Path, o.Content, o.Mode)
			}
			if !strings.Contains(a.readOptional("/etc/network/interfaces"), "interfaces.d") {
				res.Notes = append(res.Notes, "the image's /etc/network/interfaces does not source /etc/network/interfaces.d: "+layout.IfupdownFile+" is not read")
			}
		}
	}
	a.write(layout.NetworkEnv, hostconfig.NetworkEnv(c), 0o644)
	if resolv, ok := hostconfig.ResolvConf(c.Network); ok {
		a.resolvConf(resolv)
	}
	a.write(layout.IdentityEnv, hostconfig.IdentityEnv(c.Identity), 0o644)
	a.optional(layout.StorageIDFile, c.Identity[IdentityStorageID])
	a.optional(layout.CMIDFile, c.Identity[IdentityCMID])

	for _, f := range c.Files {
		mode, err := hostconfig.FileMode(f.Mode)
		if f.Mode == "" || err != nil {
			mode = 0o644 // Validate sets every mode; hostconfig.DefaultFileMode otherwise
		}
		uid, gid := -1, -1
		if f.Owner != "" {
			if uid, gid, err = a.owner(f.Owner); err != nil {
				res.Problems = append(res.Problems, fmt.Sprintf("file %s: %v; not written", f.Path, err))
				continue
			}
		}
		if a.writeOwned(f.Path, f.Content, fs.FileMode(mode), uid, gid) {
			res.Files = append(res.Files, f.Path)
		}
	}

	a.mkdir(layout.HostpartMount)
	a.mkdir(layout.LoaderMount)
	a.symlink(layout.HostpartMount+"/"+layout.DataDir, layout.DataLink)
	a.fstab()
	return res, a.err()
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
func (a *applier) write(p, content string, mode os.FileMode) { a.writeOwned(p, content, mode, -1, -1) }

// writeOwned is write, and chown to uid:gid unless they are -1; it
// reports whether p was written.
func (a *applier) writeOwned(p, content string, mode os.FileMode, uid, gid int) bool {
	name := rel(p)
	if err := a.r.MkdirAll(path.Dir(name), 0o755); err != nil {
		a.fail(fmt.Errorf("write %s: mkdir: %w", p, err))
		return false
	}
	if err := a.r.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.fail(fmt.Errorf("write %s: %w", p, err))
		return false
	}
	// 0600 until owner and mode are both right, so a file meant for one
	// group is never readable by all; owner first (chown clears set-id
	// bits). OpenFile's mode is filtered by the umask; Chmod's is exact.
	f, err := a.r.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		a.fail(fmt.Errorf("write %s: %w", p, err))
		return false
	}
	var errs []error
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			errs = append(errs, fmt.Errorf("chown: %w", err))
		}
	}
	if err := f.Chmod(mode); err != nil {
		errs = append(errs, fmt.Errorf("chmod: %w", err))
	}
	_, werr := f.WriteString(content)
	errs = append(errs, werr, f.Close())
	if err := errors.Join(errs...); err != nil {
		a.fail(fmt.Errorf("write %s: %w", p, err))
		return false
	}
	return true
}

// ifupdownDefault: n says nothing but DHCP.
func ifupdownDefault(n hostconfig.Network) bool {
	return n.Carrier() == "" && n.VLAN == nil && !n.Static() && n.MTU == 0 && len(n.DNS) == 0 && len(n.Search) == 0
}

// remove removes p if it is there.
func (a *applier) remove(p string) {
	if err := a.r.Remove(rel(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.fail(fmt.Errorf("remove %s: %w", p, err))
	}
}

// removeStaleNetworkd removes the image's layout.NetworkdPrefix* files
// (an image built from a running host carries last boot's): only this
// boot's configuration may match a NIC.
func (a *applier) removeStaleNetworkd() {
	ents, err := fs.ReadDir(a.r.FS(), rel(layout.NetworkdDir))
	if err != nil {
		return // none, or not a directory: nothing to remove
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), layout.NetworkdPrefix) {
			a.remove(path.Join(layout.NetworkdDir, e.Name()))
		}
	}
}

// exists reports whether p is in the root (through its symlinks, if
// they stay inside).
func (a *applier) exists(p string) bool {
	_, err := a.r.Stat(rel(p))
	return err == nil
}

// hasIfupdown: the image configures its network with ifupdown.
func (a *applier) hasIfupdown() bool {
	return a.exists("/etc/network/interfaces") && (a.exists("/sbin/ifup") || a.exists("/usr/sbin/ifup"))
}

// networkdEnabled: the image starts systemd-networkd (systemctl enable
// links it into a .wants directory).
func (a *applier) networkdEnabled() bool {
	ents, err := fs.ReadDir(a.r.FS(), "etc/systemd/system")
	if err != nil {
		return false
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".wants") {
			if _, err := a.r.Lstat(path.Join("etc/systemd/system", e.Name(), "systemd-networkd.service")); err == nil {
				return true
			}
		}
	}
	return false
}

// owner resolves "user[:group]" against the image's /etc/passwd and
// /etc/group; numbers are taken as they are. Without a group, the group
// stays root's, as chown user does.
func (a *applier) owner(s string) (uid, gid int, err error) {
	user, group, hasGroup := strings.Cut(s, ":")
	if uid, err = lookupID(a.readOptional("/etc/passwd"), user); err != nil {
		return -1, -1, fmt.Errorf("owner %s: %w in the image's /etc/passwd", s, err)
	}
	gid = 0
	if hasGroup {
		if gid, err = lookupID(a.readOptional("/etc/group"), group); err != nil {
			return -1, -1, fmt.Errorf("owner %s: %w in the image's /etc/group", s, err)
		}
	}
	return uid, gid, nil
}

// lookupID finds name in a passwd or group file (name:x:ID:...); a number
// is its own ID.
func lookupID(file, name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	for _, l := range strings.Split(file, "\n") {
		f := strings.Split(l, ":")
		if len(f) >= 3 && f[0] == name {
			n, err := strconv.Atoi(f[2])
			if err != nil || n < 0 {
				return -1, fmt.Errorf("%q has a bad id %q", name, f[2])
			}
			return n, nil
		}
	}
	return -1, fmt.Errorf("no %q", name)
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
func (a *applier) resolvConf(content string) {
	if fi, err := a.r.Lstat("etc/resolv.conf"); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return
	}
	a.write("/etc/resolv.conf", content, 0o644)
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

// NetworkdUnit is the main networkd file for hc (layout.NetworkdMain),
// for callers of the host.conf-era API; ApplyConfig writes all of
// hostconfig.Networkd.
func NetworkdUnit(hc HostConf) string {
	n, _ := hc.Config().Validate("")
	for _, o := range hostconfig.Networkd(n.Network) {
		if o.Path == layout.NetworkdMain {
			return o.Content
		}
	}
	return ""
}

// NetworkEnv is hostconfig.NetworkEnv for hc, for callers of the
// host.conf-era API.
func NetworkEnv(hc HostConf) string {
	c, _ := hc.Config().Validate("")
	return hostconfig.NetworkEnv(c)
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
