package fleet

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/hostconfig"
)

const identityImages = `images:
  - name: ceph
    version: "18"
    digest: ` + d12 + `
    path: ceph-18.img
  - name: ceph
    version: "19"
    digest: ` + d13 + `
    path: ceph-19.img
`

// A storage group: a bond of two NICs by MAC under a VLAN with jumbo
// frames, a group gateway and DNS for its static hosts, an identity value
// and a templated file; hosts bring their address, their own identity
// values and one file over the group's.
const identityFleet = identityImages + `groups:
  - name: storage
    image: ceph@18
    network:
      bond:
        name: bond0
        mode: 802.3ad
        members: [52:54:00:aa:00:01, eno2]
      vlan: 120
      mtu: 9000
      gateway: 10.20.0.1
      dns: [10.20.0.53, 10.20.0.54]
      search: storage.example.com
    identity:
      cluster: prod-1
      rack: r1
    files:
      - path: /etc/ceph/node.conf
        mode: "0640"
        owner: root:ceph
        content: |
          [node]
          name = {{.Hostname}}
          addr = {{.IP}}
          cluster = {{.Identity.cluster}}
          id = {{.Identity.osd_id}}
          image = {{.Image.Name}} {{.Image.Version}}
      - path: /etc/motd
        content: "{{upper .Group}} node {{.Hostname}} ({{.MAC}})\n"
hosts:
  - mac: 52:54:00:aa:00:01
    hostname: osd-01
    group: storage
    network: {address: 10.20.0.11/24}
    identity: {osd_id: "11", rack: ""}
  - mac: 52:54:00:aa:00:02
    hostname: osd-02
    group: storage
    network:
      addresses: [10.20.0.12/24, "2001:db8::12/64"]
      gateway: [10.20.0.1, fe80::1]
      vlan: none
      interface: eth0
    identity: {osd_id: "12"}
    files:
      - path: /etc/motd
        mode: 644
        content: "osd-02, hand-made\n"
  - mac: 52:54:00:aa:00:03
    hostname: osd-03
    image: ceph@19
    network: {dhcp: true, mtu: 1500}
`

func loadString(t *testing.T, yaml string) (*Desired, string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "fleet.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := Load(dir)
	if err != nil {
		t.Fatalf("Load = %v", strings.ReplaceAll(err.Error(), dir+"/", ""))
	}
	return d, dir
}

func TestHostConfig(t *testing.T) {
	d, _ := loadString(t, identityFleet)
	for _, c := range []struct {
		host string
		want hostconfig.Config
	}{
		{"osd-01", hostconfig.Config{Hostname: "osd-01",
			Network: hostconfig.Network{
				Bond: &hostconfig.Bond{Name: "bond0", Mode: "802.3ad", Members: []string{"52:54:00:aa:00:01", "eno2"}},
				VLAN: &hostconfig.VLAN{ID: 120}, MTU: 9000,
				Addresses: []string{"10.20.0.11/24"}, Gateway: []string{"10.20.0.1"},
				DNS: []string{"10.20.0.53", "10.20.0.54"}, Search: []string{"storage.example.com"}},
			Identity: map[string]string{"cluster": "prod-1", "osd_id": "11"}, // rack: "" removed the group's
			Files: []hostconfig.File{
				{Path: "/etc/ceph/node.conf", Mode: "0640", Owner: "root:ceph",
					Content: "[node]\nname = osd-01\naddr = 10.20.0.11\ncluster = prod-1\nid = 11\nimage = ceph 18\n"},
				{Path: "/etc/motd", Mode: "0644", Content: "STORAGE node osd-01 (52:54:00:aa:00:01)\n"},
			}}},
		// Its own interface replaces the group's bond, vlan: none its
		// VLAN; its gateways replace the group's.
		{"osd-02", hostconfig.Config{Hostname: "osd-02",
			Network: hostconfig.Network{Interface: "eth0", MTU: 9000,
				Addresses: []string{"10.20.0.12/24", "2001:db8::12/64"}, Gateway: []string{"10.20.0.1", "fe80::1"},
				DNS: []string{"10.20.0.53", "10.20.0.54"}, Search: []string{"storage.example.com"}},
			Identity: map[string]string{"cluster": "prod-1", "osd_id": "12", "rack": "r1"},
			Files: []hostconfig.File{
				{Path: "/etc/ceph/node.conf", Mode: "0640", Owner: "root:ceph",
					Content: "[node]\nname = osd-02\naddr = 10.20.0.12\ncluster = prod-1\nid = 12\nimage = ceph 18\n"},
				{Path: "/etc/motd", Mode: "0644", Content: "osd-02, hand-made\n"},
			}}},
		// No group: only what the host says; nothing about its link.
		{"osd-03", hostconfig.Config{Hostname: "osd-03", Network: hostconfig.Network{MTU: 1500, DHCP: true}}},
	} {
		h := d.FindHost(c.host)
		got, problems := d.HostConfig(h, d.HostImage(h))
		if len(problems) > 0 || !reflect.DeepEqual(got, c.want) {
			t.Errorf("HostConfig(%s) = %+v, %q\nwant %+v", c.host, got, problems, c.want)
		}
	}
	// A host the YAML says nothing of the network for leaves its link and
	// addressing to its command line, host.conf or the defaults.
	d2, _ := loadString(t, identityImages+"hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    image: ceph@18\n")
	got, _ := d2.HostConfig(d2.FindHost("h1"), nil)
	if !got.Network.IsZero() || got.Identity != nil || got.Files != nil {
		t.Errorf("HostConfig(no network, identity or files) = %+v, want the hostname only", got)
	}
}

func TestHostConfigErrorsNameFileAndLine(t *testing.T) {
	host := func(extra string) string {
		return identityImages + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    image: ceph@18\n" + extra
	}
	// Line 11 is the host entry; extra starts at line 14.
	for _, c := range []struct {
		name, yaml string
		want       []string
	}{
		{"bad cidr", host("    network: {address: 10.0.0.1/33}\n"), []string{`fleet.yaml:14: host h1: address "10.0.0.1/33": want an address with prefix length`}},
		{"gateway outside the subnet", host("    network:\n      address: 10.0.0.5/24\n      gateway: 10.0.1.1\n"),
			[]string{`fleet.yaml:11: host h1: network.gateway[0] "10.0.1.1" (for /etc/systemd/network): outside the host's subnets (10.0.0.0/24)`}},
		{"group gateway outside a host's subnet", identityImages + "groups:\n  - name: g\n    image: ceph@18\n    network: {gateway: 10.9.9.1}\nhosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    group: g\n    network: {address: 10.0.0.5/24}\n",
			[]string{`fleet.yaml:15: host h1: network.gateway[0] "10.9.9.1"`, "outside the host's subnets"}},
		{"bad vlan", host("    network: {interface: eth0, vlan: 4095}\n"), []string{`fleet.yaml:14: host h1: vlan "4095": want a VLAN id 1..4094`}},
		{"vlan on nothing", host("    network: {vlan: 7}\n"), []string{"fleet.yaml:11: host h1: network.vlan", "a VLAN needs an interface or a bond"}},
		{"bond of one", host("    network:\n      bond: {members: [eth0]}\n"), []string{"fleet.yaml:15: host h1: bond of 1 members: a bond needs 2 to 16"}},
		{"bond without members", host("    network:\n      bond: {mode: 802.3ad}\n"), []string{"fleet.yaml:15: host h1: bond without members"}},
		{"bond mode", host("    network:\n      bond: {mode: lacp, members: [a, b]}\n"), []string{`fleet.yaml:15: host h1: bond mode "lacp": want one of balance-rr, active-backup`}},
		{"interface and bond", host("    network:\n      interface: eth0\n      bond: {members: [a, b]}\n"), []string{"fleet.yaml:16: host h1: set interface or bond, not both"}},
		{"bad interface", host("    network: {interface: \"eth0\\nName=*\"}\n"), []string{`fleet.yaml:14: host h1: interface "eth0\nName=*": not an interface name`}},
		{"mtu", host("    network: {mtu: 100000}\n"), []string{`fleet.yaml:14: host h1: mtu "100000": want a number of bytes 576..65535`}},
		{"dns", host("    network: {dns: [1.1.1.1, \"8.8.8.8\\nnameserver 6.6.6.6\"]}\n"), []string{`fleet.yaml:14: host h1: dns "8.8.8.8\nnameserver 6.6.6.6": not an IP address`}},
		{"search", host("    network: {search: [\"a b\"]}\n"), []string{`fleet.yaml:14: host h1: search domain "a b"`}},
		{"dhcp and address", host("    network: {dhcp: true, address: 10.0.0.5/24}\n"), []string{`fleet.yaml:14: host h1: dhcp: true and address: set one (dhcp, or static addresses)`}},
		{"dhcp false without address", host("    network: {dhcp: false}\n"), []string{"fleet.yaml:11: host h1: dhcp: false, but no address"}},
		{"address in a group", identityImages + "groups:\n  - name: g\n    image: ceph@18\n    network: {address: 10.0.0.5/24}\n", []string{"fleet.yaml:13: group g: address: an address belongs to one host"}},
		{"unknown network key", host("    network: {gw: 10.0.0.1}\n"), []string{`fleet.yaml:14: unknown key "gw"`}},
		{"identity key", host("    identity: {Cert-Name: x}\n"), []string{`fleet.yaml:14: host h1: identity key "Cert-Name": want a lower-case letter`}},
		{"identity newline", host("    identity: {certname: \"a\\nb\"}\n"), []string{"fleet.yaml:14: host h1: identity certname: control character U+000A"}},
		{"identity not a value", host("    identity: {certname: [a, b]}\n"), []string{"fleet.yaml:14: host h1: identity certname: want a single value"}},
		{"file path ..", host("    files:\n      - path: /etc/../root/.ssh/authorized_keys\n        content: x\n"), []string{`fleet.yaml:15: host h1: file path "/etc/../root/.ssh/authorized_keys": contains ..`}},
		{"file relative", host("    files:\n      - path: etc/motd\n        content: x\n"), []string{"fleet.yaml:15: host h1: file path \"etc/motd\": not an absolute path"}},
		{"file in /proc", host("    files:\n      - path: /proc/sys/kernel/core_pattern\n        content: x\n"), []string{"fleet.yaml:15: host h1: file path \"/proc/sys/kernel/core_pattern\": under /proc"}},
		{"file on hostpart", host("    files:\n      - path: /hostpart/x\n        content: x\n"), []string{"under /hostpart"}},
		{"file on the ESP", host("    files:\n      - path: /boot/loader/grub/grub.cfg\n        content: x\n"), []string{"under /boot/loader"}},
		{"ssh host key", host("    files:\n      - path: /etc/ssh/ssh_host_ed25519_key\n        content: x\n"), []string{"never sent"}},
		{"setuid", host("    files:\n      - path: /usr/local/bin/x\n        mode: \"4755\"\n        content: x\n"), []string{`fleet.yaml:16: host h1: file /usr/local/bin/x: mode "4755": only permission bits`}},
		{"owner", host("    files:\n      - path: /etc/x\n        owner: \"root; rm -rf /\"\n        content: x\n"), []string{"fleet.yaml:16: host h1: file /etc/x: owner"}},
		{"content missing", host("    files:\n      - path: /etc/x\n"), []string{"fleet.yaml:15: host h1: file /etc/x: content missing"}},
		{"file twice", host("    files:\n      - path: /etc/x\n        content: a\n      - path: /etc/x\n        content: b\n"), []string{"fleet.yaml:17: host h1: file /etc/x: listed twice (first at "}},
		{"unknown template field", host("    files:\n      - path: /etc/x\n        content: |\n          ok\n          {{.Hostnme}}\n"),
			[]string{`fleet.yaml:18: file /etc/x for host h1: unknown field .Hostnme (there are .Hostname .MAC`}},
		{"unknown identity key in a template", host("    files:\n      - path: /etc/x\n        content: \"{{.Identity.certname}}\"\n"),
			[]string{`fleet.yaml:16: file /etc/x for host h1: <.Identity.certname>: the host has no identity value certname`}},
		{"group template, each host", identityImages + "groups:\n  - name: g\n    image: ceph@18\n    files:\n      - path: /etc/x\n        content: |\n          {{.Identity.id}}\nhosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    group: g\n    identity: {id: \"1\"}\n  - mac: 52:54:00:00:00:02\n    hostname: h2\n    group: g\n",
			[]string{`fleet.yaml:16: file /etc/x for host h2: <.Identity.id>: the host has no identity value id`}},
		{"template syntax", host("    files:\n      - path: /etc/x\n        content: |\n          a\n          b {{if}}\n"), []string{"fleet.yaml:18: host h1: file /etc/x: template: missing value for if"}},
		{"unknown function", host("    files:\n      - path: /etc/x\n        content: '{{env \"HOME\"}}'\n"), []string{`fleet.yaml:16: host h1: file /etc/x: template: function "env" not defined`}},
		{"no exec either", host("    files:\n      - path: /etc/x\n        content: '{{exec \"id\"}}'\n"), []string{`function "exec" not defined`}},
		{"call", host("    files:\n      - path: /etc/x\n        content: '{{call .Hostname}}'\n"), []string{"call is not available"}},
		{"define", host("    files:\n      - path: /etc/x\n        content: '{{define \"a\"}}{{template \"a\"}}{{end}}{{template \"a\"}}'\n"), []string{"define and block are not available"}},
		{"template calls itself", host("    files:\n      - path: /etc/x\n        content: |\n          line\n          {{template \"t\"}}\n"), []string{"fleet.yaml:18: host h1: file /etc/x: template: {{template}} is not available"}},
		{"output too large", host("    files:\n      - path: /etc/x\n        content: '{{printf \"%02000000d\" 0}}'\n"), []string{"file /etc/x for host h1", "output over 262144 bytes"}},
		{"answer too large as JSON", host("    files:\n      - path: /etc/a\n        content: '" + strings.Repeat("<", 130000) + "'\n" +
			"      - path: /etc/b\n        content: '" + strings.Repeat("<", 130000) + "'\n"),
			[]string{"fleet.yaml:11: host h1: configuration of 1560", "bytes as JSON, over the limit of 786432 (hosts read at most 1048576 of their answer)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "fleet.yaml"), []byte(c.yaml), 0o644)
			_, err := Load(dir)
			if err == nil {
				t.Fatalf("Load = nil, want errors %q", c.want)
			}
			msg := strings.ReplaceAll(err.Error(), dir+"/", "")
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("Load error = %q\nwant it to contain %q", msg, w)
				}
			}
		})
	}
}

// What the host fetches: the configuration inline in DesiredHost, which
// hostconfig.Parse reads as it is, and the fields the agent reads
// unchanged. An assignment through the API re-renders .Image.
func TestDesiredHostCarriesConfig(t *testing.T) {
	_, dir := loadString(t, identityFleet)
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte("alice "+aliceToken+"\n"), 0o600)
	f, err := New(Options{Dir: dir, DB: "sqlite://" + filepath.Join(t.TempDir(), "fleet.db"), TokenFile: tokens, PollInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	e := &env{dir: dir, f: f, srv: srv}

	code, body := e.call(t, "GET", "/api/hosts/52:54:00:aa:00:01/desired", "", nil)
	if code != 200 {
		t.Fatalf("GET desired = %d %s", code, body)
	}
	var agentView struct {
		MAC, Hostname string
		Image         struct{ Name, Version, Digest string }
	}
	if err := json.Unmarshal(body, &agentView); err != nil || agentView.Hostname != "osd-01" || agentView.Image.Digest != d12 || agentView.MAC != "52:54:00:aa:00:01" {
		t.Errorf("GET desired, as the agent reads it = %+v, %v", agentView, err)
	}
	got, problems, err := hostconfig.Parse(strings.NewReader(string(body)), "osd-01")
	d := f.Desired()
	want, _ := d.HostConfig(d.FindHost("osd-01"), d.Image("ceph@18"))
	if err != nil || len(problems) > 0 || !reflect.DeepEqual(got, want) {
		t.Errorf("hostconfig.Parse(GET desired) = %+v, %q, %v\nwant %+v", got, problems, err, want)
	}

	if code, b := e.call(t, "POST", "/api/assign", aliceToken, map[string]string{"host": "osd-01", "image": "ceph@19"}); code != 200 {
		t.Fatalf("assign = %d %s", code, b)
	}
	_, body = e.call(t, "GET", "/api/hosts/52:54:00:aa:00:01/desired", "", nil)
	got, _, _ = hostconfig.Parse(strings.NewReader(string(body)), "osd-01")
	if len(got.Files) == 0 || !strings.Contains(got.Files[0].Content, "image = ceph 19\n") {
		t.Errorf("after assigning ceph@19, files = %+v, want the template rendered with image ceph 19", got.Files)
	}
}
