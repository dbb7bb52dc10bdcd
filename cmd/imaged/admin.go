package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/hnboot/hnboot/fleet/dashboard"
	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/tlscert"
)

// adminFlags are imaged serve's admin listener: where the admin API and
// the dashboard listen, apart from the boot HTTP, and their TLS.
type adminFlags struct {
	addr            string
	tlsCert, tlsKey string
	selfSigned      bool
	tlsNames        multiFlag
	allowInsecure   bool
	certDir         string // where --tls-self-signed keeps its pair
	users           string
	sessionTTL      time.Duration
	offlineAfter    time.Duration
}

// adminListener is the admin API's listener and its TLS, opened before
// serving so a taken port fails the start.
type adminListener struct {
	ln          net.Listener
	tls         *tls.Config
	fingerprint string // of the certificate served, "" without TLS
	url         string
}

// listenAdmin opens f.addr with TLS from the flags: a given pair, or a
// self-signed one made on the first start and kept in f.certDir.
func listenAdmin(f *adminFlags, log *slog.Logger) (*adminListener, error) {
	a := &adminListener{}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if f.selfSigned && f.tlsCert != "" {
		return nil, errors.New("--tls-self-signed makes its own certificate: not with --tls-cert")
	}
	var cert tls.Certificate
	switch {
	case f.tlsCert != "":
		c, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert: %w", err)
		}
		cert = c
	case f.selfSigned:
		cp, kp := filepath.Join(f.certDir, "admin.crt"), filepath.Join(f.certDir, "admin.key")
		c, created, err := tlscert.LoadOrCreate(cp, kp, f.tlsNames, time.Now())
		if err != nil {
			return nil, fmt.Errorf("--tls-self-signed: %w", err)
		}
		if created {
			log.Info("admin: made a self-signed certificate", "cert", cp, "key", kp)
		}
		cert = c
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return nil, fmt.Errorf("--admin: %w", err)
	}
	a.ln, a.url = ln, "http://"+ln.Addr().String()
	if cert.Certificate != nil {
		a.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		a.fingerprint = tlscert.LeafFingerprint(cert)
		a.url = "https://" + ln.Addr().String()
	} else if host, _, _ := net.SplitHostPort(ln.Addr().String()); !net.ParseIP(host).IsLoopback() {
		if f.allowInsecure {
			log.Warn("admin: plain HTTP beyond loopback with --allow-insecure-admin: tokens, passwords and session cookies cross the network readable", "addr", ln.Addr().String())
		} else {
			log.Warn("admin: plain HTTP beyond loopback: requests from other machines are refused; give --tls-self-signed or --tls-cert/--tls-key", "addr", ln.Addr().String())
		}
	}
	return a, nil
}

// serve runs the admin server until ctx ends. No write or read timeout:
// publish uploads multi-GiB images through it, and server-sent events
// hold a response open; the header timeout still stops slow clients.
func (a *adminListener) serve(ctx context.Context, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		TLSConfig: a.tls, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() {
		var err error
		if a.tls != nil {
			err = srv.ServeTLS(a.ln, "", "")
		} else {
			err = srv.Serve(a.ln)
		}
		errc <- err
	}()
	attrs := []any{"url", a.url}
	if a.fingerprint != "" {
		attrs = append(attrs, "fingerprint", a.fingerprint)
	}
	log.Info("admin: serving the admin API and the dashboard", attrs...)
	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return nil
}

// plainHTTPGuard refuses requests that came over plain HTTP from a peer
// that is not loopback: tokens, passwords and session cookies would
// cross the network readable. allow (--allow-insecure-admin) lets them
// through, for a network the operator trusts.
func plainHTTPGuard(h http.Handler, allow bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil && !allow && !loopbackPeer(r.RemoteAddr) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintln(w, "refused: the admin API takes no credentials over plain HTTP from another machine; start imaged serve with --tls-self-signed or --tls-cert/--tls-key (or --allow-insecure-admin on a network you trust)")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func loopbackPeer(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// adminClient is the admin CLI's HTTP client: for an https server, its
// certificate is checked against caFile or the pinned fingerprint (or
// the system's roots); an http one takes neither.
func adminClient(server, caFile, fingerprint string, timeout time.Duration) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" || fingerprint != "" {
		if !strings.HasPrefix(server, "https://") {
			return nil, fmt.Errorf("--ca and --fingerprint check a TLS server: --server %q is not https://", server)
		}
		cfg, err := tlscert.ClientConfig(caFile, fingerprint)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = cfg
	}
	return &http.Client{Timeout: timeout, Transport: tr}, nil
}

const passwdUsage = `Usage: imaged passwd [NAME ROLE]

Reads a password from standard input (one line) and prints its bcrypt
hash; with NAME and ROLE (viewer or operator), the whole line of an
imaged serve --users file.

Example:
  printf '%s\n' "$PASSWORD" | imaged passwd alice operator >> /etc/hnboot/users
`

func runPasswd(_ context.Context, name string, args []string, std cli.IO) error {
	fs := cli.NewFlagSet(name, passwdUsage, std)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := fs.WantArgs(0, 2, "NAME ROLE"); err != nil {
		return err
	}
	if n := len(fs.Args()); n == 1 {
		return fs.Usagef("give NAME and ROLE, or neither")
	} else if n == 2 && fs.Arg(1) != string(dashboard.RoleViewer) && fs.Arg(1) != string(dashboard.RoleOperator) {
		return fs.Usagef("role %q: want viewer or operator", fs.Arg(1))
	}
	line, err := bufio.NewReader(std.Stdin).ReadString('\n')
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("passwd: no password on standard input")
		}
		return err
	}
	if len(pw) > 72 {
		return errors.New("passwd: bcrypt uses only the first 72 bytes of a password: give a shorter one")
	}
	h, err := dashboard.HashPassword(pw)
	if err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if len(fs.Args()) == 2 {
		fmt.Fprintf(std.Stdout, "%s %s %s\n", fs.Arg(0), fs.Arg(1), h)
	} else {
		fmt.Fprintln(std.Stdout, h)
	}
	return nil
}

// tlsHint says what to do about a certificate the client does not trust.
func tlsHint(err error) string {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	switch {
	case errors.As(err, &ua):
		return " (a self-signed server: give --fingerprint sha256:HEX as imaged serve logs it, or --ca admin.crt)"
	case errors.As(err, &hn):
		return " (the certificate is not for this name: imaged serve --tls-name NAME, or --fingerprint)"
	}
	return ""
}
