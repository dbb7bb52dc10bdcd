package pxe

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// dhcpService runs the DHCP decisions on sockets bound to one interface.
type dhcpService struct {
	cfg     *DHCPConfig
	dir     Directory
	rec     Recorder
	log     *slog.Logger
	sem     chan struct{}
	dropped atomic.Uint64
	servers []*server4.Server
}

func newDHCPService(ifname string, cfg *DHCPConfig, dir Directory, rec Recorder, log *slog.Logger, maxConcurrent int, ports ...int) (*dhcpService, error) {
	if maxConcurrent <= 0 {
		maxConcurrent = 64
	}
	d := &dhcpService{cfg: cfg, dir: dir, rec: rec, log: log, sem: make(chan struct{}, maxConcurrent)}
	for _, port := range ports {
		// The socket is server4's (SO_BINDTODEVICE, SO_BROADCAST), with a
		// receive buffer big enough for a boot storm's burst.
		conn, err := server4.NewIPv4UDPConn(ifname, &net.UDPAddr{IP: net.IPv4zero, Port: port})
		if err != nil {
			d.close()
			return nil, fmt.Errorf("dhcp: listen on %s port %d: %w", ifname, port, err)
		}
		conn.SetReadBuffer(4 << 20)
		srv, err := server4.NewServer(ifname, nil, d.handler(port == 4011), server4.WithConn(conn))
		if err != nil {
			d.close()
			return nil, fmt.Errorf("dhcp: listen on %s port %d: %w", ifname, port, err)
		}
		d.servers = append(d.servers, srv)
	}
	return d, nil
}

func (d *dhcpService) serve() {
	for _, s := range d.servers {
		go s.Serve()
	}
}

func (d *dhcpService) close() {
	for _, s := range d.servers {
		s.Close()
	}
}

// queueWait is how long a request may wait for a worker before it is
// dropped: far below the 2 s iPXE waits for a proxy offer.
const queueWait = 250 * time.Millisecond

// handler bounds concurrent work: server4 starts a goroutine per packet;
// at most cap(d.sem) decide at once, the others wait up to queueWait and
// are then dropped (clients retransmit) rather than queue without bound.
func (d *dhcpService) handler(bootServer bool) server4.Handler {
	return func(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
		if !d.acquire() {
			if n := d.dropped.Add(1); n&(n-1) == 0 { // log at 1, 2, 4, 8, ...
				d.log.Warn("dhcp: too many requests at once; dropping (clients retransmit)", "dropped_total", n)
			}
			return
		}
		defer func() { <-d.sem }()
		defer func() {
			if r := recover(); r != nil {
				d.log.Error("dhcp: handler panic", "panic", r, "peer", peer)
			}
		}()
		d.handle(conn, peer, req, bootServer)
	}
}

// acquire takes a worker slot, waiting at most queueWait.
func (d *dhcpService) acquire() bool {
	select {
	case d.sem <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(queueWait)
	defer t.Stop()
	select {
	case d.sem <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

func (d *dhcpService) handle(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4, bootServer bool) {
	start := time.Now()
	var resp *dhcpv4.DHCPv4
	var reason string
	if bootServer {
		resp, reason = ReplyBootServer(req, d.cfg, d.dir)
	} else {
		resp, reason = Reply(req, d.cfg, d.dir)
	}
	ev := Event{Time: start, MAC: req.ClientHWAddr, Kind: KindDHCP}
	port := "67"
	if bootServer {
		port = "4011"
	}
	if resp == nil {
		ev.Kind = KindDHCPIgnored
		ev.Detail = fmt.Sprintf("%s on :%s: %s", req.MessageType(), port, reason)
		d.rec.Record(ev)
		return
	}
	dst := replyAddr(req, peer, bootServer)
	if _, err := conn.WriteTo(resp.ToBytes(), dst); err != nil {
		ev.Err = fmt.Sprintf("send to %v: %v", dst, err)
	}
	ev.Detail = fmt.Sprintf("%s on :%s -> %s %s (%v)", req.MessageType(), port, dst, reason, time.Since(start).Round(time.Microsecond))
	d.rec.Record(ev)
}

// replyAddr is where a reply goes: back to a relay, to the boot-server
// client that asked by unicast, to a configured client, or broadcast.
func replyAddr(req *dhcpv4.DHCPv4, peer net.Addr, bootServer bool) net.Addr {
	if gi := req.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
		return &net.UDPAddr{IP: gi, Port: dhcpv4.ServerPort}
	}
	if u, ok := peer.(*net.UDPAddr); ok && bootServer && !u.IP.Equal(net.IPv4bcast) {
		return u
	}
	if ci := req.ClientIPAddr; ci != nil && !ci.IsUnspecified() {
		return &net.UDPAddr{IP: ci, Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}

// UDPPortHolders returns the sockets bound to UDP port in this network
// namespace, as lines of /proc/net/udp{,6}. A second DHCP server on the
// same host would share :67 silently (SO_REUSEPORT); callers refuse to
// start instead.
func UDPPortHolders(port int) ([]string, error) {
	var out []string
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		out = append(out, udpSockets(b, port)...)
	}
	return out, nil
}

// udpSockets parses /proc/net/udp text and returns the local addresses
// bound to port.
func udpSockets(proc []byte, port int) []string {
	var out []string
	want := fmt.Sprintf("%04X", port)
	sc := bufio.NewScanner(bytes.NewReader(proc))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[0] == "sl" {
			continue
		}
		host, p, ok := strings.Cut(f[1], ":")
		if !ok || !strings.EqualFold(p, want) {
			continue
		}
		out = append(out, procAddr(host)+":"+strconv.Itoa(port)+" inode "+f[9])
	}
	return out
}

// procAddr renders the little-endian hex IPv4 address of /proc/net/udp
// (IPv6 ones are returned as they are).
func procAddr(h string) string {
	if len(h) != 8 {
		return h
	}
	v, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return h
	}
	return net.IPv4(byte(v), byte(v>>8), byte(v>>16), byte(v>>24)).String()
}
