// Package cmdline turns the kernel command line into the init's
// configuration. It is pure: the caller reads /proc/cmdline and logs the
// warnings, so a typo on the command line degrades to a default and a
// console message instead of an unbootable host.
//
// Every key the init understands is a row of Keys: its parser, its
// default and its help line. Parse, the init's --help (Usage) and the
// README's table (checked by a test) come from that one table, so a key
// cannot be read somewhere without being documented.
package cmdline

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/layout"
)

// Defaults, named so the init and its tests agree on them.
const (
	DefaultTries         = 3
	DefaultInit          = "/sbin/init"
	DefaultCheckinBudget = 5 * time.Second
	// DefaultDiskWait is how long the init waits for hostpart before it
	// gives up on the disk; DefaultDisklessWait when a server is known
	// (hn.server=), since the host can then boot from RAM.
	DefaultDiskWait     = 30 * time.Second
	DefaultDisklessWait = 5 * time.Second
)

// Config is what the init needs from the command line. Zero values of the
// optional fields mean "not given".
type Config struct {
	Hostpart  string   // block device spec of the host partition: LABEL=, UUID=, PARTLABEL= or /dev/...
	Image     string   // file name on hostpart of the image to boot first (hn.image=, real_root=); rotation does not use it
	Tries     int      // boots a freshly promoted image gets before it is reverted
	Server    string   // imaged URL (hn.server=)
	RevertID  string   // hn.revert=ID: fleet-wide revert, applied once per ID
	Debug     bool     // hn.debug
	CrashTest int      // hn.crashtest=N: debug only, stop after N rotation operations
	Hostname  string   // hn.hostname=
	IP        string   // kernel ip= value, raw (see identity.FromKernelIP)
	Modules   []string // hn.modules=a,b: extra kernel modules to load
	Init      string   // init= or hn.init=
	Alias     bool     // the genkernel names (real_root=, raw_loop_root_host_partition=) were present
	// Network is the budget of the boot's talk with imaged before the
	// image is chosen: bringing up the NIC, asking what this MAC should
	// run, and the check-in (hn.checkin=DURATION). A download it starts
	// has no budget: it runs until done or cut (a resumable .part).
	Network   time.Duration
	NoCheckin bool   // hn.checkin=off: no network at boot at all
	NoFetch   bool   // hn.fetch=off: check in, but never download the assigned image
	BootIF    string // BOOTIF=01-aa-bb-..: the MAC (aa:bb:..) of the NIC the firmware booted from
	Kexeced   string // hn.kexeced=IMAGE: set by the init on the kernel it kexecs into
	NoKexec   bool   // hn.nokexec
	// Diskless (hn.diskless): leave any disk alone and boot the assigned
	// image from RAM.
	Diskless bool
	// DiskWait is how long to wait for hostpart (hn.diskwait=); 0: the
	// default (DefaultDiskWait, DefaultDisklessWait with hn.server=).
	DiskWait time.Duration
}

// Split splits a command line into words the way the kernel does
// (lib/cmdline.c next_arg): whitespace separates words except inside double
// quotes, and the quotes themselves are removed, so both
// `hn.hostname="a b"` and `"hn.hostname=a b"` give hn.hostname=a b.
func Split(s string) []string {
	var words []string
	var cur strings.Builder
	inWord, inQuote := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == 0):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// Key is one kernel command line parameter the init understands.
type Key struct {
	Name  string // "hn.tries"; aliases are keys of their own
	Value string // the value's form in the help ("N", "URL"); "" for a flag
	Def   string // the default, as the help shows it
	Help  string
	// Hidden keys are not shown in --help and the README (test-only).
	Hidden bool
	// set parses val into c; hasVal is false for a bare "key". An error
	// is a warning: the default stays.
	set func(c *Config, p *pending, val string, hasVal bool) error
}

// pending holds the keys with a genkernel alias (or init=), resolved after
// the whole line was read so that the hn.* name wins in any order.
type pending struct {
	hostpart, image, aliasHostpart, aliasImage, hnInit, kInit *string
}

func str(v string) *string { return &v }

// Keys are the parameters, in the order of the help.
var Keys = []Key{
	{Name: "hn.hostpart", Value: "SPEC", Def: layout.HostpartSpec, Help: "the partition holding the images (LABEL=, UUID=, PARTLABEL=, /dev/...)",
		set: func(c *Config, p *pending, v string, _ bool) error { p.hostpart = str(v); return nil }},
	{Name: "hn.image", Value: "NAME", Def: layout.Current, Help: "the current image's file name on hostpart",
		set: func(c *Config, p *pending, v string, _ bool) error { p.image = str(v); return nil }},
	{Name: "hn.tries", Value: "N", Def: strconv.Itoa(DefaultTries), Help: "trial boots for a newly promoted image",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100 {
				return fmt.Errorf("hn.tries=%q is not a number from 1 to 100; using %d", v, DefaultTries)
			}
			c.Tries = n
			return nil
		}},
	{Name: "hn.server", Value: "URL", Help: "the imaged server: the init asks it what this MAC should run, downloads that image when it is not hn-root.img, and checks in (without it, the server of the last check-in, remembered on hostpart)",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("hn.server=%q is not an http(s) URL; ignoring it", v)
			}
			c.Server = v
			return nil
		}},
	{Name: "hn.checkin", Value: "DURATION", Def: DefaultCheckinBudget.String(), Help: "the longest the boot waits for the network and imaged before it boots the local image (off: no network at all)",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			if v == "off" {
				c.NoCheckin = true
				return nil
			}
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("hn.checkin=%q is not a duration or off; using %v", v, DefaultCheckinBudget)
			}
			c.Network, c.NoCheckin = d, false
			return nil
		}},
	{Name: "hn.diskless", Help: "boot the assigned image from RAM (needs hn.server=), leaving any disk alone; a host without hostpart does so by itself",
		set: func(c *Config, _ *pending, v string, hasVal bool) error {
			b, ok := parseBool(v, hasVal)
			if !ok {
				return fmt.Errorf("hn.diskless=%q is not a boolean; ignoring it", v)
			}
			c.Diskless = b
			return nil
		}},
	{Name: "hn.diskwait", Value: "DURATION", Def: DefaultDiskWait.String() + ", " + DefaultDisklessWait.String() + " with hn.server=", Help: "how long the init waits for hostpart before it boots from RAM (with a server) or stops in the rescue shell",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || d > time.Hour {
				return fmt.Errorf("hn.diskwait=%q is not a duration up to 1h; using the default", v)
			}
			c.DiskWait = d
			return nil
		}},
	{Name: "hn.fetch", Value: "off", Help: "never download the assigned image at boot (leave it to the agent)",
		set: func(c *Config, _ *pending, v string, hasVal bool) error {
			b, ok := parseBool(v, hasVal)
			if v == "off" || (ok && !b) {
				c.NoFetch = true
				return nil
			}
			if !ok {
				return fmt.Errorf("hn.fetch=%q is not off or on; fetching stays on", v)
			}
			c.NoFetch = false
			return nil
		}},
	{Name: "hn.revert", Value: "ID", Help: "revert once per ID, as if system-revert were present (sent by imaged for a fleet revert)",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			if v == "" {
				return fmt.Errorf("hn.revert needs an ID (hn.revert=ID); ignoring it")
			}
			c.RevertID = v
			return nil
		}},
	{Name: "hn.hostname", Value: "NAME", Help: "the host name (overrides host.conf and the default hn-MAC)",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			if !ValidHostname(v) {
				return fmt.Errorf("hn.hostname=%q is not a valid host name; ignoring it", v)
			}
			c.Hostname = v
			return nil
		}},
	{Name: "ip", Value: "...", Help: "a static address, kernel ip= syntax (overrides host.conf)",
		set: func(c *Config, _ *pending, v string, _ bool) error { c.IP = v; return nil }},
	{Name: "BOOTIF", Value: "01-MAC", Help: "the NIC to use and report (pxelinux style; imaged's iPXE script sets it); default the first Ethernet NIC",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			mac, ok := bootifMAC(v)
			if !ok {
				return fmt.Errorf("BOOTIF=%q is not 01-aa-bb-cc-dd-ee-ff; using the first Ethernet NIC", v)
			}
			c.BootIF = mac
			return nil
		}},
	{Name: "hn.modules", Value: "a,b", Help: "extra kernel modules to load",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			for _, m := range strings.Split(v, ",") {
				if m = strings.TrimSpace(m); m != "" {
					c.Modules = append(c.Modules, m)
				}
			}
			return nil
		}},
	{Name: "hn.nokexec", Help: "never kexec into the image's kernel",
		set: func(c *Config, _ *pending, v string, hasVal bool) error {
			b, ok := parseBool(v, hasVal)
			if !ok {
				return fmt.Errorf("hn.nokexec=%q is not a boolean; ignoring it", v)
			}
			c.NoKexec = b
			return nil
		}},
	{Name: "hn.kexeced", Value: "IMAGE", Help: "set by the init on the command line of the image's kernel it kexecs into: that boot neither kexecs nor rotates again",
		set: func(c *Config, _ *pending, v string, _ bool) error {
			if v == "" {
				v = layout.Current
			}
			c.Kexeced = v
			return nil
		}},
	{Name: "hn.init", Value: "PATH", Def: DefaultInit, Help: "the image's init (also init=)",
		set: func(c *Config, p *pending, v string, _ bool) error { p.hnInit = str(v); return nil }},
	{Name: "init", Value: "PATH", Hidden: true,
		set: func(c *Config, p *pending, v string, _ bool) error { p.kInit = str(v); return nil }},
	{Name: "hn.debug", Help: "verbose init log",
		set: func(c *Config, _ *pending, v string, hasVal bool) error {
			b, ok := parseBool(v, hasVal)
			if !ok {
				return fmt.Errorf("hn.debug=%q is not a boolean; debug stays off", v)
			}
			c.Debug = b
			return nil
		}},
	{Name: "real_root", Value: "/hn-root.img", Help: "the original genkernel name of hn.image, accepted as an alias so an existing grub.cfg keeps working",
		set: func(c *Config, p *pending, v string, _ bool) error { p.aliasImage = str(v); c.Alias = true; return nil }},
	{Name: "raw_loop_root_host_partition", Value: "LABEL=hostpart", Help: "the original genkernel name of hn.hostpart, an alias too",
		set: func(c *Config, p *pending, v string, _ bool) error {
			p.aliasHostpart = str(v)
			c.Alias = true
			return nil
		}},
	{Name: "hn.crashtest", Value: "N", Hidden: true,
		set: func(c *Config, _ *pending, v string, _ bool) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return fmt.Errorf("hn.crashtest=%q is not a non-negative number; ignoring it", v)
			}
			c.CrashTest = n
			return nil
		}},
}

var byName = func() map[string]*Key {
	m := map[string]*Key{}
	for i := range Keys {
		m[Keys[i].Name] = &Keys[i]
	}
	return m
}()

// Usage is the kernel command line part of the init's --help.
func Usage() string {
	var b strings.Builder
	b.WriteString("Kernel command line:\n")
	for _, k := range Keys {
		if k.Hidden {
			continue
		}
		name := k.Name
		if k.Value != "" {
			name += "=" + k.Value
		}
		help := k.Help
		if k.Def != "" {
			help += " (default " + k.Def + ")"
		}
		if len(name) > 28 {
			fmt.Fprintf(&b, "  %s\n  %-28s %s\n", name, "", help)
		} else {
			fmt.Fprintf(&b, "  %-28s %s\n", name, help)
		}
	}
	return b.String()
}

// Parse reads a kernel command line (the contents of /proc/cmdline).
// Unknown keys are ignored; invalid values of known keys leave the
// default in place and add a warning that names the key and the value.
func Parse(cmdline string) (Config, []string) {
	c := Config{
		Hostpart: layout.HostpartSpec,
		Image:    layout.Current,
		Tries:    DefaultTries,
		Init:     DefaultInit,
		Network:  DefaultCheckinBudget,
	}
	var warns []string
	warn := func(format string, a ...any) { warns = append(warns, fmt.Sprintf(format, a...)) }
	var p pending
	for _, w := range Split(cmdline) {
		// The kernel hands everything after "--" to init as its argv;
		// those words are not ours to interpret.
		if w == "--" {
			break
		}
		key, val, hasVal := strings.Cut(w, "=")
		if k := byName[key]; k != nil {
			if err := k.set(&c, &p, val, hasVal); err != nil {
				warns = append(warns, err.Error())
			}
		}
	}

	hostpart := p.hostpart
	if hostpart == nil {
		hostpart = p.aliasHostpart
	}
	if hostpart != nil {
		if validSpec(*hostpart) {
			c.Hostpart = *hostpart
		} else {
			warn("hostpart %q is not LABEL=, UUID=, PARTLABEL= or /dev/...; using %s", *hostpart, layout.HostpartSpec)
		}
	}

	image := p.image
	if image == nil {
		image = p.aliasImage
	}
	if image != nil {
		// real_root=/hn-root.img names the file relative to hostpart's
		// root; the init opens it there, so only a bare file name will do.
		// It names only the image booted first: the rotation works on the
		// fixed slot names of internal/layout whatever this says.
		name := strings.TrimLeft(*image, "/")
		if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
			warn("image %q is not a file name on hostpart; using %s", *image, layout.Current)
		} else {
			c.Image = name
		}
	}

	hnInit := p.hnInit
	if hnInit == nil {
		hnInit = p.kInit
	}
	if hnInit != nil {
		if strings.HasPrefix(*hnInit, "/") {
			c.Init = *hnInit
		} else {
			warn("init %q is not an absolute path; using %s", *hnInit, DefaultInit)
		}
	}
	return c, warns
}

// bootifMAC turns pxelinux's BOOTIF=01-52-54-00-12-34-56 (01: Ethernet)
// into 52:54:00:12:34:56.
func bootifMAC(v string) (string, bool) {
	s := strings.ToLower(v)
	s, _ = strings.CutPrefix(s, "01-")
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == '-' || r == ':' })
	if len(parts) != 6 {
		return "", false
	}
	for _, p := range parts {
		if len(p) != 2 || strings.Trim(p, "0123456789abcdef") != "" {
			return "", false
		}
	}
	return strings.Join(parts, ":"), true
}

func parseBool(val string, hasVal bool) (bool, bool) {
	if !hasVal {
		return true, true
	}
	switch strings.ToLower(val) {
	case "", "1", "y", "yes", "true", "on":
		return true, true
	case "0", "n", "no", "false", "off":
		return false, true
	}
	return false, false
}

func validSpec(s string) bool {
	for _, p := range []string{"LABEL=", "UUID=", "PARTLABEL="} {
		if strings.HasPrefix(s, p) && len(s) > len(p) {
			return true
		}
	}
	return strings.HasPrefix(s, "/dev/") && len(s) > len("/dev/")
}

// ValidHostname reports whether s is usable as a host name (RFC 1123: dot
// separated labels of letters, digits and inner hyphens, at most 253 bytes).
func ValidHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-') {
				return false
			}
		}
	}
	return true
}
