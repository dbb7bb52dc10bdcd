package pxe

import (
	"fmt"
	"log/slog"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// iPXE's "Configuring (net0 ...)" waits for every configurator, and its
// IPv6 one sends router solicitations until a router advertisement comes
// or its retry timer gives up (0.25 s doubling past 10 s: about 15.75 s).
// No DHCPv4 option ends that wait (175.176 only skips the ProxyDHCP one),
// so on a link without an IPv6 router every iPXE boot loses ~15 s. An
// empty advertisement ends it at once: M and O clear (no DHCPv6), no
// prefix, router lifetime 0 (not a default router). It would also end the
// wait where a real router exists, and iPXE keeps only the first answer,
// so this is opt-in (Config.AnswerRouterSolicit) for router-less links.

const (
	icmpv6RouterSolicit = 133
	icmpv6RouterAdvert  = 134
	ndpOptSourceLLAddr  = 1
)

// solicitMAC returns the sender's MAC from an ICMPv6 router solicitation
// (as a raw ICMPv6 socket delivers it: no IPv6 header) via its
// source link-layer address option. ok is false for anything else, and for
// a solicitation without that option (sent from ::, so not yet a host we
// could name).
func solicitMAC(b []byte) (net.HardwareAddr, bool) {
	if len(b) < 8 || b[0] != icmpv6RouterSolicit || b[1] != 0 {
		return nil, false
	}
	for opts := b[8:]; len(opts) >= 2; {
		n := int(opts[1]) * 8 // length in units of 8 octets, header included
		if n == 0 || n > len(opts) {
			return nil, false // malformed: RFC 4861 says drop it
		}
		if opts[0] == ndpOptSourceLLAddr && n >= 8 {
			return net.HardwareAddr(append([]byte(nil), opts[2:8]...)), true
		}
		opts = opts[n:]
	}
	return nil, false
}

// emptyRouterAdvert is the ICMPv6 message that ends iPXE's IPv6 wait. The
// checksum stays 0: the kernel fills it in on raw ICMPv6 sockets. src, if
// a 6-byte MAC, goes in a source link-layer address option so the client
// need not solicit a neighbour to answer us.
func emptyRouterAdvert(src net.HardwareAddr) []byte {
	b := make([]byte, 16, 24)
	b[0] = icmpv6RouterAdvert
	// b[4] cur hop limit 0 (unspecified), b[5] flags 0 (no M, no O),
	// b[6:8] router lifetime 0: not a default router; reachable and
	// retrans timers 0: unspecified.
	if len(src) == 6 {
		b = append(b, ndpOptSourceLLAddr, 1)
		b = append(b, src...)
	}
	return b
}

// answerSolicit decides whether to answer a router solicitation: only
// from hosts this server boots, so other machines on the link are left to
// whatever router they have.
func answerSolicit(b []byte, dir Directory, allowUnknown bool) (net.HardwareAddr, bool) {
	mac, ok := solicitMAC(b)
	if !ok {
		return nil, false
	}
	if _, known := dir.Lookup(mac); !known && !allowUnknown {
		return mac, false
	}
	return mac, true
}

// raService answers router solicitations on one interface.
type raService struct {
	conn    net.PacketConn
	ifi     *net.Interface
	dir     Directory
	unknown bool
	log     *slog.Logger
}

func newRAService(ifname string, dir Directory, allowUnknown bool, log *slog.Logger) (*raService, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("ra: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return nil, fmt.Errorf("ra: raw ICMPv6 socket (needs CAP_NET_RAW): %w", err)
	}
	var filt unix.ICMPv6Filter // let only router solicitations through
	for i := range filt.Data {
		filt.Data[i] = ^uint32(0)
	}
	filt.Data[icmpv6RouterSolicit>>5] &^= 1 << (icmpv6RouterSolicit & 31)
	mreq := &unix.IPv6Mreq{Interface: uint32(ifi.Index)}
	copy(mreq.Multiaddr[:], net.ParseIP("ff02::2")) // all-routers: where solicitations go
	for _, step := range []func() error{
		func() error { return unix.BindToDevice(fd, ifname) },
		func() error { return unix.SetsockoptICMPv6Filter(fd, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, &filt) },
		func() error { return unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP, mreq) },
		// RFC 4861: receivers drop neighbour discovery with hop limit < 255.
		func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255) },
		func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index) },
	} {
		if err := step(); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("ra: %s: %w", ifname, err)
		}
	}
	// Hand the socket to the net package: its Close wakes a blocked read.
	f := os.NewFile(uintptr(fd), "icmpv6")
	conn, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("ra: %w", err)
	}
	return &raService{conn: conn, ifi: ifi, dir: dir, unknown: allowUnknown, log: log}, nil
}

func (r *raService) serve() {
	go func() {
		buf := make([]byte, 1500)
		allNodes := &net.IPAddr{IP: net.ParseIP("ff02::1"), Zone: r.ifi.Name}
		for {
			n, _, err := r.conn.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			mac, ok := answerSolicit(buf[:n], r.dir, r.unknown)
			if !ok {
				continue
			}
			// To all nodes, as routers usually answer (RFC 4861 6.2.6): a
			// unicast reply would first need neighbour discovery.
			if _, err := r.conn.WriteTo(emptyRouterAdvert(r.ifi.HardwareAddr), allNodes); err != nil {
				r.log.Warn("ra: send", "mac", mac.String(), "err", err)
				continue
			}
			r.log.Debug("ra: answered router solicitation", "mac", mac.String())
		}
	}()
}

func (r *raService) close() { r.conn.Close() }
