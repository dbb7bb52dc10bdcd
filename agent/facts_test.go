package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/lldp"
)

// Facts from a /proc and /sys laid out as a real server has them.
func TestFactsFromSysfs(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"proc/cpuinfo":                       "processor\t: 0\nmodel name\t: AMD EPYC 7302P 16-Core Processor\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7302P 16-Core Processor\n\n",
		"proc/meminfo":                       "MemTotal:       131923788 kB\nMemFree:        1000 kB\n",
		"sys/block/nvme0n1/size":             "1875385008\n",
		"sys/block/nvme0n1/queue/rotational": "0\n",
		"sys/block/nvme0n1/device/model":     "SAMSUNG MZQL2960HCJR-00A07\n",
		"sys/block/nvme0n1/device/serial":    "S64FNE0R123456\n",
		"sys/block/sda/size":                 "7814037168\n",
		"sys/block/sda/queue/rotational":     "1\n",
		"sys/block/sda/device/model":         "ST4000NM0035-1V4\n",
		"sys/block/sda/device/vpd_pg80":      "\x00\x80\x00\x08ZC1ABCDE",
		"sys/block/loop0/size":               "100\n",
		"sys/block/vda/size":                 "0\n",
		"sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c": "\x06\x00\x00\x00\x01",
		"sys/class/dmi/id/bios_vendor":                                             "Dell Inc.\n",
		"sys/class/dmi/id/bios_version":                                            "2.19.1\n",
		"sys/class/dmi/id/bios_date":                                               "10/12/2023\n",
		"sys/class/dmi/id/sys_vendor":                                              "Dell Inc.\n",
		"sys/class/dmi/id/product_name":                                            "PowerEdge R6525\n",
		"sys/class/dmi/id/product_serial":                                          "7XK2LQ3\n",
	}
	for p, c := range files {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := System{Root: root}.Facts(context.Background(), 0)
	for _, c := range []struct{ name, got, want string }{
		{"cpu", f.CPU.Model, "AMD EPYC 7302P 16-Core Processor"},
		{"firmware", f.Firmware.Mode + " " + f.Firmware.SecureBoot + " " + f.Firmware.Vendor + " " + f.Firmware.Version, "uefi enabled Dell Inc. 2.19.1"},
		{"system", f.System.Vendor + "/" + f.System.Product + "/" + f.System.Serial, "Dell Inc./PowerEdge R6525/7XK2LQ3"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if f.CPU.Count != 2 || f.MemoryBytes != 131923788*1024 {
		t.Errorf("cpu count %d, memory %d", f.CPU.Count, f.MemoryBytes)
	}
	want := []checkin.Disk{
		{Name: "nvme0n1", Model: "SAMSUNG MZQL2960HCJR-00A07", Serial: "S64FNE0R123456", SizeBytes: 1875385008 * 512},
		{Name: "sda", Model: "ST4000NM0035-1V4", Serial: "ZC1ABCDE", SizeBytes: 7814037168 * 512, Rotational: true},
	}
	if len(f.Disks) != 2 || f.Disks[0] != want[0] || f.Disks[1] != want[1] {
		t.Errorf("disks = %+v, want %+v", f.Disks, want)
	}
	// What the agent reads passes the server's validation.
	c := checkin.Checkin{MAC: "52:54:00:12:34:56", Source: checkin.SourceAgent, Facts: &f}
	b, _ := json.Marshal(c)
	if _, err := checkin.Parse(strings.NewReader(string(b))); err != nil {
		t.Errorf("the facts do not pass checkin.Parse: %v", err)
	}
}

// An LLDP frame sent into a network namespace (a veth pair: the switch
// at one end, the host's NIC at the other) shows up in the server's
// inventory as the host's switch and port.
func TestLLDPNeighbourReachesInventory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (a network namespace, raw sockets): run the tests as root")
	}
	mac := "52:54:00:aa:00:01"
	// The fleet server, in this (the original) namespace.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "img"), []byte("image"), 0o644)
	yaml := "images:\n  - {name: base, version: \"1\", digest: sha256:6105d6cc76af400325e94d588ce511be5bfdbb73b437dc51eca43917d7a43e3d, path: " + filepath.Join(dir, "img") + "}\n" +
		"hosts:\n  - {mac: \"" + mac + "\", hostname: web-07, image: base@1}\n"
	os.WriteFile(filepath.Join(dir, "fleet.yaml"), []byte(yaml), 0o644)
	fl, err := fleet.New(fleet.Options{Dir: dir, DB: "sqlite://" + filepath.Join(dir, "fleet.db"), OpenReads: true, PollInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		// The digest above is the sha256 of "image".
		t.Fatal(err)
	}
	defer fl.Close()
	srv := httptest.NewServer(fl.Handler())
	defer srv.Close()

	var facts checkin.Facts
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Fatal(err)
		}
		defer func() { netns.Set(orig); ns.Close() }()
		la := netlink.NewLinkAttrs()
		la.Name = "eno1"
		la.HardwareAddr, _ = net.ParseMAC(mac)
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "leaf12-e12"}); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"eno1", "leaf12-e12"} {
			l, _ := netlink.LinkByName(n)
			if err := netlink.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		// A veth's carrier comes up a moment after LinkSetUp; the agent
		// listens only on NICs whose link is up, as on a real host.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			l, err := netlink.LinkByName("eno1")
			if err == nil && l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("eno1 not up 5 s after LinkSetUp: %v", err)
			}
		}
		swi, _ := net.InterfaceByName("leaf12-e12")
		tx, err := packet.Listen(swi, packet.Raw, lldp.EtherType, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Close()
		frame := lldp.Frame(swi.HardwareAddr, checkin.Neighbor{ChassisID: "mac " + swi.HardwareAddr.String(), PortID: "Ethernet12",
			PortDescription: "web-07 eno1", SystemName: "leaf-12", TTL: 120, VLAN: 120})
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				tx.WriteTo(frame, &packet.Addr{HardwareAddr: lldp.Multicast})
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
		// The agent's reading, on this thread (in the namespace).
		facts = System{Root: "/"}.Facts(context.Background(), 5*time.Second)
	}()
	var nic *checkin.NIC
	for i := range facts.NICs {
		if facts.NICs[i].Name == "eno1" {
			nic = &facts.NICs[i]
		}
	}
	if nic == nil || nic.LLDP == nil || nic.MAC != mac || !nic.Link {
		t.Fatalf("facts NICs = %+v, want eno1 (%s, link up) with an LLDP neighbour", facts.NICs, mac)
	}
	// The agent's check-in, then the inventory.
	srvAPI := &HTTPServer{Base: srv.URL}
	if err := srvAPI.Checkin(context.Background(), &checkin.Checkin{MAC: mac, Source: checkin.SourceAgent, Facts: &facts}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/api/hosts/web-07")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var inv fleet.HostInventory
	if err := json.NewDecoder(resp.Body).Decode(&inv); err != nil {
		t.Fatal(err)
	}
	var got *checkin.Neighbor
	if inv.Facts != nil {
		for _, n := range inv.Facts.NICs {
			if n.Name == "eno1" {
				got = n.LLDP
			}
		}
	}
	if got == nil || got.SystemName != "leaf-12" || got.PortID != "Ethernet12" || got.PortDescription != "web-07 eno1" || got.VLAN != 120 {
		t.Fatalf("GET /api/hosts/web-07: eno1's neighbour %+v, want leaf-12 port Ethernet12 (VLAN 120)", got)
	}
	t.Logf("web-07 eno1: switch %s (%s), port %s %q, VLAN %d", got.SystemName, got.ChassisID, got.PortID, got.PortDescription, got.VLAN)
}
