package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/fleet/dashboard"
	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/pxe"
	"github.com/hnboot/hnboot/supervisor"
)

const serveUsage = `Usage: imaged serve --interface IF [flags]

Serves the network boot on one interface: DHCP (proxyDHCP by default, or a
full server with --dhcp-mode full), TFTP of the iPXE binaries, and HTTP for
the per-host iPXE script, kernels and initramfs extracted from the images,
image blobs by digest and host check-ins. SIGTERM or SIGINT stops it
gracefully.

Which image a host boots comes from the fleet directory (--state DIR) or,
without one, from --image and --host. The fleet directory and the token
file are reloaded when they change and on SIGHUP; a directory that does
not load keeps the last good state.

Examples:
  imaged serve --interface br0 --image hn-root.img --allow-unknown
  imaged serve --interface br0 --dhcp-mode full --pool 10.0.0.100-10.0.0.200 \
      --router 10.0.0.1 --host 52:54:00:00:00:01,web-1,web.img --lease 52:54:00:00:00:01=10.0.0.11
  imaged serve --interface br0 --state /etc/hnboot/fleet --tokens /etc/hnboot/tokens
  imaged serve --interface br1 --state /etc/hnboot/fleet --tokens /etc/hnboot/tokens \
      --db postgres://hnboot@db.example/hnboot    # several servers share one fleet
`

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type serveFlags struct {
	iface, serverIP, httpAddr, httpBase, tftpRoot, tftpAddr, cache string
	ipxeDir                                                        string
	mode, pool, netmask, router, dns                               string
	leaseTime                                                      time.Duration
	leases, hosts                                                  multiFlag
	image, cmdline                                                 string
	allowUnknown                                                   bool
	state, observed, tokens, db, images                            string
	trust                                                          multiFlag
	keepBoots                                                      int
	keepAudit                                                      time.Duration
	openReads, answerRS                                            bool
	services, serviceLogs                                          string
	maxTFTP, blksize                                               int
	logLevel                                                       string
	admin                                                          adminFlags
}

func runServe(_ context.Context, name string, args []string, std cli.IO) error {
	var f serveFlags
	fs := cli.NewFlagSet(name, serveUsage, std)
	fs.StringVar(&f.iface, "interface", "", "boot interface; DHCP binds to it only")
	fs.StringVar(&f.serverIP, "server-ip", "", "this server's address for clients (default: the interface's first IPv4)")
	fs.StringVar(&f.httpAddr, "http", ":8080", "HTTP listen address")
	fs.StringVar(&f.httpBase, "http-url", "", "URL hosts use to reach the HTTP server (default http://SERVER-IP:PORT)")
	fs.StringVar(&f.tftpRoot, "tftp-root", "", "directory served read-only by TFTP (default: CACHE/tftp, with the iPXE binaries copied from --ipxe-dir)")
	fs.StringVar(&f.ipxeDir, "ipxe-dir", pxe.DefaultIPXEDir, "where undionly.kpxe and ipxe.efi come from (Debian's ipxe package)")
	fs.StringVar(&f.tftpAddr, "tftp", "", `TFTP listen address (default SERVER-IP:69; "off" disables)`)
	fs.IntVar(&f.maxTFTP, "tftp-max", 256, "concurrent TFTP transfers")
	fs.IntVar(&f.blksize, "tftp-blksize", 1468, "largest TFTP block size granted")
	fs.StringVar(&f.cache, "cache", "/var/cache/hnboot/imaged", "cache of kernels and initramfs extracted from images")
	fs.StringVar(&f.mode, "dhcp-mode", pxe.ModeProxy, "proxy (beside the LAN's DHCP server), full (hand out addresses) or off")
	fs.StringVar(&f.pool, "pool", "", "full mode: address range FIRST-LAST")
	fs.StringVar(&f.netmask, "netmask", "", "full mode: subnet mask (default: the interface's)")
	fs.StringVar(&f.router, "router", "", "full mode: default gateway(s), comma separated")
	fs.StringVar(&f.dns, "dns", "", "full mode: DNS server(s), comma separated")
	fs.DurationVar(&f.leaseTime, "lease-time", time.Hour, "full mode: lease time")
	fs.Var(&f.leases, "lease", "full mode: static lease MAC=IP (repeatable)")
	fs.Var(&f.hosts, "host", "static mode: MAC,HOSTNAME[,IMAGE-FILE] (repeatable; IMAGE-FILE defaults to --image)")
	fs.StringVar(&f.image, "image", "", "static mode: image file for --host entries without one and, with --allow-unknown, for unknown MACs")
	fs.StringVar(&f.cmdline, "cmdline", "", "extra kernel arguments for every host")
	fs.BoolVar(&f.allowUnknown, "allow-unknown", false, "also boot MACs that are not configured")
	fs.BoolVar(&f.answerRS, "answer-rs", false, "answer IPv6 router solicitations from boot hosts with an empty advertisement, so iPXE does not wait ~15 s for one; only on links with no IPv6 router")
	fs.StringVar(&f.state, "state", "", "fleet mode: directory of the desired-state YAML files")
	fs.StringVar(&f.db, "db", "", "fleet mode: the fleet database, sqlite:///PATH or postgres://USER@HOST/DB (several servers share one PostgreSQL) (default sqlite://OBSERVED)")
	fs.StringVar(&f.observed, "observed", "/var/lib/hnboot/fleet.db", "fleet mode: the SQLite file when --db is not given; a JSON-lines store of an older imaged found here is imported once and renamed to PATH"+fleet.OldStoreSuffix)
	fs.IntVar(&f.keepBoots, "keep-boots", 10, "fleet mode: boots kept per MAC in the boot ledger")
	fs.DurationVar(&f.keepAudit, "keep-audit", 0, "fleet mode: remove audit entries older than this (0: keep them all)")
	fs.StringVar(&f.images, "images", "/var/lib/hnboot/images", `fleet mode: directory of published images (imaged fleet publish); "" turns publishing off`)
	fs.Var(&f.trust, "trust", "fleet mode: public key (mkimage keygen) that must have signed every published image (repeatable)")
	fs.StringVar(&f.tokens, "tokens", "", `fleet mode: admin tokens file ("NAME TOKEN" lines)`)
	fs.BoolVar(&f.openReads, "open-reads", false, "fleet mode: read-only API calls need no token")
	fs.StringVar(&f.services, "services", "", "YAML file whose services: list imaged starts and keeps alive")
	fs.StringVar(&f.serviceLogs, "service-logs", "/var/log/hnboot/services", "where supervised services' output is kept")
	fs.StringVar(&f.admin.addr, "admin", "127.0.0.1:8081", `fleet mode: listen address of the admin API and the dashboard, apart from --http ("off" disables them)`)
	fs.StringVar(&f.admin.tlsCert, "tls-cert", "", "admin listener: TLS certificate (PEM), with --tls-key")
	fs.StringVar(&f.admin.tlsKey, "tls-key", "", "admin listener: TLS private key (PEM)")
	fs.BoolVar(&f.admin.selfSigned, "tls-self-signed", false, "admin listener: TLS with a self-signed certificate made on the first start and kept as admin.crt/admin.key beside --observed; its fingerprint is logged (pin it with imaged fleet --fingerprint)")
	fs.Var(&f.admin.tlsNames, "tls-name", "admin listener: a host name or IP address the self-signed certificate is for, besides localhost (repeatable)")
	fs.StringVar(&f.admin.users, "users", "", `dashboard: users file, "NAME ROLE BCRYPT-HASH" lines (ROLE viewer or operator; make a hash with imaged passwd); admin tokens log in as operators`)
	fs.DurationVar(&f.admin.sessionTTL, "session-ttl", 8*time.Hour, "dashboard: a login lasts this long")
	fs.DurationVar(&f.admin.offlineAfter, "offline-after", 15*time.Minute, "dashboard: a host not heard from for this long shows as offline (agents check in every minute; hosts without one only at boot)")
	fs.BoolVar(&f.admin.allowInsecure, "allow-insecure-admin", false, "admin listener: accept tokens, passwords and sessions over plain HTTP from other machines (anyone on the path can read them)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error (debug also logs ignored DHCP requests)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := fs.WantArgs(0, 0, ""); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("serve: --log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// Fleet services are supervised beside the boot server; a crash-looping
	// service backs off on its own and never takes the server down.
	var sup *supervisor.Supervisor
	if f.services != "" {
		svcs, err := supervisor.LoadFile(f.services)
		if err != nil {
			return fmt.Errorf("serve: --services: %w", err)
		}
		if sup, err = supervisor.New(svcs, supervisor.Options{LogDir: f.serviceLogs, Logger: log}); err != nil {
			return fmt.Errorf("serve: --services: %w", err)
		}
	}
	cfg, cleanup, runBG, admin, err := serveConfig(&f, log, sup)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer cleanup()
	var al *adminListener
	if admin != nil && f.admin.addr != "off" {
		f.admin.certDir = filepath.Dir(f.observed)
		if al, err = listenAdmin(&f.admin, log); err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		admin = plainHTTPGuard(admin, f.admin.allowInsecure)
	}
	srv, err := pxe.New(cfg)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if runBG != nil {
		// SIGHUP reloads the fleet directory. Registered before serving:
		// an unhandled SIGHUP would end the process.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go runBG(ctx, hup)
	}
	supDone := make(chan struct{})
	if sup != nil {
		go func() { sup.Run(ctx); close(supDone) }()
	} else {
		close(supDone)
	}
	adminDone := make(chan error, 1)
	if al != nil {
		go func() {
			err := al.serve(ctx, admin, log)
			if err != nil {
				stop() // the boot server stops too: an imaged without its admin API is not what was asked for
			}
			adminDone <- err
		}()
	} else {
		close(adminDone)
	}
	err = srv.Run(ctx)
	stop()
	if aerr := <-adminDone; err == nil {
		err = aerr
	}
	<-supDone // every child reaped before imaged exits
	return err
}

// serveConfig turns flags into a pxe.Config: fleet mode with --state,
// static mode otherwise. In fleet mode it also returns what runs beside
// the server: the fleet's watch of its directory, and a reload on each
// value of hup.
func serveConfig(f *serveFlags, log *slog.Logger, sup *supervisor.Supervisor) (pxe.Config, func(), func(context.Context, <-chan os.Signal), http.Handler, error) {
	cfg := pxe.Config{
		Interface: f.iface, HTTPAddr: f.httpAddr, HTTPBase: f.httpBase,
		TFTPRoot: f.tftpRoot, IPXEDir: f.ipxeDir, TFTPAddr: f.tftpAddr, CacheDir: f.cache,
		TFTP:    pxe.TFTPConfig{MaxTransfers: f.maxTFTP, BlockSize: f.blksize},
		Cmdline: f.cmdline, AllowUnknown: f.allowUnknown, AnswerRouterSolicit: f.answerRS, Log: log,
	}
	nop := func() {}
	if f.serverIP != "" {
		if cfg.ServerIP = net.ParseIP(f.serverIP).To4(); cfg.ServerIP == nil {
			return cfg, nop, nil, nil, fmt.Errorf("--server-ip %q is not an IPv4 address", f.serverIP)
		}
	}
	dc, err := dhcpFlags(f)
	if err != nil {
		return cfg, nop, nil, nil, err
	}
	cfg.DHCP = dc
	logRec := pxe.RecorderFunc(func(e pxe.Event) { logEvent(log, e) })

	if f.state != "" {
		if len(f.hosts) > 0 || f.image != "" {
			return cfg, nop, nil, nil, errors.New("--state (fleet) and --host/--image (static) exclude each other")
		}
		db := f.db
		if db == "" {
			db = "sqlite://" + f.observed
		}
		if p := fleet.SQLitePath(db); p != "" {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return cfg, nop, nil, nil, err
			}
		}
		opts := fleet.Options{Dir: f.state, DB: db, Import: f.observed, ImageCache: f.observed + ".image-digests.json", KeepBoots: f.keepBoots, KeepAudit: f.keepAudit,
			TokenFile: f.tokens, OpenReads: f.openReads, Logger: log, Images: f.images}
		for _, k := range f.trust {
			pub, err := manifest.ReadPublicKey(k)
			if err != nil {
				return cfg, nop, nil, nil, fmt.Errorf("--trust: %w", err)
			}
			opts.TrustedKeys = append(opts.TrustedKeys, pub)
		}
		if sup != nil {
			opts.Services = sup.Status
		}
		fl, err := fleet.New(opts)
		if err != nil {
			return cfg, nop, nil, nil, err
		}
		cfg.Directory = fl
		cfg.Recorder = pxe.Recorders{fl, logRec}
		cfg.Checkin = fl.Checkin
		cfg.Extra = fl.HostHandler() // the admin API is on --admin
		users, err := dashboard.ReadUsers(f.admin.users)
		if err != nil {
			fl.Close()
			return cfg, nop, nil, nil, fmt.Errorf("--users: %w", err)
		}
		ui, err := dashboard.New(fl, dashboard.Options{Users: users, UsersFile: f.admin.users, SessionTTL: f.admin.sessionTTL, OfflineAfter: f.admin.offlineAfter, Logger: log})
		if err != nil {
			fl.Close()
			return cfg, nop, nil, nil, err
		}
		runBG := func(ctx context.Context, hup <-chan os.Signal) {
			go fl.Run(ctx)
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					fl.Reload()      // logs its own error and keeps the last good state
					ui.ReloadUsers() // the same
				}
			}
		}
		admin := http.NewServeMux()
		admin.Handle("/ui/", ui)
		admin.Handle("/ui", ui)
		admin.Handle("/", fl.Handler())
		return cfg, func() { fl.Close() }, runBG, admin, nil
	}

	dir := pxe.NewStaticDirectory()
	refs := map[string]pxe.ImageRef{}
	imageRef := func(path string) (pxe.ImageRef, error) {
		if r, ok := refs[path]; ok {
			return r, nil
		}
		r, err := fileImageRef(path)
		if err == nil {
			log.Info("image", "path", r.Path, "digest", r.Digest)
			refs[path] = r
			dir.AddImage(r)
		}
		return r, err
	}
	if f.image != "" {
		r, err := imageRef(f.image)
		if err != nil {
			return cfg, nop, nil, nil, err
		}
		if f.allowUnknown {
			dir.SetDefault(pxe.HostBoot{Image: r})
		}
	}
	for _, h := range f.hosts {
		parts := strings.Split(h, ",")
		if len(parts) < 2 || len(parts) > 3 {
			return cfg, nop, nil, nil, fmt.Errorf("--host %q: want MAC,HOSTNAME[,IMAGE-FILE]", h)
		}
		mac, err := pxe.ParseMAC(parts[0])
		if err != nil {
			return cfg, nop, nil, nil, fmt.Errorf("--host %q: %w", h, err)
		}
		img := f.image
		if len(parts) == 3 {
			img = parts[2]
		}
		if img == "" {
			return cfg, nop, nil, nil, fmt.Errorf("--host %q: no image (give one or --image)", h)
		}
		r, err := imageRef(img)
		if err != nil {
			return cfg, nop, nil, nil, err
		}
		dir.Add(pxe.HostBoot{MAC: mac, Hostname: parts[1], Image: r})
	}
	if f.image == "" && len(f.hosts) == 0 {
		return cfg, nop, nil, nil, errors.New("nothing to boot: give --image FILE (with --allow-unknown), --host, or --state DIR")
	}
	cfg.Directory = dir
	cfg.Recorder = logRec
	return cfg, nop, nil, nil, nil
}

func dhcpFlags(f *serveFlags) (pxe.DHCPConfig, error) {
	dc := pxe.DHCPConfig{Mode: f.mode, LeaseTime: f.leaseTime}
	switch f.mode {
	case pxe.ModeProxy, "off":
		if f.pool != "" || len(f.leases) > 0 {
			return dc, fmt.Errorf("--pool and --lease need --dhcp-mode full")
		}
		return dc, nil
	case pxe.ModeFull:
	default:
		return dc, fmt.Errorf("--dhcp-mode %q: want proxy, full or off", f.mode)
	}
	if f.pool == "" {
		return dc, errors.New("--dhcp-mode full needs --pool FIRST-LAST")
	}
	pool, err := pxe.ParsePool(f.pool, f.leaseTime)
	if err != nil {
		return dc, err
	}
	for _, l := range f.leases {
		m, ip, ok := strings.Cut(l, "=")
		mac, err := pxe.ParseMAC(m)
		if !ok || err != nil || net.ParseIP(ip).To4() == nil {
			return dc, fmt.Errorf("--lease %q: want MAC=IPv4", l)
		}
		pool.AddStatic(mac, net.ParseIP(ip))
	}
	dc.Pool = pool
	if f.netmask != "" {
		m := net.ParseIP(f.netmask).To4()
		if m == nil {
			return dc, fmt.Errorf("--netmask %q is not a mask", f.netmask)
		}
		dc.Netmask = net.IPMask(m)
	} else if f.iface != "" {
		dc.Netmask = interfaceMask(f.iface)
	}
	var err2 error
	if dc.Router, err2 = ipList(f.router); err2 != nil {
		return dc, fmt.Errorf("--router: %w", err2)
	}
	if dc.DNS, err2 = ipList(f.dns); err2 != nil {
		return dc, fmt.Errorf("--dns: %w", err2)
	}
	return dc, nil
}

func ipList(s string) ([]net.IP, error) {
	var out []net.IP
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		ip := net.ParseIP(p).To4()
		if ip == nil {
			return nil, fmt.Errorf("%q is not an IPv4 address", p)
		}
		out = append(out, ip)
	}
	return out, nil
}

func interfaceMask(ifname string) net.IPMask {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil
	}
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.Mask
		}
	}
	return nil
}

// fileImageRef describes an image file by its sha256 (read once at start).
func fileImageRef(path string) (pxe.ImageRef, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return pxe.ImageRef{}, err
	}
	f, err := os.Open(abs)
	if err != nil {
		return pxe.ImageRef{}, fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return pxe.ImageRef{}, fmt.Errorf("image %s: %w", abs, err)
	}
	name := strings.TrimSuffix(filepath.Base(abs), filepath.Ext(abs))
	return pxe.ImageRef{Name: name, Digest: digest.Of(h), Path: abs}, nil
}

// logEvent writes one boot event; ignored DHCP requests only at debug
// level (on a shared LAN every DHCP client would show up).
func logEvent(log *slog.Logger, e pxe.Event) {
	level := slog.LevelInfo
	switch {
	case e.Err != "":
		level = slog.LevelWarn
	case e.Kind == pxe.KindDHCPIgnored:
		level = slog.LevelDebug
	}
	if !log.Enabled(context.Background(), level) {
		return
	}
	attrs := []any{"kind", e.Kind, "mac", e.MAC.String(), "detail", e.Detail}
	if e.Err != "" {
		attrs = append(attrs, "err", e.Err)
	}
	log.Log(context.Background(), level, "event", attrs...)
}

var _ http.Handler = (*pxe.HTTPHandler)(nil)
