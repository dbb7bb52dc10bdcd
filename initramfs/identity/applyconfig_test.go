package identity

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/hnboot/hnboot/internal/hostconfig"
)

// debianRoot is an image root with ifupdown (and networkd not enabled),
// users and groups, and a stale hnboot networkd file.
func debianRoot(t *testing.T, sourcesInterfacesD bool) string {
	root := imageRoot(t)
	for p, content := range map[string]string{
		"etc/passwd":             "root:x:0:0:root:/root:/bin/bash\nceph:x:64045:64045::/var/lib/ceph:/usr/sbin/nologin\n",
		"etc/group":              "root:x:0:\nadm:x:4:\nceph:x:64045:\n",
		"usr/sbin/ifup":          "#!/bin/sh\n",
		"etc/network/interfaces": "auto lo\niface lo inet loopback\n",
		"etc/systemd/network/10-hnboot-old.netdev": "[NetDev]\nName=stale\n",
		"etc/systemd/network/99-image.network":     "[Match]\nName=*\n",
	} {
		if p == "etc/network/interfaces" && sourcesInterfacesD {
			content += "source /etc/network/interfaces.d/*\n"
		}
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(content), 0o644)
	}
	os.Symlink("usr/sbin", filepath.Join(root, "sbin"))
	return root
}

func listDir(t *testing.T, dir string) []string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func TestApplyConfig(t *testing.T) {
	c := hostconfig.Config{Hostname: "osd-01",
		Network: hostconfig.Network{Bond: &hostconfig.Bond{Name: "bond0", Mode: "802.3ad", Members: []string{"52:54:00:aa:00:01", "eno2"}},
			VLAN: &hostconfig.VLAN{ID: 120}, MTU: 9000, Addresses: []string{"10.20.0.11/24"}, Gateway: []string{"10.20.0.1"},
			DNS: []string{"10.20.0.53"}, Search: []string{"storage.example.com"}},
		Identity: map[string]string{"cluster": "prod-1", "storage_id": "osd-1"},
		Files: []hostconfig.File{
			{Path: "/etc/ceph/node.conf", Mode: "0640", Owner: "root:ceph", Content: "[node]\n"},
			{Path: "/etc/ceph/keyring.hint", Mode: "0600", Owner: "ceph", Content: "x\n"},
			{Path: "/etc/motd", Content: "hello\n"},
			{Path: "/etc/nobody", Owner: "nobody", Content: "never\n"},
		}}
	root := debianRoot(t, false)
	res, err := ApplyConfig(root, Identity{}, c, "52:54:00:aa:00:09")
	if err != nil || len(res.Problems) != 1 || res.Problems[0] != `file /etc/nobody: owner nobody: no "nobody" in the image's /etc/passwd; not written` {
		t.Errorf("ApplyConfig() = %q, %v, want one problem for /etc/nobody's unknown owner and no error", res.Problems, err)
	}
	if res.Network != "networkd and ifupdown" {
		t.Errorf("ApplyConfig(ifupdown image).Network = %q, want networkd and ifupdown", res.Network)
	}
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "does not source /etc/network/interfaces.d") {
		t.Errorf("ApplyConfig().Notes = %q, want one saying interfaces.d is not read", res.Notes)
	}
	if got, want := strings.Join(res.Files, " "), "/etc/ceph/node.conf /etc/ceph/keyring.hint /etc/motd"; got != want {
		t.Errorf("ApplyConfig().Files = %s, want %s", got, want)
	}

	// Every networkd and ifupdown file the renderers make, and the
	// image's own files except the stale hnboot one.
	want := []string{"10-hnboot-bond0-member1.network", "10-hnboot-bond0-member2.network", "10-hnboot-bond0.netdev", "10-hnboot-bond0.network",
		"10-hnboot-hn525400aa0001.link", "10-hnboot-vlan120.netdev", "10-hnboot.network", "99-image.network"}
	if got := listDir(t, filepath.Join(root, "etc/systemd/network")); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("/etc/systemd/network = %q, want %q", got, want)
	}
	for _, o := range hostconfig.Networkd(c.Network) {
		if got := read(t, filepath.Join(root, o.Path)); got != o.Content {
			t.Errorf("%s = %q, want hostconfig.Networkd's %q", o.Path, got, o.Content)
		}
	}
	ifup, _ := hostconfig.Ifupdown(c.Network, "52:54:00:aa:00:09")
	if got := read(t, filepath.Join(root, "etc/network/interfaces.d/hnboot")); got != ifup[0].Content {
		t.Errorf("interfaces.d/hnboot = %q, want %q", got, ifup[0].Content)
	}
	for p, want := range map[string]string{
		"etc/hnboot/identity.env": hostconfig.IdentityEnv(c.Identity),
		"etc/hnboot/storage-id":   "osd-1\n",
		"etc/resolv.conf":         "# written by hnboot from the host configuration\nnameserver 10.20.0.53\nsearch storage.example.com\n",
		"etc/motd":                "hello\n",
		"etc/hostname":            "osd-01\n",
	} {
		if got := read(t, filepath.Join(root, p)); got != want {
			t.Errorf("/%s = %q, want %q", p, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "etc/hnboot/cm-id")); err == nil {
		t.Errorf("/etc/hnboot/cm-id written without a cm_id value")
	}
	if _, err := os.Stat(filepath.Join(root, "etc/nobody")); err == nil {
		t.Errorf("/etc/nobody written although its owner is unknown")
	}
	for _, f := range []struct {
		path     string
		mode     os.FileMode
		uid, gid uint32
	}{
		{"etc/ceph/node.conf", 0o640, 0, 64045},
		{"etc/ceph/keyring.hint", 0o600, 64045, 0},
		{"etc/motd", 0o644, uint32(os.Geteuid()), uint32(os.Getegid())},
	} {
		fi, err := os.Stat(filepath.Join(root, f.path))
		if err != nil {
			t.Errorf("stat /%s: %v", f.path, err)
			continue
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("/%s mode = %v, want %v", f.path, fi.Mode().Perm(), f.mode)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if os.Geteuid() == 0 && (st.Uid != f.uid || st.Gid != f.gid) {
			t.Errorf("/%s owner = %d:%d, want %d:%d", f.path, st.Uid, st.Gid, f.uid, f.gid)
		}
	}
}

// A host.conf value ApplyConfig is stricter about than ParseHostConf (a
// network address as the host's, a gateway off its subnet) is a problem
// to log, not an error that fails the boot, and the rest is written.
func TestApplyConfigHostConfValues(t *testing.T) {
	root := imageRoot(t)
	hc := HostConf{Hostname: "h", IP: "10.0.0.0/24", Gateway: "192.168.1.1", Interface: "eth0"}
	res, err := ApplyConfig(root, Identity{}, hc.Config(), "")
	if err != nil || len(res.Problems) == 0 {
		t.Errorf("ApplyConfig(network address, gateway elsewhere) = %+v, %v, want problems, not an error", res, err)
	}
	if got := read(t, filepath.Join(root, "etc/hostname")); got != "h\n" {
		t.Errorf("ApplyConfig() /etc/hostname = %q, want h", got)
	}
}

// On an ifupdown image, DHCP on any NIC is left to the image's own
// configuration.
func TestApplyConfigIfupdownDefault(t *testing.T) {
	root := debianRoot(t, true)
	res, err := ApplyConfig(root, Identity{}, hostconfig.Defaults(mac), mac)
	if err != nil || res.Network != "networkd" || len(res.Notes) > 0 || len(res.Problems) > 0 {
		t.Errorf("ApplyConfig(defaults, ifupdown image) = %+v, %v, want networkd only", res, err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/network/interfaces.d/hnboot")); err == nil {
		t.Errorf("ApplyConfig(defaults) wrote an ifupdown stanza beside the image's own")
	}
}

func TestApplyConfigNetworkdImage(t *testing.T) {
	root := debianRoot(t, true)
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	os.MkdirAll(wants, 0o755)
	os.Symlink("/lib/systemd/system/systemd-networkd.service", filepath.Join(wants, "systemd-networkd.service"))
	os.MkdirAll(filepath.Join(root, "etc/network/interfaces.d"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/network/interfaces.d/hnboot"), []byte("auto stale\n"), 0o644)

	res, err := ApplyConfig(root, Identity{}, hostconfig.Config{Hostname: "h", Network: hostconfig.Network{Interface: "eno1", DHCP: true}}, "")
	if err != nil || res.Network != "networkd" || len(res.Notes) > 0 || len(res.Problems) > 0 {
		t.Errorf("ApplyConfig(networkd enabled) = %+v, %v, want networkd only, no notes", res, err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/network/interfaces.d/hnboot")); err == nil {
		t.Errorf("ApplyConfig(networkd enabled) left an ifupdown file: two managers for one NIC")
	}
	if got := read(t, filepath.Join(root, "etc/hnboot/identity.env")); !strings.HasPrefix(got, "# written by hnboot") || strings.Contains(got, "HN_") {
		t.Errorf("identity.env without identity values = %q, want the header only", got)
	}
}

// Values that got this far are validated once more: a refused one is in
// the error, and everything else is still written.
func TestApplyConfigRefusesHostileValues(t *testing.T) {
	root := imageRoot(t)
	outside := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(outside, []byte("untouched"), 0o644)
	os.Symlink(outside, filepath.Join(root, "etc/motd")) // the image's symlink out of the root
	c := hostconfig.Config{Hostname: "h\nevil",
		Network:  hostconfig.Network{DNS: []string{"1.1.1.1\nnameserver 6.6.6.6"}, Interface: "eth0"},
		Identity: map[string]string{"ok": "fine", "bad": "a\nHN_OK=pwned"},
		Files: []hostconfig.File{{Path: "/etc/../../tmp/x", Content: "x"}, {Path: "/proc/sys/kernel/core_pattern", Content: "|/bin/sh"},
			{Path: "/etc/ssh/ssh_host_ed25519_key", Content: "not yours"}, {Path: "/etc/motd", Content: "through the link?\n"}}}
	res, err := ApplyConfig(root, Identity{}, c, "52:54:00:12:34:56")
	if err != nil {
		t.Errorf("ApplyConfig(hostile) error = %v, want none: refusing is not failing", err)
	}
	all := strings.Join(res.Problems, "\n")
	for _, w := range []string{"refused 52:54:00:12:34:56: hostname", "refused 52:54:00:12:34:56: network.dns[0]", "identity.bad",
		"files[0].path", "files[1].path", "files[2].path"} {
		if !strings.Contains(all, w) {
			t.Errorf("ApplyConfig(hostile).Problems = %s\nwant one naming %q", all, w)
		}
	}
	if got := read(t, outside); got != "untouched" {
		t.Errorf("ApplyConfig() wrote through the image's symlink: %q", got)
	}
	if got := read(t, filepath.Join(root, "etc/motd")); got != "through the link?\n" {
		t.Errorf("/etc/motd = %q, want the file, replacing the symlink", got)
	}
	if got := read(t, filepath.Join(root, "etc/hnboot/identity.env")); strings.Contains(got, "pwned") || !strings.Contains(got, "HN_OK='fine'\n") {
		t.Errorf("identity.env = %q, want HN_OK='fine' only", got)
	}
	if got := read(t, filepath.Join(root, "etc/systemd/network/10-hnboot.network")); !strings.Contains(got, "Name=eth0\n") || strings.Contains(got, "6.6.6.6") {
		t.Errorf("10-hnboot.network = %q, want eth0 and no injected server", got)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/hostname")); err == nil {
		t.Errorf("/etc/hostname written from a refused hostname")
	}
	if _, err := os.Stat(filepath.Join(root, "etc/ssh/ssh_host_ed25519_key")); err == nil {
		t.Errorf("an SSH host key was written from the configuration")
	}
}
