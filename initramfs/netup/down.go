package netup

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Ours says whether Up configured the lease (DHCP): an address that was
// there before (the kernel's ip=, a kexec) has no Server and is not ours
// to take away.
func (l Lease) Ours() bool { return l.Server != nil && l.Address != nil }

// Down hands the NIC of a lease Up configured over to the image before
// switch_root: it removes the IPv4 routes through the NIC and the leased
// address and sets the link down, as the kernel left it before Up, with
// its MTU. The booted system then finds the NIC as on any boot: its udev
// can give it the image's name (the kernel renames no link that is up),
// and systemd-networkd or ifupdown brings it up with what the fleet says
// (a static address, a VLAN, DHCP again), not beside the init's lease. It
// does nothing for a lease that is not ours.
func Down(l Lease) error {
	if !l.Ours() {
		return nil
	}
	link, err := netlink.LinkByName(l.Interface)
	if err != nil {
		return fmt.Errorf("netup: hand over %s: %w", l.Interface, err)
	}
	var errs []error
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		errs = append(errs, fmt.Errorf("list routes: %w", err))
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue // the subnet route: it goes with the address
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r, err))
		}
	}
	if err := netlink.AddrDel(link, &netlink.Addr{IPNet: l.Address}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		errs = append(errs, fmt.Errorf("delete address %s: %w", l.Address, err))
	}
	if err := netlink.LinkSetDown(link); err != nil {
		errs = append(errs, fmt.Errorf("set the link down: %w", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("netup: hand over %s: %w", l.Interface, errors.Join(errs...))
	}
	return nil
}
