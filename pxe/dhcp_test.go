package pxe

import (
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

// pkt builds a request; opts are applied after the defaults.
func pkt(t *testing.T, mac net.HardwareAddr, mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(mt)}, mods...)...)
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

func TestReplyProxy(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mac        net.HardwareAddr
		mt         dhcpv4.MessageType
		mods       []dhcpv4.Modifier
		allow      bool
		bootServer bool
		wantType   dhcpv4.MessageType // 0: no reply
		wantFile   string
		wantReason string
	}{
		{"BIOS gets undionly.kpxe", knownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS, false, false, dhcpv4.MessageTypeOffer, FileBIOS, "OFFER proxy"},
		{"UEFI gets ipxe.efi", knownMAC, dhcpv4.MessageTypeDiscover, pxeEFI, false, false, dhcpv4.MessageTypeOffer, FileEFI64, ""},
		{"UEFI HTTP boot gets a URL", knownMAC, dhcpv4.MessageTypeDiscover, httpEFI, false, false, dhcpv4.MessageTypeOffer, "http://10.0.0.1:8080/ipxe/ipxe.efi", ""},
		{"iPXE gets the script", knownMAC, dhcpv4.MessageTypeDiscover, ipxeBIOS, false, false, dhcpv4.MessageTypeOffer, "http://10.0.0.1:8080/boot/52:54:00:00:00:01.ipxe", ""},
		{"UEFI asks on 4011", knownMAC, dhcpv4.MessageTypeRequest, pxeEFI, false, true, dhcpv4.MessageTypeAck, FileEFI64, "ACK proxy"},
		{"unknown MAC ignored", unknownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS, false, false, 0, "", "unknown MAC"},
		{"unknown MAC without default image", unknownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS, true, false, 0, "", "no default image"},
		{"non-PXE client ignored", knownMAC, dhcpv4.MessageTypeDiscover, plain, false, false, 0, "", "not a PXE client"},
		{"no arch", knownMAC, dhcpv4.MessageTypeDiscover, noArch, false, false, 0, "", "no client architecture"},
		{"arm64 has no boot file", knownMAC, dhcpv4.MessageTypeDiscover, arm64, false, false, 0, "", "no boot file for client architecture"},
		{"REQUEST on 67 is the address server's", knownMAC, dhcpv4.MessageTypeRequest, pxeBIOS, false, false, 0, "", "answers only DISCOVER"},
		{"DISCOVER on 4011 ignored", knownMAC, dhcpv4.MessageTypeDiscover, pxeBIOS, false, true, 0, "", "port 4011"},
		{"RELEASE ignored", knownMAC, dhcpv4.MessageTypeRelease, pxeBIOS, false, false, 0, "", "ignored RELEASE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := proxyCfg()
			cfg.AllowUnknown = tc.allow
			req := pkt(t, tc.mac, tc.mt, tc.mods...)
			var resp *dhcpv4.DHCPv4
			var reason string
			if tc.bootServer {
				resp, reason = ReplyBootServer(req, cfg, testDir())
			} else {
				resp, reason = Reply(req, cfg, testDir())
			}
			if !strings.Contains(reason, tc.wantReason) {
				t.Errorf("reason = %q, want it to contain %q", reason, tc.wantReason)
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
			if got := resp.BootFileName; got != tc.wantFile {
				t.Errorf("file = %q, want %q", got, tc.wantFile)
			}
			if got := resp.BootFileNameOption(); got != tc.wantFile {
				t.Errorf("option 67 = %q, want %q", got, tc.wantFile)
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
			wantVendor := "PXEClient"
			if strings.HasPrefix(tc.wantFile, "http://10.0.0.1:8080/ipxe/") {
				wantVendor = "HTTPClient"
			}
			if got := resp.ClassIdentifier(); got != wantVendor {
				t.Errorf("option 60 = %q, want %q", got, wantVendor)
			}
			_, isIPXE := map[string]bool{"iPXE gets the script": true}[tc.name]
			if got := resp.Options.Get(dhcpv4.OptionEtherboot) != nil; got != isIPXE {
				t.Errorf("option 175 present = %v, want %v", got, isIPXE)
			}
		})
	}
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

func TestReplyFull(t *testing.T) {
	cfg := fullCfg(t)
	dir := testDir()
	// DISCOVER -> OFFER with an address and boot info for a PXE client.
	disc := pkt(t, knownMAC, dhcpv4.MessageTypeDiscover, ipxeBIOS...)
	offer, reason := Reply(disc, cfg, dir)
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("DISCOVER: %v (%s), want OFFER", offer, reason)
	}
	ip := offer.YourIPAddr
	if !ip.Equal(net.IPv4(10, 0, 0, 100)) {
		t.Errorf("offered %v, want 10.0.0.100", ip)
	}
	if got := offer.SubnetMask().String(); got != "ffffff00" {
		t.Errorf("netmask = %s, want ffffff00", got)
	}
	if got := offer.HostName(); got != "web-1" {
		t.Errorf("hostname option = %q, want web-1", got)
	}
	if !strings.HasSuffix(offer.BootFileName, ".ipxe") {
		t.Errorf("file = %q, want the script URL", offer.BootFileName)
	}
	// REQUEST for it -> ACK.
	req := pkt(t, knownMAC, dhcpv4.MessageTypeRequest, append(ipxeBIOS, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP)))...)
	ack, reason := Reply(req, cfg, dir)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(ip) {
		t.Fatalf("REQUEST: %v (%s), want ACK %v", ack, reason, ip)
	}
	// REQUEST for an address that is not its own -> NAK.
	bad := pkt(t, knownMAC, dhcpv4.MessageTypeRequest, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 0, 7))))
	nak, _ := Reply(bad, cfg, dir)
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("REQUEST for a foreign address: %v, want NAK", nak)
	}
	// REQUEST addressed to another server -> silence.
	other := pkt(t, knownMAC, dhcpv4.MessageTypeRequest, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 0, 2))))
	if r, reason := Reply(other, cfg, dir); r != nil || !strings.Contains(reason, "another server") {
		t.Errorf("REQUEST for another server: %v (%s), want silence", r, reason)
	}
	// A plain DHCP client (the init, an OS) gets an address, no boot file.
	d2 := testDir()
	d2.Add(HostBoot{MAC: unknownMAC, Image: imgA})
	r, _ := Reply(pkt(t, unknownMAC, dhcpv4.MessageTypeDiscover, plain...), cfg, d2)
	if r == nil || r.YourIPAddr.IsUnspecified() || r.BootFileName != "" {
		t.Errorf("plain client: %v, want an address without a boot file", r)
	}
	// Unknown MACs get nothing.
	if r, reason := Reply(pkt(t, net.HardwareAddr{2, 0, 0, 0, 0, 1}, dhcpv4.MessageTypeDiscover, pxeBIOS...), cfg, dir); r != nil {
		t.Errorf("unknown MAC: %v (%s), want silence", r.Summary(), reason)
	}
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
