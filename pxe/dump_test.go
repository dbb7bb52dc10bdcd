package pxe

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// dumpRequest is one line about a request: the fields the decision reads.
func dumpRequest(b *strings.Builder, label string, req *dhcpv4.DHCPv4) {
	var arch []string
	for _, a := range req.ClientArch() {
		arch = append(arch, fmt.Sprint(uint16(a)))
	}
	fmt.Fprintf(b, "> %s: %s from %s xid=%s option60=%q option93=%s option77=%q\n", label, req.MessageType(), req.ClientHWAddr,
		req.TransactionID, req.ClassIdentifier(), strings.Join(arch, ","), req.Options.Get(dhcpv4.OptionUserClassInformation))
}

// dumpReply renders a decision for a golden file: the reason, where the
// reply goes, every header field, every option (sorted by code, named,
// decoded by our own rules so a library upgrade does not rewrite the
// goldens) and the reply's bytes on the wire.
func dumpReply(b *strings.Builder, resp *dhcpv4.DHCPv4, reason string, dst net.Addr) {
	if resp == nil {
		fmt.Fprintf(b, "< no reply: %s\n", reason)
		return
	}
	fmt.Fprintf(b, "< %s to %v\n", reason, dst)
	fmt.Fprintf(b, "  op=%s htype=%s hlen=%d hops=%d xid=%s secs=%d flags=%#04x\n", resp.OpCode, resp.HWType,
		len(resp.ClientHWAddr), resp.HopCount, resp.TransactionID, resp.NumSeconds, resp.Flags)
	fmt.Fprintf(b, "  ciaddr=%v yiaddr=%v siaddr=%v giaddr=%v chaddr=%v\n", resp.ClientIPAddr, resp.YourIPAddr,
		resp.ServerIPAddr, resp.GatewayIPAddr, resp.ClientHWAddr)
	fmt.Fprintf(b, "  sname=%q\n  file=%q\n", resp.ServerHostName, resp.BootFileName)
	codes := make([]int, 0, len(resp.Options))
	for c := range resp.Options {
		codes = append(codes, int(c))
	}
	sort.Ints(codes)
	for _, c := range codes {
		v := resp.Options[uint8(c)]
		fmt.Fprintf(b, "  option %3d %s: %s\n", c, optionNames[uint8(c)], optionValue(uint8(c), v))
	}
	raw := resp.ToBytes()
	fmt.Fprintf(b, "  %d bytes (a run of equal rows is shown once, then *):\n", len(raw))
	var prev []byte
	starred := false
	for off := 0; off < len(raw); off += 16 {
		row := raw[off:min(off+16, len(raw))]
		if len(row) == 16 && bytes.Equal(row, prev) {
			if !starred {
				b.WriteString("  *\n")
				starred = true
			}
			continue
		}
		prev, starred = row, false
		var hex, text strings.Builder
		for i, c := range row {
			if i == 8 {
				hex.WriteByte(' ')
			}
			fmt.Fprintf(&hex, " %02x", c)
			if c >= 0x20 && c < 0x7f {
				text.WriteByte(c)
			} else {
				text.WriteByte('.')
			}
		}
		fmt.Fprintf(b, "  %04x %-49s |%s|\n", off, hex.String(), text.String())
	}
}

// optionNames names the options in requests and replies here; our own
// table, so a library upgrade does not rename them in every golden.
var optionNames = map[uint8]string{
	1: "subnet mask", 3: "router", 6: "DNS", 12: "host name", 43: "vendor specific (PXE)", 50: "requested address",
	51: "lease time", 53: "message type", 54: "server identifier", 55: "parameter request list", 57: "max message size",
	58: "renewal time", 59: "rebinding time", 60: "vendor class", 61: "client identifier", 66: "TFTP server name",
	67: "boot file name", 77: "user class", 93: "client architecture", 94: "client NIC", 97: "client GUID",
	175: "iPXE (encapsulated)",
}

// optionValue decodes the options the decision writes; anything else is
// a quoted string when printable, else hex.
func optionValue(code uint8, v []byte) string {
	switch code {
	case dhcpv4.OptionSubnetMask.Code(), dhcpv4.OptionRouter.Code(), dhcpv4.OptionDomainNameServer.Code(),
		dhcpv4.OptionRequestedIPAddress.Code(), dhcpv4.OptionServerIdentifier.Code():
		if len(v) > 0 && len(v)%4 == 0 {
			var ips []string
			for i := 0; i < len(v); i += 4 {
				ips = append(ips, net.IP(v[i:i+4]).String())
			}
			return strings.Join(ips, ", ")
		}
	case dhcpv4.OptionIPAddressLeaseTime.Code(), dhcpv4.OptionRenewTimeValue.Code(), dhcpv4.OptionRebindingTimeValue.Code():
		if len(v) == 4 {
			return fmt.Sprintf("%d s", binary.BigEndian.Uint32(v))
		}
	case dhcpv4.OptionDHCPMessageType.Code():
		if len(v) == 1 {
			return dhcpv4.MessageType(v[0]).String()
		}
	}
	printable := len(v) > 0
	for _, c := range v {
		if c < 0x20 || c >= 0x7f {
			printable = false
		}
	}
	if printable {
		return fmt.Sprintf("%q", v)
	}
	return fmt.Sprintf("% x", v)
}
