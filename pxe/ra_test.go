package pxe

import (
	"bytes"
	"net"
	"testing"
)

func TestSolicitMAC(t *testing.T) {
	mac := []byte{0x52, 0x54, 0x00, 0x77, 0x00, 0x01}
	rs := func(opts ...byte) []byte { return append([]byte{133, 0, 0, 0, 0, 0, 0, 0}, opts...) }
	tests := []struct {
		name string
		msg  []byte
		want net.HardwareAddr // nil: not answerable
	}{
		{"iPXE solicitation", rs(append([]byte{1, 1}, mac...)...), mac},
		{"after another option", rs(append([]byte{99, 1, 0, 0, 0, 0, 0, 0, 1, 1}, mac...)...), mac},
		{"no options (source ::)", rs(), nil},
		{"zero option length", rs(1, 0, 0, 0, 0, 0, 0, 0), nil},
		{"option past the end", rs(1, 2, 0x52, 0x54, 0, 0x77, 0, 1), nil},
		{"truncated header", []byte{133, 0, 0, 0}, nil},
		{"router advertisement", append([]byte{134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}, mac...), nil},
		{"bad code", append([]byte{133, 1, 0, 0, 0, 0, 0, 0, 1, 1}, mac...), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := solicitMAC(tt.msg)
			if ok != (tt.want != nil) || !bytes.Equal(got, tt.want) {
				t.Errorf("solicitMAC = %v, %v; want %v", got, ok, tt.want)
			}
		})
	}
}

// The advertisement must end iPXE's IPv6 configuration without giving it
// anything: no M/O flags (which would start DHCPv6), router lifetime 0,
// no prefix.
func TestEmptyRouterAdvert(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	tests := []struct {
		name string
		src  net.HardwareAddr
		want []byte
	}{
		{"with source link-layer address", mac, []byte{
			134, 0, 0, 0, // type, code, checksum (kernel's)
			0, 0, 0, 0, // hop limit, flags, router lifetime
			0, 0, 0, 0, 0, 0, 0, 0, // reachable, retrans
			1, 1, 0x02, 0, 0, 0, 0, 0x01,
		}},
		{"interface without a MAC", nil, []byte{134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := emptyRouterAdvert(tt.src); !bytes.Equal(got, tt.want) {
				t.Errorf("emptyRouterAdvert = % x\nwant                % x", got, tt.want)
			}
		})
	}
}

func TestAnswerSolicit(t *testing.T) {
	known, _ := net.ParseMAC("52:54:00:77:00:01")
	other, _ := net.ParseMAC("52:54:00:77:00:99")
	dir := NewStaticDirectory()
	dir.Add(HostBoot{MAC: known, Hostname: "a"})
	rs := func(mac net.HardwareAddr) []byte {
		return append([]byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 1}, mac...)
	}
	tests := []struct {
		name         string
		msg          []byte
		allowUnknown bool
		want         bool
	}{
		{"boot host", rs(known), false, true},
		{"other machine on the link", rs(other), false, false},
		{"other machine, --allow-unknown", rs(other), true, true},
		{"not a solicitation", []byte{128, 0, 0, 0}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, got := answerSolicit(tt.msg, dir, tt.allowUnknown); got != tt.want {
				t.Errorf("answerSolicit = %v, want %v", got, tt.want)
			}
		})
	}
}
