package fleet

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	d12 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	d13 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// copyExample copies testdata/example into a fresh directory.
func copyExample(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ents, err := os.ReadDir("testdata/example")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("testdata/example", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadExample(t *testing.T) {
	dir := copyExample(t)
	d, err := Load(dir)
	if err != nil {
		t.Fatalf("Load(example) = %v, want nil", err)
	}
	if got, want := len(d.Hosts), 5; got != want {
		t.Errorf("len(Hosts) = %d, want %d", got, want)
	}
	for _, c := range []struct{ host, want string }{
		{"web-01", d12}, // group web → channel stable → base@1.2
		{"db-01", d13},  // host image wins over group
	} {
		if got := d.HostImage(d.FindHost(c.host)).Digest; got != c.want {
			t.Errorf("HostImage(%s) = %s, want %s", c.host, got, c.want)
		}
	}
	if got, want := d.Image("base@1.2").Path, filepath.Join(dir, "images/base-1.2.img"); got != want {
		t.Errorf("relative image path = %s, want %s", got, want)
	}
	nw := d.EffectiveNetwork(d.FindHost("web-01"))
	if len(nw.Addresses) != 1 || nw.Addresses[0] != "192.0.2.11/24" || len(nw.Gateway) != 1 || nw.Gateway[0] != "192.0.2.1" || nw.Interface != "eth0" {
		t.Errorf("EffectiveNetwork(web-01) = %+v, want host ip with group gateway and interface", nw)
	}
	if d.FindHost("52:54:00:00:00:10") == nil || d.FindHost("52-54-00-00-00-10") == nil {
		t.Errorf("FindHost by MAC (colon and dash forms) = nil, want db-01")
	}
}

func TestLoadErrorsNameFileAndLine(t *testing.T) {
	const imgs = "images:\n  - name: base\n    version: \"1\"\n    digest: " + d12 + "\n    path: a.img\n"
	for _, c := range []struct {
		name  string
		files map[string]string
		want  []string // substrings, each "file:line: ..." relative to the dir
	}{
		{"unknown key", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    image: base@1\n    colour: red\n"},
			[]string{`a.yaml:10: unknown key "colour"`}},
		{"unknown top-level key", map[string]string{"a.yaml": imgs + "hostz: []\n"},
			[]string{`a.yaml:6: unknown key "hostz"`}},
		{"duplicate MAC across files", map[string]string{
			"a.yaml": imgs + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    image: base@1\n",
			"b.yaml": "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h2\n    image: base@1\n"},
			[]string{"b.yaml:2: duplicate MAC 52:54:00:00:00:01: host h2 (first at ", "a.yaml:7"}},
		{"duplicate hostname", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    image: base@1\n  - mac: 52:54:00:00:00:02\n    hostname: h1\n    image: base@1\n"},
			[]string{"a.yaml:10: duplicate hostname h1"}},
		{"unknown image", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    image: base@2\n"},
			[]string{`a.yaml:7: host h1: unknown image "base@2" (known: base@1)`}},
		{"unknown group", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    group: nope\n"},
			[]string{`a.yaml:7: host h1: unknown group "nope"`}},
		{"bad digest", map[string]string{"a.yaml": "images:\n  - name: base\n    version: \"1\"\n    digest: sha256:abc\n    path: a.img\n"},
			[]string{`a.yaml:4: image base@1: bad digest "sha256:abc"`}},
		{"digest without prefix", map[string]string{"a.yaml": "images:\n  - name: base\n    version: \"1\"\n    digest: " + d12[len("sha256:"):] + "\n    path: a.img\n"},
			[]string{"a.yaml:4: image base@1: digest \"" + d12[len("sha256:"):] + "\" lacks its prefix: write digest: " + d12}},
		{"digest missing", map[string]string{"a.yaml": "images:\n  - name: base\n    version: \"1\"\n    path: a.img\n"},
			[]string{"a.yaml:2: image base@1: digest missing: want sha256:"}},
		{"uppercase digest", map[string]string{"a.yaml": "images:\n  - name: base\n    version: \"1\"\n    digest: " + strings.ToUpper(d12) + "\n    path: a.img\n"},
			[]string{"a.yaml:4: image base@1: bad digest"}},
		{"bad mac", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: 52:54:00\n    hostname: h1\n    image: base@1\n"},
			[]string{`a.yaml:7: host h1: bad mac "52:54:00"`}},
		{"host without image", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n"},
			[]string{"a.yaml:7: host h1: no image"}},
		{"channel to unknown image", map[string]string{"a.yaml": imgs + "channels:\n  stable: base@9\n"},
			[]string{`a.yaml:7: channel stable: unknown image "base@9"`}},
		{"yaml syntax", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: [\n"},
			[]string{"a.yaml:7: did not find expected node content"}},
		{"bad ip", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    image: base@1\n    network: {ip: 10.0.0.1}\n"},
			[]string{`a.yaml:10: host h1: ip "10.0.0.1": want an address with prefix length`}},
		{"rollout percent", map[string]string{"a.yaml": imgs + "groups:\n  - name: g\n    image: base@1\nrollouts:\n  - name: r\n    image: base@1\n    group: g\n    percent: 150\n"},
			[]string{"a.yaml:10: rollout r: percent 150 out of 0..100"}},
		{"two problems, both reported", map[string]string{"a.yaml": imgs + "hosts:\n  - mac: 52:54:00:00:00:01\n    hostname: h1\n    image: base@7\n  - mac: 52:54:00:00:00:02\n    hostname: h2\n    image: base@8\n"},
			[]string{`a.yaml:7: host h1: unknown image "base@7"`, `a.yaml:10: host h2: unknown image "base@8"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, s := range c.files {
				if err := os.WriteFile(filepath.Join(dir, n), []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Load(dir)
			if err == nil {
				t.Fatalf("Load = nil, want errors %q", c.want)
			}
			msg := strings.ReplaceAll(err.Error(), dir+"/", "")
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("Load error = %q, want it to contain %q", msg, w)
				}
			}
		})
	}
}

func TestRolloutMembersGrowWithPercent(t *testing.T) {
	d, err := Load(copyExample(t))
	if err != nil {
		t.Fatal(err)
	}
	prev := map[string]bool{}
	for _, c := range []struct{ percent, want int }{{0, 1}, {25, 2}, {50, 3}, {100, 4}} {
		r := Rollout{Name: "r", Image: "base@1.3", Group: "web", Hosts: []string{"web-04"}, Percent: c.percent}
		got := rolloutMembers(d, r)
		if len(got) != c.want {
			t.Errorf("len(rolloutMembers(%d%%)) = %d, want %d", c.percent, len(got), c.want)
		}
		now := map[string]bool{}
		for _, h := range got {
			now[h.Hostname] = true
		}
		for h := range prev {
			if !now[h] {
				t.Errorf("rolloutMembers(%d%%) dropped %s, which a lower percentage had", c.percent, h)
			}
		}
		prev = now
	}
}
