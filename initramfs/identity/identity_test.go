package identity

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/hostconfig"
	"golang.org/x/crypto/ssh"
)

func TestParseHostConf(t *testing.T) {
	in := `# host.conf
hostname = node7.example.com
ip = 10.1.2.7/24
gateway=10.1.2.1
dns = 10.1.2.2, 10.1.2.3 1.1.1.1
interface = eno1
state_dir = /var/lib/docker
state_dir = /srv//www/
storage_id = osd-7
cm_id = node7.puppet
`
	got, err := ParseHostConf(strings.NewReader(in))
	want := HostConf{
		Hostname: "node7.example.com", IP: "10.1.2.7/24", Gateway: "10.1.2.1",
		DNS: []string{"10.1.2.2", "10.1.2.3", "1.1.1.1"}, Interface: "eno1",
		StateDirs: []string{"/var/lib/docker", "/srv/www"}, StorageID: "osd-7", ConfigMgmtID: "node7.puppet",
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ParseHostConf() = %+v, %v, want %+v, nil", got, err, want)
	}
}

func TestParseHostConfErrors(t *testing.T) {
	tests := []struct {
		in, wantErr string
	}{
		{"hostname = -bad", "line 1"},
		{"\n\nip = 10.0.0.1", "line 3"},
		{"ip = dhcp\ngateway = x", "line 2"},
		{"dns = 1.1.1.1 nope", "line 1"},
		{"state_dir = var/lib", "line 1"},
		{"state_dir = /a/../../etc", "line 1"},
		{"state_dir = /", "line 1"},
		{"interface = a/b", "line 1"},
		{"colour = blue", `line 1: unknown key "colour"`},
		{"just words", "line 1"},
	}
	for _, tt := range tests {
		_, err := ParseHostConf(strings.NewReader(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ParseHostConf(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
		}
	}
	// Good lines survive bad ones.
	hc, err := ParseHostConf(strings.NewReader("hostname = a\nbogus\nip = dhcp\n"))
	if err == nil || hc.Hostname != "a" || hc.IP != DHCP {
		t.Errorf("ParseHostConf(mixed) = %+v, %v, want hostname a, ip dhcp and an error", hc, err)
	}
}

func TestFromKernelIP(t *testing.T) {
	tests := []struct {
		in   string
		want HostConf
	}{
		{"", HostConf{}},
		{"off", HostConf{}},
		{"dhcp", HostConf{IP: DHCP}},
		{"10.0.0.5::10.0.0.1:255.255.255.0:n5:eth0:off", HostConf{IP: "10.0.0.5/24", Gateway: "10.0.0.1", Hostname: "n5", Interface: "eth0"}},
		{"10.0.0.5:10.0.0.9:10.0.0.1:255.255.0.0::ens3:none:1.1.1.1:8.8.8.8", HostConf{IP: "10.0.0.5/16", Gateway: "10.0.0.1", Interface: "ens3", DNS: []string{"1.1.1.1", "8.8.8.8"}}},
		{"192.168.1.9", HostConf{IP: "192.168.1.9/24"}},
		{"10.1.1.1", HostConf{IP: "10.1.1.1/8"}},
		{":::::eth1:dhcp", HostConf{IP: DHCP, Interface: "eth1"}},
		{"bogus:::::", HostConf{}},
	}
	for _, tt := range tests {
		if got := FromKernelIP(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("FromKernelIP(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestEnsure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".hnboot", "identity")
	id1, err := Ensure(dir, rand.Reader)
	if err != nil {
		t.Fatalf("Ensure() error = %v", err)
	}
	if !ValidMachineID(id1.MachineID) {
		t.Errorf("Ensure().MachineID = %q, want 32 lowercase hex", id1.MachineID)
	}
	if len(id1.HostKeys) != 2 || id1.HostKeys[0].Type != "ed25519" || id1.HostKeys[1].Type != "ecdsa" {
		t.Fatalf("Ensure().HostKeys = %+v, want ed25519 and ecdsa", id1.HostKeys)
	}
	wantAlgo := map[string]string{"ed25519": ssh.KeyAlgoED25519, "ecdsa": ssh.KeyAlgoECDSA256}
	for _, k := range id1.HostKeys {
		s, err := ssh.ParsePrivateKey(k.Private)
		if err != nil {
			t.Fatalf("ssh.ParsePrivateKey(%s) error = %v", k.Type, err)
		}
		if s.PublicKey().Type() != wantAlgo[k.Type] {
			t.Errorf("%s key type = %s, want %s", k.Type, s.PublicKey().Type(), wantAlgo[k.Type])
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey(k.Public)
		if err != nil || !bytes.Equal(pub.Marshal(), s.PublicKey().Marshal()) {
			t.Errorf("%s .pub does not match the private key (err %v)", k.Type, err)
		}
		if k.Fingerprint != ssh.FingerprintSHA256(pub) || !strings.HasPrefix(k.Fingerprint, "SHA256:") {
			t.Errorf("%s fingerprint = %q, want %q", k.Type, k.Fingerprint, ssh.FingerprintSHA256(pub))
		}
		fi, err := os.Stat(filepath.Join(dir, "ssh_host_"+k.Type+"_key"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("stat %s key = %v, %v, want mode 0600", k.Type, fi.Mode(), err)
		}
	}

	if id1.Fingerprints["ed25519"] != id1.HostKeys[0].Fingerprint || id1.Fingerprints["ecdsa"] != id1.HostKeys[1].Fingerprint {
		t.Errorf("Ensure().Fingerprints = %v, want the HostKeys' fingerprints", id1.Fingerprints)
	}
	id2, err := Ensure(dir, nil) // nil: crypto/rand

	if err != nil || !reflect.DeepEqual(id1, id2) {
		t.Errorf("second Ensure() = %+v, %v, want identical to the first", id2, err)
	}

	// A lost .pub is re-derived; a corrupt machine-id or key is set aside
	// and replaced, with a note.
	os.Remove(filepath.Join(dir, "ssh_host_ed25519_key.pub"))
	os.WriteFile(filepath.Join(dir, "machine-id"), []byte("garbage\n"), 0o444)
	os.WriteFile(filepath.Join(dir, "ssh_host_ecdsa_key"), []byte("not a key"), 0o600)
	id3, err := Ensure(dir, rand.Reader)
	if err != nil {
		t.Fatalf("Ensure(after damage) error = %v", err)
	}
	if !reflect.DeepEqual(id3.HostKeys[0], id1.HostKeys[0]) {
		t.Errorf("Ensure(lost .pub).HostKeys[0] changed, want the same ed25519 key")
	}
	if id3.MachineID == id1.MachineID || !ValidMachineID(id3.MachineID) || id3.HostKeys[1].Fingerprint == id1.HostKeys[1].Fingerprint {
		t.Errorf("Ensure(corrupt) = %+v, want a new machine-id and ecdsa key", id3)
	}
	if len(id3.Notes) != 2 {
		t.Errorf("Ensure(corrupt).Notes = %q, want 2 notes", id3.Notes)
	}
	if _, err := os.Stat(filepath.Join(dir, "machine-id.corrupt")); err != nil {
		t.Errorf("corrupt machine-id not kept: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(left) > 0 {
		t.Errorf("temporary files left in %s: %q", dir, left)
	}
}

func TestValidMachineID(t *testing.T) {
	tests := map[string]bool{
		"0123456789abcdef0123456789abcdef": true,
		"0123456789ABCDEF0123456789abcdef": false,
		"00000000000000000000000000000000": false,
		"0123456789abcdef":                 false,
		"0123456789abcdef0123456789abcdeg": false,
	}
	for in, want := range tests {
		if got := ValidMachineID(in); got != want {
			t.Errorf("ValidMachineID(%q) = %v, want %v", in, got, want)
		}
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// imageRoot makes a root like a generalized image: an fstab with the
// seed's hand-written lines, a hosts file, a resolv.conf symlink.
func imageRoot(t *testing.T) string {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/fstab"), []byte("# /etc/fstab\nproc /proc proc defaults 0 0\nLABEL=EFI-BOOT /boot/loader vfat noauto,noatime 1 2\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1\tlocalhost\n127.0.1.1\tgolden-image\n"), 0o644)
	return root
}

func TestApplyConfigWritesIdentity(t *testing.T) {
	id, err := Ensure(t.TempDir(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hc := HostConf{Hostname: "node7.example.com", IP: "10.1.2.7/24", Gateway: "10.1.2.1", DNS: []string{"10.1.2.2"},
		Interface: "eno1", StorageID: "osd-7", ConfigMgmtID: "node7", Files: map[string]string{"/etc/motd": "hi\n"}}
	root := imageRoot(t)
	for i := 0; i < 2; i++ { // idempotent: a second run changes nothing
		res, err := ApplyConfig(root, id, hc.Config(), "")
		if err != nil || len(res.Problems) > 0 {
			t.Fatalf("ApplyConfig() run %d = %+v, %v, want no problems", i+1, res, err)
		}
	}
	files := map[string]string{
		"etc/hostname":          "node7.example.com\n",
		"etc/hosts":             "127.0.0.1\tlocalhost\n127.0.1.1\tnode7.example.com node7\n",
		"etc/machine-id":        id.MachineID + "\n",
		"etc/hnboot/storage-id": "osd-7\n",
		"etc/hnboot/cm-id":      "node7\n",
		"etc/motd":              "hi\n",
		"etc/resolv.conf":       "# written by hnboot from the host configuration\nnameserver 10.1.2.2\n",
		"etc/fstab": "# /etc/fstab\nproc /proc proc defaults 0 0\n" + fstabBegin + "\n" +
			"LABEL=EFI-BOOT /boot/loader vfat noauto,noatime 0 2\nLABEL=hostpart /hostpart auto noatime 0 1\n" + fstabEnd + "\n",
		"etc/systemd/network/10-hnboot.network": "# written by hnboot at every boot from the host configuration; edit the fleet, not this file\n" +
			"[Match]\nName=eno1\n\n[Network]\nAddress=10.1.2.7/24\nGateway=10.1.2.1\nDNS=10.1.2.2\n",
		"etc/hnboot/identity.env": "# written by hnboot at every boot from the fleet's identity values; source it: . /etc/hnboot/identity.env\n" +
			"HN_CM_ID='node7'\nHN_STORAGE_ID='osd-7'\n",
	}
	// The host.conf-era variables are still there, first, as they were.
	if env := read(t, filepath.Join(root, "etc/hnboot/network.env")); !strings.HasPrefix(env, "# written by hnboot at every boot; source it: . /etc/hnboot/network.env\n"+
		"HN_HOSTNAME='node7.example.com'\nHN_INTERFACE='eno1'\nHN_IP='10.1.2.7/24'\nHN_GATEWAY='10.1.2.1'\nHN_DNS='10.1.2.2'\n") {
		t.Errorf("ApplyConfig() wrote network.env = %q, want the five HN_ variables of before first", env)
	}
	for p, want := range files {
		if got := read(t, filepath.Join(root, p)); got != want {
			t.Errorf("ApplyConfig() wrote %s = %q, want %q", p, got, want)
		}
	}
	for _, k := range id.HostKeys {
		for suffix, mode := range map[string]os.FileMode{"": 0o600, ".pub": 0o644} {
			p := filepath.Join(root, "etc/ssh/ssh_host_"+k.Type+"_key"+suffix)
			fi, err := os.Stat(p)
			if err != nil || fi.Mode().Perm() != mode {
				t.Errorf("stat %s = %v, %v, want mode %v", p, fi.Mode(), err, mode)
			}
		}
		if got := read(t, filepath.Join(root, "etc/ssh/ssh_host_"+k.Type+"_key")); got != string(k.Private) {
			t.Errorf("ApplyConfig() %s private key differs from Ensure's", k.Type)
		}
	}
	for _, d := range []string{"hostpart", "boot/loader"} {
		if fi, err := os.Stat(filepath.Join(root, d)); err != nil || !fi.IsDir() {
			t.Errorf("ApplyConfig() did not create /%s: %v", d, err)
		}
	}
	if target, err := os.Readlink(filepath.Join(root, "data0")); err != nil || target != "/hostpart/data" {
		t.Errorf("readlink /data0 = %q, %v, want /hostpart/data", target, err)
	}
}

func TestApplyConfigDHCPAndSymlinks(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.Symlink("/run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	// A hostile or sloppy image: /etc/hostname points outside the root.
	outside := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(outside, []byte("untouched"), 0o644)
	os.Symlink(outside, filepath.Join(root, "etc/hostname"))
	os.Mkdir(filepath.Join(root, "data0"), 0o755) // empty dir in the image: replaced by the link

	c := hostconfig.Defaults("52:54:00:12:34:56")
	c.Network.DNS = []string{"1.1.1.1"}
	if _, err := ApplyConfig(root, Identity{}, c, ""); err != nil {
		t.Fatalf("ApplyConfig(dhcp) error = %v", err)
	}
	if got := read(t, outside); got != "untouched" {
		t.Errorf("ApplyConfig() wrote through the image's symlink: victim = %q", got)
	}
	if got := read(t, filepath.Join(root, "etc/hostname")); got != "hn-525400123456\n" {
		t.Errorf("/etc/hostname = %q, want hn-525400123456", got)
	}
	unit := read(t, filepath.Join(root, networkFile))
	if !strings.Contains(unit, "Name=en* eth*\n") || !strings.Contains(unit, "DHCP=yes\n") || strings.Contains(unit, "Address=") {
		t.Errorf("networkd unit for DHCP = %q, want Name=en* eth* and DHCP=yes", unit)
	}
	if !strings.Contains(read(t, filepath.Join(root, envFile)), "HN_IP='dhcp'\n") {
		t.Errorf("network.env does not say HN_IP='dhcp'")
	}
	if target, _ := os.Readlink(filepath.Join(root, "etc/resolv.conf")); target != "/run/systemd/resolve/stub-resolv.conf" {
		t.Errorf("resolv.conf symlink replaced: now %q", target)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/machine-id")); err == nil {
		t.Errorf("ApplyConfig(no identity) wrote /etc/machine-id")
	}
	if target, err := os.Readlink(filepath.Join(root, "data0")); err != nil || target != "/hostpart/data" {
		t.Errorf("readlink /data0 = %q, %v, want /hostpart/data", target, err)
	}
}

func TestApplyConfigKeepsDataDir(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "data0"), 0o755)
	os.WriteFile(filepath.Join(root, "data0", "precious"), []byte("x"), 0o644)
	c := hostconfig.Config{Hostname: "h", Files: []hostconfig.File{{Path: "relative", Content: "x"}}}
	res, err := ApplyConfig(root, Identity{}, c, "")
	if err == nil || !strings.Contains(err.Error(), "data0") {
		t.Errorf("ApplyConfig(non-empty /data0) error = %v, want one naming data0", err)
	}
	if !strings.Contains(strings.Join(res.Problems, "\n"), "relative") {
		t.Errorf("ApplyConfig(relative file) problems = %q, want one naming relative", res.Problems)
	}
	if _, err := os.Stat(filepath.Join(root, "data0", "precious")); err != nil {
		t.Errorf("ApplyConfig() removed image data in /data0: %v", err)
	}
	if got := read(t, filepath.Join(root, "etc/hostname")); got != "h\n" {
		t.Errorf("ApplyConfig() stopped at the first error: /etc/hostname = %q", got)
	}
}

func TestFstab(t *testing.T) {
	block := fstabBegin + "\n" + fstabLines + fstabEnd + "\n"
	tests := []struct{ in, want string }{
		{"", block},
		{"proc /proc proc defaults 0 0\n\n", "proc /proc proc defaults 0 0\n" + block},
		{"LABEL=hostpart /hostpart/ ext4 defaults 0 1\n#LABEL=x /hostpart auto 0 0\n", "#LABEL=x /hostpart auto 0 0\n" + block},
		{"a b c\n" + block + "z y x\n", "a b c\nz y x\n" + block},
	}
	for _, tt := range tests {
		got := Fstab(tt.in)
		if got != tt.want {
			t.Errorf("Fstab(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if again := Fstab(got); again != got {
			t.Errorf("Fstab(Fstab(%q)) = %q, want unchanged %q", tt.in, again, got)
		}
	}
}

func TestHostsFile(t *testing.T) {
	tests := []struct{ old, host, want string }{
		{"", "h", "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\th\n"},
		{"127.0.0.1 localhost\n", "a.b", "127.0.0.1 localhost\n127.0.1.1\ta.b a\n"},
		{"127.0.1.1 old\n10.0.0.1 gw\n127.0.1.1 dup\n", "h", "127.0.1.1\th\n10.0.0.1 gw\n"},
	}
	for _, tt := range tests {
		if got := HostsFile(tt.old, tt.host); got != tt.want {
			t.Errorf("HostsFile(%q, %q) = %q, want %q", tt.old, tt.host, got, tt.want)
		}
	}
}

func TestStateBinds(t *testing.T) {
	root := t.TempDir()
	data := filepath.Join(t.TempDir(), "data")
	os.MkdirAll(filepath.Join(root, "var"), 0o755)
	os.Symlink("/etc", filepath.Join(root, "var", "escape")) // absolute: would leave the root
	binds, err := StateBinds(root, data, []string{"/var/lib/docker", "/srv/www/", "/var/lib/docker", "rel", "/var/escape/x"})
	want := []Bind{
		{Source: filepath.Join(data, "var/lib/docker"), Target: filepath.Join(root, "var/lib/docker")},
		{Source: filepath.Join(data, "srv/www"), Target: filepath.Join(root, "srv/www")},
	}
	if !reflect.DeepEqual(binds, want) {
		t.Errorf("StateBinds() = %+v, want %+v", binds, want)
	}
	if err == nil || !strings.Contains(err.Error(), "rel") || !strings.Contains(err.Error(), "/var/escape/x") {
		t.Errorf("StateBinds() error = %v, want one naming rel and /var/escape/x", err)
	}
	for _, b := range binds {
		for _, p := range []string{b.Source, b.Target} {
			if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
				t.Errorf("StateBinds() did not create %s: %v", p, err)
			}
		}
	}
}
