// Package identity turns a generic root image into one host: it decides
// the host's configuration (hostname, network, ids), keeps the host's
// generated secrets (machine-id, SSH host keys) on hostpart so they
// survive image changes, and writes all of it into the new root.
package identity

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path"
	"strings"

	"github.com/hnboot/hnboot/initramfs/cmdline"
)

// DHCP is the IP value that asks for DHCP explicitly. An empty IP means
// "not set at this level" (see Resolve); if nothing sets one, DHCP is used.
const DHCP = "dhcp"

// HostConf is a host's configuration. Zero fields are unset.
type HostConf struct {
	Hostname  string
	IP        string // CIDR (10.0.0.5/24), DHCP, or "" for unset
	Gateway   string
	DNS       []string
	Interface string // "" means the first ethernet interface (en*, eth*)
	StateDirs []string
	// Files are extra files to write into the root: absolute path in the
	// root → contents (from imaged; host.conf cannot express them).
	Files        map[string]string
	StorageID    string // storage-cluster node identity
	ConfigMgmtID string // configuration-management identity (e.g. puppet certname)
}

// ParseHostConf reads the `key = value` format of hostpart's
// .hnboot/host.conf. Blank lines and # comments are ignored; state_dir may
// repeat; dns takes a space or comma separated list.
//
// Bad lines do not spoil good ones: the returned HostConf holds every valid
// line even when the error (which names each bad line by number) is
// non-nil, so the init can log the error and still use the rest.
func ParseHostConf(r io.Reader) (HostConf, error) {
	var hc HostConf
	var errs []error
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("line %d: want key = value, got %q", n, line))
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if err := hc.set(key, val); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("read: %w", err))
	}
	if len(errs) > 0 {
		return hc, fmt.Errorf("host.conf: %w", errors.Join(errs...))
	}
	return hc, nil
}

func (hc *HostConf) set(key, val string) error {
	switch key {
	case "hostname":
		if !cmdline.ValidHostname(val) {
			return fmt.Errorf("hostname %q is not a valid host name", val)
		}
		hc.Hostname = val
	case "ip":
		if val != DHCP {
			if _, err := netip.ParsePrefix(val); err != nil {
				return fmt.Errorf("ip %q is neither dhcp nor an address with prefix length (10.0.0.5/24)", val)
			}
		}
		hc.IP = val
	case "gateway":
		if _, err := netip.ParseAddr(val); err != nil {
			return fmt.Errorf("gateway %q is not an IP address", val)
		}
		hc.Gateway = val
	case "dns":
		var list []string
		for _, s := range strings.FieldsFunc(val, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
			if _, err := netip.ParseAddr(s); err != nil {
				return fmt.Errorf("dns server %q is not an IP address", s)
			}
			list = append(list, s)
		}
		hc.DNS = list
	case "interface":
		if val == "" || len(val) > 15 || strings.ContainsAny(val, "/ \t:") {
			return fmt.Errorf("interface %q is not an interface name", val)
		}
		hc.Interface = val
	case "state_dir":
		clean, err := cleanRootPath(val)
		if err != nil {
			return fmt.Errorf("state_dir: %w", err)
		}
		hc.StateDirs = append(hc.StateDirs, clean)
	case "storage_id":
		if err := oneLine(val); err != nil {
			return fmt.Errorf("storage_id: %w", err)
		}
		hc.StorageID = val
	case "cm_id":
		if err := oneLine(val); err != nil {
			return fmt.Errorf("cm_id: %w", err)
		}
		hc.ConfigMgmtID = val
	default:
		return fmt.Errorf("unknown key %q", key)
	}
	return nil
}

func oneLine(s string) error {
	if s == "" || strings.ContainsAny(s, "\n\r\x00") {
		return fmt.Errorf("%q must be one non-empty line", s)
	}
	return nil
}

// cleanRootPath accepts an absolute path inside the root other than "/"
// itself, since it will become a bind-mount target or a file name there.
func cleanRootPath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("%q is not an absolute path", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf("%q contains ..", p)
		}
	}
	clean := path.Clean(p)
	if clean == "/" {
		return "", fmt.Errorf("%q is the root itself", p)
	}
	return clean, nil
}

// FromKernelIP reads the kernel's ip= parameter:
// client:server:gateway:netmask:hostname:device:autoconf:dns0:dns1:ntp0,
// or one of the bare autoconf words (dhcp, on, any, both, bootp, rarp).
// ip=off/none and unparsable parts set nothing, so lower layers apply.
func FromKernelIP(ip string) HostConf {
	var hc HostConf
	switch ip {
	case "", "off", "none":
		return hc
	case "dhcp", "on", "any", "both", "bootp", "rarp", "dhcp6":
		hc.IP = DHCP
		return hc
	}
	f := strings.Split(ip, ":")
	for len(f) < 10 {
		f = append(f, "")
	}
	client, _, gw, mask, host, dev, auto := f[0], f[1], f[2], f[3], f[4], f[5], f[6]
	if addr, err := netip.ParseAddr(client); err == nil && addr.Is4() {
		bits := classfulBits(addr)
		if m := net.ParseIP(mask).To4(); m != nil {
			if ones, total := net.IPMask(m).Size(); total == 32 {
				bits = ones
			}
		}
		hc.IP = netip.PrefixFrom(addr, bits).String()
	}
	switch auto {
	case "dhcp", "on", "any", "both", "bootp", "rarp", "dhcp6":
		hc.IP = DHCP
	}
	if a, err := netip.ParseAddr(gw); err == nil && !a.IsUnspecified() {
		hc.Gateway = gw
	}
	if cmdline.ValidHostname(host) {
		hc.Hostname = host
	}
	if dev != "" {
		hc.Interface = dev
	}
	for _, d := range f[7:9] {
		if a, err := netip.ParseAddr(d); err == nil && !a.IsUnspecified() {
			hc.DNS = append(hc.DNS, d)
		}
	}
	return hc
}

// classfulBits is the kernel's netmask when ip= gives none.
func classfulBits(a netip.Addr) int {
	switch b := a.As4()[0]; {
	case b < 128:
		return 8
	case b < 192:
		return 16
	default:
		return 24
	}
}
