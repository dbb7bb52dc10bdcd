package pxe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hnboot/hnboot/internal/durable"
)

// Config is a whole boot server.
type Config struct {
	Interface string // boot interface: DHCP binds to it (SO_BINDTODEVICE)
	ServerIP  net.IP // this server's address on Interface; found from it when nil

	DHCP        DHCPConfig // Mode "" or "off" disables DHCP
	MaxDHCPWork int        // concurrent DHCP handlers (default 64)

	TFTPRoot string // directory served read-only by TFTP and /ipxe/ (default CacheDir/tftp, filled from IPXEDir)
	IPXEDir  string // with TFTPRoot empty: where to copy the iPXE binaries from (default /usr/lib/ipxe)
	TFTPAddr string // default ServerIP:69; "off" disables TFTP
	TFTP     TFTPConfig

	HTTPAddr string // listen address, default ":8080"
	HTTPBase string // URL hosts use; default http://ServerIP:port
	CacheDir string // extracted kernels and initramfs

	Cmdline      string // extra kernel arguments for every host
	AllowUnknown bool

	// AnswerRouterSolicit answers IPv6 router solicitations from boot hosts
	// on Interface with an empty advertisement, so iPXE does not wait ~15 s
	// for one. Only for links without an IPv6 router (see ra.go).
	AnswerRouterSolicit bool

	Directory Directory
	Recorder  Recorder       // may be nil
	Checkin   CheckinHandler // may be nil
	Extra     http.Handler   // /api/ and /metrics, may be nil
	Log       *slog.Logger
}

// Server is a running boot server.
type Server struct {
	cfg   Config
	log   *slog.Logger
	files *FileRoot
	dhcp  *dhcpService
	ra    *raService
	tftp  *TFTPServer
	tconn net.PacketConn
	http  *http.Server
	hln   net.Listener
	h     *HTTPHandler
}

// DefaultIPXEDir is where Debian's ipxe package installs the binaries.
const DefaultIPXEDir = "/usr/lib/ipxe"

// IPXEFiles are the first-stage binaries copied into the TFTP root.
var IPXEFiles = []string{FileBIOS, FileEFI64, "snponly.efi"}

// CopyIPXE copies IPXEFiles (following symlinks: the source is the
// operator's) from src into dst. Files src lacks are skipped, but
// undionly.kpxe and ipxe.efi must be there.
func CopyIPXE(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("tftp root: %w", err)
	}
	for _, name := range IPXEFiles {
		data, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			if os.IsNotExist(err) && name != FileBIOS && name != FileEFI64 {
				continue
			}
			return fmt.Errorf("iPXE binaries: %w (apt-get install ipxe)", err)
		}
		// Atomic, so a TFTP client never reads a half-copied binary.
		if err := durable.WriteFile(filepath.Join(dst, name), data, 0o644); err != nil {
			return fmt.Errorf("tftp root: %w", err)
		}
	}
	return nil
}

// New checks cfg, opens every socket (so errors come before serving) and
// returns a server ready to Run.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Directory == nil {
		return nil, errors.New("pxe: no Directory")
	}
	rec := cfg.Recorder
	if rec == nil {
		rec = Recorders(nil)
	}
	if cfg.ServerIP == nil {
		if cfg.Interface == "" {
			return nil, errors.New("pxe: need --interface or a server IP")
		}
		ip, err := InterfaceIPv4(cfg.Interface)
		if err != nil {
			return nil, err
		}
		cfg.ServerIP = ip
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = ":8080"
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = "/var/cache/hnboot/imaged"
	}
	if cfg.TFTPRoot == "" {
		// Debian's /usr/lib/ipxe/ipxe.efi is a symlink to /boot: copy the
		// binaries into a directory of our own rather than follow links
		// out of the served root.
		if cfg.IPXEDir == "" {
			cfg.IPXEDir = DefaultIPXEDir
		}
		cfg.TFTPRoot = filepath.Join(cfg.CacheDir, "tftp")
		if err := CopyIPXE(cfg.IPXEDir, cfg.TFTPRoot); err != nil {
			return nil, err
		}
	}
	s := &Server{cfg: cfg, log: cfg.Log}
	ok := false
	defer func() {
		if !ok {
			s.closeAll()
		}
	}()

	var err error
	if s.files, err = OpenFileRoot(cfg.TFTPRoot); err != nil {
		return nil, err
	}
	s.hln, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("http: listen %s: %w", cfg.HTTPAddr, err)
	}
	if cfg.HTTPBase == "" {
		_, port, _ := net.SplitHostPort(s.hln.Addr().String())
		cfg.HTTPBase = "http://" + net.JoinHostPort(cfg.ServerIP.String(), port)
	}
	cfg.HTTPBase = strings.TrimRight(cfg.HTTPBase, "/")
	mac := ARPLookup
	if cfg.TFTPAddr != "off" {
		addr := cfg.TFTPAddr
		if addr == "" {
			addr = net.JoinHostPort(cfg.ServerIP.String(), "69")
		}
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return nil, fmt.Errorf("tftp: %w", err)
		}
		if s.tconn, err = net.ListenUDP("udp4", ua); err != nil {
			return nil, fmt.Errorf("tftp: listen %s: %w", addr, err)
		}
		s.tftp = NewTFTPServer(s.files, cfg.TFTP, rec, cfg.Log, mac)
	}
	if m := cfg.DHCP.Mode; m != "" && m != "off" {
		if m != ModeProxy && m != ModeFull {
			return nil, fmt.Errorf("dhcp: mode %q: want proxy, full or off", m)
		}
		if cfg.Interface == "" {
			return nil, errors.New("dhcp: needs --interface (it binds to one interface only)")
		}
		if m == ModeFull && cfg.DHCP.Pool == nil {
			return nil, errors.New("dhcp: full mode needs a pool (--pool FIRST-LAST)")
		}
		holders, err := UDPPortHolders(67)
		if err != nil {
			return nil, err
		}
		if len(holders) > 0 {
			return nil, fmt.Errorf("dhcp: another DHCP server already holds UDP port 67 here (%s); "+
				"two servers on one host would share it silently: stop it (e.g. dnsmasq), or run imaged serve on another host", strings.Join(holders, ", "))
		}
		dc := cfg.DHCP
		dc.ServerIP = cfg.ServerIP
		dc.HTTPBase = cfg.HTTPBase
		dc.AllowUnknown = cfg.AllowUnknown
		ports := []int{67}
		if m == ModeProxy {
			ports = append(ports, 4011)
		}
		if s.dhcp, err = newDHCPService(cfg.Interface, &dc, cfg.Directory, rec, cfg.Log, cfg.MaxDHCPWork, ports...); err != nil {
			return nil, err
		}
	}
	if cfg.AnswerRouterSolicit {
		if cfg.Interface == "" {
			return nil, errors.New("ra: needs --interface")
		}
		if s.ra, err = newRAService(cfg.Interface, cfg.Directory, cfg.AllowUnknown, cfg.Log); err != nil {
			return nil, err
		}
	}
	s.h = NewHTTPHandler(HTTPConfig{Base: cfg.HTTPBase, Cmdline: cfg.Cmdline, AllowUnknown: cfg.AllowUnknown},
		cfg.Directory, NewExtractor(cfg.CacheDir), s.files, rec, cfg.Checkin, cfg.Extra, cfg.Log, mac)
	s.http = &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	s.cfg = cfg
	ok = true
	return s, nil
}

func (s *Server) closeAll() {
	if s.dhcp != nil {
		s.dhcp.close()
	}
	if s.ra != nil {
		s.ra.close()
	}
	if s.tconn != nil {
		s.tconn.Close()
	}
	if s.hln != nil {
		s.hln.Close()
	}
	if s.files != nil {
		s.files.Close()
	}
}

// Run serves until ctx ends, then shuts down gracefully: DHCP stops at
// once, HTTP and TFTP finish transfers in flight (HTTP for up to 30 s).
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	if s.dhcp != nil {
		s.dhcp.serve()
	}
	if s.ra != nil {
		s.ra.serve()
	}
	if s.tftp != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.tftp.Serve(s.tconn) }()
	}
	go func() {
		if err := s.http.Serve(s.hln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	s.log.Info("serving", "interface", s.cfg.Interface, "server_ip", s.cfg.ServerIP, "dhcp", s.cfg.DHCP.Mode,
		"http", s.hln.Addr().String(), "base", s.cfg.HTTPBase, "tftp_root", s.cfg.TFTPRoot, "allow_unknown", s.cfg.AllowUnknown, "answer_rs", s.ra != nil)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.log.Info("shutting down")
	if s.dhcp != nil {
		s.dhcp.close()
	}
	if s.ra != nil {
		s.ra.close()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.http.Shutdown(sctx)
	if s.tftp != nil {
		s.tftp.Shutdown()
	}
	wg.Wait()
	s.files.Close()
	return err
}

// InterfaceIPv4 is the first IPv4 address of ifname.
func InterfaceIPv4(ifname string) (net.IP, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.To4(), nil
		}
	}
	return nil, fmt.Errorf("interface %s has no IPv4 address", ifname)
}

// ARPLookup finds the MAC of a neighbour in the kernel's ARP table (for the
// ledger: TFTP and HTTP only see addresses).
func ARPLookup(ip net.IP) net.HardwareAddr {
	if ip == nil {
		return nil
	}
	f, err := os.Open("/proc/net/arp")
	if err != nil {
		return nil
	}
	defer f.Close()
	return arpFind(bufio.NewScanner(f), ip)
}

func arpFind(sc *bufio.Scanner, ip net.IP) net.HardwareAddr {
	want := ip.String()
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 4 && f[0] == want {
			if flags, err := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 8); err == nil && flags&2 == 0 {
				continue // incomplete entry
			}
			if mac, err := net.ParseMAC(f[3]); err == nil {
				return mac
			}
		}
	}
	return nil
}
