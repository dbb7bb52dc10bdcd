package pxe

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

var (
	knownMAC   = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	unknownMAC = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9}
	serverIP   = net.IPv4(10, 0, 0, 1).To4()
	imgA       = ImageRef{Name: "A", Digest: "sha256:" + strings.Repeat("a", 64), Path: "/nonexistent/A.img"}
)

func testDir() *StaticDirectory {
	d := NewStaticDirectory()
	d.Add(HostBoot{MAC: knownMAC, Hostname: "web-1", Image: imgA})
	return d
}

func proxyCfg() *DHCPConfig {
	return &DHCPConfig{Mode: ModeProxy, ServerIP: serverIP, HTTPBase: "http://10.0.0.1:8080"}
}

func fullCfg(t *testing.T) *DHCPConfig {
	t.Helper()
	p, err := ParsePool("10.0.0.100-10.0.0.101", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &DHCPConfig{Mode: ModeFull, ServerIP: serverIP, HTTPBase: "http://10.0.0.1:8080", Pool: p,
		Netmask: net.CIDRMask(24, 32), Router: []net.IP{serverIP}}
}

// pktXID is every built request's transaction ID: dhcpv4.New draws a
// random one, which would change the goldens on every run.
var pktXID = dhcpv4.TransactionID{'h', 'n', 'b', 't'}

// pkt builds a request; opts are applied after the defaults.
func pkt(t *testing.T, mac net.HardwareAddr, mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(mt), dhcpv4.WithTransactionID(pktXID)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var (
	pxeBIOS  = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))}
	pxeEFI   = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))}
	httpEFI  = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP))}
	ipxeBIOS = append([]dhcpv4.Modifier{dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE"))}, pxeBIOS...)
	noArch   = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient"))}
	arm64    = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00011")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_ARM64))}
	plain    = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.36"))}
)

// TestReplyProxy: hand-made requests for the cases captures do not
// cover (arm64, no architecture, a plain DHCP client, the wrong port or
// message), each whole reply compared with golden/dhcp/proxy.txt. The
// boot file and the proxy rules are also checked here, so an -update
// cannot bless a wrong answer unnoticed.
func TestReplyProxy(t *testing.T) {
	var b strings.Builder
	for _, tc := range []struct {
		name       string
		mac        net.HardwareAddr
		mt         dhcpv4.MessageType
		mods       []dhcpv4.Modifier
		allow      bool
		bootServer bool
		wantType   dhcpv4.MessageType // 0: no reply
		wantFile   string
	}{
		{"BIOS gets undionly.kpxe", knownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS, false, false, dhcpv4.MessageTypeOffer, FileBIOS},
		{"UEFI gets ipxe.efi", knownMAC, dhcpv4.MessageTypeDiscover, pxeEFI, false, false, dhcpv4.MessageTypeOffer, FileEFI64},
		{"UEFI HTTP boot gets a URL", knownMAC, dhcpv4.MessageTypeDiscover, httpEFI, false, false, dhcpv4.MessageTypeOffer, "http://10.0.0.1:8080/ipxe/ipxe.efi"},
		{"iPXE gets the script", knownMAC, dhcpv4.MessageTypeDiscover, ipxeBIOS, false, false, dhcpv4.MessageTypeOffer, "http://10.0.0.1:8080/boot/52:54:00:00:00:01.ipxe"},
		{"UEFI asks on 4011", knownMAC, dhcpv4.MessageTypeRequest, pxeEFI, false, true, dhcpv4.MessageTypeAck, FileEFI64},
		{"unknown MAC ignored", unknownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS, false, false, 0, ""},
		{"unknown MAC without default image", unknownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS, true, false, 0, ""},
		{"non-PXE client ignored", knownMAC, dhcpv4.MessageTypeDiscover, plain, false, false, 0, ""},
		{"no arch", knownMAC, dhcpv4.MessageTypeDiscover, noArch, false, false, 0, ""},
		{"arm64 has no boot file", knownMAC, dhcpv4.MessageTypeDiscover, arm64, false, false, 0, ""},
		{"REQUEST on 67 is the address server's", knownMAC, dhcpv4.MessageTypeRequest, pxeBIOS, false, false, 0, ""},
		{"DISCOVER on 4011 ignored", knownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS, false, true, 0, ""},
		{"RELEASE ignored", knownMAC, dhcpv4.MessageTypeRelease, pxeBIOS, false, false, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := proxyCfg()
			cfg.AllowUnknown = tc.allow
			req := pkt(t, tc.mac, tc.mt, tc.mods...)
			var resp *dhcpv4.DHCPv4
			var reason string
			port := 67
			if tc.bootServer {
				resp, reason = ReplyBootServer(req, cfg, testDir())
				port = 4011
			} else {
				resp, reason = Reply(req, cfg, testDir())
			}
			fmt.Fprintf(&b, "\n## %s (--allow-unknown=%v)\n", tc.name, tc.allow)
			dumpRequest(&b, fmt.Sprintf("on :%d", port), req)
			dumpReply(&b, resp, reason, replyAddr(req, &net.UDPAddr{IP: net.IPv4(10, 0, 0, 60), Port: 68}, tc.bootServer))
			if reason == "" {
				t.Errorf("no reason given")
			}
			if tc.wantType == 0 {
				if resp != nil {
					t.Fatalf("Reply = %v, want none", resp.Summary())
				}
				return
			}
			if resp == nil {
				t.Fatalf("Reply = nil (%s), want %v", reason, tc.wantType)
			}
			if got := resp.MessageType(); got != tc.wantType {
				t.Errorf("message type = %v, want %v", got, tc.wantType)
			}
			if resp.BootFileName != tc.wantFile || resp.BootFileNameOption() != tc.wantFile {
				t.Errorf("file / option 67 = %q / %q, want %q", resp.BootFileName, resp.BootFileNameOption(), tc.wantFile)
			}
			if !resp.YourIPAddr.IsUnspecified() {
				t.Errorf("proxyDHCP offered address %v", resp.YourIPAddr)
			}
			if !resp.ServerIPAddr.Equal(serverIP) || !resp.ServerIdentifier().Equal(serverIP) {
				t.Errorf("siaddr/option 54 = %v/%v, want %v", resp.ServerIPAddr, resp.ServerIdentifier(), serverIP)
			}
			if resp.TransactionID != req.TransactionID {
				t.Errorf("xid = %v, want %v", resp.TransactionID, req.TransactionID)
			}
		})
	}
	golden(t, "dhcp/proxy.txt", []byte("# Hand-made requests through the proxy-mode decision (TestReplyProxy).\n"+b.String()))
}

func TestReplyProxyEchoesGUID(t *testing.T) {
	guid := append([]byte{0}, []byte("0123456789abcdef")...)
	req := pkt(t, knownMAC, dhcpv4.MessageTypeDiscover, append(pxeEFI, dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, guid))...)
	resp, _ := Reply(req, proxyCfg(), testDir())
	if resp == nil {
		t.Fatal("no reply")
	}
	if got := string(resp.Options.Get(dhcpv4.OptionClientMachineIdentifier)); got != string(guid) {
		t.Errorf("option 97 = %q, want %q", got, guid)
	}
	if got := resp.Options.Get(dhcpv4.OptionVendorSpecificInformation); string(got) != "\x06\x01\x08\xff" {
		t.Errorf("option 43 = %x, want 060108ff", got)
	}
}

func TestReplyAllowUnknownUsesDefault(t *testing.T) {
	d := testDir()
	d.SetDefault(HostBoot{Image: imgA})
	cfg := proxyCfg()
	cfg.AllowUnknown = true
	resp, reason := Reply(pkt(t, unknownMAC, dhcpv4.MessageTypeDiscover, ipxeBIOS...), cfg, d)
	if resp == nil {
		t.Fatalf("Reply = nil (%s), want an offer", reason)
	}
	if want := "http://10.0.0.1:8080/boot/52:54:00:00:00:09.ipxe"; resp.BootFileName != want {
		t.Errorf("file = %q, want %q", resp.BootFileName, want)
	}
}

// TestReplyFull: one client's exchange with the full-mode server, then
// the requests it must refuse; the whole log is golden/dhcp/full.txt, the
// addresses are also checked here.
func TestReplyFull(t *testing.T) {
	cfg := fullCfg(t)
	dir := testDir()
	var b strings.Builder
	b.WriteString("# One client's exchange with the full-mode decision, pool 10.0.0.100-101 (TestReplyFull).\n")
	step := func(doc string, d Directory, req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
		fmt.Fprintf(&b, "\n## %s\n", doc)
		dumpRequest(&b, "on :67", req)
		resp, reason := Reply(req, cfg, d)
		dumpReply(&b, resp, reason, replyAddr(req, &net.UDPAddr{IP: net.IPv4bcast, Port: 68}, false))
		return resp
	}
	offer := step("DISCOVER from a known iPXE client: an address, and the script", dir, pkt(t, knownMAC, dhcpv4.MessageTypeDiscover, ipxeBIOS...))
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer || !offer.YourIPAddr.Equal(net.IPv4(10, 0, 0, 100)) {
		t.Fatalf("DISCOVER: %v, want OFFER 10.0.0.100", offer)
	}
	ip := offer.YourIPAddr
	ack := step("REQUEST for the offered address", dir, pkt(t, knownMAC, dhcpv4.MessageTypeRequest,
		append(ipxeBIOS, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP)))...))
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(ip) {
		t.Fatalf("REQUEST: %v, want ACK %v", ack, ip)
	}
	nak := step("REQUEST for an address that is not its lease: NAK", dir, pkt(t, knownMAC, dhcpv4.MessageTypeRequest,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 0, 7)))))
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("REQUEST for a foreign address: %v, want NAK", nak)
	}
	if r := step("REQUEST addressed to another server: silence", dir, pkt(t, knownMAC, dhcpv4.MessageTypeRequest,
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 0, 2))))); r != nil {
		t.Errorf("REQUEST for another server: %v, want silence", r.Summary())
	}
	// The init or an OS asks like any DHCP client: an address, no boot.
	d2 := testDir()
	d2.Add(HostBoot{MAC: unknownMAC, Image: imgA})
	if r := step("a plain DHCP client (the init, an OS): an address, no boot file", d2, pkt(t, unknownMAC, dhcpv4.MessageTypeDiscover, plain...)); r == nil || r.YourIPAddr.IsUnspecified() || r.BootFileName != "" {
		t.Errorf("plain client: %v, want an address without a boot file", r)
	}
	if r := step("an unknown MAC: silence", dir, pkt(t, net.HardwareAddr{2, 0, 0, 0, 0, 1}, dhcpv4.MessageTypeDiscover, pxeBIOS...)); r != nil {
		t.Errorf("unknown MAC: %v, want silence", r.Summary())
	}
	golden(t, "dhcp/full.txt", []byte(b.String()))
}

func TestReplyMalformed(t *testing.T) {
	cfg := proxyCfg()
	for name, req := range map[string]*dhcpv4.DHCPv4{
		"nil": nil,
		"reply": func() *dhcpv4.DHCPv4 {
			m := pkt(t, knownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS...)
			m.OpCode = dhcpv4.OpcodeBootReply
			return m
		}(),
		"short MAC": pkt(t, net.HardwareAddr{1, 2, 3}, dhcpv4.MessageTypeDiscover, pxeBIOS...),
		"no type": func() *dhcpv4.DHCPv4 {
			m := pkt(t, knownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS...)
			m.Options.Del(dhcpv4.OptionDHCPMessageType)
			return m
		}(),
		"empty arch": pkt(t, knownMAC, dhcpv4.MessageTypeDiscover, dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0}), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient"))),
	} {
		if r, reason := Reply(req, cfg, testDir()); r != nil {
			t.Errorf("%s: Reply = %v (%s), want none", name, r.Summary(), reason)
		}
	}
}

func TestPool(t *testing.T) {
	p, err := ParsePool("10.0.0.10-10.0.0.11", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	p.now = func() time.Time { return now }
	a, b, c := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}, net.HardwareAddr{2, 0, 0, 0, 0, 3}
	p.AddStatic(c, net.IPv4(10, 0, 0, 50))
	ipA, _ := p.Offer(a, nil)
	ipB, _ := p.Offer(b, nil)
	if ipA.Equal(ipB) {
		t.Fatalf("two clients offered the same address %v", ipA)
	}
	if again, _ := p.Offer(a, nil); !again.Equal(ipA) {
		t.Errorf("re-offer = %v, want %v", again, ipA)
	}
	if ipC, _ := p.Offer(c, nil); !ipC.Equal(net.IPv4(10, 0, 0, 50)) {
		t.Errorf("static = %v, want 10.0.0.50", ipC)
	}
	if _, err := p.Offer(net.HardwareAddr{2, 0, 0, 0, 0, 4}, nil); err != ErrPoolFull {
		t.Errorf("third dynamic client: err = %v, want ErrPoolFull", err)
	}
	if !p.Commit(a, ipA) || p.Commit(b, ipA) {
		t.Errorf("Commit: own address must succeed, another's must fail")
	}
	// B never requested: its offer lapses and the address is reused.
	now = now.Add(2 * time.Minute)
	if ip, err := p.Offer(net.HardwareAddr{2, 0, 0, 0, 0, 4}, nil); err != nil || !ip.Equal(ipB) {
		t.Errorf("after B's offer expired: %v, %v; want %v", ip, err, ipB)
	}
	p.Release(a)
	if ip, err := p.Offer(b, nil); err != nil || !ip.Equal(ipA) {
		t.Errorf("after release: %v, %v; want %v", ip, err, ipA)
	}
	if _, err := ParsePool("10.0.0.20-10.0.0.10", 0); err == nil {
		t.Error("reversed range accepted")
	}
}

func TestReplyAddr(t *testing.T) {
	peer := &net.UDPAddr{IP: net.IPv4bcast, Port: 68}
	for _, tc := range []struct {
		name string
		mod  dhcpv4.Modifier
		boot bool
		want string
	}{
		{"broadcast", func(*dhcpv4.DHCPv4) {}, false, "255.255.255.255:68"},
		{"relay", dhcpv4.WithGatewayIP(net.IPv4(10, 1, 0, 1)), false, "10.1.0.1:67"},
		{"configured client", dhcpv4.WithClientIP(net.IPv4(10, 0, 0, 5)), false, "10.0.0.5:68"},
	} {
		req := pkt(t, knownMAC, dhcpv4.MessageTypeDiscover, tc.mod)
		if got := replyAddr(req, peer, tc.boot).String(); got != tc.want {
			t.Errorf("%s: replyAddr = %s, want %s", tc.name, got, tc.want)
		}
	}
	uni := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 68}
	if got := replyAddr(pkt(t, knownMAC, dhcpv4.MessageTypeRequest), uni, true).String(); got != "10.0.0.5:68" {
		t.Errorf("4011 unicast: replyAddr = %s, want 10.0.0.5:68", got)
	}
}

func TestUDPSockets(t *testing.T) {
	proc := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41234 2 0000000000000000 0
  124: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41235 2 0000000000000000 0
`
	got := udpSockets([]byte(proc), 67)
	if len(got) != 1 || got[0] != "0.0.0.0:67 inode 41234" {
		t.Errorf("udpSockets(67) = %q, want [0.0.0.0:67 inode 41234]", got)
	}
	if got := udpSockets([]byte(proc), 4011); len(got) != 0 {
		t.Errorf("udpSockets(4011) = %q, want none", got)
	}
}
