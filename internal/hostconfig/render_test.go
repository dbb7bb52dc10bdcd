package hostconfig

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the rendering (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", p, got, want)
	}
}

func dump(outs []Output) string {
	var b strings.Builder
	for _, o := range outs {
		fmt.Fprintf(&b, "==> %s (%04o) <==\n%s\n", o.Path, o.Mode, o.Content)
	}
	return b.String()
}

// One network per case; each renders for networkd and for ifupdown.
var renderCases = []struct {
	name string
	n    Network
}{
	{"dhcp-any", Network{DHCP: true}},
	{"static", Network{Interface: "eth0", Addresses: []string{"192.0.2.17/24"}, Gateway: []string{"192.0.2.1"},
		DNS: []string{"192.0.2.53", "192.0.2.54"}, Search: []string{"example.com", "corp.example.com"}}},
	{"static-mac-dualstack", Network{Interface: "52:54:00:12:34:56", MTU: 1500,
		Addresses: []string{"192.0.2.17/24", "2001:db8::17/64", "192.0.2.18/24"}, Gateway: []string{"192.0.2.1", "fe80::1"}, DNS: []string{"2001:db8::53"}}},
	{"dhcp-mtu", Network{Interface: "eno1", MTU: 9000, DHCP: true}},
	{"vlan", Network{Interface: "eno1", VLAN: &VLAN{ID: 42}, Addresses: []string{"10.42.0.7/16"}, Gateway: []string{"10.42.0.1"}}},
	{"bond", Network{Bond: &Bond{Name: "bond0", Mode: "802.3ad", Members: []string{"eno1", "eno2"}}, Addresses: []string{"10.1.0.7/24"}, Gateway: []string{"10.1.0.1"}}},
	{"bond-vlan-mtu-mac", Network{Bond: &Bond{Name: "bond1", Mode: "active-backup", Members: []string{"52:54:00:aa:00:01", "52:54:00:aa:00:02"}},
		VLAN: &VLAN{ID: 120}, MTU: 9000, DHCP: true}},
}

func TestRenderGolden(t *testing.T) {
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			n, problems := Config{Network: c.n}.Validate("h")
			if len(problems) > 0 {
				t.Fatalf("case does not validate: %q", problems)
			}
			golden(t, c.name+".networkd.golden", dump(Networkd(n.Network)))
			outs, err := Ifupdown(n.Network, "52:54:00:12:34:99")
			if err != nil {
				t.Fatal(err)
			}
			golden(t, c.name+".ifupdown.golden", dump(outs))
		})
	}
}

func TestRenderEnv(t *testing.T) {
	c := Config{Hostname: "web-07", Network: Network{Bond: &Bond{Name: "bond0", Mode: "802.3ad", Members: []string{"eno1", "eno2"}}, VLAN: &VLAN{ID: 42},
		MTU: 9000, Addresses: []string{"192.0.2.17/24", "2001:db8::17/64"}, Gateway: []string{"192.0.2.1"}, DNS: []string{"192.0.2.53"}, Search: []string{"example.com"}},
		Identity: map[string]string{"certname": "web-07.example.com", "rack": "it's r7", "storage_id": "osd-7"}}
	resolv, ok := ResolvConf(c.Network)
	if !ok {
		t.Fatalf("ResolvConf(static with DNS) = _, false")
	}
	golden(t, "env.golden", dump([]Output{
		{Path: "/etc/hnboot/network.env", Mode: 0o644, Content: NetworkEnv(c)},
		{Path: "/etc/hnboot/identity.env", Mode: 0o644, Content: IdentityEnv(c.Identity)},
		{Path: "/etc/resolv.conf", Mode: 0o644, Content: resolv},
	}))
	if _, ok := ResolvConf(Network{DHCP: true, DNS: []string{"1.1.1.1"}}); ok {
		t.Errorf("ResolvConf(DHCP) = _, true, want false: DHCP brings its own servers")
	}
	if got := NetworkEnv(Config{Hostname: "h"}); !strings.Contains(got, "HN_IP='dhcp'\n") || !strings.Contains(got, "HN_DHCP='yes'\n") {
		t.Errorf("NetworkEnv(no network) = %q, want HN_IP='dhcp' and HN_DHCP='yes'", got)
	}
}

func TestIfupdownNeedsAName(t *testing.T) {
	if _, err := Ifupdown(Network{DHCP: true}, ""); err == nil {
		t.Errorf("Ifupdown(no interface, no boot MAC) error = nil, want one")
	}
	outs, err := Ifupdown(Network{DHCP: true}, "52:54:00:12:34:56")
	if err != nil || len(outs) != 2 || !strings.Contains(outs[0].Content, "iface hn525400123456 inet dhcp") {
		t.Errorf("Ifupdown(no interface, boot MAC) = %s, %v, want the boot NIC named hn525400123456", dump(outs), err)
	}
}
