package hostconfig

import (
	"fmt"
	"io/fs"
	"net"
	"path"
	"sort"
	"strings"

	"github.com/hnboot/hnboot/internal/layout"
)

// Output is one file to write into the root.
type Output struct {
	Path    string // absolute in the root
	Mode    fs.FileMode
	Content string
}

const header = "# written by hnboot at every boot from the host configuration; edit the fleet, not this file\n"

// The renderers below are pure and take a validated Network (Validate):
// they write names and addresses as they are, trusting them to be one
// word each.

// Networkd renders n as systemd-networkd files (layout.NetworkdDir,
// named layout.NetworkdPrefix*): the .netdev of a bond and of a VLAN, a
// .network for each bond member and for a VLAN's parent, and
// layout.NetworkdMain for the link that carries the addresses.
//
// A NIC named by MAC is matched with MACAddress= and Type=ether: a bond
// and a VLAN carry the MAC of a member or parent, and must not match its
// file. No NIC is renamed.
func Networkd(n Network) []Output {
	var out []Output
	file := func(name, content string) {
		out = append(out, Output{Path: path.Join(layout.NetworkdDir, name), Mode: 0o644, Content: header + content})
	}
	link := ""
	if n.MTU != 0 {
		link = fmt.Sprintf("\n[Link]\nMTUBytes=%d\n", n.MTU)
	}
	carrier := n.Carrier()
	if b := n.Bond; b != nil {
		file(layout.NetworkdPrefix+"-"+b.BondName()+".netdev", fmt.Sprintf("[NetDev]\nName=%s\nKind=bond\n\n[Bond]\nMode=%s\nMIIMonitorSec=100ms\n", b.BondName(), b.BondMode()))
		for i, m := range b.Members {
			file(fmt.Sprintf("%s-%s-member%d.network", layout.NetworkdPrefix, b.BondName(), i+1),
				networkdMatch(m)+link+"\n[Network]\nBond="+b.BondName()+"\n")
		}
	}
	top := carrier
	if v := n.VLAN; v != nil {
		file(layout.NetworkdPrefix+"-"+v.VLANName()+".netdev", fmt.Sprintf("[NetDev]\nName=%s\nKind=vlan\n\n[VLAN]\nId=%d\n", v.VLANName(), v.ID))
		file(layout.NetworkdPrefix+"-"+fileToken(carrier)+".network", networkdMatch(carrier)+link+"\n[Network]\nVLAN="+v.VLANName()+"\n")
		top = v.VLANName()
	}
	var b strings.Builder
	b.WriteString(networkdMatch(top) + link + "\n[Network]\n")
	if n.Static() {
		for _, a := range n.Addresses {
			b.WriteString("Address=" + a + "\n")
		}
		for _, g := range n.Gateway {
			b.WriteString("Gateway=" + g + "\n")
		}
	} else {
		b.WriteString("DHCP=yes\n")
	}
	for _, d := range n.DNS {
		b.WriteString("DNS=" + d + "\n")
	}
	if len(n.Search) > 0 {
		b.WriteString("Domains=" + strings.Join(n.Search, " ") + "\n")
	}
	file(path.Base(layout.NetworkdMain), b.String())
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

func networkdMatch(ref string) string {
	switch {
	case ref == "":
		return "[Match]\nName=en* eth*\n"
	case IsMAC(ref):
		return "[Match]\nMACAddress=" + ref + "\nType=ether\n"
	}
	return "[Match]\nName=" + ref + "\n"
}

// fileToken is a name or MAC as part of a file name.
func fileToken(ref string) string { return strings.ReplaceAll(ref, ":", "") }

// IfupdownName is the name hnboot gives a NIC the fleet names by MAC on
// an ifupdown image, which can only name interfaces: hn and the MAC's
// twelve hex digits (14 bytes, under the kernel's 15).
func IfupdownName(mac string) string {
	hw, _ := net.ParseMAC(mac)
	return fmt.Sprintf("hn%x", []byte(hw))
}

// Ifupdown renders n for Debian's ifupdown: layout.IfupdownFile, and for
// each NIC named by MAC a .link file (read by udev, which runs on images
// without networkd too) naming it IfupdownName(mac). A bond needs the
// image's ifenslave package, a VLAN its vlan package. With no interface
// and no bond, the NIC is bootMAC's; with neither, there is nothing ifupdown
// could name and the error says so.
func Ifupdown(n Network, bootMAC string) ([]Output, error) {
	var links []Output
	name := func(ref string) string {
		if !IsMAC(ref) {
			return ref
		}
		nm := IfupdownName(ref)
		links = append(links, Output{
			Path: path.Join(layout.NetworkdDir, layout.NetworkdPrefix+"-"+nm+".link"), Mode: 0o644,
			Content: header + "# ifupdown names interfaces; this names the NIC the fleet knows by MAC\n" +
				"[Match]\nMACAddress=" + ref + "\nType=ether\n\n[Link]\nName=" + nm + "\n",
		})
		return nm
	}
	carrier := n.Carrier()
	if carrier == "" {
		if !IsMAC(bootMAC) {
			return nil, fmt.Errorf("ifupdown: the configuration names no interface and the boot NIC's MAC is unknown")
		}
		carrier = bootMAC
	}
	carrier = name(carrier)
	var b strings.Builder
	b.WriteString(header)
	auto := map[string]bool{}
	stanza := func(iface, family, method string, opts ...string) {
		b.WriteString("\n")
		if !auto[iface] {
			auto[iface] = true
			b.WriteString("auto " + iface + "\n")
		}
		fmt.Fprintf(&b, "iface %s %s %s\n", iface, family, method)
		for _, o := range opts {
			if o != "" {
				b.WriteString("    " + o + "\n")
			}
		}
	}
	mtu := ""
	if n.MTU != 0 {
		mtu = fmt.Sprintf("mtu %d", n.MTU)
	}
	var bondOpts []string
	if bd := n.Bond; bd != nil {
		members := make([]string, len(bd.Members))
		for i, m := range bd.Members {
			members[i] = name(m)
		}
		bondOpts = []string{"bond-slaves " + strings.Join(members, " "), "bond-mode " + bd.BondMode(), "bond-miimon 100"}
	}
	top := carrier
	var topOpts []string
	if v := n.VLAN; v != nil {
		stanza(carrier, "inet", "manual", append(bondOpts, mtu)...)
		top = v.VLANName()
		topOpts = []string{"vlan-raw-device " + carrier}
	} else {
		topOpts = bondOpts
	}
	if !n.Static() {
		opts := topOpts
		if mtu != "" {
			// The dhcp method takes no mtu option.
			opts = append(opts, fmt.Sprintf("post-up ip link set dev %s mtu %d", top, n.MTU))
		}
		stanza(top, "inet", "dhcp", opts...)
	} else {
		var v4, v6, gw4, gw6 []string
		for _, a := range n.Addresses {
			if strings.Contains(a, ":") {
				v6 = append(v6, a)
			} else {
				v4 = append(v4, a)
			}
		}
		for _, g := range n.Gateway {
			if strings.Contains(g, ":") {
				gw6 = append(gw6, "gateway "+g)
			} else {
				gw4 = append(gw4, "gateway "+g)
			}
		}
		dns := []string{}
		if len(n.DNS) > 0 {
			dns = append(dns, "dns-nameservers "+strings.Join(n.DNS, " ")) // read by resolvconf, if installed
		}
		if len(n.Search) > 0 {
			dns = append(dns, "dns-search "+strings.Join(n.Search, " "))
		}
		first := true
		for _, fam := range []struct {
			family string
			addrs  []string
			gw     []string
		}{{"inet", v4, gw4}, {"inet6", v6, gw6}} {
			for i, a := range fam.addrs {
				// The first stanza creates the bond; every stanza of a
				// VLAN names its raw device, as vlan-interfaces(5) reads it.
				var opts []string
				if first || n.VLAN != nil {
					opts = append(opts, topOpts...)
				}
				opts = append(opts, "address "+a)
				if i == 0 {
					opts = append(opts, fam.gw...)
				}
				if first {
					opts = append(opts, mtu)
					opts = append(opts, dns...)
				}
				stanza(top, fam.family, "static", opts...)
				first = false
			}
		}
	}
	out := []Output{{Path: layout.IfupdownFile, Mode: 0o644, Content: b.String()}}
	return append(out, links...), nil
}

// ResolvConf is /etc/resolv.conf for static DNS servers, for images
// without a resolver daemon; ok is false when n has none to give (DHCP
// brings its own).
func ResolvConf(n Network) (content string, ok bool) {
	if !n.Static() || len(n.DNS) == 0 {
		return "", false
	}
	var b strings.Builder
	b.WriteString("# written by hnboot from the host configuration\n")
	for _, d := range n.DNS {
		b.WriteString("nameserver " + d + "\n")
	}
	if len(n.Search) > 0 {
		b.WriteString("search " + strings.Join(n.Search, " ") + "\n")
	}
	return b.String(), true
}

// NetworkEnv is the network as shell variables (layout.NetworkEnv), for
// images that configure the network with their own scripts.
func NetworkEnv(c Config) string {
	n := c.Network
	ip, dhcp := "dhcp", "yes"
	if n.Static() {
		ip, dhcp = n.Addresses[0], "no"
	}
	first := func(l []string) string {
		if len(l) == 0 {
			return ""
		}
		return l[0]
	}
	link := n.Carrier()
	if n.VLAN != nil {
		link = n.VLAN.VLANName()
	}
	var bond, mode, members string
	if n.Bond != nil {
		bond, mode, members = n.Bond.BondName(), n.Bond.BondMode(), strings.Join(n.Bond.Members, " ")
	}
	vlan, mtu := "", ""
	if n.VLAN != nil {
		vlan = fmt.Sprint(n.VLAN.ID)
	}
	if n.MTU != 0 {
		mtu = fmt.Sprint(n.MTU)
	}
	var b strings.Builder
	b.WriteString("# written by hnboot at every boot; source it: . " + layout.NetworkEnv + "\n")
	for _, kv := range [][2]string{
		{"HN_HOSTNAME", c.Hostname},
		{"HN_INTERFACE", n.Interface}, // a name or a MAC; empty with a bond or for any en*/eth*
		{"HN_IP", ip},                 // the first address, or dhcp
		{"HN_GATEWAY", first(n.Gateway)},
		{"HN_DNS", strings.Join(n.DNS, " ")},
		{"HN_DHCP", dhcp},
		{"HN_ADDRESSES", strings.Join(n.Addresses, " ")},
		{"HN_GATEWAYS", strings.Join(n.Gateway, " ")},
		{"HN_SEARCH", strings.Join(n.Search, " ")},
		{"HN_MTU", mtu},
		{"HN_LINK", link}, // what carries the addresses: the VLAN, the bond or the interface
		{"HN_BOND", bond},
		{"HN_BOND_MODE", mode},
		{"HN_BOND_MEMBERS", members},
		{"HN_VLAN", vlan},
	} {
		b.WriteString(kv[0] + "=" + QuoteShell(kv[1]) + "\n")
	}
	return b.String()
}

// IdentityEnv is the identity values as shell variables
// (layout.IdentityEnv): key certname is HN_CERTNAME. Sourceable by sh,
// and by systemd's EnvironmentFile= as long as the values hold no quote
// or backslash.
func IdentityEnv(identity map[string]string) string {
	var b strings.Builder
	b.WriteString("# written by hnboot at every boot from the fleet's identity values; source it: . " + layout.IdentityEnv + "\n")
	for _, k := range sortedKeys(identity) {
		b.WriteString(IdentityVar(k) + "=" + QuoteShell(identity[k]) + "\n")
	}
	return b.String()
}

// IdentityVar is the variable name of identity key k in IdentityEnv.
func IdentityVar(k string) string { return "HN_" + strings.ToUpper(k) }

// QuoteShell single-quotes s for a POSIX shell.
func QuoteShell(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
