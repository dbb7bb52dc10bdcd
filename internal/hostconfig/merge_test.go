package hostconfig

import (
	"reflect"
	"strings"
	"testing"
)

func TestMerge(t *testing.T) {
	kernel := Layer{Kernel, Config{Hostname: "from-kernel"}}
	imaged := Layer{Imaged, Config{Hostname: "from-imaged",
		Network: Network{Bond: &Bond{Name: "bond0", Mode: "802.3ad", Members: []string{"eno1", "eno2"}}, MTU: 9000,
			Addresses: []string{"10.0.0.5/24"}, Gateway: []string{"10.0.0.1"}, DNS: []string{"10.0.0.2"}},
		Identity: map[string]string{"certname": "imaged.example.com"},
		Files:    []File{{Path: "/etc/b", Mode: "0644", Content: "imaged"}}}}
	cache := Layer{Cache, Config{Hostname: "cached", Network: Network{Interface: "eth9", Addresses: []string{"10.9.9.9/24"}, Search: []string{"cached.example.com"}},
		Identity: map[string]string{"certname": "cached", "osd": "7"},
		Files:    []File{{Path: "/etc/b", Mode: "0644", Content: "cache"}, {Path: "/etc/a", Mode: "0644", Content: "cache"}}}}
	hostconf := Layer{HostConf, Config{StateDirs: []string{"/var/lib/x"}}}
	defaults := Layer{Default, Defaults("52:54:00:12:34:56")}

	got, origins := Merge(kernel, imaged, cache, hostconf, defaults)
	want := Config{Hostname: "from-kernel",
		Network: Network{Bond: &Bond{Name: "bond0", Mode: "802.3ad", Members: []string{"eno1", "eno2"}}, MTU: 9000,
			Addresses: []string{"10.0.0.5/24"}, Gateway: []string{"10.0.0.1"}, DNS: []string{"10.0.0.2"}, Search: []string{"cached.example.com"}},
		Identity:  map[string]string{"certname": "imaged.example.com", "osd": "7"},
		Files:     []File{{Path: "/etc/a", Mode: "0644", Content: "cache"}, {Path: "/etc/b", Mode: "0644", Content: "imaged"}},
		StateDirs: []string{"/var/lib/x"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Merge() = %+v\nwant %+v", got, want)
	}
	var lines []string
	for _, o := range origins {
		lines = append(lines, o.String())
	}
	wantLines := []string{
		"hostname from-kernel (from kernel command line)",
		"network.link bond0 (802.3ad of eno1 eno2) (from imaged)",
		"network.mtu 9000 (from imaged)",
		"network.addressing 10.0.0.5/24 via 10.0.0.1 (from imaged)",
		"network.dns 10.0.0.2 (from imaged)",
		"network.search cached.example.com (from cache)",
		"identity.certname imaged.example.com (from imaged)",
		"identity.osd 7 (from cache)",
		"files[/etc/a] 5 bytes (from cache)",
		"files[/etc/b] 6 bytes (from imaged)",
		"state_dirs /var/lib/x (from host.conf)",
	}
	if g, w := strings.Join(lines, "\n"), strings.Join(wantLines, "\n"); g != w {
		t.Errorf("Merge() origins =\n%s\nwant\n%s", g, w)
	}

	// Merge copies: changing its result changes no layer.
	got.Network.Bond.Members[0] = "changed"
	got.Identity["osd"] = "changed"
	if imaged.Config.Network.Bond.Members[0] != "eno1" || cache.Config.Identity["osd"] != "7" {
		t.Errorf("Merge() result shares memory with its layers")
	}
}

// The units of the network: what a higher layer sets replaces the lower
// layer's whole unit, never a part of it.
func TestMergeUnits(t *testing.T) {
	static := Network{Interface: "eth0", Addresses: []string{"10.9.9.9/24"}, Gateway: []string{"10.9.9.1"}}
	for _, c := range []struct {
		name       string
		high, low  Network
		want       Network
		wantSource map[string]Source
	}{
		{"ip=dhcp beats a static address, and its gateway goes with it",
			Network{DHCP: true}, static,
			Network{Interface: "eth0", DHCP: true},
			map[string]Source{UnitLink: Cache, UnitAddressing: Kernel}},
		{"an address without gateway does not take a lower gateway",
			Network{Addresses: []string{"192.0.2.5/24"}}, static,
			Network{Interface: "eth0", Addresses: []string{"192.0.2.5/24"}},
			map[string]Source{UnitLink: Cache, UnitAddressing: Kernel}},
		{"an interface replaces a bond and its VLAN",
			Network{Interface: "eth1"}, Network{Bond: &Bond{Members: []string{"a", "b"}}, VLAN: &VLAN{ID: 3}, MTU: 9000},
			Network{Interface: "eth1", MTU: 9000, DHCP: true},
			map[string]Source{UnitLink: Kernel, UnitMTU: Cache}},
		{"a lower layer's DNS stays under a higher addressing",
			Network{Addresses: []string{"192.0.2.5/24"}}, Network{DNS: []string{"192.0.2.53"}},
			Network{Addresses: []string{"192.0.2.5/24"}, DNS: []string{"192.0.2.53"}},
			map[string]Source{UnitAddressing: Kernel, UnitDNS: Cache}},
		{"nothing set is DHCP",
			Network{}, Network{},
			Network{DHCP: true},
			map[string]Source{}},
	} {
		got, origins := Merge(Layer{Kernel, Config{Network: c.high}}, Layer{Cache, Config{Network: c.low}})
		if !reflect.DeepEqual(got.Network, c.want) {
			t.Errorf("%s: Merge().Network = %+v, want %+v", c.name, got.Network, c.want)
		}
		src := map[string]Source{}
		for _, o := range origins {
			src[o.Unit] = o.Source
		}
		if !reflect.DeepEqual(src, c.wantSource) {
			t.Errorf("%s: Merge() sources = %v, want %v", c.name, src, c.wantSource)
		}
	}
}

func TestOnly(t *testing.T) {
	c := Config{Hostname: "h", Network: Network{Interface: "eth0", MTU: 1500, Addresses: []string{"10.0.0.5/24"}, DNS: []string{"10.0.0.2"}},
		Identity: map[string]string{"a": "1", "b": "2"}, Files: []File{{Path: "/etc/x"}, {Path: "/etc/y"}}}
	got := c.Only(map[string]bool{UnitAddressing: true, UnitIdentity("b"): true, UnitFile("/etc/y"): true})
	want := Config{Network: Network{Addresses: []string{"10.0.0.5/24"}}, Identity: map[string]string{"b": "2"}, Files: []File{{Path: "/etc/y"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Only() = %+v, want %+v", got, want)
	}
}

func TestDefaults(t *testing.T) {
	for in, want := range map[string]string{"52:54:00:12:34:56": "hn-525400123456", "AA-BB-CC-DD-EE-FF": "hn-aabbccddeeff", "": "hn-unknown", "zz": "hn-unknown"} {
		if got := Defaults(in); got.Hostname != want || !got.Network.DHCP {
			t.Errorf("Defaults(%q) = %+v, want hostname %s and DHCP", in, got, want)
		}
	}
}

func TestDefaultHostname(t *testing.T) {
	tests := map[string]string{"52:54:00:12:34:56": "hn-525400123456", "AA-BB-CC-DD-EE-FF": "hn-aabbccddeeff", "": "hn-unknown", "zz": "hn-unknown"}
	for in, want := range tests {
		if got := DefaultHostname(in); got != want {
			t.Errorf("DefaultHostname(%q) = %q, want %q", in, got, want)
		}
	}
}
