package hostconfig

import (
	"reflect"
	"strings"
	"testing"
)

func TestValidateCanonical(t *testing.T) {
	in := Config{
		Hostname: "web-07.example.com",
		Network: Network{
			Bond:      &Bond{Members: []string{"52-54-00-AA-BB-01", "eno2"}},
			VLAN:      &VLAN{ID: 42},
			MTU:       9000,
			Addresses: []string{"192.0.2.17/24", "2001:DB8::17/64"},
			Gateway:   []string{"192.0.2.1", "fe80::1"},
			DNS:       []string{"192.0.2.53", "2001:db8:0:0::53"},
			Search:    []string{"example.com"},
		},
		Identity:  map[string]string{"certname": "web-07.example.com", "empty": ""},
		Files:     []File{{Path: "/etc/motd", Mode: "600", Owner: "root:adm", Content: "hi\n"}, {Path: "/etc/x", Content: ""}},
		StateDirs: []string{"/var/lib/docker", "/var/lib/docker"},
	}
	want := Config{
		Hostname: "web-07.example.com",
		Network: Network{
			Bond:      &Bond{Name: "bond0", Mode: "active-backup", Members: []string{"52:54:00:aa:bb:01", "eno2"}},
			VLAN:      &VLAN{ID: 42},
			MTU:       9000,
			Addresses: []string{"192.0.2.17/24", "2001:db8::17/64"},
			Gateway:   []string{"192.0.2.1", "fe80::1"},
			DNS:       []string{"192.0.2.53", "2001:db8::53"},
			Search:    []string{"example.com"},
		},
		Identity:  map[string]string{"certname": "web-07.example.com"},
		Files:     []File{{Path: "/etc/motd", Mode: "0600", Owner: "root:adm", Content: "hi\n"}, {Path: "/etc/x", Mode: "0644"}},
		StateDirs: []string{"/var/lib/docker"},
	}
	got, problems := in.Validate("web-07")
	if len(problems) != 0 || !reflect.DeepEqual(got, want) {
		t.Errorf("Validate() = %+v, %v\nwant %+v, no problems", got, problems, want)
	}
	if !reflect.DeepEqual(in.Network.Bond.Members, []string{"52-54-00-AA-BB-01", "eno2"}) {
		t.Errorf("Validate() changed its input: %v", in.Network.Bond.Members)
	}
}

// Hostile and mistaken values: each is refused with host, key and file
// named, and takes out its unit only: the hostname survives in every case
// but the first.
func TestValidateRefuses(t *testing.T) {
	base := func() Config { return Config{Hostname: "h1"} }
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string // in the problem's text
		unit string
	}{
		{"newline in hostname", func(c *Config) { c.Hostname = "h1\n127.0.0.1 bank.example.com" }, `h1: hostname "h1\n127.0.0.1 bank.example.com" (for /etc/hostname): not a host name`, UnitHostname},
		{"identity value too long", func(c *Config) { c.Identity = map[string]string{"x": strings.Repeat("a", 2000)} }, `identity.x "aaaa`, UnitIdentity("x")},
		{"newline in dns", func(c *Config) { c.Network.DNS = []string{"1.1.1.1\nnameserver 6.6.6.6"} }, `network.dns[0] "1.1.1.1\nnameserver 6.6.6.6" (for /etc/resolv.conf): not an IP address`, UnitDNS},
		{"zone smuggles a newline", func(c *Config) { c.Network.DNS = []string{"fe80::1%eth0\nnameserver 6.6.6.6"} }, "with a zone", UnitDNS},
		{"search with a space", func(c *Config) { c.Network.Search = []string{"a.com b.com"} }, `network.search[0] "a.com b.com"`, UnitSearch},
		{"interface with a newline", func(c *Config) { c.Network.Interface = "eth0\nName=*" }, `network.interface "eth0\nName=*" (for /etc/systemd/network): not an interface name`, UnitLink},
		{"interface too long", func(c *Config) { c.Network.Interface = "averyveryverylongname" }, "not an interface name", UnitLink},
		{"interface and bond", func(c *Config) {
			c.Network.Interface = "eth0"
			c.Network.Bond = &Bond{Members: []string{"eth1", "eth2"}}
		}, "set interface or bond, not both", UnitLink},
		{"bond of one", func(c *Config) { c.Network.Bond = &Bond{Members: []string{"eth1"}} }, "network.bond.members (for /etc/systemd/network): 1 members: a bond needs 2 to 16", UnitLink},
		{"bond member twice", func(c *Config) {
			c.Network.Bond = &Bond{Members: []string{"52:54:00:00:00:01", "52-54-00-00-00-01"}}
		}, `network.bond.members[1] "52:54:00:00:00:01" (for /etc/systemd/network): already used as network.bond.members[0]`, UnitLink},
		{"bad bond mode", func(c *Config) { c.Network.Bond = &Bond{Mode: "lacp", Members: []string{"a", "b"}} }, `network.bond.mode "lacp"`, UnitLink},
		{"vlan 0", func(c *Config) { c.Network.Interface = "eth0"; c.Network.VLAN = &VLAN{ID: 0} }, "network.vlan.id 0 (for /etc/systemd/network): want a VLAN id 1..4094", UnitLink},
		{"vlan 4095", func(c *Config) { c.Network.Interface = "eth0"; c.Network.VLAN = &VLAN{ID: 4095} }, "network.vlan.id 4095", UnitLink},
		{"vlan on nothing", func(c *Config) { c.Network.VLAN = &VLAN{ID: 7} }, "a VLAN needs an interface or a bond", UnitLink},
		{"mtu", func(c *Config) { c.Network.MTU = 100 }, "network.mtu 100", UnitMTU},
		{"bad cidr", func(c *Config) { c.Network.Addresses = []string{"192.0.2.17"} }, `network.addresses[0] "192.0.2.17" (for /etc/systemd/network): want an address with prefix length`, UnitAddressing},
		{"network address", func(c *Config) { c.Network.Addresses = []string{"192.0.2.0/24"} }, "the network or broadcast address of 192.0.2.0/24", UnitAddressing},
		{"broadcast address", func(c *Config) { c.Network.Addresses = []string{"192.0.2.255/24"} }, "the network or broadcast address", UnitAddressing},
		{"gateway outside", func(c *Config) {
			c.Network.Addresses = []string{"192.0.2.17/24"}
			c.Network.Gateway = []string{"198.51.100.1"}
		}, `network.gateway[0] "198.51.100.1" (for /etc/systemd/network): outside the host's subnets (192.0.2.0/24)`, UnitAddressing},
		{"gateway without family", func(c *Config) {
			c.Network.Addresses = []string{"192.0.2.17/24"}
			c.Network.Gateway = []string{"2001:db8::1"}
		}, "no address of its family", UnitAddressing},
		{"two v4 gateways", func(c *Config) {
			c.Network.Addresses = []string{"192.0.2.17/24"}
			c.Network.Gateway = []string{"192.0.2.1", "192.0.2.2"}
		}, "a second gateway of the same address family", UnitAddressing},
		{"gateway is self", func(c *Config) {
			c.Network.Addresses = []string{"192.0.2.17/24"}
			c.Network.Gateway = []string{"192.0.2.17"}
		}, "the host's own address", UnitAddressing},
		{"dhcp and static", func(c *Config) { c.Network.DHCP = true; c.Network.Addresses = []string{"192.0.2.17/24"} }, "set dhcp or static addresses, not both", UnitAddressing},
		{"gateway with dhcp", func(c *Config) { c.Network.DHCP = true; c.Network.Gateway = []string{"192.0.2.1"} }, "DHCP brings its own", UnitAddressing},
		{"identity key", func(c *Config) { c.Identity = map[string]string{"Cert-Name": "x"} }, `identity "Cert-Name" (for /etc/hnboot/identity.env): key: want a lower-case letter`, UnitIdentity("Cert-Name")},
		{"identity newline", func(c *Config) { c.Identity = map[string]string{"certname": "a\nHN_X=1"} }, `identity.certname "a\nHN_X=1" (for /etc/hnboot/identity.env): control character U+000A`, UnitIdentity("certname")},
		{"identity line separator", func(c *Config) { c.Identity = map[string]string{"certname": "a\u2028b"} }, "control character U+2028", UnitIdentity("certname")},
		{"file traversal", func(c *Config) { c.Files = []File{{Path: "/etc/../../root/.ssh/authorized_keys", Content: "x"}} }, `files[0].path "/etc/../../root/.ssh/authorized_keys": contains ..`, UnitFile("/etc/../../root/.ssh/authorized_keys")},
		{"file relative", func(c *Config) { c.Files = []File{{Path: "etc/motd"}} }, "not an absolute path", UnitFile("etc/motd")},
		{"file not clean", func(c *Config) { c.Files = []File{{Path: "/etc//motd"}} }, "not clean (want /etc/motd)", UnitFile("/etc//motd")},
		{"file in /proc", func(c *Config) { c.Files = []File{{Path: "/proc/sys/kernel/core_pattern"}} }, "under /proc", UnitFile("/proc/sys/kernel/core_pattern")},
		{"file in /sys", func(c *Config) { c.Files = []File{{Path: "/sys/x"}} }, "under /sys", UnitFile("/sys/x")},
		{"file in /dev", func(c *Config) { c.Files = []File{{Path: "/dev/sda"}} }, "under /dev", UnitFile("/dev/sda")},
		{"file on hostpart", func(c *Config) { c.Files = []File{{Path: "/hostpart/hn-root.img"}} }, "under /hostpart", UnitFile("/hostpart/hn-root.img")},
		{"file on the ESP", func(c *Config) { c.Files = []File{{Path: "/boot/loader/grub/grub.cfg"}} }, "under /boot/loader", UnitFile("/boot/loader/grub/grub.cfg")},
		{"file through /data0", func(c *Config) { c.Files = []File{{Path: "/data0/x"}} }, "under /data0", UnitFile("/data0/x")},
		{"ssh host key", func(c *Config) { c.Files = []File{{Path: "/etc/ssh/ssh_host_ed25519_key"}} }, "generated on the host, never sent", UnitFile("/etc/ssh/ssh_host_ed25519_key")},
		{"machine-id", func(c *Config) { c.Files = []File{{Path: "/etc/machine-id"}} }, "written by hnboot itself", UnitFile("/etc/machine-id")},
		{"networkd file", func(c *Config) { c.Files = []File{{Path: "/etc/systemd/network/10-hnboot.network"}} }, "a networkd file hnboot writes", UnitFile("/etc/systemd/network/10-hnboot.network")},
		{"newline in path", func(c *Config) { c.Files = []File{{Path: "/etc/a\nb"}} }, "not one line", UnitFile("/etc/a\nb")},
		{"setuid", func(c *Config) { c.Files = []File{{Path: "/usr/local/bin/x", Mode: "4755"}} }, `files[/usr/local/bin/x].mode "4755" (for /usr/local/bin/x): only permission bits`, UnitFile("/usr/local/bin/x")},
		{"mode", func(c *Config) { c.Files = []File{{Path: "/etc/x", Mode: "rw-r--r--"}} }, "not an octal mode", UnitFile("/etc/x")},
		{"owner", func(c *Config) { c.Files = []File{{Path: "/etc/x", Owner: "root;rm -rf /"}} }, "want user or user:group", UnitFile("/etc/x")},
		{"file too big", func(c *Config) { c.Files = []File{{Path: "/etc/x", Content: strings.Repeat("x", MaxFileBytes+1)}} }, "over the limit of 262144", UnitFile("/etc/x")},
		{"file twice", func(c *Config) { c.Files = []File{{Path: "/etc/x"}, {Path: "/etc/x"}} }, "listed twice", UnitFile("/etc/x")},
		{"binary content", func(c *Config) { c.Files = []File{{Path: "/etc/x", Content: "\xff\xfe"}} }, "not UTF-8", UnitFile("/etc/x")},
		{"state dir", func(c *Config) { c.StateDirs = []string{"/proc/x"} }, `state_dirs[0] "/proc/x"`, UnitStateDirs},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base()
			c.edit(&cfg)
			got, problems := cfg.Validate("h1")
			if len(problems) != 1 {
				t.Fatalf("Validate() problems = %q, want one", problems)
			}
			p := problems[0]
			if !strings.Contains(p.String(), c.want) || p.Host != "h1" || p.Unit() != c.unit {
				t.Errorf("Validate() problem = %q (unit %q), want it to contain %q (unit %q)", p.String(), p.Unit(), c.want, c.unit)
			}
			if c.unit != UnitHostname && got.Hostname != "h1" {
				t.Errorf("Validate() dropped the hostname over a %s problem", c.unit)
			}
			// The refused unit is gone from the result.
			if again, ps := got.Validate("h1"); len(ps) != 0 || !reflect.DeepEqual(again, got) {
				t.Errorf("Validate(Validate()) = %+v, %q, want the same, no problems", again, ps)
			}
		})
	}
}

func TestValidateLimits(t *testing.T) {
	var c Config
	for i := 0; i < MaxFiles+3; i++ {
		c.Files = append(c.Files, File{Path: "/etc/f" + strings.Repeat("x", i)})
	}
	got, problems := c.Validate("h")
	if len(got.Files) != MaxFiles || len(problems) != 3 {
		t.Errorf("Validate(%d files) kept %d with %d problems, want %d and 3", len(c.Files), len(got.Files), len(problems), MaxFiles)
	}
	big := strings.Repeat("x", MaxFileBytes)
	c = Config{}
	for i := 0; i < 6; i++ {
		c.Files = append(c.Files, File{Path: "/etc/big" + strings.Repeat("x", i), Content: big})
	}
	got, problems = c.Validate("h")
	if want := MaxFilesBytes / MaxFileBytes; len(got.Files) != want || len(problems) != 6-want || !strings.Contains(problems[0].String(), "together over the limit") {
		t.Errorf("Validate(6 files of %d bytes) kept %d, problems %q, want %d and the rest over the total", MaxFileBytes, len(got.Files), problems, want)
	}
}

func TestParse(t *testing.T) {
	// What fleet.DesiredHost looks like: the config's fields among others.
	body := `{"mac":"52:54:00:12:34:56","hostname":"web-07","image":{"name":"web","version":"2","digest":"sha256:x"},
		"source":"group web","network":{"interface":"eth0","addresses":["192.0.2.17/24"],"gateway":"192.0.2.1","dns":"192.0.2.53"},
		"identity":{"certname":"web-07.example.com","bad key":"x"},"files":[{"path":"/etc/motd","content":"hi\n"}],"future":{"x":1}}`
	got, problems, err := Parse(strings.NewReader(body), "52:54:00:12:34:56")
	want := Config{Hostname: "web-07",
		Network:  Network{Interface: "eth0", Addresses: []string{"192.0.2.17/24"}, Gateway: []string{"192.0.2.1"}, DNS: []string{"192.0.2.53"}},
		Identity: map[string]string{"certname": "web-07.example.com"},
		Files:    []File{{Path: "/etc/motd", Mode: "0644", Content: "hi\n"}}}
	if err != nil || !reflect.DeepEqual(got, want) || len(problems) != 1 || !strings.Contains(problems[0].String(), `52:54:00:12:34:56: identity "bad key"`) {
		t.Errorf("Parse() = %+v, %q, %v\nwant %+v, one problem naming the key", got, problems, err, want)
	}

	// The shape imaged served before: ip, string gateway and dns.
	got, problems, err = Parse(strings.NewReader(`{"hostname":"a","network":{"ip":"10.0.0.5/24","gateway":"10.0.0.1","dns":["10.0.0.2"],"interface":"eth0"}}`), "a")
	if err != nil || len(problems) != 0 || !reflect.DeepEqual(got.Network, Network{Interface: "eth0", Addresses: []string{"10.0.0.5/24"}, Gateway: []string{"10.0.0.1"}, DNS: []string{"10.0.0.2"}}) {
		t.Errorf("Parse(old shape) = %+v, %q, %v", got, problems, err)
	}

	for _, bad := range []string{"", "nope", `{"hostname": 7}`, `{"network":{"gateway":7}}`, `{"files":` + strings.Repeat(" ", MaxBytes) + `[]}`} {
		if _, _, err := Parse(strings.NewReader(bad), "h"); err == nil {
			t.Errorf("Parse(%.40q) error = nil, want one", bad)
		}
	}

	// Marshal and Parse round-trip.
	full := Config{Hostname: "h", Network: Network{Bond: &Bond{Name: "bond0", Mode: "802.3ad", Members: []string{"eth0", "eth1"}}, VLAN: &VLAN{ID: 5}, MTU: 9000, DHCP: true},
		Identity: map[string]string{"k": "v"}, Files: []File{{Path: "/etc/x", Mode: "0600", Owner: "1:2", Content: "<&>"}}, StateDirs: []string{"/srv"}}
	round, problems, err := Parse(strings.NewReader(string(full.Marshal())), "h")
	if err != nil || len(problems) != 0 || !reflect.DeepEqual(round, full) {
		t.Errorf("Parse(Marshal()) = %+v, %q, %v, want %+v", round, problems, err, full)
	}
	if strings.Contains(string(full.Marshal()), `\u003c`) {
		t.Errorf("Marshal() escapes HTML: %s", full.Marshal())
	}
}
