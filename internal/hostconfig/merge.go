package hostconfig

import (
	"fmt"
	"net"
	"sort"
	"strings"
)

// Source names a layer of configuration, as the init logs it.
type Source string

// The layers of DESIGN.md §3 step 6, highest priority first.
const (
	Kernel   Source = "kernel command line" // hn.hostname=, ip=
	Imaged   Source = "imaged"              // GET /api/hosts/{mac}/desired
	Cache    Source = "cache"               // hostpart/.hnboot/host.json: what imaged sent last
	HostConf Source = "host.conf"           // hostpart/.hnboot/host.conf, written by hand
	Default  Source = "default"             // generated: hn-<mac>, DHCP
)

// Layer is one source's configuration.
type Layer struct {
	Source Source
	Config Config
}

// Origin says which layer a merged value came from.
type Origin struct {
	Unit   string // hostname, network.link, ..., identity.<key>, files[<path>]
	Value  string // short, for the log
	Source Source
}

func (o Origin) String() string {
	return fmt.Sprintf("%s %s (from %s)", o.Unit, o.Value, o.Source)
}

// Merge combines layers, highest priority first: each unit comes whole
// from the first layer that sets it. The units are the hostname; the
// network's link (interface, bond and VLAN together: a kernel ip= naming
// eth1 replaces a bond from imaged rather than half-joining it), MTU,
// addressing (dhcp, addresses and gateway together, so a gateway never
// meets an address from another layer's subnet), DNS servers, search
// domains; each identity value by key; each file by path; the state
// directories as one list. Lists are taken whole, not concatenated, so a
// higher layer can shorten one.
//
// Merge does not validate; give it validated layers (Validate, Parse).
// The origins come in a fixed order: hostname, network, identity by key,
// files by path, state directories.
func Merge(layers ...Layer) (Config, []Origin) {
	var out Config
	var origins []Origin
	took := map[string]bool{}
	take := func(unit string, set bool, src Source, value func() string, apply func()) {
		if took[unit] || !set {
			return
		}
		took[unit] = true
		apply()
		origins = append(origins, Origin{Unit: unit, Value: value(), Source: src})
	}
	for _, l := range layers {
		c := l.Config.Clone()
		n := c.Network
		take(UnitHostname, c.Hostname != "", l.Source, func() string { return c.Hostname }, func() { out.Hostname = c.Hostname })
		take(UnitLink, n.Interface != "" || n.Bond != nil || n.VLAN != nil, l.Source, n.describeLink, func() {
			out.Network.Interface, out.Network.Bond, out.Network.VLAN = n.Interface, n.Bond, n.VLAN
		})
		take(UnitMTU, n.MTU != 0, l.Source, func() string { return fmt.Sprint(n.MTU) }, func() { out.Network.MTU = n.MTU })
		take(UnitAddressing, n.DHCP || n.Static(), l.Source, n.describeAddressing, func() {
			out.Network.DHCP, out.Network.Addresses, out.Network.Gateway = n.DHCP, n.Addresses, n.Gateway
		})
		take(UnitDNS, len(n.DNS) > 0, l.Source, func() string { return strings.Join(n.DNS, " ") }, func() { out.Network.DNS = n.DNS })
		take(UnitSearch, len(n.Search) > 0, l.Source, func() string { return strings.Join(n.Search, " ") }, func() { out.Network.Search = n.Search })
		for _, k := range sortedKeys(c.Identity) {
			v := c.Identity[k]
			take(UnitIdentity(k), true, l.Source, func() string { return v }, func() {
				if out.Identity == nil {
					out.Identity = map[string]string{}
				}
				out.Identity[k] = v
			})
		}
		for _, f := range c.Files {
			take(UnitFile(f.Path), true, l.Source, func() string { return fmt.Sprintf("%d bytes", len(f.Content)) }, func() { out.Files = append(out.Files, f) })
		}
		take(UnitStateDirs, len(c.StateDirs) > 0, l.Source, func() string { return strings.Join(c.StateDirs, " ") }, func() { out.StateDirs = c.StateDirs })
	}
	// A lower layer's DHCP with no static address is the same as no
	// addressing: say it plainly.
	if !out.Network.Static() {
		out.Network.DHCP = true
	}
	sort.SliceStable(out.Files, func(i, j int) bool { return out.Files[i].Path < out.Files[j].Path })
	sort.Slice(origins, func(i, j int) bool {
		ri, rj := originRank(origins[i].Unit), originRank(origins[j].Unit)
		if ri != rj {
			return ri < rj
		}
		return origins[i].Unit < origins[j].Unit
	})
	return out, origins
}

// originRank orders origins: hostname and network first, then identity
// values and files, each sorted by unit, then the state directories.
func originRank(unit string) int {
	switch {
	case unit == UnitHostname:
		return 0
	case unit == UnitLink:
		return 1
	case unit == UnitMTU:
		return 2
	case unit == UnitAddressing:
		return 3
	case unit == UnitDNS:
		return 4
	case unit == UnitSearch:
		return 5
	case strings.HasPrefix(unit, "identity."):
		return 6
	case strings.HasPrefix(unit, "files["):
		return 7
	}
	return 8
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Only keeps the units of c named in units (for the cache under a fresh
// answer from imaged: only what imaged's answer had to refuse falls back
// to the last good value; what imaged left out is gone).
func (c Config) Only(units map[string]bool) Config {
	var out Config
	n := c.Network
	if units[UnitHostname] {
		out.Hostname = c.Hostname
	}
	if units[UnitLink] {
		out.Network.Interface, out.Network.Bond, out.Network.VLAN = n.Interface, n.Bond, n.VLAN
	}
	if units[UnitMTU] {
		out.Network.MTU = n.MTU
	}
	if units[UnitAddressing] {
		out.Network.DHCP, out.Network.Addresses, out.Network.Gateway = n.DHCP, n.Addresses, n.Gateway
	}
	if units[UnitDNS] {
		out.Network.DNS = n.DNS
	}
	if units[UnitSearch] {
		out.Network.Search = n.Search
	}
	for k, v := range c.Identity {
		if units[UnitIdentity(k)] {
			if out.Identity == nil {
				out.Identity = map[string]string{}
			}
			out.Identity[k] = v
		}
	}
	for _, f := range c.Files {
		if units[UnitFile(f.Path)] {
			out.Files = append(out.Files, f)
		}
	}
	if units[UnitStateDirs] {
		out.StateDirs = c.StateDirs
	}
	return out.Clone()
}

// DefaultHostname derives a stable name from a MAC address:
// 52:54:00:12:34:56 → hn-525400123456.
func DefaultHostname(mac string) string {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) == 0 {
		return "hn-unknown"
	}
	return fmt.Sprintf("hn-%x", []byte(hw))
}

// Defaults is the lowest layer: a hostname from the boot NIC's MAC, and
// DHCP. The interface stays unset, so networkd matches whatever en* or
// eth* name the image's udev gives the NIC.
func Defaults(mac string) Config {
	return Config{Hostname: DefaultHostname(mac), Network: Network{DHCP: true}}
}
