// Package nic finds network interfaces in sysfs without netlink: the
// boot NIC the init checks in over, the MAC a host is known by in the
// fleet. The init and the agent both use it, so they name the same NIC.
package nic

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// SysClassNet is where the kernel lists network interfaces.
const SysClassNet = "/sys/class/net"

// FirstEthernet returns the name and MAC of the first ethernet interface
// under sysClassNet (normally /sys/class/net) in name order: names en* or
// eth*, or any other with ARP type 1 (ethernet) that is not virtual.
func FirstEthernet(sysClassNet string) (name, mac string, err error) {
	ents, err := os.ReadDir(sysClassNet)
	if err != nil {
		return "", "", fmt.Errorf("list interfaces: %w", err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	read := func(n, f string) string {
		b, _ := os.ReadFile(filepath.Join(sysClassNet, n, f))
		return strings.TrimSpace(string(b))
	}
	var fallback string
	for _, n := range names {
		if read(n, "type") != "1" || n == "lo" {
			continue
		}
		if strings.HasPrefix(n, "en") || strings.HasPrefix(n, "eth") {
			return n, read(n, "address"), nil
		}
		if fallback == "" {
			if _, err := os.Stat(filepath.Join(sysClassNet, n, "device")); err == nil {
				fallback = n // backed by hardware, just oddly named
			}
		}
	}
	if fallback != "" {
		return fallback, read(fallback, "address"), nil
	}
	return "", "", fmt.Errorf("no ethernet interface in %s (seen: %s)", sysClassNet, strings.Join(names, " "))
}

// ByMAC returns the interface under sysClassNet whose address is mac
// (lower-case, colon-separated), or "".
func ByMAC(sysClassNet, mac string) string {
	ents, _ := os.ReadDir(sysClassNet)
	for _, e := range ents {
		a, err := os.ReadFile(filepath.Join(sysClassNet, e.Name(), "address"))
		if err == nil && strings.EqualFold(strings.TrimSpace(string(a)), mac) {
			return e.Name()
		}
	}
	return ""
}

// FromBOOTIF turns pxelinux's BOOTIF=01-aa-bb-cc-dd-ee-ff (ARP type 1,
// then the MAC) into aa:bb:cc:dd:ee:ff; "" when it is not that form.
func FromBOOTIF(bootif string) string {
	s := strings.ToLower(bootif)
	s, ok := strings.CutPrefix(s, "01-")
	if !ok || len(s) != 17 {
		return ""
	}
	return strings.ReplaceAll(s, "-", ":")
}
