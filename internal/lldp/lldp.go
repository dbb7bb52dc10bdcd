// Package lldp hears what switch port a NIC is plugged into: it listens
// for IEEE 802.1AB LLDP frames on a raw AF_PACKET socket (no lldpd on the
// host) and parses their TLVs into a checkin.Neighbor. The frames come
// from the network, so the parser trusts no length and keeps only
// printable text.
package lldp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/internal/checkin"
)

// EtherType of LLDP frames, and the multicast address bridges do not
// forward (nearest bridge), to which switches send them.
const EtherType = 0x88cc

var Multicast = net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}

// TLV types.
const (
	tlvEnd        = 0
	tlvChassisID  = 1
	tlvPortID     = 2
	tlvTTL        = 3
	tlvPortDesc   = 4
	tlvSystemName = 5
	tlvSystemDesc = 6
	tlvMgmtAddr   = 8
	tlvOrg        = 127
)

const maxText = 253

// ErrNotLLDP is a frame that is not an LLDPDU with its three mandatory
// TLVs (chassis ID, port ID, TTL) first.
var ErrNotLLDP = errors.New("not an LLDP frame")

// Parse reads an Ethernet frame (destination, source, EtherType 0x88cc,
// optionally behind one 802.1Q tag) holding an LLDPDU.
func Parse(frame []byte) (*checkin.Neighbor, error) {
	if len(frame) < 14 {
		return nil, fmt.Errorf("%w: %d bytes", ErrNotLLDP, len(frame))
	}
	et, off := binary.BigEndian.Uint16(frame[12:14]), 14
	if et == 0x8100 && len(frame) >= 18 {
		et, off = binary.BigEndian.Uint16(frame[16:18]), 18
	}
	if et != EtherType {
		return nil, fmt.Errorf("%w: EtherType %#04x", ErrNotLLDP, et)
	}
	return ParseDU(frame[off:])
}

// ParseDU reads an LLDPDU: its TLVs, up to the end TLV.
func ParseDU(b []byte) (*checkin.Neighbor, error) {
	n := &checkin.Neighbor{}
	for i := 0; len(b) > 0; i++ {
		if len(b) < 2 {
			return nil, fmt.Errorf("%w: truncated TLV header", ErrNotLLDP)
		}
		h := binary.BigEndian.Uint16(b)
		typ, l := int(h>>9), int(h&0x1ff)
		if len(b) < 2+l {
			return nil, fmt.Errorf("%w: TLV %d says %d bytes, %d left", ErrNotLLDP, typ, l, len(b)-2)
		}
		v := b[2 : 2+l]
		b = b[2+l:]
		if i < 3 && typ != i+1 {
			return nil, fmt.Errorf("%w: TLV %d is type %d, want %d", ErrNotLLDP, i+1, typ, i+1)
		}
		switch typ {
		case tlvEnd:
			return n, nil
		case tlvChassisID:
			if l < 2 {
				return nil, fmt.Errorf("%w: empty chassis ID", ErrNotLLDP)
			}
			n.ChassisID = id(v[0], v[1:], 4)
		case tlvPortID:
			if l < 2 {
				return nil, fmt.Errorf("%w: empty port ID", ErrNotLLDP)
			}
			n.PortID = id(v[0], v[1:], 3)
		case tlvTTL:
			if l < 2 {
				return nil, fmt.Errorf("%w: short TTL", ErrNotLLDP)
			}
			n.TTL = int(binary.BigEndian.Uint16(v))
		case tlvPortDesc:
			n.PortDescription = text(v)
		case tlvSystemName:
			n.SystemName = text(v)
		case tlvSystemDesc:
			n.SystemDesc = text(v)
		case tlvMgmtAddr:
			if l >= 2 && int(v[0]) >= 1 && 1+int(v[0]) <= l {
				if a, ok := netip.AddrFromSlice(v[2 : 1+int(v[0])]); ok && n.MgmtAddress == "" {
					n.MgmtAddress = a.String()
				}
			}
		case tlvOrg:
			// IEEE 802.1 (OUI 00-80-c2), subtype 1: the port VLAN ID.
			if l >= 6 && v[0] == 0x00 && v[1] == 0x80 && v[2] == 0xc2 && v[3] == 1 {
				n.VLAN = int(binary.BigEndian.Uint16(v[4:6]) & 0xfff)
			}
		}
	}
	return n, nil
}

// id is a chassis or port ID: a MAC for the MAC subtype, else text.
func id(subtype byte, v []byte, macSubtype byte) string {
	if subtype == macSubtype && len(v) == 6 {
		return "mac " + net.HardwareAddr(v).String()
	}
	return text(v)
}

// text keeps printable characters of v, at most maxText bytes.
func text(v []byte) string {
	s := strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, string(v))
	s = strings.TrimSpace(s)
	if len(s) > maxText {
		cut := maxText
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// Listener hears LLDP frames on one NIC.
type Listener struct {
	c *packet.Conn
}

// Listen opens a raw socket for LLDP frames on ifi (needs CAP_NET_RAW)
// and joins the LLDP multicast group, so the NIC passes the frames up.
func Listen(ifi *net.Interface) (*Listener, error) {
	c, err := packet.Listen(ifi, packet.Raw, EtherType, nil)
	if err != nil {
		return nil, fmt.Errorf("lldp: listen on %s: %w", ifi.Name, err)
	}
	rc, err := c.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			mr := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
			copy(mr.Address[:], Multicast)
			serr = unix.SetsockoptPacketMreq(int(fd), unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mr)
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("lldp: join the LLDP multicast group on %s: %w", ifi.Name, err)
	}
	return &Listener{c: c}, nil
}

// Next waits for the first LLDP frame that parses, until ctx ends (nil,
// nil: none heard).
func (l *Listener) Next(ctx context.Context) (*checkin.Neighbor, error) {
	stop := context.AfterFunc(ctx, func() { l.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 9216)
	for {
		n, _, err := l.c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			return nil, err
		}
		if nb, err := Parse(buf[:n]); err == nil {
			return nb, nil
		}
	}
}

func (l *Listener) Close() error { return l.c.Close() }

// Frame builds an LLDP frame from src: what a switch sends, for tests and
// for the simulators.
func Frame(src net.HardwareAddr, n checkin.Neighbor) []byte {
	var b []byte
	tlv := func(typ int, v []byte) {
		b = binary.BigEndian.AppendUint16(b, uint16(typ<<9|len(v)))
		b = append(b, v...)
	}
	if mac, err := net.ParseMAC(strings.TrimPrefix(n.ChassisID, "mac ")); err == nil {
		tlv(tlvChassisID, append([]byte{4}, mac...))
	} else {
		tlv(tlvChassisID, append([]byte{7}, n.ChassisID...))
	}
	tlv(tlvPortID, append([]byte{5}, n.PortID...))
	tlv(tlvTTL, binary.BigEndian.AppendUint16(nil, uint16(n.TTL)))
	if n.PortDescription != "" {
		tlv(tlvPortDesc, []byte(n.PortDescription))
	}
	if n.SystemName != "" {
		tlv(tlvSystemName, []byte(n.SystemName))
	}
	if n.SystemDesc != "" {
		tlv(tlvSystemDesc, []byte(n.SystemDesc))
	}
	if a, err := netip.ParseAddr(n.MgmtAddress); err == nil {
		s := a.AsSlice()
		sub := byte(1)
		if a.Is6() {
			sub = 2
		}
		tlv(tlvMgmtAddr, append(append([]byte{byte(1 + len(s)), sub}, s...), 2, 0, 0, 0, 0, 0))
	}
	if n.VLAN > 0 {
		tlv(tlvOrg, []byte{0x00, 0x80, 0xc2, 1, byte(n.VLAN >> 8), byte(n.VLAN)})
	}
	tlv(tlvEnd, nil)
	f := append(append(append([]byte{}, Multicast...), src...), 0x88, 0xcc)
	return append(f, b...)
}
