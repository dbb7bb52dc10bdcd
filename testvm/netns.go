package testvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strings"
)

// NetNS is a network namespace made for one test: its own bridge, tap
// devices and veth pairs, so no packet reaches a real network. Close
// deletes the namespace and everything in it (tap devices and veth ends
// go with it).
type NetNS struct {
	Name string
}

// NewNetNS creates a fresh namespace named prefix-<random> with its
// loopback up.
func NewNetNS(prefix string) (*NetNS, error) {
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("ip (iproute2) not found: %s", InstallHint)
	}
	var b [3]byte
	rand.Read(b[:])
	n := &NetNS{Name: prefix + "-" + hex.EncodeToString(b[:])}
	if err := ip("netns", "add", n.Name); err != nil {
		return nil, fmt.Errorf("create network namespace (needs root): %w", err)
	}
	if err := n.IP("link", "set", "lo", "up"); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// IP runs `ip -n NS args...`.
func (n *NetNS) IP(args ...string) error {
	return ip(append([]string{"-n", n.Name}, args...)...)
}

// Bridge adds a bridge with address cidr (e.g. 10.77.0.1/24), up.
func (n *NetNS) Bridge(name, cidr string) error {
	for _, a := range [][]string{
		{"link", "add", name, "type", "bridge"},
		{"link", "set", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"},
		{"addr", "add", cidr, "dev", name},
		{"link", "set", name, "up"},
	} {
		if err := n.IP(a...); err != nil {
			return err
		}
	}
	return nil
}

// Tap adds a tap device enslaved to bridge, up, for QEMU's -netdev tap.
func (n *NetNS) Tap(name, bridge string) error {
	for _, a := range [][]string{
		{"tuntap", "add", "dev", name, "mode", "tap"},
		{"link", "set", name, "master", bridge},
		{"link", "set", name, "up"},
	} {
		if err := n.IP(a...); err != nil {
			return err
		}
	}
	return nil
}

// Link connects other to this namespace's bridge with a veth pair; the far
// end, named peer, gets cidr in other.
func (n *NetNS) Link(bridge string, other *NetNS, peer, cidr string) error {
	local := "v" + peer
	if err := n.IP("link", "add", local, "type", "veth", "peer", "name", peer, "netns", other.Name); err != nil {
		return err
	}
	for _, a := range [][]string{{"link", "set", local, "master", bridge}, {"link", "set", local, "up"}} {
		if err := n.IP(a...); err != nil {
			return err
		}
	}
	for _, a := range [][]string{{"addr", "add", cidr, "dev", peer}, {"link", "set", peer, "up"}} {
		if err := other.IP(a...); err != nil {
			return err
		}
	}
	return nil
}

// Command runs name inside the namespace.
func (n *NetNS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Close deletes the namespace.
func (n *NetNS) Close() error {
	if n == nil || n.Name == "" {
		return nil
	}
	return ip("netns", "del", n.Name)
}
