// Package cmdline turns the kernel command line into the init's
// configuration. It is pure: the caller reads /proc/cmdline and logs the
// warnings, so a typo on the command line degrades to a default and a
// console message instead of an unbootable host.
package cmdline

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/hnboot/hnboot/internal/layout"
)

// Defaults, named so the init and its tests agree on them.
const (
	DefaultTries = 3
	DefaultInit  = "/sbin/init"
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
	// Args holds every key=value (and bare flag, with value "") before "--",
	// last one winning, so the init can look up keys this package does not
	// know about (e.g. for logging the full configuration).
	Args map[string]string
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

// Parse reads a kernel command line (the contents of /proc/cmdline).
// Unknown keys are kept in Args only; invalid values of known keys leave
// the default in place and add a warning that names the key and the value.
func Parse(cmdline string) (Config, []string) {
	c := Config{
		Hostpart: layout.HostpartSpec,
		Image:    layout.Current,
		Tries:    DefaultTries,
		Init:     DefaultInit,
		Args:     map[string]string{},
	}
	var warns []string
	warn := func(format string, a ...any) { warns = append(warns, fmt.Sprintf(format, a...)) }

	// Keys that have a genkernel alias are resolved after the loop, so the
	// hn.* name wins regardless of the order on the line.
	var hostpart, image, aliasHostpart, aliasImage, hnInit, kInit *string
	str := func(v string) *string { return &v }

	for _, w := range Split(cmdline) {
		// The kernel hands everything after "--" to init as its argv;
		// those words are not ours to interpret.
		if w == "--" {
			break
		}
		key, val, hasVal := strings.Cut(w, "=")
		c.Args[key] = val
		switch key {
		case "hn.hostpart":
			hostpart = str(val)
		case "raw_loop_root_host_partition":
			aliasHostpart = str(val)
			c.Alias = true
		case "hn.image":
			image = str(val)
		case "real_root":
			aliasImage = str(val)
			c.Alias = true
		case "hn.tries":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 100 {
				warn("hn.tries=%q is not a number from 1 to 100; using %d", val, DefaultTries)
				continue
			}
			c.Tries = n
		case "hn.server":
			u, err := url.Parse(val)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				warn("hn.server=%q is not an http(s) URL; ignoring it", val)
				continue
			}
			c.Server = val
		case "hn.revert":
			if val == "" {
				warn("hn.revert needs an ID (hn.revert=ID); ignoring it")
				continue
			}
			c.RevertID = val
		case "hn.debug":
			b, ok := parseBool(val, hasVal)
			if !ok {
				warn("hn.debug=%q is not a boolean; debug stays off", val)
				continue
			}
			c.Debug = b
		case "hn.crashtest":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				warn("hn.crashtest=%q is not a non-negative number; ignoring it", val)
				continue
			}
			c.CrashTest = n
		case "hn.hostname":
			if !ValidHostname(val) {
				warn("hn.hostname=%q is not a valid host name; ignoring it", val)
				continue
			}
			c.Hostname = val
		case "hn.modules":
			for _, m := range strings.Split(val, ",") {
				if m = strings.TrimSpace(m); m != "" {
					c.Modules = append(c.Modules, m)
				}
			}
		case "init":
			kInit = str(val)
		case "hn.init":
			hnInit = str(val)
		case "ip":
			c.IP = val
		}
	}

	if hostpart == nil {
		hostpart = aliasHostpart
	}
	if hostpart != nil {
		if validSpec(*hostpart) {
			c.Hostpart = *hostpart
		} else {
			warn("hostpart %q is not LABEL=, UUID=, PARTLABEL= or /dev/...; using %s", *hostpart, layout.HostpartSpec)
		}
	}

	if image == nil {
		image = aliasImage
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

	if hnInit == nil {
		hnInit = kInit
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
