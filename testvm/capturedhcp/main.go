// Command capturedhcp records the DHCP packets real firmware sends, as
// test fixtures for pxe's DHCP decision (pxe/testdata/captures, replayed by
// pxe's tests and seeded into FuzzDHCPReply).
//
// For each scenario it creates a network namespace with a bridge (br0,
// 10.77.0.1/24) and a tap, boots one QEMU guest (TCG) whose NIC is
// plugged into the tap, and answers it with the real decision (pxe.Reply
// on UDP 67, pxe.ReplyBootServer on 4011) and a pxe.Server for TFTP and
// HTTP, so the client goes on from DISCOVER to REQUEST and, once it is
// iPXE, asks again. The raw UDP payload of the first packet of each kind
// (message type, PXE firmware / iPXE / HTTP boot client, port) is saved as
// NAME.KIND.TYPE.bin, and a line in README.md says how it was made. The
// proxy scenarios put dnsmasq in a second namespace on the same bridge as
// the address server. A scenario ends when the guest fetches its iPXE
// script (all its DHCP is done by then), or at -timeout. The namespaces
// are deleted at the end; no packet leaves them.
//
// Run as root, one QEMU at a time (TCG is slow on a shared machine):
//
//	go run ./testvm/capturedhcp                      # every scenario
//	go run ./testvm/capturedhcp -scenario ovmf-pxe   # one
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/hnboot/hnboot/pxe"
	"github.com/hnboot/hnboot/testvm"
)

const (
	labNet     = "10.77.0"
	labServer  = labNet + ".1"
	labHTTP    = labServer + ":8080"
	labDnsmasq = labNet + ".2"
	poolRange  = labNet + ".100-" + labNet + ".150"
)

// scenario is one client to capture.
type scenario struct {
	name     string
	doc      string // what the client is, for the README
	uefi     bool
	device   string // QEMU -device, without netdev= and mac=
	mac      string
	proxy    bool   // imaged in proxy mode beside dnsmasq (else full mode)
	firmware string // Debian packages whose versions the README records
	// answer picks the requests the server answers; nil answers all. The
	// HTTP boot scenario stays silent to PXE so the firmware moves on to
	// its HTTP boot option.
	answer func(*dhcpv4.DHCPv4) bool
	// chainBIOS answers the option ROM as if it were plain PXE (without
	// its iPXE user class) so it chain-loads undionly.kpxe, as a BIOS
	// server's vendor PXE ROM would; undionly's own packets, after the
	// TFTP transfer, are saved as kind "undionly".
	chainBIOS bool
}

var scenarios = []scenario{
	{name: "seabios-ipxe", doc: "SeaBIOS with QEMU's iPXE option ROM for e1000 (efi-e1000.rom, legacy part): a BIOS client that is iPXE from its first packet",
		device: "e1000", mac: "52:54:00:c0:00:01", firmware: "seabios ipxe-qemu"},
	{name: "seabios-ipxe-proxy", doc: "The client of seabios-ipxe with imaged in proxy mode and dnsmasq handing out the address (its REQUEST names dnsmasq)",
		device: "e1000", mac: "52:54:00:c0:00:02", proxy: true, firmware: "seabios ipxe-qemu"},
	{name: "seabios-undionly", doc: "Debian's undionly.kpxe chain-loaded by TFTP from SeaBIOS's iPXE ROM (the ROM answered as if it were plain PXE): iPXE over a BIOS PXE stack, as on a server whose own PXE ROM loads undionly.kpxe",
		device: "e1000", mac: "52:54:00:c0:00:07", firmware: "seabios ipxe-qemu ipxe", chainBIOS: true},
	{name: "ovmf-ipxe", doc: "OVMF with QEMU's iPXE EFI option ROM for e1000 (efi-e1000.rom): a UEFI client that is iPXE from its first packet",
		uefi: true, device: "e1000", mac: "52:54:00:c0:00:03", firmware: "ovmf ipxe-qemu"},
	{name: "ovmf-pxe", doc: "OVMF's own EDK2 PXE (virtio-net with no option ROM): plain firmware PXE, then Debian's ipxe.efi it chain-loads by TFTP",
		uefi: true, device: "virtio-net-pci,romfile=", mac: "52:54:00:c0:00:04", firmware: "ovmf ipxe"},
	{name: "ovmf-pxe-proxy", doc: "OVMF's EDK2 PXE with imaged in proxy mode beside dnsmasq (EDK2 takes the boot file from the proxy offer, option 43.6 = 8, and does not ask on port 4011)",
		uefi: true, device: "virtio-net-pci,romfile=", mac: "52:54:00:c0:00:05", proxy: true, firmware: "ovmf ipxe"},
	{name: "ovmf-httpboot", doc: "OVMF's EDK2 UEFI HTTP boot (virtio-net, no option ROM; PXE left unanswered so the firmware moves on to HTTP boot), then ipxe.efi fetched by HTTP",
		uefi: true, device: "virtio-net-pci,romfile=", mac: "52:54:00:c0:00:06", firmware: "ovmf ipxe",
		answer: func(m *dhcpv4.DHCPv4) bool { return kind(m) != "firmware" }},
}

var (
	outDir   = flag.String("out", "", "where captures go (default MODULE/pxe/testdata/captures)")
	only     = flag.String("scenario", "", "comma-separated scenarios to run (default all: "+names()+")")
	timeout  = flag.Duration("timeout", 12*time.Minute, "per scenario: give up waiting for the script fetch after this long")
	innerArg = flag.String("inner", "", "internal: run this scenario inside the namespace")
	verbose  = flag.Bool("v", false, "copy the guest's console to stderr")
)

func names() string {
	var n []string
	for _, s := range scenarios {
		n = append(n, s.name)
	}
	return strings.Join(n, ",")
}

func main() {
	flag.Parse()
	var err error
	if *innerArg != "" {
		err = inner(find(*innerArg))
	} else {
		err = outer()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "capturedhcp:", err)
		os.Exit(1)
	}
}

func find(name string) *scenario {
	for i := range scenarios {
		if scenarios[i].name == name {
			return &scenarios[i]
		}
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "capturedhcp: "+format+"\n", args...)
}

// outer runs each scenario, one at a time, in a namespace of its own.
func outer() error {
	if os.Geteuid() != 0 {
		return errors.New("run as root (network namespaces and tap devices)")
	}
	if _, err := testvm.QEMU(); err != nil {
		return err
	}
	if *outDir == "" {
		root, err := testvm.ModuleRoot()
		if err != nil {
			return err
		}
		*outDir = filepath.Join(root, "pxe", "testdata", "captures")
	}
	out, err := filepath.Abs(*outDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	var run []*scenario
	if *only == "" {
		for i := range scenarios {
			run = append(run, &scenarios[i])
		}
	} else {
		for _, n := range strings.Split(*only, ",") {
			s := find(strings.TrimSpace(n))
			if s == nil {
				return fmt.Errorf("unknown scenario %q (have %s)", n, names())
			}
			run = append(run, s)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var failed []string
	for _, s := range run {
		if err := runScenario(self, out, s); err != nil {
			logf("%s: %v", s.name, err)
			failed = append(failed, s.name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("scenarios failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

func runScenario(self, out string, s *scenario) error {
	logf("%s: %s", s.name, s.doc)
	ns, err := testvm.NewNetNS("hncap")
	if err != nil {
		return err
	}
	defer func() {
		if err := ns.Close(); err != nil {
			logf("remove namespace %s: %v", ns.Name, err)
		}
	}()
	if err := ns.Bridge("br0", labServer+"/24"); err != nil {
		return err
	}
	if err := ns.Tap("tap0", "br0"); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if s.proxy {
		if _, err := exec.LookPath("dnsmasq"); err != nil {
			return fmt.Errorf("dnsmasq not found: %s", testvm.InstallHint)
		}
		other, err := testvm.NewNetNS("hncapdhcp")
		if err != nil {
			return err
		}
		defer other.Close()
		if err := ns.Link("br0", other, "dhcp0", labDnsmasq+"/24"); err != nil {
			return err
		}
		leases, err := os.MkdirTemp("", "hncap-dnsmasq-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(leases)
		dns := other.Command(ctx, "dnsmasq", "--no-daemon", "--port=0", "--interface=dhcp0", "--bind-interfaces",
			"--dhcp-range="+labNet+".50,"+labNet+".90,255.255.255.0,1h", "--dhcp-leasefile="+filepath.Join(leases, "leases"),
			"--no-resolv", "--no-hosts", "--conf-file=/dev/null")
		if err := dns.Start(); err != nil {
			return fmt.Errorf("dnsmasq: %w", err)
		}
		defer dns.Wait()
		defer dns.Process.Kill()
	}
	cmd := ns.Command(ctx, self, "-inner", s.name, "-out", out, "-timeout", timeout.String(), fmt.Sprintf("-v=%v", *verbose))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// kind says what sort of client sent m: "ipxe" (user class iPXE),
// "firmware" (PXEClient, not iPXE), "httpclient" (UEFI HTTP boot), "dhcp".
func kind(m *dhcpv4.DHCPv4) string {
	if bytes.Equal(m.Options.Get(dhcpv4.OptionUserClassInformation), []byte("iPXE")) {
		return "ipxe"
	}
	switch vc := m.ClassIdentifier(); {
	case strings.HasPrefix(vc, "PXEClient"):
		return "firmware"
	case strings.HasPrefix(vc, "HTTPClient"):
		return "httpclient"
	}
	return "dhcp"
}

// capture keeps the first packet of each kind.
type capture struct {
	s     *scenario
	out   string
	mu    sync.Mutex
	saved map[string]bool
	files []string
	about map[string]string // file -> what the packet says
	// chained: the guest has fetched a first stage by TFTP.
	chained bool
}

func (c *capture) keep(raw []byte, m *dhcpv4.DHCPv4, port int) {
	k := kind(m)
	c.mu.Lock()
	if c.s.chainBIOS && c.chained && k == "ipxe" {
		k = "undionly"
	}
	c.mu.Unlock()
	name := fmt.Sprintf("%s.%s.%s", c.s.name, k, strings.ToLower(m.MessageType().String()))
	if port != dhcpv4.ServerPort {
		name += fmt.Sprintf("-%d", port)
	}
	name += ".bin"
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.saved[name] {
		return
	}
	c.saved[name] = true
	if err := os.WriteFile(filepath.Join(c.out, name), raw, 0o644); err != nil {
		logf("save %s: %v", name, err)
		return
	}
	c.files = append(c.files, name)
	c.about[name] = about(m)
	logf("saved %s (%d bytes): %s", name, len(raw), oneLine(m))
}

// about describes a capture for the README: the options the decision
// reads.
func about(m *dhcpv4.DHCPv4) string {
	var arch []string
	for _, a := range m.ClientArch() {
		arch = append(arch, fmt.Sprint(uint16(a)))
	}
	s := fmt.Sprintf("%s, option 60 %q, option 93 %s", m.MessageType(), m.ClassIdentifier(), strings.Join(arch, ","))
	if uc := m.Options.Get(dhcpv4.OptionUserClassInformation); uc != nil {
		s += fmt.Sprintf(", option 77 %q", uc)
	}
	return s
}

func oneLine(m *dhcpv4.DHCPv4) string {
	return fmt.Sprintf("%s xid=%s mac=%s class=%q arch=%v user=%q", m.MessageType(), m.TransactionID, m.ClientHWAddr,
		m.ClassIdentifier(), m.ClientArch(), m.Options.Get(dhcpv4.OptionUserClassInformation))
}

// inner runs inside the namespace: DHCP with the real decision, TFTP and
// HTTP from pxe.Server, one QEMU guest.
func inner(s *scenario) error {
	if s == nil {
		return errors.New("no such scenario")
	}
	mac, err := net.ParseMAC(s.mac)
	if err != nil {
		return err
	}
	cache, err := os.MkdirTemp("", "hncap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)

	// The image does not exist: the guest gets its script, fails to fetch
	// the kernel and stops; its DHCP is all we want.
	dir := pxe.NewStaticDirectory()
	dir.Add(pxe.HostBoot{MAC: mac, Hostname: s.name, Image: pxe.ImageRef{Name: "capture", Version: "1",
		Digest: "sha256:" + strings.Repeat("0", 64), Path: filepath.Join(cache, "none.img")}})

	scripted := make(chan struct{})
	var once sync.Once
	c := &capture{s: s, out: *outDir, saved: map[string]bool{}, about: map[string]string{}}
	rec := pxe.RecorderFunc(func(e pxe.Event) {
		if e.Kind == pxe.KindTFTP && strings.HasPrefix(e.Detail, "sent ") {
			c.mu.Lock()
			c.chained = true
			c.mu.Unlock()
		}
		if e.Kind == pxe.KindHTTP && strings.Contains(e.Detail, "GET /boot/") {
			once.Do(func() { close(scripted) })
		}
		if e.Kind != pxe.KindDHCPIgnored {
			logf("event %s %s %s %s", e.Kind, e.MAC, e.Detail, e.Err)
		}
	})
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := pxe.New(pxe.Config{Interface: "br0", DHCP: pxe.DHCPConfig{Mode: "off"}, HTTPAddr: labHTTP,
		CacheDir: cache, Directory: dir, Recorder: rec, Log: log, AnswerRouterSolicit: true})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Run(ctx)

	pool, err := pxe.ParsePool(poolRange, time.Hour)
	if err != nil {
		return err
	}
	cfg := &pxe.DHCPConfig{Mode: pxe.ModeFull, ServerIP: net.ParseIP(labServer).To4(), HTTPBase: "http://" + labHTTP,
		Pool: pool, Netmask: net.CIDRMask(24, 32)}
	if s.proxy {
		cfg = &pxe.DHCPConfig{Mode: pxe.ModeProxy, ServerIP: cfg.ServerIP, HTTPBase: cfg.HTTPBase}
	}
	for _, port := range []int{dhcpv4.ServerPort, 4011} {
		conn, err := server4.NewIPv4UDPConn("br0", &net.UDPAddr{IP: net.IPv4zero, Port: port})
		if err != nil {
			return fmt.Errorf("listen :%d: %w", port, err)
		}
		defer conn.Close()
		go serveDHCP(conn, port, cfg, dir, s, c, rec)
	}

	vm, err := testvm.Start(ctx, testvm.Options{UEFI: s.uefi, Memory: 512, Console: console(), Name: s.name,
		Extra: []string{"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
			"-device", s.device + ",netdev=n0,mac=" + s.mac + ",bootindex=0"}})
	if err != nil {
		return err
	}
	defer vm.Kill()
	start := time.Now()
	exited := make(chan error, 1)
	go func() { exited <- vm.Wait(*timeout + time.Minute) }()
	var runErr error
	select {
	case <-scripted:
		time.Sleep(2 * time.Second) // a late packet of the same exchange
		logf("%s: script fetched after %v", s.name, time.Since(start).Round(time.Second))
	case err := <-exited:
		runErr = fmt.Errorf("guest stopped before fetching its script (%v); console:\n%s", err, tail(vm.Console(), 30))
	case <-time.After(*timeout):
		runErr = fmt.Errorf("no script fetch within %v; console:\n%s", *timeout, tail(vm.Console(), 30))
	}
	if err := writeReadme(c, testvm.Options{UEFI: s.uefi, Memory: 512, OVMFVars: "VARS.fd",
		Extra: []string{"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
			"-device", s.device + ",netdev=n0,mac=" + s.mac + ",bootindex=0"}}); err != nil {
		return err
	}
	return runErr
}

func console() *os.File {
	if *verbose {
		return os.Stderr
	}
	return nil
}

// serveDHCP reads raw packets (so the capture is the client's bytes, not
// a re-encoding), saves them, and answers with the real decision.
func serveDHCP(conn net.PacketConn, port int, cfg *pxe.DHCPConfig, dir pxe.Directory, s *scenario, c *capture, rec pxe.Recorder) {
	buf := make([]byte, 65536)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			return
		}
		raw := append([]byte(nil), buf[:n]...)
		m, err := dhcpv4.FromBytes(raw)
		if err != nil || m.OpCode != dhcpv4.OpcodeBootRequest {
			continue
		}
		if m.ClientHWAddr.String() != s.mac {
			continue
		}
		c.keep(raw, m, port)
		if s.answer != nil && !s.answer(m) {
			continue
		}
		c.mu.Lock()
		asFirmware := s.chainBIOS && !c.chained
		c.mu.Unlock()
		if asFirmware {
			// Decide on a copy without the user class: the ROM is then
			// a plain PXE client to the decision and gets undionly.kpxe.
			if m, err = dhcpv4.FromBytes(raw); err != nil {
				continue
			}
			m.Options.Del(dhcpv4.OptionUserClassInformation)
		}
		var resp *dhcpv4.DHCPv4
		var reason string
		if port == 4011 {
			resp, reason = pxe.ReplyBootServer(m, cfg, dir)
		} else {
			resp, reason = pxe.Reply(m, cfg, dir)
		}
		logf("%s on :%d -> %s", oneLine(m), port, reason)
		if resp == nil {
			continue
		}
		dst := net.Addr(&net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort})
		if port == 4011 {
			dst = peer
		}
		if _, err := conn.WriteTo(resp.ToBytes(), dst); err != nil {
			logf("send to %v: %v", dst, err)
		}
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// writeReadme adds or replaces, in README.md, one line per capture of this
// run and the section of this scenario (what the client is, versions,
// date, the QEMU command), keeping those of other scenarios.
func writeReadme(c *capture, o testvm.Options) error {
	path := filepath.Join(c.out, "README.md")
	lines := map[string]string{}    // capture file -> its line
	sections := map[string]string{} // scenario -> its section
	if b, err := os.ReadFile(path); err == nil {
		cur := ""
		for _, l := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(l, "### "); ok {
				cur = name
			}
			if cur != "" {
				sections[cur] += l + "\n"
			} else if name, ok := fileOfLine(l); ok {
				lines[name] = l
			}
		}
	}
	qv := "qemu-system-x86_64 ?"
	if out, err := exec.Command("qemu-system-x86_64", "--version").Output(); err == nil {
		qv = strings.Replace(strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]), "QEMU emulator version", "QEMU", 1)
	}
	var fw []string
	for _, p := range strings.Fields(c.s.firmware) {
		v, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", p).Output()
		if err != nil {
			v = []byte("?")
		}
		fw = append(fw, p+" "+string(v))
	}
	date := time.Now().UTC().Format("2006-01-02")
	for _, f := range c.files {
		lines[f] = fmt.Sprintf("- `%s`: %s; %s, %s; %s; `go run ./testvm/capturedhcp -scenario %s`",
			f, c.about[f], qv, strings.Join(fw, ", "), date, c.s.name)
	}
	vars := ""
	if o.UEFI {
		vars = " (VARS.fd: a fresh copy of " + testvm.OVMFVarsTemplate + ")"
	}
	sections[c.s.name] = fmt.Sprintf("### %s\n\n%s. %s; %s; captured %s under TCG with%s\n\n    qemu-system-x86_64 %s\n\n",
		c.s.name, c.s.doc, qv, strings.Join(fw, ", "), date, vars, strings.Join(o.Args(), " "))

	var b strings.Builder
	b.WriteString(readmeHead)
	for _, n := range sortedKeys(lines) {
		b.WriteString(lines[n] + "\n")
	}
	b.WriteString("\n## How each scenario ran\n\n")
	for _, n := range sortedKeys(sections) {
		b.WriteString(strings.TrimRight(sections[n], "\n") + "\n\n")
	}
	return os.WriteFile(path, []byte(strings.TrimRight(b.String(), "\n")+"\n"), 0o644)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func fileOfLine(l string) (string, bool) {
	rest, ok := strings.CutPrefix(l, "- `")
	if !ok {
		return "", false
	}
	name, _, ok := strings.Cut(rest, "`")
	if !ok || !strings.HasSuffix(name, ".bin") {
		return "", false
	}
	return name, true
}

const readmeHead = `# DHCP packets of real clients

Each ` + "`NAME.KIND.TYPE[-PORT].bin`" + ` is the UDP payload of one packet a QEMU
guest sent, byte for byte, as read from the server's socket. KIND is
` + "`firmware`" + ` (option 60 PXEClient, no iPXE user class: plain firmware PXE),
` + "`ipxe`" + ` (user class iPXE), ` + "`undionly`" + ` (iPXE's undionly.kpxe after the chain)
or ` + "`httpclient`" + ` (UEFI HTTP boot); TYPE is the DHCP message type; PORT is
4011 when it went to the PXE boot server port. The packets were answered
by pxe.Reply (full mode, pool 10.77.0.100-150 on 10.77.0.1, or proxy
mode beside dnsmasq on 10.77.0.2), so later packets follow real answers;
ovmf-httpboot's PXE packets were left unanswered and seabios-undionly's
ROM answered as plain PXE, as their sections below say.
The guests' MACs are 52:54:00:c0:00:0N. pxe's tests replay them (with the
MAC rewritten to a known or an unknown host) and FuzzDHCPReply starts
from them. Made again, as root, by ` + "`go run ./testvm/capturedhcp [-scenario NAME]`" + `,
which rewrites the lines of the scenarios it ran.

`
