package cmdline

import (
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/readme"
)

func TestSplit(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  a  b\tc\n", []string{"a", "b", "c"}},
		{`hn.hostname="a b" x`, []string{"hn.hostname=a b", "x"}},
		{`"hn.hostname=a b" x`, []string{"hn.hostname=a b", "x"}},
		{`k="" z`, []string{"k=", "z"}},
		{`unterminated="a b`, []string{"unterminated=a b"}},
	}
	for _, tt := range tests {
		if got := Split(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Split(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	def := func(f func(*Config)) Config {
		c := Config{Hostpart: layout.HostpartSpec, Image: layout.Current, Tries: DefaultTries, Init: DefaultInit, Network: DefaultCheckinBudget}
		if f != nil {
			f(&c)
		}
		return c
	}
	tests := []struct {
		name  string
		in    string
		want  Config
		warns []string // substrings, one per expected warning
	}{
		{"empty", "", def(nil), nil},
		{"typical", "BOOT_IMAGE=/boot/vmlinuz root=/dev/ram0 ro quiet hn.tries=5 hn.server=http://10.0.0.1:8080 hn.debug",
			def(func(c *Config) { c.Tries = 5; c.Server = "http://10.0.0.1:8080"; c.Debug = true }), nil},
		{"all keys", `hn.hostpart=PARTLABEL=hp hn.image=/a.img hn.revert=r7 hn.crashtest=2 hn.hostname=node-1.example.com hn.modules=virtio_blk,,ext4 hn.modules=xfs init=/bin/sh ip=10.0.0.5::10.0.0.1:255.255.255.0:n1:eth0:off`,
			def(func(c *Config) {
				c.Hostpart = "PARTLABEL=hp"
				c.Image = "a.img"
				c.RevertID = "r7"
				c.CrashTest = 2
				c.Hostname = "node-1.example.com"
				c.Modules = []string{"virtio_blk", "ext4", "xfs"}
				c.Init = "/bin/sh"
				c.IP = "10.0.0.5::10.0.0.1:255.255.255.0:n1:eth0:off"
			}), nil},
		{"genkernel alias", "root=/dev/ram0 real_root=/hn-root.img raw_loop_root_host_partition=LABEL=hostpart ro",
			def(func(c *Config) { c.Alias = true }), nil},
		{"alias other values", "real_root=/x.img raw_loop_root_host_partition=UUID=1234",
			def(func(c *Config) { c.Alias = true; c.Image = "x.img"; c.Hostpart = "UUID=1234" }), nil},
		{"hn wins over alias in any order", "hn.image=b.img real_root=/a.img raw_loop_root_host_partition=LABEL=x hn.hostpart=LABEL=y",
			def(func(c *Config) { c.Alias = true; c.Image = "b.img"; c.Hostpart = "LABEL=y" }), nil},
		{"hn.init wins over init", "hn.init=/sbin/a init=/sbin/b", def(func(c *Config) { c.Init = "/sbin/a" }), nil},
		{"quoted value", `hn.server="http://h/x y"`, def(func(c *Config) { c.Server = "http://h/x y" }), nil},
		{"last wins", "hn.tries=2 hn.tries=4", def(func(c *Config) { c.Tries = 4 }), nil},
		{"debug off", "hn.debug=0", def(nil), nil},
		{"after -- is init's", "hn.tries=2 -- hn.tries=9 single", def(func(c *Config) { c.Tries = 2 }), nil},
		{"bad tries", "hn.tries=abc", def(nil), []string{`hn.tries="abc"`}},
		{"zero tries", "hn.tries=0", def(nil), []string{"hn.tries"}},
		{"bad crashtest", "hn.crashtest=-1", def(nil), []string{"hn.crashtest"}},
		{"bad debug", "hn.debug=maybe", def(nil), []string{"hn.debug"}},
		{"bad server", "hn.server=10.0.0.1", def(nil), []string{"hn.server"}},
		{"bad hostname", "hn.hostname=-x", def(nil), []string{"hn.hostname"}},
		{"empty revert", "hn.revert", def(nil), []string{"hn.revert"}},
		{"bad hostpart", "hn.hostpart=hostpart", def(nil), []string{`"hostpart"`}},
		{"bad image", "hn.image=sub/x.img", def(nil), []string{"sub/x.img"}},
		{"bad init", "init=sh", def(nil), []string{"init"}},
		{"two warnings", "hn.tries=x hn.image=/", def(nil), []string{"hn.tries", "image"}},
		{"network keys", "BOOTIF=01-52-54-00-AB-cd-0e hn.checkin=30s hn.fetch=off hn.nokexec hn.kexeced=hn-root-old.img",
			def(func(c *Config) {
				c.BootIF = "52:54:00:ab:cd:0e"
				c.Network = 30 * time.Second
				c.NoFetch = true
				c.NoKexec = true
				c.Kexeced = "hn-root-old.img"
			}), nil},
		{"checkin off", "hn.checkin=off", def(func(c *Config) { c.NoCheckin = true }), nil},
		{"fetch on again", "hn.fetch=off hn.fetch=on", def(nil), nil},
		{"bare kexeced", "hn.kexeced", def(func(c *Config) { c.Kexeced = layout.Current }), nil},
		{"bad checkin", "hn.checkin=5", def(nil), []string{"hn.checkin"}},
		{"bad BOOTIF", "BOOTIF=01-52-54", def(nil), []string{"BOOTIF"}},
		{"bad fetch", "hn.fetch=sometimes", def(nil), []string{"hn.fetch"}},
		{"diskless", "hn.diskless hn.diskwait=2s", def(func(c *Config) { c.Diskless = true; c.DiskWait = 2 * time.Second }), nil},
		{"diskless off", "hn.diskless=0", def(nil), nil},
		{"bad diskless", "hn.diskless=perhaps", def(nil), []string{"hn.diskless"}},
		{"bad diskwait", "hn.diskwait=forever hn.diskwait=-1s", def(nil), []string{"hn.diskwait", "hn.diskwait"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warns := Parse(tt.in)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if len(warns) != len(tt.warns) {
				t.Fatalf("Parse(%q) warnings = %q, want %d matching %q", tt.in, warns, len(tt.warns), tt.warns)
			}
			for i, w := range tt.warns {
				if !strings.Contains(warns[i], w) {
					t.Errorf("Parse(%q) warning[%d] = %q, want it to contain %q", tt.in, i, warns[i], w)
				}
			}
		})
	}
}

// The help and the README's table come from Keys: every key the init
// reads is in both, and the README names no key the init ignores.
func TestUsageAndReadme(t *testing.T) {
	u := Usage()
	md, err := readme.Read()
	if err != nil {
		t.Fatal(err)
	}
	rows, err := readme.Table(md, "| parameter | default | meaning |")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{} // key -> default cell
	for _, r := range rows {
		for _, m := range regexp.MustCompile("`([A-Za-z_.]+)(=[^`]*)?`").FindAllStringSubmatch(r[0], -1) {
			documented[m[1]] = r[1]
		}
	}
	for _, k := range Keys {
		if k.Hidden {
			if regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(k.Name) + `[= ]`).MatchString(u) {
				t.Errorf("Usage shows the hidden key %s", k.Name)
			}
			continue
		}
		if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(k.Name) + `[= ]`).MatchString(u) {
			t.Errorf("Usage lacks %s:\n%s", k.Name, u)
		}
		def, ok := documented[k.Name]
		if !ok {
			t.Errorf("README's kernel command line table lacks %s", k.Name)
			continue
		}
		if k.Def != "" && !strings.Contains(def, k.Def) {
			t.Errorf("README gives %s the default %q, the init %q", k.Name, def, k.Def)
		}
		delete(documented, k.Name)
	}
	for k := range documented {
		if byName[k] == nil {
			t.Errorf("README documents %s, which the init does not read", k)
		}
	}
}

func TestValidHostname(t *testing.T) {
	tests := map[string]bool{
		"a": true, "hn-525400123456": true, "a.b.c": true, "A9": true,
		"": false, "-a": false, "a-": false, "a..b": false, "a_b": false, "a b": false,
		strings.Repeat("a", 64): false, strings.Repeat("a.", 127) + "a": false,
	}
	for in, want := range tests {
		if got := ValidHostname(in); got != want {
			t.Errorf("ValidHostname(%q) = %v, want %v", in, got, want)
		}
	}
}
