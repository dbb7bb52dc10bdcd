package lldp

import (
	"context"
	"encoding/hex"
	"net"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hnboot/hnboot/internal/checkin"
)

var sw = net.HardwareAddr{0x00, 0x1c, 0x73, 0xaa, 0xbb, 0xcc}

// A frame as an Arista switch sends it (chassis MAC, port by interface
// name, TTL, descriptions, management address, 802.1 port VLAN), written
// out in hex.
const aristaFrame = "0180c200000e001c73aabbcc88cc" +
	"0207" + "04001c73aabbcc" + // chassis ID: MAC
	"040a" + "05457468657236392f31" + // port ID: subtype 5 (interface name) "Ether69/1"
	"0602" + "0078" + // TTL 120
	"0808" + "7765622d3037206e" + // port description "web-07 n"
	"0a07" + "6c6561662d3132" + // system name "leaf-12"
	"100c" + "05010a000001" + "020000000000" + // management address 10.0.0.1
	"fe06" + "0080c2010078" + // 802.1 port VLAN ID 120
	"0000"

func TestParse(t *testing.T) {
	raw, err := hex.DecodeString(strings.ReplaceAll(aristaFrame, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	tagged := append(append(append([]byte{}, raw[:12]...), 0x81, 0x00, 0x00, 0x78), raw[12:]...)
	want := &checkin.Neighbor{ChassisID: "mac 00:1c:73:aa:bb:cc", PortID: "Ether69/1", TTL: 120, PortDescription: "web-07 n",
		SystemName: "leaf-12", MgmtAddress: "10.0.0.1", VLAN: 120}
	for _, tc := range []struct {
		name  string
		frame []byte
		want  *checkin.Neighbor
		isErr bool
	}{
		{"arista", raw, want, false},
		{"behind an 802.1Q tag", tagged, want, false},
		{"built by Frame", Frame(sw, *want), want, false},
		{"no end TLV", raw[:len(raw)-2], want, false},
		{"truncated TLV", raw[:len(raw)-5], nil, true},
		{"not LLDP", append(append([]byte{}, raw[:12]...), 0x08, 0x00, 0x45), nil, true},
		{"port ID before chassis ID", append(append([]byte{}, raw[:14]...), 0x04, 0x02, 0x05, 'x', 0x02, 0x02, 0x04, 'y'), nil, true},
		{"short", raw[:10], nil, true},
		{"hostile text", Frame(sw, checkin.Neighbor{ChassisID: "sw\x1b[2J", PortID: "p1\u202e\n", TTL: 1, SystemName: strings.Repeat("é", 200)}),
			&checkin.Neighbor{ChassisID: "sw[2J", PortID: "p1", TTL: 1, SystemName: strings.Repeat("é", 126)}, false},
	} {
		got, err := Parse(tc.frame)
		if (err != nil) != tc.isErr || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Parse(%s) = %+v, %v; want %+v, error %v", tc.name, got, err, tc.want, tc.isErr)
		}
	}
}

// A frame sent into a network namespace is heard on the NIC at the other
// end of a veth pair.
func TestListenInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestListenInNamespace needs root (a network namespace, raw sockets): run the tests as root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // this thread is in it now
	if err != nil {
		t.Fatal(err)
	}
	defer func() { netns.Set(orig); ns.Close() }()
	la := netlink.NewLinkAttrs()
	la.Name = "host0"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "switch0"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"host0", "switch0"} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	host, _ := net.InterfaceByName("host0")
	swi, _ := net.InterfaceByName("switch0")
	l, err := Listen(host)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tx, err := packet.Listen(swi, packet.Raw, EtherType, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	want := checkin.Neighbor{ChassisID: "mac " + swi.HardwareAddr.String(), PortID: "Ethernet12", TTL: 120, SystemName: "leaf-12", PortDescription: "web-07 eno1", VLAN: 120}
	frame := Frame(swi.HardwareAddr, want)
	go func() {
		for i := 0; i < 20; i++ {
			tx.WriteTo(frame, &packet.Addr{HardwareAddr: Multicast})
			time.Sleep(100 * time.Millisecond)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := l.Next(ctx)
	if err != nil || got == nil || !reflect.DeepEqual(*got, want) {
		t.Fatalf("Next = %+v, %v; want %+v", got, err, want)
	}
	// Nothing heard: nil at the deadline.
	quiet, _ := Listen(swi)
	defer quiet.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if got, err := quiet.Next(ctx2); got != nil || err != nil {
		t.Errorf("Next on a quiet NIC = %+v, %v; want nil, nil", got, err)
	}
}
