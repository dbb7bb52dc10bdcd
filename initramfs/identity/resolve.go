package identity

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/hostconfig"
)

// Inputs is what the init knows at boot about who the host is, as bytes
// and values: Resolve reads no file and makes no request, so every
// combination is a table test.
type Inputs struct {
	// Cmdline gives hn.hostname= and ip= (the kernel's syntax, see
	// FromKernelIP): the highest layer.
	Cmdline cmdline.Config
	// MAC is the boot NIC's (BOOTIF=, else nic.FirstEthernet): the
	// default hostname, the NIC an ifupdown image configures when the
	// configuration names none, and the host the messages name.
	MAC string
	// Imaged is the body of a 200 answer to GET
	// /api/hosts/{mac}/desired; nil when no server is known, it did not
	// answer within the budget, or answered anything but 200.
	Imaged []byte
	// Cache is hostpart's layout.HostCache (nil if absent): what imaged
	// sent last, so a boot with the server down is the same host.
	Cache []byte
	// HostConf is hostpart's layout.HostConf (nil if absent), the
	// hand-written key = value file of hosts set up before the fleet
	// sent configurations; below the cache, above the defaults.
	HostConf []byte
}

// Resolved is the host's configuration for this boot.
type Resolved struct {
	Config hostconfig.Config // give it to ApplyConfig
	// Origins say where each value came from; the init logs each one
	// ("identity: hostname web-07 (from imaged)").
	Origins []hostconfig.Origin
	// Problems are values refused or files that did not parse, each
	// naming its source, the host, the key and the file it was for; the
	// init logs each as an error, and the boot goes on with the rest.
	Problems []string
	// Cache, when not nil, is the new content of layout.HostCache (write
	// it with SaveCache): imaged answered, and what it said (with the last
	// good value for anything it sent that was refused) differs from the
	// cache.
	Cache []byte
}

// Resolve merges the layers of DESIGN.md §3 step 6, highest first: the
// kernel command line, imaged, the cache, host.conf, generated defaults
// (hostconfig.Merge says how, unit by unit).
//
// A fresh answer from imaged replaces the cache rather than sitting above
// it: what the fleet no longer says (an identity value removed from the
// YAML) must not live on in the cache. Only a unit imaged's answer had
// to refuse falls back to the cache's last good value. An answer that is
// no JSON at all counts as no answer: the cache applies whole.
func Resolve(in Inputs) Resolved {
	var res Resolved
	host := in.MAC
	if host == "" {
		host = "this host"
	}
	problem := func(src hostconfig.Source, ps []hostconfig.Problem) map[string]bool {
		refused := map[string]bool{}
		for _, p := range ps {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: refused %s", src, p))
			refused[p.Unit()] = true
		}
		return refused
	}

	kernel, ps := KernelConfig(in.Cmdline).Validate(host)
	problem(hostconfig.Kernel, ps)

	var cache hostconfig.Config
	if in.Cache != nil {
		c, ps, err := hostconfig.Parse(bytes.NewReader(in.Cache), host)
		if err != nil {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: %v; not used", hostconfig.Cache, err))
		}
		problem(hostconfig.Cache, ps)
		cache = c
	}

	layers := []hostconfig.Layer{{Source: hostconfig.Kernel, Config: kernel}}
	var refused map[string]bool
	if in.Imaged != nil {
		c, ps, err := hostconfig.Parse(bytes.NewReader(in.Imaged), host)
		if err != nil {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: %v; using the cache", hostconfig.Imaged, err))
		} else {
			refused = problem(hostconfig.Imaged, ps)
			kept := cache.Only(refused)
			layers = append(layers, hostconfig.Layer{Source: hostconfig.Imaged, Config: c}, hostconfig.Layer{Source: hostconfig.Cache, Config: kept})
			fresh, _ := hostconfig.Merge(hostconfig.Layer{Config: c}, hostconfig.Layer{Config: kept})
			// Merge says DHCP when nothing sets an address; the cache
			// keeps what imaged said, so an unset addressing stays unset.
			if !c.Network.DHCP && !kept.Network.DHCP {
				fresh.Network.DHCP = false
			}
			if b := fresh.Marshal(); !bytes.Equal(b, in.Cache) {
				res.Cache = b
			}
		}
	}
	if refused == nil {
		layers = append(layers, hostconfig.Layer{Source: hostconfig.Cache, Config: cache})
	}

	if in.HostConf != nil {
		hc, err := ParseHostConf(bytes.NewReader(in.HostConf))
		if err != nil {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: %v; using its valid lines", hostconfig.HostConf, err))
		}
		c, ps := hc.Config().Validate(host)
		problem(hostconfig.HostConf, ps)
		layers = append(layers, hostconfig.Layer{Source: hostconfig.HostConf, Config: c})
	}
	layers = append(layers, hostconfig.Layer{Source: hostconfig.Default, Config: hostconfig.Defaults(in.MAC)})

	res.Config, res.Origins = hostconfig.Merge(layers...)
	// Say where a refused value's unit came from instead.
	from := map[string]hostconfig.Source{}
	for _, o := range res.Origins {
		from[o.Unit] = o.Source
	}
	if len(refused) > 0 {
		units := make([]string, 0, len(refused))
		for u := range refused {
			units = append(units, u)
		}
		sort.Strings(units)
		for _, u := range units {
			if src, ok := from[u]; ok {
				res.Problems = append(res.Problems, fmt.Sprintf("%s: %s comes from %s instead", hostconfig.Imaged, u, src))
			} else {
				res.Problems = append(res.Problems, fmt.Sprintf("%s: %s is left unset instead", hostconfig.Imaged, u))
			}
		}
	}
	return res
}

// KernelConfig is the command line's layer: ip= (FromKernelIP) and
// hn.hostname=, which wins over ip='s hostname field.
func KernelConfig(c cmdline.Config) hostconfig.Config {
	hc := FromKernelIP(c.IP)
	if c.Hostname != "" {
		hc.Hostname = c.Hostname
	}
	return hc.Config()
}

// SaveCache writes Resolved.Cache to path (hostpart's layout.HostCache),
// durably: it is what the next boot without a server relies on.
func SaveCache(path string, b []byte) error {
	if err := durable.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("identity: save the host configuration: %w", err)
	}
	return nil
}

// Config is hc in the fleet's form: host.conf and ip= become one more
// layer (hostconfig.HostConf, hostconfig.Kernel). storage_id and cm_id
// become the identity values storage_id and cm_id, which ApplyConfig also
// writes to /etc/hnboot/storage-id and cm-id, as before.
func (hc HostConf) Config() hostconfig.Config {
	c := hostconfig.Config{Hostname: hc.Hostname}
	n := &c.Network
	switch hc.IP {
	case "":
	case DHCP:
		n.DHCP = true
	default:
		n.Addresses = []string{hc.IP}
		if hc.Gateway != "" {
			n.Gateway = []string{hc.Gateway}
		}
	}
	n.DNS = append([]string(nil), hc.DNS...)
	if len(n.DNS) == 0 {
		n.DNS = nil
	}
	n.Interface = hc.Interface
	c.StateDirs = append([]string(nil), hc.StateDirs...)
	if len(c.StateDirs) == 0 {
		c.StateDirs = nil
	}
	if hc.StorageID != "" || hc.ConfigMgmtID != "" {
		c.Identity = map[string]string{}
		if hc.StorageID != "" {
			c.Identity[IdentityStorageID] = hc.StorageID
		}
		if hc.ConfigMgmtID != "" {
			c.Identity[IdentityCMID] = hc.ConfigMgmtID
		}
	}
	paths := make([]string, 0, len(hc.Files))
	for p := range hc.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		c.Files = append(c.Files, hostconfig.File{Path: p, Mode: hostconfig.DefaultFileMode, Content: hc.Files[p]})
	}
	return c
}

// Identity keys with a file of their own (host.conf's storage_id and
// cm_id, kept for the images that read them).
const (
	IdentityStorageID = "storage_id" // → layout.StorageIDFile
	IdentityCMID      = "cm_id"      // → layout.CMIDFile
)
