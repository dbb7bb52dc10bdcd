package boot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

func TestImagedAnswer(t *testing.T) {
	raw := []byte(`{"hostname":"web-07"}`)
	for _, tc := range []struct {
		name string
		n    *networkOutcome
		body bool
		why  string
	}{
		{"no network phase", nil, false, "no server known"},
		{"no server", &networkOutcome{}, false, "no server known"},
		{"no DHCP", &networkOutcome{Server: "http://s", NetErr: errors.New("no offer")}, false, "the network did not come up"},
		{"404", &networkOutcome{Server: "http://s", AssignedErr: fmt.Errorf("GET: %w", ErrUnknownHost)}, false, "imaged does not know this MAC"},
		{"timeout", &networkOutcome{Server: "http://s", AssignedErr: errors.New("deadline")}, false, "imaged did not answer"},
		{"200", &networkOutcome{Server: "http://s", Assigned: Assigned{Raw: raw}}, true, "imaged answered"},
	} {
		body, why := ImagedAnswer(tc.n)
		if (body != nil) != tc.body || why != tc.why {
			t.Errorf("ImagedAnswer(%s) = %q, %q; want body %v, %q", tc.name, body, why, tc.body, tc.why)
		}
	}
}

// identityConfig is what the fleet YAML of TestRunIdentity gives the host.
const identityConfig = `{
  "network": {"interface": "eth0", "mtu": 1400, "addresses": ["192.0.2.17/24"], "gateway": ["192.0.2.1"], "dns": ["192.0.2.53"]},
  "identity": {"certname": "web-07.example.com"},
  "files": [{"path": "/etc/puppet/puppet.conf", "mode": "0640", "content": "certname = web-07.example.com\n"}]
}`

// A host's configuration from imaged reaches the new root (hostname,
// networkd, identity values, files:), is cached on hostpart, and the init
// hands the NIC over; at the next boot with the server down the cache
// gives the same root, and the log says so.
func TestRunIdentity(t *testing.T) {
	w := newWorld(t, map[string][]byte{layout.Current: imgA})
	srv := newImaged(t)
	w.sys.http = &httpgetClient
	srv.assign(srv.publish(t, "A", imgA, nil, false))
	srv.config = identityConfig

	root := func(p string) string {
		b, err := os.ReadFile(filepath.Join(w.paths.NewRoot, p))
		if err != nil {
			t.Errorf("new root: %v", err)
		}
		return string(b)
	}
	check := func(from string) {
		t.Helper()
		con := w.console() + strings.Join(w.sys.calls, "\n")
		if w.sys.switched != "A" {
			t.Fatalf("switched to %q, want A\n%s", w.sys.switched, con)
		}
		if got := root(layout.HostnameFile); got != "web-07\n" {
			t.Errorf("hostname file = %q", got)
		}
		if nd := root(layout.NetworkdMain); !strings.Contains(nd, "Address=192.0.2.17/24") || !strings.Contains(nd, "Gateway=192.0.2.1") {
			t.Errorf("%s =\n%s", layout.NetworkdMain, nd)
		}
		if got := root(layout.IdentityEnv); !strings.Contains(got, "HN_CERTNAME=") {
			t.Errorf("%s = %q", layout.IdentityEnv, got)
		}
		if got := root("/etc/puppet/puppet.conf"); got != "certname = web-07.example.com\n" {
			t.Errorf("puppet.conf = %q", got)
		}
		if fi, err := os.Stat(filepath.Join(w.paths.NewRoot, "etc/puppet/puppet.conf")); err == nil && fi.Mode().Perm() != 0o640 {
			t.Errorf("puppet.conf mode %v, want 0640", fi.Mode().Perm())
		}
		for _, want := range []string{
			"identity: hostname web-07 (from " + from + ")",
			"identity: network.addressing 192.0.2.17/24 via 192.0.2.1 (from " + from + ")",
			"identity: files[/etc/puppet/puppet.conf] 30 bytes (from " + from + ")",
			"hostname web-07",
		} {
			if !strings.Contains(con, want) {
				t.Errorf("console lacks %q\n%s", want, con)
			}
		}
		if t.Failed() {
			t.Logf("console:\n%s", con)
		}
	}

	w.boot("hn.server=" + srv.URL)
	check("imaged")
	cache := w.read(layout.HostCache)
	if !strings.Contains(cache, "192.0.2.17/24") || !strings.Contains(cache, "puppet.conf") {
		t.Errorf("%s after a boot with imaged =\n%s", layout.HostCache, cache)
	}
	if calls := strings.Join(w.sys.calls, "\n"); !strings.Contains(calls, "netdown eth0 10.0.0.50/24 ours=true") {
		t.Errorf("the init did not hand the NIC over:\n%s", calls)
	}
	if strings.Index(w.console(), "boot NIC handed over") > strings.Index(w.console(), "switching root") {
		t.Errorf("NIC handed over after switch_root")
	}

	// The server is down at the next boot: the cache is the same host.
	srv.Close()
	os.RemoveAll(w.paths.NewRoot)
	w.boot("hn.server=" + srv.URL)
	check("cache")
	if !strings.Contains(w.console(), "imaged did not answer; using the cache") {
		t.Errorf("console does not say the cache applies\n%s", w.console())
	}
	if got := w.read(layout.HostCache); got != cache {
		t.Errorf("cache changed by a boot without a server:\n%s", got)
	}

	// The kernel command line wins over the cache.
	os.RemoveAll(w.paths.NewRoot)
	w.boot("hn.server=" + srv.URL + " hn.hostname=override-1")
	if got := root(layout.HostnameFile); got != "override-1\n" || !strings.Contains(w.console(), "identity: hostname override-1 (from kernel command line)") {
		t.Errorf("hn.hostname=: hostname file %q\n%s", got, w.console())
	}
}

// Hostile values from imaged are refused one by one, each message naming
// the host, the key and the file; everything else applies and the host
// boots.
func TestRunIdentityRefusesBadValues(t *testing.T) {
	w := newWorld(t, map[string][]byte{layout.Current: imgA})
	srv := newImaged(t)
	w.sys.http = &httpgetClient
	srv.assign(srv.publish(t, "A", imgA, nil, false))
	srv.config = `{
  "network": {"dns": ["192.0.2.53\nnameserver 203.0.113.66"]},
  "identity": {"certname": "web-07\nevil=1", "rack": "r12"},
  "files": [
    {"path": "/../../hostpart/hn-root.img", "content": "x"},
    {"path": "/etc/ssh/ssh_host_ed25519_key", "content": "not a key of ours"},
    {"path": "/etc/motd", "content": "welcome\n"}
  ]
}`
	out := w.boot("hn.server=" + srv.URL)
	con := w.console()
	if out.Image != layout.Current || w.sys.switched != "A" {
		t.Fatalf("boot ended with %+v; want A booted\n%s", out, con)
	}
	for _, want := range []string{
		// host, key, value (quoted twice: once by the message, once by the log), file
		`imaged: refused ` + fakeMAC + `: network.dns[0] \"192.0.2.53\\nnameserver 203.0.113.66\" (for /etc/resolv.conf)`,
		`imaged: refused ` + fakeMAC + `: identity.certname \"web-07\\nevil=1\" (for ` + layout.IdentityEnv + `)`,
		`imaged: refused ` + fakeMAC + `: files[0].path \"/../../hostpart/hn-root.img\": contains ..`,
		`imaged: refused ` + fakeMAC + `: files[1].path \"/etc/ssh/ssh_host_ed25519_key\": an SSH host key`,
		"identity: identity.rack r12 (from imaged)",
	} {
		if !strings.Contains(con, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(w.paths.NewRoot, "etc/motd")); err != nil || string(b) != "welcome\n" {
		t.Errorf("/etc/motd = %q, %v; the good file is written", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(w.paths.NewRoot, layout.IdentityEnv)); strings.Contains(string(b), "evil") || !strings.Contains(string(b), "HN_RACK=") {
		t.Errorf("%s = %q", layout.IdentityEnv, b)
	}
	if b, _ := os.ReadFile(filepath.Join(w.paths.NewRoot, "etc/ssh/ssh_host_ed25519_key")); strings.Contains(string(b), "not a key of ours") {
		t.Errorf("the server replaced the host's SSH key")
	}
	if b, _ := os.ReadFile(filepath.Join(w.paths.Hostpart, layout.Current)); imageName(filepath.Join(w.paths.Hostpart, layout.Current)) != "A" {
		t.Errorf("hn-root.img overwritten: %.20q", b)
	}
	if t.Failed() {
		t.Logf("console:\n%s", con)
	}
}
