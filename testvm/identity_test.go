package testvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The host's identity from the fleet at boot: a PXE host with its image
// on a local disk gets hostname, network, identity values and files:
// from the fleet YAML through imaged's desired answer, and keeps them
// from the cache on hostpart when the server is down.

// identCmdline is the lab's kernel command line for these hosts: with
// imaged killed, the init's DHCP waits this budget before the cache
// applies, so it is shorter than labCmdline's (DHCP in the lab takes
// about a second even under TCG).
const identCmdline = "console=ttyS0 panic=-1 hn.hostpart=LABEL=hostpart hn.checkin=30s"

// identYAML is the fleet: one host with a static address, identity
// values and two templated files.
// owner ("" for none) needs the image's /etc/group.
func identYAML(digest, path, mac, addr, owner string) string {
	if owner != "" {
		owner = "\n        owner: " + owner
	}
	return fmt.Sprintf(`images:
  - {name: ident, version: "1", digest: %s, path: %s}
hosts:
  - mac: %s
    hostname: pxe-ident
    image: ident@1
    network:
      interface: %s
      address: %s
      gateway: %s
      dns: %s
    identity: {certname: pxe-ident.example.com, rack: r12}
    files:
      - path: /etc/hntest/want-address
        content: "{{index .Addresses 0}}\n"
      - path: /etc/hntest/puppet.conf
        mode: "0640"%s
        content: "certname = {{.Identity.certname}} ip = {{.IP}}\n"
`, digest, path, mac, mac, addr, labServer, labServer, owner)
}

// bootDebian PXE-boots the lab's host into its Debian image and returns
// the console once the report service is done.
func (fl *fetchLab) bootDebian(image string) string {
	fl.t.Helper()
	vm := fl.start1()
	if _, err := vm.Expect(`HNTEST booted image=`+image, debianBootTimeout); err != nil {
		fl.t.Fatal(err)
	}
	if _, err := vm.Expect(`HNTEST end`, 180*time.Second); err != nil {
		fl.t.Fatal(err)
	}
	fl.t.Logf("PXE boot to systemd's report: %v", vm.Since().Round(time.Millisecond))
	con := vm.Console()
	vm.Wait(60 * time.Second)
	vm.Kill()
	return con
}

// TestPXEIdentityNetworkd: the fleet YAML gives a host a static address,
// identity values and files:; it PXE-boots into a Debian image whose
// systemd-networkd is enabled. The init takes the configuration from
// imaged's desired answer, writes it into the overlay, hands the NIC
// over (its DHCP lease removed), and in the booted system networkd has
// configured the fleet's address and not the init's lease; the files are
// there with their mode and owner.
func TestPXEIdentityNetworkd(t *testing.T) {
	f := debianImages(t)
	img := images["debian1"]
	const mac, addr = "52:54:00:77:00:40", labNet + ".50/24"
	fl := newFleetLab(t, mac, identYAML(fileDigest(t, img), img, mac, addr, "root:adm"), identCmdline)
	fl.disk = filepath.Join(t.TempDir(), "disk.img")
	if err := f.Run(context.Background(), "disk", "--out", fl.disk, "--size", "2G", "--root", img); err != nil {
		t.Fatal(err)
	}

	con := fl.bootDebian("debian1")
	wantConsole(t, con,
		"identity: hostname pxe-ident (from kernel command line)", // the iPXE script's hn.hostname=
		"identity: network.addressing "+addr+" via "+labServer+" (from imaged)",
		"identity: identity.certname pxe-ident.example.com (from imaged)",
		"identity: files[/etc/hntest/puppet.conf]",
		"identity: saved imaged's configuration",
		"boot NIC handed over to the image",
		"HNTEST hostname=pxe-ident",
		"HNTEST networkd=active",
		"HNTEST file /etc/hntest/puppet.conf 640:root:adm certname = pxe-ident.example.com ip = "+labNet+".50",
		"HN_CERTNAME='pxe-ident.example.com' HN_RACK='r12'",
	)
	lease := regexp.MustCompile(`network up lease="?(\d+\.\d+\.\d+\.\d+)/`).FindStringSubmatch(con)
	if lease == nil {
		t.Fatalf("console lacks the init's DHCP lease\n%s", tail(con, 80))
	}
	m := regexp.MustCompile(`HNTEST addresses=(.*)`).FindStringSubmatch(con)
	if m == nil {
		t.Fatalf("console lacks the booted system's addresses\n%s", tail(con, 80))
	}
	addrs := m[1]
	t.Logf("booted system's addresses: %s(the init's lease was %s)", addrs, lease[1])
	if !strings.Contains(addrs, "="+addr) {
		t.Errorf("the booted system's addresses are %q, want the fleet's %s (configured by networkd)", addrs, addr)
	}
	if strings.Contains(addrs, "="+lease[1]+"/") {
		t.Errorf("the init's DHCP lease %s is still configured in the booted system: %q", lease[1], addrs)
	}
	if t.Failed() {
		t.Logf("console:\n%s", tail(con, 120))
	}
}

// TestPXEIdentityServerDown: a host boots once with imaged up and gets
// its configuration (cached on hostpart as .hnboot/host.json); at the
// next boot imaged dies once the host has its kernel and initramfs, and
// the init gives the host the same network, identity values and files
// from the cache, and says so.
func TestPXEIdentityServerDown(t *testing.T) {
	imgs := pxeImages(t)
	const mac, addr = "52:54:00:77:00:41", labNet + ".51/24"
	fl := newFleetLab(t, mac, identYAML(fileDigest(t, imgs["PA"]), imgs["PA"], mac, addr, ""), identCmdline)
	fl.disk = pxeDisk(t, imgs["PA"])
	fl.noEntropy = true

	puppet := fmt.Sprintf("identity: files[/etc/hntest/puppet.conf] %d bytes", len("certname = pxe-ident.example.com ip = "+labNet+".51\n"))
	wantSame := []string{
		"HNTEST hostname=pxe-ident",
		"HNTEST file /etc/hntest/puppet.conf certname = pxe-ident.example.com ip = " + labNet + ".51",
		"HNTEST file /etc/hntest/want-address " + addr,
		"HN_CERTNAME='pxe-ident.example.com' HN_RACK='r12'",
	}
	con := fl.boot("PA")
	wantConsole(t, con, append(wantSame, puppet+" (from imaged)", "identity: saved imaged's configuration")...)
	var cached []byte
	if err := WithHostpart(fl.disk, func(dir string) error {
		var err error
		cached, err = os.ReadFile(filepath.Join(dir, ".hnboot", "host.json"))
		return err
	}); err != nil {
		t.Fatalf("the cache after a boot with imaged: %v", err)
	}
	if !strings.Contains(string(cached), addr) || !strings.Contains(string(cached), "puppet.conf") {
		t.Errorf(".hnboot/host.json =\n%s", cached)
	}

	// The server goes down while the host boots: after iPXE got the
	// kernel and the initramfs, before the init asks.
	before := strings.Count(fl.log.String(), "/initramfs 200")
	vm := fl.start1()
	deadline := time.Now().Add(2 * bootTimeout)
	for strings.Count(fl.log.String(), "/initramfs 200") == before {
		if time.Now().After(deadline) {
			t.Fatalf("iPXE did not get the initramfs\n%s", tail(fl.log.String(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	fl.kill()
	con = expectBooted(t, vm, "PA")
	vm.Wait(60 * time.Second)
	vm.Kill()
	wantConsole(t, con, append(wantSame,
		"identity: the network did not come up; using the cache",
		"identity: network.addressing "+addr+" via "+labServer+" (from cache)",
		"identity: identity.certname pxe-ident.example.com (from cache)",
		puppet+" (from cache)")...)
	if strings.Contains(con, "identity: saved imaged's configuration") {
		t.Errorf("a boot without a server rewrote the cache")
	}
	// Without a server the network wait ends by its budget, not by the
	// kernel's random pool (two minutes on this CPU without an RNG).
	m := regexp.MustCompile(`hninit: \[\s*([0-9.]+)\] identity: the network did not come up`).FindStringSubmatch(con)
	if m == nil {
		t.Fatal("no \"the network did not come up\" line with a timestamp")
	}
	if sec, _ := strconv.ParseFloat(m[1], 64); sec > 45 {
		t.Errorf("the init gave up on the network %s s after the kernel started, want within 45 s", m[1])
	}
}
