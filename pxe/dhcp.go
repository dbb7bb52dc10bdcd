package pxe

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// DHCP modes.
const (
	ModeProxy = "proxy" // answer PXE clients only, never hand out addresses
	ModeFull  = "full"  // a complete DHCP server with a pool and static leases
)

// Boot file names, as Debian's ipxe package ships them (/usr/lib/ipxe).
const (
	FileBIOS  = "undionly.kpxe"
	FileEFI64 = "ipxe.efi"
)

// DHCPConfig is everything a DHCP decision needs besides the request and
// the Directory.
type DHCPConfig struct {
	Mode         string // ModeProxy or ModeFull
	ServerIP     net.IP // this server on the boot interface: siaddr, option 54, URLs
	HTTPBase     string // e.g. "http://10.0.0.1:8080", no trailing slash
	AllowUnknown bool   // answer MACs the Directory does not know

	// Full mode only.
	Pool      *Pool
	Netmask   net.IPMask
	Router    []net.IP
	DNS       []net.IP
	LeaseTime time.Duration
}

// Architectures from option 93 (RFC 4578, IANA processor architecture types).
const (
	archBIOS       = iana.INTEL_X86PC
	archEFIIA32    = iana.EFI_IA32
	archEFIx64     = iana.EFI_X86_64
	archEFIBC      = iana.EFI_BC
	archEFIx64HTTP = iana.EFI_X86_64_HTTP
)

// isIPXE reports whether the client is iPXE: user class (option 77) "iPXE",
// sent raw rather than in RFC 3004 form.
func isIPXE(req *dhcpv4.DHCPv4) bool {
	if bytes.Equal(req.Options.Get(dhcpv4.OptionUserClassInformation), []byte("iPXE")) {
		return true
	}
	for _, uc := range req.UserClass() {
		if uc == "iPXE" {
			return true
		}
	}
	return false
}

// vendorClass is option 60's kind: "PXEClient", "HTTPClient" or "".
func vendorClass(req *dhcpv4.DHCPv4) string {
	vc := req.ClassIdentifier()
	switch {
	case strings.HasPrefix(vc, "PXEClient"):
		return "PXEClient"
	case strings.HasPrefix(vc, "HTTPClient"):
		return "HTTPClient"
	}
	return ""
}

// clientArch is option 93, or the Arch field of option 60
// ("PXEClient:Arch:00007:UNDI:003016") when 93 is missing.
func clientArch(req *dhcpv4.DHCPv4) (iana.Arch, bool) {
	if a := req.ClientArch(); len(a) > 0 {
		return a[0], true
	}
	f := strings.Split(req.ClassIdentifier(), ":")
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "Arch" {
			if n, err := strconv.ParseUint(f[i+1], 10, 16); err == nil {
				return iana.Arch(n), true
			}
		}
	}
	return 0, false
}

// bootChoice is what a PXE client is told to load.
type bootChoice struct {
	file   string // TFTP file name or absolute URL
	vendor string // option 60 in the reply
	ipxe   bool   // the client is iPXE: add option 175.176
}

// chooseBoot picks the boot file for a PXE/iPXE client, or says why none.
func chooseBoot(req *dhcpv4.DHCPv4, cfg *DHCPConfig, mac net.HardwareAddr) (bootChoice, string) {
	if isIPXE(req) {
		return bootChoice{file: cfg.HTTPBase + "/boot/" + mac.String() + ".ipxe", vendor: "PXEClient", ipxe: true}, ""
	}
	arch, ok := clientArch(req)
	if !ok {
		return bootChoice{}, "no client architecture (option 93)"
	}
	switch arch {
	case archBIOS:
		return bootChoice{file: FileBIOS, vendor: "PXEClient"}, ""
	case archEFIx64, archEFIBC:
		return bootChoice{file: FileEFI64, vendor: "PXEClient"}, ""
	case archEFIx64HTTP:
		return bootChoice{file: cfg.HTTPBase + "/ipxe/" + FileEFI64, vendor: "HTTPClient"}, ""
	}
	return bootChoice{}, fmt.Sprintf("no boot file for client architecture %s (%d)", arch, uint16(arch))
}

// Reply decides the answer to a request that arrived on UDP port 67. A nil
// reply means "stay silent"; reason then says why, for the ledger. It does
// no I/O except through cfg.Pool (full mode) and dir, which must both be
// fast.
func Reply(req *dhcpv4.DHCPv4, cfg *DHCPConfig, dir Directory) (*dhcpv4.DHCPv4, string) {
	return decide(req, cfg, dir, false)
}

// ReplyBootServer decides the answer to a request on UDP port 4011 (the PXE
// boot server port, where UEFI clients ask a proxyDHCP server after taking
// their address elsewhere).
func ReplyBootServer(req *dhcpv4.DHCPv4, cfg *DHCPConfig, dir Directory) (*dhcpv4.DHCPv4, string) {
	return decide(req, cfg, dir, true)
}

func decide(req *dhcpv4.DHCPv4, cfg *DHCPConfig, dir Directory, bootServer bool) (*dhcpv4.DHCPv4, string) {
	if req == nil {
		return nil, "no request"
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, "not a BOOTREQUEST"
	}
	if req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return nil, "not an Ethernet client"
	}
	mac := req.ClientHWAddr
	mt := req.MessageType()
	switch mt {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
	case dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		if cfg.Mode == ModeFull && cfg.Pool != nil && serverIDIsUs(req, cfg) {
			cfg.Pool.Release(mac)
			return nil, "released " + mt.String()
		}
		return nil, "ignored " + mt.String()
	default:
		return nil, "unsupported message type " + mt.String()
	}
	hb, known := dir.Lookup(mac)
	if !known && !cfg.AllowUnknown {
		return nil, "unknown MAC (not in the fleet; --allow-unknown serves it)"
	}
	if cfg.Mode == ModeFull && !bootServer {
		return fullReply(req, cfg, hb, known)
	}
	return proxyReply(req, cfg, hb, known, bootServer)
}

func serverIDIsUs(req *dhcpv4.DHCPv4, cfg *DHCPConfig) bool {
	sid := req.ServerIdentifier()
	return sid == nil || sid.Equal(cfg.ServerIP)
}

// proxyReply answers PXE clients with boot information and no address.
func proxyReply(req *dhcpv4.DHCPv4, cfg *DHCPConfig, hb HostBoot, known bool, bootServer bool) (*dhcpv4.DHCPv4, string) {
	mt := req.MessageType()
	if vendorClass(req) == "" && !isIPXE(req) {
		return nil, "not a PXE client (option 60 is " + strconv.Quote(req.ClassIdentifier()) + ")"
	}
	var replyType dhcpv4.MessageType
	switch {
	case !bootServer && mt == dhcpv4.MessageTypeDiscover:
		replyType = dhcpv4.MessageTypeOffer
	case bootServer && (mt == dhcpv4.MessageTypeRequest || mt == dhcpv4.MessageTypeInform):
		replyType = dhcpv4.MessageTypeAck
	case bootServer:
		return nil, "port 4011 wants REQUEST or INFORM, got " + mt.String()
	default:
		return nil, "proxyDHCP answers only DISCOVER on port 67 (" + mt.String() + " is for the address server)"
	}
	if !hasImage(hb) && !known {
		return nil, "unknown MAC and no default image"
	}
	bc, why := chooseBoot(req, cfg, req.ClientHWAddr)
	if why != "" {
		return nil, why
	}
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(replyType),
		dhcpv4.WithYourIP(net.IPv4zero),
	)
	if err != nil {
		return nil, "build reply: " + err.Error()
	}
	addBoot(resp, req, cfg, bc)
	return resp, fmt.Sprintf("%s proxy boot=%s", replyType, bc.file)
}

func hasImage(hb HostBoot) bool { return hb.Image.Digest != "" }

// fullReply hands out an address from the pool (or a static lease) and,
// to PXE and iPXE clients, boot information.
func fullReply(req *dhcpv4.DHCPv4, cfg *DHCPConfig, hb HostBoot, known bool) (*dhcpv4.DHCPv4, string) {
	if cfg.Pool == nil {
		return nil, "full DHCP mode without a pool"
	}
	mac := req.ClientHWAddr
	mt := req.MessageType()
	var (
		ip        net.IP
		replyType dhcpv4.MessageType
	)
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		var err error
		if ip, err = cfg.Pool.Offer(mac, req.RequestedIPAddress()); err != nil {
			return nil, err.Error()
		}
		replyType = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		if !serverIDIsUs(req, cfg) {
			return nil, "REQUEST for another server " + req.ServerIdentifier().String()
		}
		want := req.RequestedIPAddress()
		if want == nil || want.IsUnspecified() {
			want = req.ClientIPAddr
		}
		if !cfg.Pool.Commit(mac, want) {
			resp, err := dhcpv4.NewReplyFromRequest(req,
				dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(cfg.ServerIP)))
			if err != nil {
				return nil, "build NAK: " + err.Error()
			}
			return resp, fmt.Sprintf("NAK %v is not this client's lease", want)
		}
		ip = want
		replyType = dhcpv4.MessageTypeAck
	case dhcpv4.MessageTypeInform:
		ip = net.IPv4zero
		replyType = dhcpv4.MessageTypeAck
	}
	lt := cfg.LeaseTime
	if lt == 0 {
		lt = time.Hour
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(replyType),
		dhcpv4.WithYourIP(ip),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(cfg.ServerIP)),
	}
	if mt != dhcpv4.MessageTypeInform {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(lt)))
	}
	if cfg.Netmask != nil {
		mods = append(mods, dhcpv4.WithNetmask(cfg.Netmask))
	}
	if len(cfg.Router) > 0 {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(cfg.Router...)))
	}
	if len(cfg.DNS) > 0 {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(cfg.DNS...)))
	}
	if hb.Hostname != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(hb.Hostname)))
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil, "build reply: " + err.Error()
	}
	reason := fmt.Sprintf("%s %v", replyType, ip)
	if vendorClass(req) != "" || isIPXE(req) {
		if !hasImage(hb) && !known {
			return resp, reason + " (no boot: unknown MAC and no default image)"
		}
		bc, why := chooseBoot(req, cfg, mac)
		if why != "" {
			return resp, reason + " (no boot: " + why + ")"
		}
		addBoot(resp, req, cfg, bc)
		reason += " boot=" + bc.file
	}
	return resp, reason
}

// addBoot writes the PXE boot fields and options into resp.
func addBoot(resp, req *dhcpv4.DHCPv4, cfg *DHCPConfig, bc bootChoice) {
	resp.ServerIPAddr = cfg.ServerIP
	resp.BootFileName = bc.file
	resp.ServerHostName = cfg.ServerIP.String()
	resp.UpdateOption(dhcpv4.OptServerIdentifier(cfg.ServerIP))
	resp.UpdateOption(dhcpv4.OptClassIdentifier(bc.vendor))
	resp.UpdateOption(dhcpv4.OptTFTPServerName(cfg.ServerIP.String()))
	resp.UpdateOption(dhcpv4.OptBootFileName(bc.file))
	// PXE vendor options: sub-option 6 (discovery control) = 8: use the
	// boot file in this reply, no boot server discovery.
	resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8, 255}))
	if guid := req.Options.Get(dhcpv4.OptionClientMachineIdentifier); guid != nil {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, guid))
	}
	if bc.ipxe {
		// iPXE encapsulated option 175.176 (no-pxedhcp) = 1: do not wait
		// for a separate ProxyDHCP offer or a router advertisement.
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionEtherboot, []byte{176, 1, 1}))
	}
}
