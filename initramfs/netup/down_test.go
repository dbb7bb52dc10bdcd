package netup

import (
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Down removes what a DHCP lease configured (address, default route,
// classless routes) from a NIC in a network namespace of the test's own,
// and sets the link down with its MTU; a lease that was not ours is left
// alone.
func TestDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestDown needs root (a network namespace): run the tests as root")
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
	la.Name, la.MTU = "eth0", 1400
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"eth0", "peer0"} { // a veth has a carrier with both ends up
		l, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	configure := func(addr string) *net.IPNet {
		ip, n, _ := net.ParseCIDR(addr)
		n.IP = ip
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: n}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	lease := configure("10.0.0.50/24")
	_, other, _ := net.ParseCIDR("192.0.2.0/24")
	for _, r := range []netlink.Route{
		{LinkIndex: link.Attrs().Index, Gw: net.IPv4(10, 0, 0, 1)},
		{LinkIndex: link.Attrs().Index, Dst: other, Gw: net.IPv4(10, 0, 0, 2)},
	} {
		if err := netlink.RouteAdd(&r); err != nil {
			t.Fatal(err)
		}
	}

	// Not ours (no DHCP server): untouched.
	if err := Down(Lease{Interface: "eth0", Address: lease}); err != nil {
		t.Fatal(err)
	}
	if addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4); len(addrs) != 1 {
		t.Errorf("Down of a lease not ours changed the addresses: %v", addrs)
	}
	if l, _ := netlink.LinkByName("eth0"); l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("Down of a lease not ours set the link down")
	}

	if err := Down(Lease{Interface: "eth0", Address: lease, Server: net.IPv4(10, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4); len(addrs) != 0 {
		t.Errorf("addresses after Down = %v, want none", addrs)
	}
	if routes, _ := netlink.RouteList(link, netlink.FAMILY_V4); len(routes) != 0 {
		t.Errorf("routes after Down = %v, want none", routes)
	}
	link, _ = netlink.LinkByName("eth0")
	if link.Attrs().Flags&net.FlagUp != 0 || link.Attrs().MTU != 1400 {
		t.Errorf("link after Down: flags %v, MTU %d; want down, 1400", link.Attrs().Flags, link.Attrs().MTU)
	}
	// Again: nothing left to remove is no error.
	if err := Down(Lease{Interface: "eth0", Address: lease, Server: net.IPv4(10, 0, 0, 1)}); err != nil {
		t.Errorf("second Down: %v", err)
	}
}
