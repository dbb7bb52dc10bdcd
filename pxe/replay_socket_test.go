//go:build linux

package pxe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// newNetNS makes a network namespace held only by the returned fd: no
// name under /run/netns, so nothing outlives the test, and the test's own
// threads never leave the namespace they started in.
func newNetNS(t *testing.T) int {
	t.Helper()
	type res struct {
		fd  int
		err error
	}
	c := make(chan res, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine instead of
		// going back to the scheduler inside the new namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			c <- res{-1, fmt.Errorf("unshare(CLONE_NEWNET): %w", err)}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		c <- res{fd, err}
	}()
	r := <-c
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { unix.Close(r.fd) })
	return r.fd
}

// inNetNS runs f on a thread inside the namespace ns. Sockets f opens
// stay in ns whichever goroutine uses them later.
func inNetNS(ns int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, as in newNetNS
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// socketLab is the capture lab in miniature: the real DHCP service
// (server4 sockets bound to srv0, the bounded handler, replyAddr) in one
// namespace, a client socket on the far end of a veth in another.
type socketLab struct {
	client net.PacketConn
	rec    *eventLog
}

func newSocketLab(t *testing.T, cfg *DHCPConfig, dir Directory) *socketLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and veth devices (TestReplayCaptures covers the decision without them)")
	}
	srvNS, cliNS := newNetNS(t), newNetNS(t)
	lab := &socketLab{rec: &eventLog{}}
	var svc *dhcpService
	err := inNetNS(srvNS, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "srv0"}, PeerName: "cli0", PeerNamespace: netlink.NsFd(cliNS)}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		addr, _ := netlink.ParseAddr(labServerIP.String() + "/24")
		if err := netlink.AddrAdd(veth, addr); err != nil {
			return err
		}
		for _, l := range []netlink.Link{lo, veth} {
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		svc, err = newDHCPService("srv0", cfg, dir, lab.rec, slog.New(slog.NewTextHandler(io.Discard, nil)), 8, dhcpv4.ServerPort, 4011)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.close)
	svc.serve()
	// The client has an address so that it can also ask on 4011 by
	// unicast, as a PXE client does once the address server answered;
	// its broadcasts then come from 10.77.0.60:68 (labBootPeer).
	err = inNetNS(cliNS, func() error {
		cli, err := netlink.LinkByName("cli0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(labBootPeer.IP.String() + "/24")
		if err := netlink.AddrAdd(cli, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(cli); err != nil {
			return err
		}
		if err := waitUp("cli0"); err != nil {
			return err
		}
		lab.client, err = server4.NewIPv4UDPConn("cli0", &net.UDPAddr{Port: dhcpv4.ClientPort})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.client.Close() })
	if err := inNetNS(srvNS, func() error { return waitUp("srv0") }); err != nil {
		t.Fatal(err)
	}
	return lab
}

// waitUp waits until the kernel has the link up (its link watch can lag
// the carrier by up to a second, and drops packets until then: the first
// packet would be lost, and a client would only retransmit).
func waitUp(name string) error {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if l, err := netlink.LinkByName(name); err == nil && l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up after 5 s", name)
		}
	}
}

// exchange sends raw to dst and returns the first reply for xid, or nil
// after wait.
func (l *socketLab) exchange(t *testing.T, raw []byte, dst *net.UDPAddr, xid dhcpv4.TransactionID, wait time.Duration) []byte {
	t.Helper()
	if _, err := l.client.WriteTo(raw, dst); err != nil {
		t.Fatalf("send to %v: %v", dst, err)
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(wait)
	for {
		l.client.SetReadDeadline(deadline)
		n, _, err := l.client.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if m, err := dhcpv4.FromBytes(buf[:n]); err == nil && m.OpCode == dhcpv4.OpcodeBootReply && m.TransactionID == xid {
			return append([]byte(nil), buf[:n]...)
		}
	}
}

// TestReplayCapturesOnSocket: the captured packets, sent as a client
// sends them (broadcast to :67, and each REQUEST also by unicast to :4011
// in proxy mode), through the real server4 sockets of the DHCP service.
// What comes back on the wire must be byte for byte what the decision
// gives for the same packet (whose whole output the goldens of
// TestReplayCaptures pin down), and silence where it is silent.
func TestReplayCapturesOnSocket(t *testing.T) {
	scenarios := loadCaptures(t)
	names := make([]string, 0, len(scenarios))
	for n := range scenarios {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, mode := range []string{ModeProxy, ModeFull} {
		t.Run(mode, func(t *testing.T) {
			// Two servers alike: one behind the sockets, one asked
			// directly; each keeps its own pool in step.
			cfg, dir := replayConfig(t, mode, false)
			want, _ := replayConfig(t, mode, false)
			lab := newSocketLab(t, cfg, dir)
			bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ServerPort}
			boot := &net.UDPAddr{IP: labServerIP, Port: 4011}
			for _, name := range names {
				for _, c := range scenarios[name] {
					raw, _ := rewriteMAC(c.raw, knownMAC)
					req, err := dhcpv4.FromBytes(raw)
					if err != nil {
						t.Fatal(err)
					}
					sends := []struct {
						dst        *net.UDPAddr
						bootServer bool
					}{{bcast, false}}
					if mode == ModeProxy && req.MessageType() == dhcpv4.MessageTypeRequest {
						sends = append(sends, struct {
							dst        *net.UDPAddr
							bootServer bool
						}{boot, true})
					}
					for _, s := range sends {
						var wantResp *dhcpv4.DHCPv4
						var reason string
						if s.bootServer {
							wantResp, reason = ReplyBootServer(req, want, dir)
						} else {
							wantResp, reason = Reply(req, want, dir)
						}
						wait := 2 * time.Second // iPXE's own patience for a proxy offer
						if wantResp == nil {
							wait = 150 * time.Millisecond
						}
						got := lab.exchange(t, raw, s.dst, req.TransactionID, wait)
						switch {
						case wantResp == nil && got != nil:
							t.Errorf("%s to %v: a reply on the wire, the decision is silent (%s)", c.name, s.dst, reason)
						case wantResp != nil && got == nil:
							t.Errorf("%s to %v: no reply within %v, the decision answers %s", c.name, s.dst, wait, reason)
						case wantResp != nil && !bytes.Equal(got, wantResp.ToBytes()):
							g, _ := dhcpv4.FromBytes(got)
							t.Errorf("%s to %v: the wire differs from the decision:\n%s\nwant\n%s", c.name, s.dst, g.Summary(), wantResp.Summary())
						}
					}
				}
			}
			// Every reply sent was recorded for the ledger, without a
			// send error.
			lab.rec.mu.Lock()
			defer lab.rec.mu.Unlock()
			for _, e := range lab.rec.ev {
				if e.Err != "" {
					t.Errorf("event %s %s: %s", e.Kind, e.Detail, e.Err)
				}
			}
		})
	}
}
