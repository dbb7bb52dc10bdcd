// Package netup brings up the init's boot NIC with DHCP, within a
// deadline that really ends the wait, and without touching the kernel's
// random pool.
//
// u-root's dhclient (through insomniacslk/dhcp's dhcpv4.New) draws every
// transaction ID from getrandom and, before the pool is initialized (no
// RDRAND, no virtio-rng: QEMU's default CPU, many real servers), spins for
// up to two minutes, ignoring the caller's context. A transaction ID only
// matches answers to requests (RFC 2131 asks for it to be random, not
// secret), so this package builds its messages itself with an ID from
// math/rand/v2, which the Go runtime seeds from the kernel's AT_RANDOM
// auxiliary vector at exec, never blocking, and sends them with nclient4,
// which honours the context.
package netup

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/u-root/u-root/pkg/dhclient"
)

// requested are the options the init asks for.
var requested = []dhcpv4.OptionCode{
	dhcpv4.OptionSubnetMask,
	dhcpv4.OptionRouter,
	dhcpv4.OptionDomainName,
	dhcpv4.OptionDomainNameServer,
}

// base is dhcpv4.New without the random transaction ID.
func base(xid dhcpv4.TransactionID, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	d := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        iana.HWTypeEthernet,
		ClientHWAddr:  make(net.HardwareAddr, 6),
		TransactionID: xid,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: net.IPv4zero,
		Options:       make(dhcpv4.Options),
	}
	for _, m := range mods {
		m(d)
	}
	return d
}

// XID is a transaction ID that needs no entropy from the kernel.
func XID() dhcpv4.TransactionID {
	var x dhcpv4.TransactionID
	v := rand.Uint32()
	x[0], x[1], x[2], x[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return x
}

// Discover is a DHCPDISCOVER from mac.
func Discover(mac net.HardwareAddr, xid dhcpv4.TransactionID) *dhcpv4.DHCPv4 {
	return base(xid,
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithRequestedOptions(requested...),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize)),
	)
}

// Request is the DHCPREQUEST that takes offer (SELECTING state).
func Request(offer *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	return base(offer.TransactionID,
		dhcpv4.WithReply(offer),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(offer.ClientIPAddr),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOptionCopied(offer, dhcpv4.OptionServerIdentifier),
		dhcpv4.WithRequestedOptions(requested...),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize)),
	)
}

// Lease is what Up configured.
type Lease struct {
	Interface string
	Address   *net.IPNet
	Router    net.IP // nil: none
	Server    net.IP // the DHCP server that answered
	Took      time.Duration
}

func (l Lease) String() string {
	s := fmt.Sprintf("%s on %s from %s", l.Address, l.Interface, l.Server)
	if l.Router != nil {
		s += ", router " + l.Router.String()
	}
	return s
}

// Up sets ifname up and configures it from DHCP (address, routes,
// /etc/resolv.conf), unless it already has an IPv4 address. Every step
// ends by ctx's deadline.
func Up(ctx context.Context, ifname string) (Lease, error) {
	start := time.Now()
	l := Lease{Interface: ifname}
	if ifi, err := net.InterfaceByName(ifname); err == nil {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
				l.Address = n
				return l, nil // PXE's ip=, or configured before a kexec
			}
		}
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		return l, errors.New("netup: Up needs a context with a deadline")
	}
	link, err := dhclient.IfUp(ifname, time.Until(deadline))
	if err != nil {
		return l, fmt.Errorf("bring %s up: %w", ifname, err)
	}
	// One second per try, doubled by nclient4 on each retry, and as many
	// tries as the budget allows: ctx ends them.
	c, err := nclient4.New(ifname, nclient4.WithTimeout(time.Second), nclient4.WithRetry(-1))
	if err != nil {
		return l, fmt.Errorf("DHCP on %s: %w", ifname, err)
	}
	defer c.Close()
	offer, err := c.SendAndRead(ctx, c.RemoteAddr(), Discover(c.InterfaceAddr(), XID()), nclient4.IsMessageType(dhcpv4.MessageTypeOffer))
	if err != nil {
		return l, fmt.Errorf("DHCP on %s: no offer: %w", ifname, err)
	}
	ack, err := c.SendAndRead(ctx, c.RemoteAddr(), Request(offer), nclient4.IsAll(
		nclient4.IsCorrectServer(offer.ServerIdentifier()),
		nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)))
	if err != nil {
		return l, fmt.Errorf("DHCP on %s: no answer to the request for %s: %w", ifname, offer.YourIPAddr, err)
	}
	if ack.MessageType() == dhcpv4.MessageTypeNak {
		return l, fmt.Errorf("DHCP on %s: server %s refused %s: %s", ifname, ack.ServerIdentifier(), offer.YourIPAddr, ack.Message())
	}
	p := dhclient.NewPacket4(link, ack)
	if err := p.Configure(); err != nil {
		return l, fmt.Errorf("configure the DHCP lease on %s: %w", ifname, err)
	}
	l.Address, l.Server, l.Took = p.Lease(), ack.ServerIdentifier(), time.Since(start)
	if r := ack.Router(); len(r) > 0 {
		l.Router = r[0]
	}
	return l, nil
}
