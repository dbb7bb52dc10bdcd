package fleet

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"net/http/httptest"

	hnidentity "github.com/hnboot/hnboot/initramfs/identity"
	"github.com/hnboot/hnboot/internal/hostconfig"
)

// The whole way, as the init will walk it: the fleet YAML, the answer of
// GET /api/hosts/{mac}/desired, identity.Resolve over that answer and
// the rest of the layers, identity.ApplyConfig into an image's root; then
// a boot with the server down, from the cache the first one wrote.
func TestRoundTripYAMLToRoot(t *testing.T) {
	_, dir := loadString(t, identityFleet)
	f, err := New(Options{Dir: dir, DB: "sqlite://" + filepath.Join(t.TempDir(), "fleet.db"), PollInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	e := &env{dir: dir, f: f, srv: srv}

	const mac = "52:54:00:aa:00:01"
	code, body := e.call(t, "GET", "/api/hosts/"+mac+"/desired", "", nil)
	if code != 200 {
		t.Fatalf("GET desired = %d %s", code, body)
	}
	res := hnidentity.Resolve(hnidentity.Inputs{MAC: mac, Imaged: body, HostConf: []byte("state_dir = /var/lib/ceph\n")})
	if len(res.Problems) > 0 || res.Cache == nil {
		t.Fatalf("Resolve(answer) problems %q, cache %d bytes; want none and a cache", res.Problems, len(res.Cache))
	}
	for _, o := range res.Origins {
		if o.Unit == hostconfig.UnitHostname && o.String() != "hostname osd-01 (from imaged)" {
			t.Errorf("origin of the hostname = %q, want hostname osd-01 (from imaged)", o)
		}
	}

	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nceph:x:64045:\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644)
	applied, err := hnidentity.ApplyConfig(root, hnidentity.Identity{}, res.Config, mac)
	if err != nil {
		t.Fatalf("ApplyConfig = %v", err)
	}
	if applied.Network != "networkd" || len(applied.Files) != 2 || len(applied.Problems) > 0 {
		t.Errorf("ApplyConfig = %+v, want networkd and two files", applied)
	}
	for p, want := range map[string]string{
		"etc/hostname": "osd-01\n",
		"etc/systemd/network/10-hnboot.network": "[Match]\nName=vlan120\n\n[Link]\nMTUBytes=9000\n\n[Network]\nAddress=10.20.0.11/24\nGateway=10.20.0.1\n" +
			"DNS=10.20.0.53\nDNS=10.20.0.54\nDomains=storage.example.com\n",
		"etc/systemd/network/10-hnboot-vlan120.netdev":        "[NetDev]\nName=vlan120\nKind=vlan\n\n[VLAN]\nId=120\n",
		"etc/systemd/network/10-hnboot-bond0.netdev":          "[NetDev]\nName=bond0\nKind=bond\n\n[Bond]\nMode=802.3ad\nMIIMonitorSec=100ms\n",
		"etc/systemd/network/10-hnboot-bond0-member1.network": "[Match]\nMACAddress=52:54:00:aa:00:01\nType=ether\n\n[Link]\nMTUBytes=9000\n\n[Network]\nBond=bond0\n",
		"etc/systemd/network/10-hnboot-bond0-member2.network": "[Match]\nName=eno2\n\n[Link]\nMTUBytes=9000\n\n[Network]\nBond=bond0\n",
		"etc/hnboot/identity.env":                             "HN_CLUSTER='prod-1'\nHN_OSD_ID='11'\n",
		"etc/ceph/node.conf":                                  "[node]\nname = osd-01\naddr = 10.20.0.11\ncluster = prod-1\nid = 11\nimage = ceph 18\n",
		"etc/motd":                                            "STORAGE node osd-01 (52:54:00:aa:00:01)\n",
	} {
		got := read(t, filepath.Join(root, p))
		if !strings.HasSuffix(got, want) {
			t.Errorf("/%s = %q, want it to end in %q", p, got, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/ceph/node.conf")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("/etc/ceph/node.conf: %v %v, want mode 0640", fi.Mode(), err)
	}

	// Server down at the next boot: the cache gives the same host.
	down := hnidentity.Resolve(hnidentity.Inputs{MAC: mac, Cache: res.Cache, HostConf: []byte("state_dir = /var/lib/ceph\n")})
	if a, b := string(down.Config.Marshal()), string(res.Config.Marshal()); a != b || len(down.Problems) > 0 {
		t.Errorf("with the server down = %s (%q)\nwant %s", a, down.Problems, b)
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
