package identity

import (
	"reflect"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/internal/hostconfig"
)

const mac = "52:54:00:12:34:56"

// imagedBody is an answer of GET /api/hosts/{mac}/desired: the agent's
// fields and the host configuration inline.
func imagedBody(config string) []byte {
	return []byte(`{"mac":"` + mac + `","image":{"name":"web","version":"2","digest":"sha256:x"},"source":"group web",` + config + `}`)
}

func cacheOf(c hostconfig.Config) []byte { return c.Marshal() }

func TestResolve(t *testing.T) {
	full := `"hostname":"web-07","network":{"interface":"eth0","addresses":["192.0.2.17/24"],"gateway":["192.0.2.1"],"dns":["192.0.2.53"]},` +
		`"identity":{"certname":"web-07.example.com"},"files":[{"path":"/etc/motd","content":"hi\n"}]`
	fullConfig := hostconfig.Config{Hostname: "web-07",
		Network:  hostconfig.Network{Interface: "eth0", Addresses: []string{"192.0.2.17/24"}, Gateway: []string{"192.0.2.1"}, DNS: []string{"192.0.2.53"}},
		Identity: map[string]string{"certname": "web-07.example.com"},
		Files:    []hostconfig.File{{Path: "/etc/motd", Mode: "0644", Content: "hi\n"}}}
	oldCache := hostconfig.Config{Hostname: "web-07-old",
		Network:  hostconfig.Network{Interface: "eth1", Addresses: []string{"198.51.100.7/24"}, DNS: []string{"198.51.100.53"}},
		Identity: map[string]string{"certname": "old.example.com", "retired": "yes"}}

	for _, c := range []struct {
		name      string
		in        Inputs
		want      hostconfig.Config
		origins   []string // as the init logs them
		problems  []string // substrings, in order
		wantCache *hostconfig.Config
	}{
		{name: "nothing but defaults",
			in:      Inputs{MAC: mac},
			want:    hostconfig.Config{Hostname: "hn-525400123456", Network: hostconfig.Network{DHCP: true}},
			origins: []string{"hostname hn-525400123456 (from default)", "network.addressing dhcp (from default)"}},
		{name: "imaged answers; the kernel's hostname wins; the cache follows imaged",
			in:   Inputs{MAC: mac, Cmdline: cmdline.Config{Hostname: "rescue-07"}, Imaged: imagedBody(full), Cache: cacheOf(oldCache)},
			want: func() hostconfig.Config { c := fullConfig.Clone(); c.Hostname = "rescue-07"; return c }(),
			origins: []string{"hostname rescue-07 (from kernel command line)", "network.link eth0 (from imaged)",
				"network.addressing 192.0.2.17/24 via 192.0.2.1 (from imaged)", "network.dns 192.0.2.53 (from imaged)",
				"identity.certname web-07.example.com (from imaged)", "files[/etc/motd] 3 bytes (from imaged)"},
			wantCache: &fullConfig},
		{name: "server down: the cache, whole",
			in:   Inputs{MAC: mac, Cache: cacheOf(fullConfig)},
			want: fullConfig,
			origins: []string{"hostname web-07 (from cache)", "network.link eth0 (from cache)",
				"network.addressing 192.0.2.17/24 via 192.0.2.1 (from cache)", "network.dns 192.0.2.53 (from cache)",
				"identity.certname web-07.example.com (from cache)", "files[/etc/motd] 3 bytes (from cache)"}},
		{name: "a hostile DNS server from imaged: refused, the cache's last good one instead",
			in:      Inputs{MAC: mac, Imaged: imagedBody(`"hostname":"web-07","network":{"dns":["192.0.2.53\nnameserver 6.6.6.6"]}`), Cache: cacheOf(oldCache)},
			want:    hostconfig.Config{Hostname: "web-07", Network: hostconfig.Network{DHCP: true, DNS: []string{"198.51.100.53"}}},
			origins: []string{"hostname web-07 (from imaged)", "network.addressing dhcp (from default)", "network.dns 198.51.100.53 (from cache)"},
			problems: []string{`imaged: refused 52:54:00:12:34:56: network.dns[0] "192.0.2.53\nnameserver 6.6.6.6" (for /etc/resolv.conf): not an IP address`,
				"imaged: network.dns comes from cache instead"},
			wantCache: &hostconfig.Config{Hostname: "web-07", Network: hostconfig.Network{DNS: []string{"198.51.100.53"}}}},
		{name: "what imaged no longer says is gone, not taken from the cache",
			in:        Inputs{MAC: mac, Imaged: imagedBody(`"hostname":"web-07"`), Cache: cacheOf(oldCache)},
			want:      hostconfig.Config{Hostname: "web-07", Network: hostconfig.Network{DHCP: true}},
			origins:   []string{"hostname web-07 (from imaged)", "network.addressing dhcp (from default)"},
			wantCache: &hostconfig.Config{Hostname: "web-07"}},
		{name: "an answer that is not JSON: the cache applies",
			in:       Inputs{MAC: mac, Imaged: []byte("<html>proxy error</html>"), Cache: cacheOf(fullConfig)},
			want:     fullConfig,
			problems: []string{"imaged: host configuration for 52:54:00:12:34:56: invalid character '<'", "using the cache"}},
		{name: "the cache unchanged is not written again",
			in:   Inputs{MAC: mac, Imaged: imagedBody(full), Cache: cacheOf(fullConfig)},
			want: fullConfig},
		{name: "host.conf under imaged: its static address and state dirs where imaged says nothing",
			in: Inputs{MAC: mac, Imaged: imagedBody(`"hostname":"web-07"`),
				HostConf: []byte("hostname = legacy\nip = 10.1.2.7/24\ngateway = 10.1.2.1\nstate_dir = /var/lib/docker\nstorage_id = osd-7\nbogus line\n")},
			want: hostconfig.Config{Hostname: "web-07", Network: hostconfig.Network{Addresses: []string{"10.1.2.7/24"}, Gateway: []string{"10.1.2.1"}},
				Identity: map[string]string{"storage_id": "osd-7"}, StateDirs: []string{"/var/lib/docker"}},
			origins: []string{"hostname web-07 (from imaged)", "network.addressing 10.1.2.7/24 via 10.1.2.1 (from host.conf)",
				"identity.storage_id osd-7 (from host.conf)", "state_dirs /var/lib/docker (from host.conf)"},
			problems:  []string{"host.conf: host.conf: line 6: want key = value"},
			wantCache: &hostconfig.Config{Hostname: "web-07"}},
		{name: "ip=dhcp on the command line beats imaged's static address, and its gateway goes with it",
			in: Inputs{MAC: mac, Cmdline: cmdline.Config{IP: "dhcp"}, Imaged: imagedBody(full)},
			want: func() hostconfig.Config {
				c := fullConfig.Clone()
				c.Network.Addresses, c.Network.Gateway, c.Network.DHCP = nil, nil, true
				return c
			}(),
			origins: []string{"hostname web-07 (from imaged)", "network.link eth0 (from imaged)", "network.addressing dhcp (from kernel command line)",
				"network.dns 192.0.2.53 (from imaged)", "identity.certname web-07.example.com (from imaged)", "files[/etc/motd] 3 bytes (from imaged)"},
			wantCache: &fullConfig},
		{name: "a bad ip= is refused, not half-used",
			in:       Inputs{MAC: mac, Cmdline: cmdline.Config{IP: "10.0.0.5::192.168.1.1:255.255.255.0::eth0:off"}},
			want:     hostconfig.Config{Hostname: "hn-525400123456", Network: hostconfig.Network{Interface: "eth0", DHCP: true}},
			problems: []string{"kernel command line: refused 52:54:00:12:34:56: network.gateway[0]", "outside the host's subnets (10.0.0.0/24)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Resolve(c.in)
			if !reflect.DeepEqual(got.Config, c.want) {
				t.Errorf("Resolve().Config = %+v\nwant %+v", got.Config, c.want)
			}
			if c.origins != nil {
				var lines []string
				for _, o := range got.Origins {
					lines = append(lines, o.String())
				}
				if g, w := strings.Join(lines, "\n"), strings.Join(c.origins, "\n"); g != w {
					t.Errorf("Resolve().Origins =\n%s\nwant\n%s", g, w)
				}
			}
			all := strings.Join(got.Problems, "\n")
			at := 0
			for _, p := range c.problems {
				i := strings.Index(all[at:], p)
				if i < 0 {
					t.Errorf("Resolve().Problems =\n%s\nwant, in order, %q", all, p)
					break
				}
				at += i + len(p)
			}
			if c.problems == nil && len(got.Problems) > 0 {
				t.Errorf("Resolve().Problems = %q, want none", got.Problems)
			}
			switch {
			case c.wantCache == nil && got.Cache != nil:
				t.Errorf("Resolve().Cache = %s, want nil (nothing new to cache)", got.Cache)
			case c.wantCache != nil:
				cached, ps, err := hostconfig.Parse(strings.NewReader(string(got.Cache)), mac)
				if err != nil || len(ps) > 0 || !reflect.DeepEqual(cached, *c.wantCache) {
					t.Errorf("Resolve().Cache = %s (%v %q)\nwant %+v", got.Cache, err, ps, *c.wantCache)
				}
			}
		})
	}
}

// The boot after a boot that cached: with the server down, the same host.
func TestResolveServerDownIsTheSameHost(t *testing.T) {
	body := imagedBody(`"hostname":"web-07","network":{"bond":{"members":["eno1","eno2"]},"vlan":{"id":42},"dhcp":true},"identity":{"certname":"c"}`)
	up := Resolve(Inputs{MAC: mac, Imaged: body})
	if up.Cache == nil {
		t.Fatal("Resolve(imaged answered, no cache).Cache = nil, want the answer")
	}
	down := Resolve(Inputs{MAC: mac, Cache: up.Cache})
	if !reflect.DeepEqual(up.Config, down.Config) || len(down.Problems) > 0 {
		t.Errorf("server down = %+v (%q)\nwant what the server said the boot before: %+v", down.Config, down.Problems, up.Config)
	}
}

func TestHostConfConfig(t *testing.T) {
	hc := HostConf{Hostname: "h", IP: "10.0.0.5/24", Gateway: "10.0.0.1", DNS: []string{"10.0.0.2"}, Interface: "eno1",
		StateDirs: []string{"/srv"}, Files: map[string]string{"/etc/b": "b", "/etc/a": "a"}, StorageID: "osd-1", ConfigMgmtID: "cm"}
	want := hostconfig.Config{Hostname: "h",
		Network:   hostconfig.Network{Interface: "eno1", Addresses: []string{"10.0.0.5/24"}, Gateway: []string{"10.0.0.1"}, DNS: []string{"10.0.0.2"}},
		Identity:  map[string]string{"storage_id": "osd-1", "cm_id": "cm"},
		Files:     []hostconfig.File{{Path: "/etc/a", Mode: "0644", Content: "a"}, {Path: "/etc/b", Mode: "0644", Content: "b"}},
		StateDirs: []string{"/srv"}}
	if got := hc.Config(); !reflect.DeepEqual(got, want) {
		t.Errorf("HostConf.Config() = %+v\nwant %+v", got, want)
	}
	if got := (HostConf{IP: DHCP, Gateway: "10.0.0.1"}).Config(); !got.Network.DHCP || got.Network.Gateway != nil {
		t.Errorf("HostConf{ip = dhcp}.Config() = %+v, want DHCP and no gateway", got)
	}
}
