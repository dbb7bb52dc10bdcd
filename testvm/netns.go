package testvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
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

// Listen opens a TCP listener inside the namespace (the socket keeps it),
// for a test's own server on the lab's bridge.
func (n *NetNS) Listen(addr string) (net.Listener, error) {
	var l net.Listener
	err := n.do(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// Forward listens on local (outside the namespace, e.g. 127.0.0.1:0) and
// connects each connection to addr inside it: a browser or client on this
// machine reaches a server in the lab. Closing the listener stops it.
func (n *NetNS) Forward(local, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", local)
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := n.DialContext(context.Background(), "tcp", addr)
				if err != nil {
					return
				}
				defer s.Close()
				go func() { io.Copy(s, c); s.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, s)
			}()
		}
	}()
	return ln, nil
}

// DialContext connects from inside the namespace.
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// do runs fn on an OS thread that entered the namespace; sockets made
// there stay in it.
func (n *NetNS) do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	ns, err := os.Open("/var/run/netns/" + n.Name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.Name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// This thread stays in the namespace: it ends with the goroutine,
		// which keeps it locked.
		return fmt.Errorf("setns back from %s: %w", n.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}
