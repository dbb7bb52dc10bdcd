// Package hostconfig is one host's configuration — hostname, network,
// identity values and extra files — in the form imaged sends it (the
// fleet's GET /api/hosts/{mac}/desired), the init applies it and the init
// caches it on hostpart (layout.HostCache), so a boot with the server down
// gets the same identity.
//
// The same type travels both ways, and the validation lives with it:
// imaged checks the fleet YAML with it at load, and the init checks again
// what it received, because the network speaks it. A bad value is refused
// alone (Validate returns the usable remainder and the problems), so one
// typo in a DNS server does not cost a host its hostname.
//
// The package is in the init, so it depends on the standard library and
// internal/layout only: no template engine (imaged renders files: before
// sending them) and no YAML.
package hostconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
)

// Config is a host's configuration. Zero fields are unset: a lower layer
// or a default applies (see Merge).
//
// JSON, as served inside fleet.DesiredHost and cached on hostpart:
//
//	{
//	  "hostname": "web-07",
//	  "network": {
//	    "interface": "eth0",                  a name, or a MAC (52:54:00:12:34:56)
//	    "bond": {"name": "bond0", "mode": "802.3ad", "members": ["eno1", "eno2"]},
//	    "vlan": {"id": 42},                   named vlan42
//	    "mtu": 9000,
//	    "dhcp": true,                         or static addresses:
//	    "addresses": ["192.0.2.17/24", "2001:db8::17/64"],
//	    "gateway": ["192.0.2.1"],             at most one per address family
//	    "dns": ["192.0.2.53"],
//	    "search": ["example.com"]
//	  },
//	  "identity": {"certname": "web-07.example.com"},
//	  "files": [{"path": "/etc/puppet/puppet.conf", "mode": "0644", "owner": "root:root", "content": "..."}],
//	  "state_dirs": ["/var/lib/docker"]
//	}
//
// Unknown fields are ignored, so the server can grow; "gateway" and "dns"
// may also be a single string, and "ip" (one CIDR address) is read as
// "addresses", which is what imaged sent before this package existed.
type Config struct {
	Hostname string            `json:"hostname,omitempty"`
	Network  Network           `json:"network,omitzero"`
	Identity map[string]string `json:"identity,omitempty"`
	Files    []File            `json:"files,omitempty"`
	// StateDirs are directories bind-mounted from hostpart/data
	// (host.conf's state_dir); absolute paths in the root.
	StateDirs []string `json:"state_dirs,omitempty"`
}

// Network is how the host reaches the network. The link carrying the
// addresses is Interface, or Bond; with VLAN set, a VLAN on top of it.
type Network struct {
	// Interface is a NIC by name (eth0, eno1) or by MAC. Empty with no
	// Bond: every en* and eth* NIC (networkd), or the boot NIC (ifupdown).
	Interface string `json:"interface,omitempty"`
	Bond      *Bond  `json:"bond,omitempty"`
	VLAN      *VLAN  `json:"vlan,omitempty"`
	// MTU applies to every link hnboot configures: the NIC or the bond
	// and its members, and the VLAN.
	MTU int `json:"mtu,omitempty"`
	// DHCP and Addresses exclude each other; neither means DHCP.
	DHCP      bool     `json:"dhcp,omitempty"`
	Addresses []string `json:"addresses,omitempty"` // CIDR: 192.0.2.17/24
	Gateway   []string `json:"gateway,omitempty"`   // with Addresses only
	DNS       []string `json:"dns,omitempty"`
	Search    []string `json:"search,omitempty"` // DNS search domains
}

// Bond is a bond of two or more NICs.
type Bond struct {
	Name    string   `json:"name,omitempty"` // default DefaultBondName
	Mode    string   `json:"mode,omitempty"` // one of BondModes; default active-backup
	Members []string `json:"members"`        // names or MACs, at least two
}

// VLAN is an 802.1Q VLAN on top of the interface or the bond. Its
// interface is always named vlan<ID>: the one form both networkd and
// ifupdown's vlan package take whatever the parent is called (ifupdown
// reads the id from the name).
type VLAN struct {
	ID int `json:"id"` // 1..4094
}

// File is an extra file for the root. Content is final: imaged renders
// the fleet's templates before sending.
type File struct {
	Path    string `json:"path"`            // absolute, clean
	Mode    string `json:"mode,omitempty"`  // octal, default 0644
	Owner   string `json:"owner,omitempty"` // user[:group], names (from the image's passwd and group) or numbers; default root
	Content string `json:"content"`
}

// Defaults.
const (
	DefaultBondName = "bond0"
	DefaultBondMode = "active-backup"
	DefaultFileMode = "0644"
)

// BondModes are the bonding modes of the Linux driver, as networkd and
// ifenslave spell them.
var BondModes = []string{"balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb"}

// BondName is b's name, or the default.
func (b *Bond) BondName() string {
	if b.Name == "" {
		return DefaultBondName
	}
	return b.Name
}

// BondMode is b's mode, or the default.
func (b *Bond) BondMode() string {
	if b.Mode == "" {
		return DefaultBondMode
	}
	return b.Mode
}

// VLANName is v's interface name, vlan<ID>.
func (v *VLAN) VLANName() string { return fmt.Sprintf("vlan%d", v.ID) }

// IsZero reports whether n sets nothing.
func (n Network) IsZero() bool {
	return n.Interface == "" && n.Bond == nil && n.VLAN == nil && n.MTU == 0 && !n.DHCP &&
		len(n.Addresses) == 0 && len(n.Gateway) == 0 && len(n.DNS) == 0 && len(n.Search) == 0
}

// Static reports whether n has static addresses (else: DHCP).
func (n Network) Static() bool { return len(n.Addresses) > 0 }

// Carrier is the name of the link under the VLAN or carrying the
// addresses without one: the bond, the interface (a name or a MAC), or ""
// for "every en*/eth* NIC".
func (n Network) Carrier() string {
	if n.Bond != nil {
		return n.Bond.BondName()
	}
	return n.Interface
}

// IsMAC reports whether an interface reference is a MAC rather than a name.
func IsMAC(s string) bool {
	hw, err := net.ParseMAC(s)
	return err == nil && len(hw) == 6
}

// UnmarshalJSON reads a Network, also in the shape imaged served before
// (a string gateway and dns, one address in "ip").
func (n *Network) UnmarshalJSON(b []byte) error {
	type plain Network
	var w struct {
		plain
		Gateway stringList `json:"gateway"`
		DNS     stringList `json:"dns"`
		IP      string     `json:"ip"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*n = Network(w.plain)
	n.Gateway, n.DNS = w.Gateway, w.DNS
	if w.IP != "" && len(n.Addresses) == 0 {
		if w.IP == "dhcp" {
			n.DHCP = true
		} else {
			n.Addresses = []string{w.IP}
		}
	}
	return nil
}

// stringList is a JSON string or list of strings.
type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if s != "" {
			*l = []string{s}
		}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return err
	}
	*l = list
	return nil
}

// MaxBytes bounds the JSON the init reads (the desired-state answer or
// the cache). It is what the agent reads of the same answer, so imaged
// keeps every host's answer under it (MaxServed), or agents already in
// the field would fail to read it.
const MaxBytes = 1 << 20

// MaxServed bounds a host's configuration as JSON in imaged's answer,
// leaving the rest of MaxBytes to the agent's fields (failed digests).
const MaxServed = 768 << 10

// Parse decodes a Config from JSON (a fleet.DesiredHost answer, whose
// other fields are ignored, or the cache) and validates it for host (a
// name or MAC, for the messages). It returns the usable part and the
// refused values; err is non-nil only when nothing is usable (not JSON,
// or over MaxBytes), and the caller then goes on as if it had no answer.
func Parse(r io.Reader, host string) (Config, []Problem, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxBytes+1))
	if err != nil {
		return Config{}, nil, fmt.Errorf("host configuration for %s: %w", host, err)
	}
	if len(b) > MaxBytes {
		return Config{}, nil, fmt.Errorf("host configuration for %s: over %d bytes", host, MaxBytes)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, nil, fmt.Errorf("host configuration for %s: %w", host, err)
	}
	ok, problems := c.Validate(host)
	return ok, problems, nil
}

// Marshal is c as JSON, indented for an operator reading the cache.
func (c Config) Marshal() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(c); err != nil {
		panic(err) // a Config of strings, ints and bools always encodes
	}
	return buf.Bytes()
}

// Clone is a deep copy of c.
func (c Config) Clone() Config {
	out := c
	out.Network = c.Network.clone()
	if c.Identity != nil {
		out.Identity = make(map[string]string, len(c.Identity))
		for k, v := range c.Identity {
			out.Identity[k] = v
		}
	}
	out.Files = append([]File(nil), c.Files...)
	out.StateDirs = append([]string(nil), c.StateDirs...)
	return out
}

func (n Network) clone() Network {
	out := n
	if n.Bond != nil {
		b := *n.Bond
		b.Members = append([]string(nil), n.Bond.Members...)
		out.Bond = &b
	}
	if n.VLAN != nil {
		v := *n.VLAN
		out.VLAN = &v
	}
	out.Addresses = cloneList(n.Addresses)
	out.Gateway = cloneList(n.Gateway)
	out.DNS = cloneList(n.DNS)
	out.Search = cloneList(n.Search)
	return out
}

func cloneList(l []string) []string {
	if l == nil {
		return nil
	}
	return append([]string(nil), l...)
}

// Describe is the network in a few words, for logs.
func (n Network) Describe() string {
	var parts []string
	if l := n.describeLink(); l != "" {
		parts = append(parts, l)
	}
	parts = append(parts, n.describeAddressing())
	if n.MTU != 0 {
		parts = append(parts, fmt.Sprintf("mtu %d", n.MTU))
	}
	return strings.Join(parts, ", ")
}

func (n Network) describeLink() string {
	var s string
	switch {
	case n.Bond != nil:
		s = fmt.Sprintf("%s (%s of %s)", n.Bond.BondName(), n.Bond.BondMode(), strings.Join(n.Bond.Members, " "))
	case n.Interface != "":
		s = n.Interface
	}
	if n.VLAN != nil {
		if s == "" {
			return n.VLAN.VLANName()
		}
		s = fmt.Sprintf("%s (VLAN %d) on %s", n.VLAN.VLANName(), n.VLAN.ID, s)
	}
	return s
}

func (n Network) describeAddressing() string {
	if !n.Static() {
		return "dhcp"
	}
	s := strings.Join(n.Addresses, " ")
	if len(n.Gateway) > 0 {
		s += " via " + strings.Join(n.Gateway, " ")
	}
	return s
}
