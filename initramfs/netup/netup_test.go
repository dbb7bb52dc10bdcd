package netup

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// The messages carry the transaction ID given, and building them never
// reads the kernel's pool (dhcpv4.New would): these tests would hang in
// a VM without entropy otherwise, and XID is math/rand/v2.
func TestMessages(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	xid := dhcpv4.TransactionID{1, 2, 3, 4}
	d := Discover(mac, xid)
	if d.TransactionID != xid || d.MessageType() != dhcpv4.MessageTypeDiscover || d.ClientHWAddr.String() != mac.String() || d.OpCode != dhcpv4.OpcodeBootRequest {
		t.Errorf("Discover = %s", d.Summary())
	}
	if !d.IsOptionRequested(dhcpv4.OptionRouter) || !d.IsOptionRequested(dhcpv4.OptionDomainNameServer) {
		t.Errorf("Discover does not ask for router and DNS: %s", d.Summary())
	}
	srv := net.IPv4(10, 0, 0, 1)
	offer, err := dhcpv4.NewReplyFromRequest(d, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithYourIP(net.IPv4(10, 0, 0, 50)), dhcpv4.WithServerIP(srv), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srv)))
	if err != nil {
		t.Fatal(err)
	}
	r := Request(offer)
	if r.TransactionID != xid || r.MessageType() != dhcpv4.MessageTypeRequest || r.OpCode != dhcpv4.OpcodeBootRequest ||
		!r.RequestedIPAddress().Equal(net.IPv4(10, 0, 0, 50)) || !r.ServerIdentifier().Equal(srv) || r.ClientHWAddr.String() != mac.String() {
		t.Errorf("Request(offer) = %s", r.Summary())
	}
	if a, b := XID(), XID(); a == b {
		t.Errorf("XID() twice = %v, %v", a, b) // 1 in 2^32
	}
}
