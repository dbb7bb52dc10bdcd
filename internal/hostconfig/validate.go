package hostconfig

import (
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hnboot/hnboot/internal/layout"
)

// Limits. A configuration is written into config files, shell-sourced
// files and the log, and the init holds it in memory during boot, so
// everything is bounded.
const (
	MaxHostname      = 253
	MaxAddresses     = 16
	MaxDNS           = 8
	MaxSearch        = 6 // what glibc's resolver reads
	MaxBondMembers   = 16
	MaxIdentity      = 64
	MaxIdentityKey   = 64
	MaxIdentityValue = 1024
	MaxFiles         = 128
	MaxFileBytes     = 256 << 10
	MaxFilesBytes    = 512 << 10 // all files of one host together: its answer stays under MaxBytes
	MaxPath          = 1024
	MaxStateDirs     = 32
	MinMTU           = 576 // the least an IPv4 host must accept
	MaxMTU           = 65535
)

// Problem is one refused value. The rest of the configuration is usable.
type Problem struct {
	Host   string // the host the configuration is for, as the caller named it
	Key    string // JSON path: "hostname", "network.dns[1]", "identity.certname", "files[/etc/x].mode"
	Value  string // the refused value, quoted and shortened
	File   string // where in the root it was headed ("/etc/resolv.conf")
	Reason string
	unit   string // the Merge unit refused (see Units)
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Host != "" {
		b.WriteString(p.Host + ": ")
	}
	b.WriteString(p.Key)
	if p.Value != "" {
		b.WriteString(" " + p.Value)
	}
	if p.File != "" {
		b.WriteString(" (for " + p.File + ")")
	}
	b.WriteString(": " + p.Reason)
	return b.String()
}

// Unit is the Merge unit the problem refused: it fell back to a lower
// layer as a whole.
func (p Problem) Unit() string { return p.unit }

// show quotes s for a message, at most 80 bytes of it.
func show(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strconv.Quote(s)
}

type checker struct {
	host     string
	problems []Problem
}

func (k *checker) refuse(unit, key, value, file, format string, args ...any) {
	k.problems = append(k.problems, Problem{Host: k.host, Key: key, Value: value, File: file, Reason: fmt.Sprintf(format, args...), unit: unit})
}

// Validate returns the usable part of c, canonical (MACs in lower-case
// colon form, addresses as net/netip prints them, file modes in four
// octal digits, defaults of bond and VLAN filled in), and the refused
// values. A refusal takes out the whole unit the value belongs to (see
// Units), never more: the network's addressing without its gateway would
// leave a host unreachable, but its DNS servers have nothing to do with
// its hostname.
func (c Config) Validate(host string) (Config, []Problem) {
	k := &checker{host: host}
	var out Config
	if c.Hostname != "" {
		if err := CheckHostname(c.Hostname); err != nil {
			k.refuse(UnitHostname, "hostname", show(c.Hostname), layout.HostnameFile, "%v", err)
		} else {
			out.Hostname = c.Hostname
		}
	}
	out.Network = k.network(c.Network)
	out.Identity = k.identity(c.Identity)
	out.Files = k.files(c.Files)
	out.StateDirs = k.stateDirs(c.StateDirs)
	return out, k.problems
}

// Merge units: a layer sets a unit whole or not at all.
const (
	UnitHostname   = "hostname"
	UnitLink       = "network.link"       // interface, bond, vlan
	UnitMTU        = "network.mtu"        //
	UnitAddressing = "network.addressing" // dhcp, addresses, gateway
	UnitDNS        = "network.dns"
	UnitSearch     = "network.search"
	UnitStateDirs  = "state_dirs"
)

// UnitIdentity is the unit of one identity value.
func UnitIdentity(key string) string { return "identity." + key }

// UnitFile is the unit of one file.
func UnitFile(p string) string { return "files[" + p + "]" }

// The checks below are written out rather than regular expressions:
// package regexp would add 100 KB to the init for four patterns.

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
func isLowerDigit(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// all reports whether s is non-empty and every byte passes ok.
func all(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return s != ""
}

func hostnameLabel(l string) bool {
	return len(l) <= 63 && all(l, func(c byte) bool { return isAlnum(c) || c == '-' }) && l[0] != '-' && l[len(l)-1] != '-'
}

// CheckHostname accepts a DNS name of letters, digits and '-' in labels
// of at most 63 bytes, 253 in all: what /etc/hostname, /etc/hosts and a
// DHCP client can carry, and nothing that can break a line of a file.
func CheckHostname(s string) error {
	if s == "" {
		return fmt.Errorf("empty")
	}
	if len(s) > MaxHostname {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), MaxHostname)
	}
	for _, l := range strings.Split(s, ".") {
		if !hostnameLabel(l) {
			return fmt.Errorf("not a host name: want labels of letters, digits and '-' (not first or last), at most 63 bytes, joined by '.'")
		}
	}
	return nil
}

func ifaceName(s string) bool {
	return len(s) <= 15 && all(s, func(c byte) bool { return isAlnum(c) || c == '_' || c == '.' || c == '-' }) && s[0] != '.' && s[0] != '-'
}

// CheckInterface accepts an interface name (at most 15 bytes of letters,
// digits, '_', '.' and '-', the kernel's limit, and nothing a config file
// or shell would read twice) or a MAC; it returns the canonical form.
func CheckInterface(s string) (string, error) {
	if hw, err := net.ParseMAC(s); err == nil {
		if len(hw) != 6 {
			return "", fmt.Errorf("not an Ethernet MAC (six bytes)")
		}
		return hw.String(), nil
	}
	if !ifaceName(s) {
		return "", fmt.Errorf("not an interface name (at most 15 letters, digits, '_', '.', '-') or a MAC (52:54:00:12:34:56)")
	}
	return s, nil
}

// CheckDomain accepts a DNS search domain: a host name.
func CheckDomain(s string) error { return CheckHostname(s) }

// addr parses a plain IP address: no zone (a zone may hold any byte, a
// newline too), no IPv4-mapped IPv6 form.
func addr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return a, fmt.Errorf("not an IP address")
	case a.Zone() != "":
		return a, fmt.Errorf("an address with a zone (%%...) is not accepted")
	case a.Is4In6():
		return a, fmt.Errorf("write the IPv4 address as such, not IPv4-mapped")
	}
	return a, nil
}

func (k *checker) network(n Network) Network {
	var out Network
	const file = layout.NetworkdDir
	// Link: interface, bond, VLAN.
	if l, ok := k.link(n); ok {
		out.Interface, out.Bond, out.VLAN = l.Interface, l.Bond, l.VLAN
	}
	if n.MTU != 0 {
		if n.MTU < MinMTU || n.MTU > MaxMTU {
			k.refuse(UnitMTU, "network.mtu", strconv.Itoa(n.MTU), file, "want %d..%d", MinMTU, MaxMTU)
		} else {
			out.MTU = n.MTU
		}
	}
	if a, ok := k.addressing(n); ok {
		out.DHCP, out.Addresses, out.Gateway = a.DHCP, a.Addresses, a.Gateway
	}
	if len(n.DNS) > 0 {
		if dns, ok := k.dns(n.DNS); ok {
			out.DNS = dns
		}
	}
	if len(n.Search) > 0 {
		ok := true
		if len(n.Search) > MaxSearch {
			k.refuse(UnitSearch, "network.search", "", "/etc/resolv.conf", "%d domains, over the limit of %d", len(n.Search), MaxSearch)
			ok = false
		}
		for i, d := range n.Search {
			if ok {
				if err := CheckDomain(d); err != nil {
					k.refuse(UnitSearch, fmt.Sprintf("network.search[%d]", i), show(d), "/etc/resolv.conf", "%v", err)
					ok = false
				}
			}
		}
		if ok {
			out.Search = cloneList(n.Search)
		}
	}
	return out
}

func (k *checker) link(n Network) (Network, bool) {
	var out Network
	const file = layout.NetworkdDir
	bad := func(key, value, format string, args ...any) (Network, bool) {
		k.refuse(UnitLink, key, value, file, format, args...)
		return Network{}, false
	}
	if n.Interface != "" && n.Bond != nil {
		return bad("network.interface", show(n.Interface), "set interface or bond, not both")
	}
	names := map[string]string{} // name or MAC → key, to catch one NIC used twice
	use := func(key, name string) bool {
		if prev, dup := names[name]; dup {
			k.refuse(UnitLink, key, show(name), file, "already used as %s", prev)
			return false
		}
		names[name] = key
		return true
	}
	if n.Interface != "" {
		c, err := CheckInterface(n.Interface)
		if err != nil {
			return bad("network.interface", show(n.Interface), "%v", err)
		}
		out.Interface = c
		use("network.interface", c)
	}
	if b := n.Bond; b != nil {
		nb := Bond{Name: b.BondName(), Mode: b.BondMode()}
		if _, err := CheckInterface(nb.Name); err != nil || IsMAC(nb.Name) {
			return bad("network.bond.name", show(nb.Name), "not an interface name")
		}
		if !slices.Contains(BondModes, nb.Mode) {
			return bad("network.bond.mode", show(nb.Mode), "want one of %s", strings.Join(BondModes, ", "))
		}
		if len(b.Members) < 2 || len(b.Members) > MaxBondMembers {
			return bad("network.bond.members", "", "%d members: a bond needs 2 to %d", len(b.Members), MaxBondMembers)
		}
		use("network.bond.name", nb.Name)
		for i, m := range b.Members {
			key := fmt.Sprintf("network.bond.members[%d]", i)
			c, err := CheckInterface(m)
			if err != nil {
				return bad(key, show(m), "%v", err)
			}
			if !use(key, c) {
				return Network{}, false
			}
			nb.Members = append(nb.Members, c)
		}
		out.Bond = &nb
	}
	if v := n.VLAN; v != nil {
		if v.ID < 1 || v.ID > 4094 {
			return bad("network.vlan.id", strconv.Itoa(v.ID), "want a VLAN id 1..4094")
		}
		nv := VLAN{ID: v.ID}
		if out.Interface == "" && out.Bond == nil {
			return bad("network.vlan", "", "a VLAN needs an interface or a bond to sit on")
		}
		if !use("network.vlan", nv.VLANName()) {
			return Network{}, false
		}
		out.VLAN = &nv
	}
	return out, true
}

func (k *checker) addressing(n Network) (Network, bool) {
	const file = layout.NetworkdDir
	bad := func(key, value, format string, args ...any) (Network, bool) {
		k.refuse(UnitAddressing, key, value, file, format, args...)
		return Network{}, false
	}
	var out Network
	if n.DHCP && len(n.Addresses) > 0 {
		return bad("network.dhcp", "", "set dhcp or static addresses, not both")
	}
	if n.DHCP && len(n.Gateway) > 0 {
		return bad("network.gateway", show(strings.Join(n.Gateway, " ")), "a gateway needs static addresses; DHCP brings its own")
	}
	if len(n.Addresses) == 0 && len(n.Gateway) > 0 {
		return bad("network.gateway", show(strings.Join(n.Gateway, " ")), "a gateway needs static addresses")
	}
	out.DHCP = n.DHCP
	if len(n.Addresses) > MaxAddresses {
		return bad("network.addresses", "", "%d addresses, over the limit of %d", len(n.Addresses), MaxAddresses)
	}
	var prefixes []netip.Prefix
	for i, s := range n.Addresses {
		key := fmt.Sprintf("network.addresses[%d]", i)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return bad(key, show(s), "want an address with prefix length, e.g. 192.0.2.17/24")
		}
		a := p.Addr()
		switch {
		case a.Zone() != "" || a.Is4In6():
			return bad(key, show(s), "not a plain IPv4 or IPv6 address")
		case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast():
			return bad(key, show(s), "not a host address")
		case a.Is4() && p.Bits() <= 30 && (a == p.Masked().Addr() || a == broadcast(p)):
			return bad(key, show(s), "the network or broadcast address of %s, not a host's", p.Masked())
		}
		for j, q := range prefixes {
			if q.Addr() == a {
				return bad(key, show(s), "the same address as network.addresses[%d]", j)
			}
		}
		prefixes = append(prefixes, p)
		out.Addresses = append(out.Addresses, p.String())
	}
	family := map[bool]string{} // is4 → the gateway already given
	for i, s := range n.Gateway {
		key := fmt.Sprintf("network.gateway[%d]", i)
		g, err := addr(s)
		if err != nil {
			return bad(key, show(s), "%v", err)
		}
		if prev, dup := family[g.Is4()]; dup {
			return bad(key, show(s), "a second gateway of the same address family (first %s)", prev)
		}
		family[g.Is4()] = g.String()
		inside := g.Is6() && g.IsLinkLocalUnicast()
		for _, p := range prefixes {
			if p.Addr() == g {
				return bad(key, show(s), "the host's own address")
			}
			inside = inside || p.Masked().Contains(g)
		}
		if !inside {
			var ps []string
			for _, p := range prefixes {
				if p.Addr().Is4() == g.Is4() {
					ps = append(ps, p.Masked().String())
				}
			}
			if len(ps) == 0 {
				return bad(key, show(s), "no address of its family (IPv4/IPv6) to reach it from")
			}
			return bad(key, show(s), "outside the host's subnets (%s)", strings.Join(ps, ", "))
		}
		out.Gateway = append(out.Gateway, g.String())
	}
	return out, true
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom4(b)
}

func (k *checker) dns(list []string) ([]string, bool) {
	if len(list) > MaxDNS {
		k.refuse(UnitDNS, "network.dns", "", "/etc/resolv.conf", "%d servers, over the limit of %d", len(list), MaxDNS)
		return nil, false
	}
	var out []string
	for i, s := range list {
		a, err := addr(s)
		if err == nil && (a.IsUnspecified() || a.IsMulticast()) {
			err = fmt.Errorf("not a server's address")
		}
		if err != nil {
			k.refuse(UnitDNS, fmt.Sprintf("network.dns[%d]", i), show(s), "/etc/resolv.conf", "%v", err)
			return nil, false
		}
		out = append(out, a.String())
	}
	return out, true
}

// CheckIdentityKey accepts a lower-case identifier: a template can say
// .Identity.certname and the identity file HN_CERTNAME.
func CheckIdentityKey(k string) error {
	if len(k) > MaxIdentityKey || !all(k, func(c byte) bool { return isLowerDigit(c) || c == '_' }) || !('a' <= k[0] && k[0] <= 'z') {
		return fmt.Errorf("want a lower-case letter, then lower-case letters, digits and '_', at most %d bytes", MaxIdentityKey)
	}
	return nil
}

// CheckLine accepts one line of UTF-8 text without control characters,
// at most max bytes: a value that lands in a config file or a shell
// variable and cannot start another line there.
func CheckLine(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("not UTF-8")
	}
	for i, r := range s {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("control character %U at byte %d: one line of text only", r, i)
		}
	}
	return nil
}

func (k *checker) identity(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	out := map[string]string{}
	for i, key := range keys {
		v := m[key]
		pk := "identity." + key
		if err := CheckIdentityKey(key); err != nil {
			k.refuse(UnitIdentity(key), "identity", show(key), layout.IdentityEnv, "key: %v", err)
			continue
		}
		if i >= MaxIdentity {
			k.refuse(UnitIdentity(key), pk, "", layout.IdentityEnv, "over the limit of %d identity values", MaxIdentity)
			continue
		}
		if v == "" {
			continue // unset
		}
		if err := CheckLine(v, MaxIdentityValue); err != nil {
			k.refuse(UnitIdentity(key), pk, show(v), layout.IdentityEnv, "%v", err)
			continue
		}
		out[key] = v
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Paths files: may not touch: the kernel's, hostpart's and the boot
// loader's mounts, and what the init writes itself (the host's secrets
// among them: they are generated on the host and never sent).
var (
	forbiddenTrees = []string{"/proc", "/sys", "/dev", "/run", layout.HostpartMount, layout.LoaderMount, layout.DataLink}
	reservedFiles  = []string{layout.HostnameFile, layout.MachineIDFile, layout.FstabFile, layout.NetworkEnv,
		layout.IdentityEnv, layout.StorageIDFile, layout.CMIDFile, layout.IfupdownFile}
)

// CheckRootPath accepts an absolute, clean path other than "/" itself.
func CheckRootPath(p string) error {
	switch {
	case len(p) > MaxPath:
		return fmt.Errorf("%d bytes, over the limit of %d", len(p), MaxPath)
	case CheckLine(p, MaxPath) != nil:
		return fmt.Errorf("not one line of UTF-8 text")
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("not an absolute path")
	case p == "/":
		return fmt.Errorf("the root itself")
	}
	for _, part := range strings.Split(p[1:], "/") {
		if part == ".." {
			return fmt.Errorf("contains ..")
		}
	}
	if path.Clean(p) != p {
		return fmt.Errorf("not clean (want %s)", path.Clean(p))
	}
	for _, part := range strings.Split(p[1:], "/") {
		if len(part) > 255 {
			return fmt.Errorf("a name of %d bytes, over the limit of 255", len(part))
		}
	}
	return nil
}

// CheckFilePath is CheckRootPath, and not under a mount point or onto a
// file the init writes.
func CheckFilePath(p string) error {
	if err := CheckRootPath(p); err != nil {
		return err
	}
	for _, t := range forbiddenTrees {
		if p == t || strings.HasPrefix(p, t+"/") {
			return fmt.Errorf("under %s, which is not the image's", t)
		}
	}
	if slices.Contains(reservedFiles, p) {
		return fmt.Errorf("written by hnboot itself")
	}
	if m, _ := path.Match(layout.SSHHostKeyGlob, p); m {
		return fmt.Errorf("an SSH host key: generated on the host, never sent")
	}
	if path.Dir(p) == layout.NetworkdDir && strings.HasPrefix(path.Base(p), layout.NetworkdPrefix) {
		return fmt.Errorf("a networkd file hnboot writes (%s*)", layout.NetworkdPrefix)
	}
	return nil
}

// FileMode parses an octal mode of permission bits: "0644", "644" or
// "0o644". Set-id and sticky bits are refused: a file from the network
// does not get to run as someone else.
func FileMode(s string) (uint32, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	n, err := strconv.ParseUint(t, 8, 32)
	if err != nil || t == "" {
		return 0, fmt.Errorf("not an octal mode like 0644")
	}
	if n > 0o777 {
		return 0, fmt.Errorf("only permission bits (at most 0777): no set-id or sticky bits")
	}
	return uint32(n), nil
}

// ownerPart: a name as useradd takes it, or a number.
func ownerPart(s string) bool {
	if all(s, func(c byte) bool { return '0' <= c && c <= '9' }) {
		return len(s) <= 10
	}
	return len(s) <= 32 && all(s, func(c byte) bool { return isLowerDigit(c) || c == '_' || c == '-' }) && (s[0] == '_' || 'a' <= s[0] && s[0] <= 'z')
}

// CheckOwner accepts "user" or "user:group", names as useradd takes them
// or numeric ids.
func CheckOwner(s string) error {
	u, g, hasGroup := strings.Cut(s, ":")
	if !ownerPart(u) || (hasGroup && !ownerPart(g)) {
		return fmt.Errorf("want user or user:group (names or numeric ids)")
	}
	for _, p := range []string{u, g} {
		if n, err := strconv.ParseUint(p, 10, 64); err == nil && n >= 1<<32-1 {
			return fmt.Errorf("id %d out of range", n)
		}
	}
	return nil
}

func (k *checker) files(files []File) []File {
	var out []File
	seen := map[string]bool{}
	total := 0
	for i, f := range files {
		unit := UnitFile(f.Path)
		key := fmt.Sprintf("files[%s]", f.Path)
		if err := CheckFilePath(f.Path); err != nil {
			k.refuse(unit, fmt.Sprintf("files[%d].path", i), show(f.Path), "", "%v", err)
			continue
		}
		if seen[f.Path] {
			k.refuse(unit, key, "", f.Path, "listed twice")
			continue
		}
		seen[f.Path] = true
		if len(out) >= MaxFiles {
			k.refuse(unit, key, "", f.Path, "over the limit of %d files", MaxFiles)
			continue
		}
		nf := File{Path: f.Path, Owner: f.Owner, Content: f.Content}
		mode := f.Mode
		if mode == "" {
			mode = DefaultFileMode
		}
		m, err := FileMode(mode)
		if err != nil {
			k.refuse(unit, key+".mode", show(f.Mode), f.Path, "%v", err)
			continue
		}
		nf.Mode = fmt.Sprintf("%04o", m)
		if f.Owner != "" {
			if err := CheckOwner(f.Owner); err != nil {
				k.refuse(unit, key+".owner", show(f.Owner), f.Path, "%v", err)
				continue
			}
		}
		if len(f.Content) > MaxFileBytes {
			k.refuse(unit, key+".content", "", f.Path, "%d bytes, over the limit of %d", len(f.Content), MaxFileBytes)
			continue
		}
		if !utf8.ValidString(f.Content) {
			k.refuse(unit, key+".content", "", f.Path, "not UTF-8 text")
			continue
		}
		if total+len(f.Content) > MaxFilesBytes {
			k.refuse(unit, key+".content", "", f.Path, "the host's files together over the limit of %d bytes", MaxFilesBytes)
			continue
		}
		total += len(f.Content)
		out = append(out, nf)
	}
	return out
}

func (k *checker) stateDirs(dirs []string) []string {
	var out []string
	for i, d := range dirs {
		key := fmt.Sprintf("state_dirs[%d]", i)
		if len(out) >= MaxStateDirs {
			k.refuse(UnitStateDirs, key, show(d), d, "over the limit of %d state directories", MaxStateDirs)
			continue
		}
		err := CheckRootPath(d)
		if err == nil {
			for _, t := range forbiddenTrees {
				if d == t || strings.HasPrefix(d, t+"/") {
					err = fmt.Errorf("under %s, which is not the image's", t)
				}
			}
		}
		if err != nil {
			k.refuse(UnitStateDirs, key, show(d), d, "%v", err)
			continue
		}
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}
