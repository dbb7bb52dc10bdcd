package testvm

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// PXE end-to-end: imaged serve runs in a network namespace on a bridge;
// QEMU guests plug tap devices into it and boot with QEMU's own iPXE ROMs
// (BIOS) or OVMF's PXE (UEFI). Nothing leaves the namespace.

const (
	labNet    = "10.77.0"
	labServer = labNet + ".1"
	labHTTP   = labServer + ":8080"
	// labAdmin is imaged serve's admin API in the lab: loopback of the
	// namespace, which the boot network (the bridge) does not reach.
	labAdmin = "127.0.0.1:8081"
	// What every PXE-booted test host gets on its command line. hn.checkin
	// is generous: TCG on a shared machine is slow.
	labCmdline = "console=ttyS0 panic=-1 hn.hostpart=LABEL=hostpart hn.checkin=60s"
)

var (
	pxeOnce sync.Once
	pxeImgs map[string]string // PA, PB: images that carry /boot/vmlinuz and /boot/initramfs
	pxeErr  error
)

// pxeImages builds, once, two test images that ship the test kernel and
// the hnboot initramfs in /boot, as real images do; imaged extracts them.
func pxeImages(t *testing.T) map[string]string {
	t.Helper()
	f := fixture(t)
	pxeOnce.Do(func() {
		pxeImgs = map[string]string{}
		for _, name := range []string{"PA", "PB"} {
			tree := filepath.Join(f.Dir, "tree-"+name)
			os.RemoveAll(tree)
			if pxeErr = RootTree(tree, RootOptions{Name: name, Confirm: true}); pxeErr != nil {
				return
			}
			os.MkdirAll(filepath.Join(tree, "boot"), 0o755)
			for src, dst := range map[string]string{f.Kernel: "boot/vmlinuz", f.Initramfs: "boot/initramfs"} {
				b, err := os.ReadFile(src)
				if err != nil {
					pxeErr = err
					return
				}
				if pxeErr = os.WriteFile(filepath.Join(tree, dst), b, 0o644); pxeErr != nil {
					return
				}
			}
			img := filepath.Join(f.Dir, name+".img")
			if pxeErr = f.Run(context.Background(), "rootfs", "--from", tree, "--out", img); pxeErr != nil {
				return
			}
			pxeImgs[name] = img
		}
	})
	if pxeErr != nil {
		t.Fatalf("building PXE test images: %v", pxeErr)
	}
	return pxeImgs
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// syncLog collects a process's output for assertions.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lab is a namespace with a bridge, tap devices and imaged serve.
type lab struct {
	ns  *NetNS
	log *syncLog
}

func newLab(t *testing.T, taps int) *lab {
	t.Helper()
	fixture(t)
	ns, err := NewNetNS("hnpxe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("remove namespace: %v", err)
		}
	})
	if err := ns.Bridge("br0", labServer+"/24"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < taps; i++ {
		if err := ns.Tap(fmt.Sprintf("tap%d", i), "br0"); err != nil {
			t.Fatal(err)
		}
	}
	return &lab{ns: ns, log: &syncLog{}}
}

// serve starts imaged serve in the namespace and waits until it serves.
func (l *lab) serve(t *testing.T, args ...string) {
	t.Helper()
	f := fixture(t)
	// --answer-rs: the lab bridge has no IPv6 router, and without an
	// advertisement iPXE waits ~15 s in "Configuring" before its script.
	all := append([]string{"serve", "--interface", "br0", "--http", labHTTP, "--admin", labAdmin,
		"--cache", t.TempDir(), "--cmdline", labCmdline, "--log-level", "debug", "--answer-rs"}, args...)
	cmd := l.ns.Command(context.Background(), f.Imaged, all...)
	cmd.Stdout, cmd.Stderr = l.log, l.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if testing.Verbose() || t.Failed() {
			for _, line := range strings.Split(l.log.String(), "\n") {
				if strings.Contains(line, "msg=event") && !strings.Contains(line, "kind=dhcp-ignored") {
					t.Log("imaged: " + line)
				}
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("imaged serve did not stop cleanly on SIGTERM: %v\n%s", err, tail(l.log.String(), 20))
			}
		case <-time.After(40 * time.Second):
			cmd.Process.Kill()
			t.Errorf("imaged serve ignored SIGTERM for 40 s")
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(l.log.String(), "msg=serving") {
		select {
		case err := <-done:
			t.Fatalf("imaged serve exited: %v\n%s", err, l.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("imaged serve not ready after 60 s\n%s", l.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLog waits until the server log has a line matching every pattern.
func (l *lab) waitLog(t *testing.T, timeout time.Duration, patterns ...string) string {
	t.Helper()
	var rxs []*regexp.Regexp
	for _, p := range patterns {
		rxs = append(rxs, regexp.MustCompile(p))
	}
	deadline := time.Now().Add(timeout)
	for {
		sc := bufio.NewScanner(strings.NewReader(l.log.String()))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
	lines:
		for sc.Scan() {
			for _, rx := range rxs {
				if !rx.MatchString(sc.Text()) {
					continue lines
				}
			}
			return sc.Text()
		}
		if time.Now().After(deadline) {
			t.Fatalf("server log has no line matching %q\n%s", patterns, tail(l.log.String(), 60))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pxeHost is one guest.
type pxeHost struct {
	tap, mac, disk string
	uefi           bool
	nic            string // QEMU NIC device; default e1000 (iPXE ROM)
	noEntropy      bool   // QEMU's default CPU, no RNG device (Options.NoEntropy)
}

func (l *lab) start(t *testing.T, h pxeHost) *VM {
	t.Helper()
	nic := h.nic
	if nic == "" {
		nic = "e1000"
	}
	vm, err := Start(context.Background(), Options{
		Disk: h.disk, UEFI: h.uefi, Netns: l.ns.Name, Memory: 1024, NoEntropy: h.noEntropy,
		Extra: []string{
			"-netdev", "tap,id=n0,ifname=" + h.tap + ",script=no,downscript=no",
			"-device", nic + ",netdev=n0,mac=" + h.mac + ",bootindex=0",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vm.Kill)
	return vm
}

// expectBooted waits for the image's init and returns the console.
func expectBooted(t *testing.T, vm *VM, image string) string {
	t.Helper()
	if _, err := vm.Expect(`HNTEST booted image=`+image, 2*bootTimeout); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(`HNTEST end`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("PXE boot to the image's init: %v", vm.Since().Round(time.Millisecond))
	return vm.Console()
}

func macRe(mac string) string { return `mac=` + regexp.QuoteMeta(mac) }

// assertServed checks the server's ledger lines for one host.
func (l *lab) assertServed(t *testing.T, mac, img string, tftp bool) {
	t.Helper()
	d := fileDigest(t, img)
	l.waitLog(t, 10*time.Second, `kind=dhcp `, macRe(mac), `boot=http://`+regexp.QuoteMeta(labHTTP)+`/boot/`)
	if tftp {
		l.waitLog(t, 10*time.Second, `kind=tftp `, macRe(mac), `sent ipxe.efi`)
	}
	// The answer that spares iPXE its ~15 s IPv6 wait (--answer-rs).
	l.waitLog(t, 10*time.Second, `answered router solicitation`, macRe(mac))
	l.waitLog(t, 10*time.Second, `kind=http `, macRe(mac), `GET /boot/`+regexp.QuoteMeta(mac)+`\.ipxe 200`)
	l.waitLog(t, 10*time.Second, `kind=http `, macRe(mac), `GET /images/`+regexp.QuoteMeta(d)+`/vmlinuz 200`)
	l.waitLog(t, 10*time.Second, `kind=http `, macRe(mac), `GET /images/`+regexp.QuoteMeta(d)+`/initramfs 200`)
	line := l.waitLog(t, 30*time.Second, `kind=checkin `, macRe(mac))
	if !strings.Contains(line, "booted="+d) || !strings.Contains(line, "source=init") || !strings.Contains(line, "ssh=SHA256:") {
		t.Errorf("check-in of %s does not report booted=%s with its SSH key:\n%s", mac, d, line)
	}
}

func pxeDisk(t *testing.T, img string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "disk.img")
	if err := fixture(t).Run(context.Background(), "disk", "--out", out, "--size", "1G", "--root", img); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPXEBootBIOS: SeaBIOS with QEMU's iPXE ROM (e1000) asks imaged (full
// DHCP mode) and, being iPXE already, gets the HTTP script at once (no
// TFTP: that is the chain-load loop breaker). The init boots the image on
// the local disk and checks in.
func TestPXEBootBIOS(t *testing.T) {
	imgs := pxeImages(t)
	l := newLab(t, 1)
	mac := "52:54:00:77:00:01"
	l.serve(t, "--dhcp-mode", "full", "--pool", labNet+".100-"+labNet+".150", "--host", mac+",pxe-bios,"+imgs["PA"])
	vm := l.start(t, pxeHost{tap: "tap0", mac: mac, disk: pxeDisk(t, imgs["PA"])})
	con := expectBooted(t, vm, "PA")
	wantConsole(t, con, "HNTEST hostname=pxe-bios", "checked in")
	l.assertServed(t, mac, imgs["PA"], false)
}

// TestPXEBootBIOSNoEntropy is TestPXEBootBIOS on QEMU's default CPU
// without an RNG device: the kernel's random pool is empty when the init
// runs its DHCP client and checks in. The check-in must still be done
// within its budget (it once waited two minutes for getrandom).
func TestPXEBootBIOSNoEntropy(t *testing.T) {
	imgs := pxeImages(t)
	l := newLab(t, 1)
	mac := "52:54:00:77:00:04"
	l.serve(t, "--dhcp-mode", "full", "--pool", labNet+".100-"+labNet+".150", "--host", mac+",pxe-noentropy,"+imgs["PA"])
	d := pxeDisk(t, imgs["PA"])
	// The first boot generates the SSH host keys; the second has them and
	// draws nothing from the pool but what its DHCP and check-in need.
	for i := 0; i < 2; i++ {
		vm := l.start(t, pxeHost{tap: "tap0", mac: mac, disk: d, noEntropy: true})
		con := expectBooted(t, vm, "PA")
		wantConsole(t, con, "HNTEST hostname=pxe-noentropy", "checked in")
		if i == 0 {
			l.assertServed(t, mac, imgs["PA"], false)
		}
		wantFast(t, con, "checked in", 10*time.Second)
		if i == 1 {
			// The first boot left a seed drawn from its initialized pool.
			wantConsole(t, con, "random seed credited=true")
		}
		if err := vm.Wait(60 * time.Second); err != nil {
			t.Fatal(err)
		}
		vm.Kill()
		if testing.Verbose() {
			for _, line := range strings.Split(con, "\n") {
				if strings.Contains(line, "random") || strings.Contains(line, "crng") {
					t.Logf("boot %d: %s", i, line)
				}
			}
		}
	}
}

// wantFast fails unless the init's console line containing msg reports
// took= at most max.
func wantFast(t *testing.T, con, msg string, max time.Duration) {
	t.Helper()
	for _, line := range strings.Split(con, "\n") {
		if !strings.Contains(line, "hninit:") || !strings.Contains(line, msg) {
			continue
		}
		m := regexp.MustCompile(`took=(\S+)`).FindStringSubmatch(line)
		if m == nil {
			continue
		}
		d, err := time.ParseDuration(m[1])
		if err != nil || d > max {
			t.Errorf("%q took %s, want at most %v:\n%s", msg, m[1], max, line)
		}
		t.Logf("%s", line)
		return
	}
	t.Errorf("console has no hninit line with %q and took=\n%s", msg, tail(con, 60))
}

// TestPXEBootUEFI: OVMF's own PXE client (virtio-net without an option
// ROM) takes ipxe.efi over TFTP (after the usual tsize probe), iPXE then
// fetches the script over HTTP; same boot and check-in.
func TestPXEBootUEFI(t *testing.T) {
	imgs := pxeImages(t)
	l := newLab(t, 1)
	mac := "52:54:00:77:00:02"
	l.serve(t, "--dhcp-mode", "full", "--pool", labNet+".100-"+labNet+".150", "--host", mac+",pxe-uefi,"+imgs["PA"])
	vm := l.start(t, pxeHost{tap: "tap0", mac: mac, disk: pxeDisk(t, imgs["PA"]), uefi: true, nic: "virtio-net-pci,romfile="})
	con := expectBooted(t, vm, "PA")
	wantConsole(t, con, "HNTEST hostname=pxe-uefi", "checked in")
	l.waitLog(t, 10*time.Second, `kind=dhcp `, macRe(mac), `boot=ipxe.efi`)
	l.assertServed(t, mac, imgs["PA"], true)
}

// TestPXEProxyBesideDnsmasq: dnsmasq (DHCP only) hands out the address
// from another namespace on the same bridge; imaged, in proxyDHCP mode,
// only adds the boot. The host ends up with dnsmasq's address.
func TestPXEProxyBesideDnsmasq(t *testing.T) {
	imgs := pxeImages(t)
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Fatalf("dnsmasq not found: %s", InstallHint)
	}
	l := newLab(t, 1)
	other, err := NewNetNS("hndhcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	if err := l.ns.Link("br0", other, "dhcp0", labNet+".2/24"); err != nil {
		t.Fatal(err)
	}
	dlog := &syncLog{}
	dns := other.Command(context.Background(), "dnsmasq", "--no-daemon", "--port=0", "--interface=dhcp0", "--bind-interfaces",
		"--dhcp-range="+labNet+".50,"+labNet+".90,255.255.255.0,1h", "--dhcp-leasefile="+filepath.Join(t.TempDir(), "leases"),
		"--no-resolv", "--no-hosts", "--log-dhcp", "--log-facility=-", "--conf-file=/dev/null")
	dns.Stdout, dns.Stderr = dlog, dlog
	if err := dns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Process.Kill(); dns.Wait() })

	mac := "52:54:00:77:00:03"
	l.serve(t, "--dhcp-mode", "proxy", "--host", mac+",pxe-proxy,"+imgs["PB"])
	vm := l.start(t, pxeHost{tap: "tap0", mac: mac, disk: pxeDisk(t, imgs["PB"])})
	con := expectBooted(t, vm, "PB")
	wantConsole(t, con, "HNTEST hostname=pxe-proxy", "checked in")
	l.waitLog(t, 10*time.Second, `kind=dhcp `, macRe(mac), `OFFER proxy boot=`)
	l.assertServed(t, mac, imgs["PB"], false)
	if !regexp.MustCompile(`DHCPACK\(dhcp0\) ` + regexp.QuoteMeta(labNet) + `\.\d+ ` + regexp.QuoteMeta(mac)).MatchString(dlog.String()) {
		t.Errorf("dnsmasq did not lease an address to %s:\n%s", mac, tail(dlog.String(), 30))
	}
	if strings.Contains(l.log.String(), "OFFER "+labNet) {
		t.Errorf("imaged offered an address in proxy mode:\n%s", tail(l.log.String(), 30))
	}
}

// TestPXETwoHostsTwoImages: two hosts boot at once, each assigned its own
// image; each gets its own script, kernel, hostname and reports its own
// image.
func TestPXETwoHostsTwoImages(t *testing.T) {
	imgs := pxeImages(t)
	l := newLab(t, 2)
	macA, macB := "52:54:00:77:00:0a", "52:54:00:77:00:0b"
	l.serve(t, "--dhcp-mode", "full", "--pool", labNet+".100-"+labNet+".150",
		"--host", macA+",pxe-a,"+imgs["PA"], "--host", macB+",pxe-b,"+imgs["PB"])
	vmA := l.start(t, pxeHost{tap: "tap0", mac: macA, disk: pxeDisk(t, imgs["PA"])})
	vmB := l.start(t, pxeHost{tap: "tap1", mac: macB, disk: pxeDisk(t, imgs["PB"])})
	var wg sync.WaitGroup
	var conA, conB string
	wg.Add(2)
	go func() { defer wg.Done(); conA = expectBootedNoFatal(t, vmA, "PA") }()
	go func() { defer wg.Done(); conB = expectBootedNoFatal(t, vmB, "PB") }()
	wg.Wait()
	if t.Failed() {
		return
	}
	wantConsole(t, conA, "HNTEST hostname=pxe-a")
	wantConsole(t, conB, "HNTEST hostname=pxe-b")
	l.assertServed(t, macA, imgs["PA"], false)
	l.assertServed(t, macB, imgs["PB"], false)
}

// expectBootedNoFatal is expectBooted for use from goroutines.
func expectBootedNoFatal(t *testing.T, vm *VM, image string) string {
	if _, err := vm.Expect(`HNTEST booted image=`+image, 3*bootTimeout); err != nil {
		t.Error(err)
		return ""
	}
	if _, err := vm.Expect(`HNTEST end`, bootTimeout); err != nil {
		t.Error(err)
		return ""
	}
	t.Logf("%s: PXE boot to the image's init: %v", image, vm.Since().Round(time.Millisecond))
	return vm.Console()
}

// TestServeRefusesSharedDHCPPort: with dnsmasq holding :67 in the same
// namespace, imaged serve refuses to start instead of sharing the port.
func TestServeRefusesSharedDHCPPort(t *testing.T) {
	f := fixture(t)
	l := newLab(t, 0)
	dns := l.ns.Command(context.Background(), "dnsmasq", "--no-daemon", "--port=0", "--interface=br0",
		"--dhcp-range="+labNet+".50,"+labNet+".90,1h", "--dhcp-leasefile="+filepath.Join(t.TempDir(), "leases"), "--conf-file=/dev/null")
	if err := dns.Start(); err != nil {
		t.Fatalf("dnsmasq: %v (%s)", err, InstallHint)
	}
	t.Cleanup(func() { dns.Process.Kill(); dns.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := l.ns.Command(context.Background(), "cat", "/proc/net/udp").Output()
		if strings.Contains(string(out), ":0043 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq did not bind :67")
		}
		time.Sleep(100 * time.Millisecond)
	}
	img := pxeImages(t)["PA"]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := l.ns.Command(ctx, f.Imaged, "serve", "--interface", "br0", "--http", labHTTP,
		"--cache", t.TempDir(), "--image", img, "--allow-unknown").CombinedOutput()
	if err == nil {
		t.Fatalf("imaged serve started beside dnsmasq on :67:\n%s", out)
	}
	if !strings.Contains(string(out), "another DHCP server already holds UDP port 67") {
		t.Errorf("refusal does not say why:\n%s", out)
	}
}
