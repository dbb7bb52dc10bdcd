// Package tlscert is the admin listener's TLS: a self-signed certificate
// made on the first start and kept (so its fingerprint, once pinned by
// operators, stays valid), its SHA-256 fingerprint, and the client side
// that trusts a CA file or a pinned fingerprint.
package tlscert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/durable"
)

// Fingerprint is "sha256:" and the hex SHA-256 of a certificate's DER
// bytes: what `openssl x509 -fingerprint -sha256` shows, without colons.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// LoadOrCreate loads the key pair at certPath and keyPath, or, when
// neither exists, makes a self-signed ECDSA P-256 certificate valid for
// names (host names or IP addresses; loopback is always included) and
// writes both (the key 0600). created says which happened.
func LoadOrCreate(certPath, keyPath string, names []string, now time.Time) (tls.Certificate, bool, error) {
	_, errC := os.Stat(certPath)
	_, errK := os.Stat(keyPath)
	if errC == nil || errK == nil {
		c, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			return c, false, fmt.Errorf("tls: load %s, %s: %w", certPath, keyPath, err)
		}
		return c, false, nil
	}
	if !errors.Is(errC, os.ErrNotExist) {
		return tls.Certificate{}, false, fmt.Errorf("tls: %w", errC)
	}
	certPEM, keyPEM, err := SelfSigned(names, now)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	// The key first: a certificate without its key would be loaded (and
	// fail) on the next start instead of being made again.
	if err := durable.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, false, fmt.Errorf("tls: %w", err)
	}
	if err := durable.WriteFile(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, false, fmt.Errorf("tls: %w", err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	return c, true, err
}

// SelfSigned makes a certificate and key (PEM) for names, valid from an
// hour before now for ten years: an admin listener's certificate is
// pinned, and an expiry nobody planned for would lock operators out.
func SelfSigned(names []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("tls: serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "hnboot imaged admin", Organization: []string{"hnboot"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // so the file itself can be given as --ca
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: certificate: %w", err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), nil
}

// ParseFingerprint checks a pinned fingerprint: sha256: and 64 hex
// digits (colons, as openssl prints them, are allowed).
func ParseFingerprint(s string) (string, error) {
	h, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:")
	h = strings.ReplaceAll(h, ":", "")
	if b, err := hex.DecodeString(h); !ok || err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("fingerprint %q: want sha256: and 64 hex digits (imaged serve prints it)", s)
	}
	return "sha256:" + h, nil
}

// ClientConfig is the admin CLI's TLS: with fingerprint, the server's
// certificate must be exactly that one (whatever its names and issuer:
// pinning replaces the chain); with caFile, the chain must lead to a
// certificate in it; with neither, the system's roots.
func ClientConfig(caFile, fingerprint string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" && fingerprint != "" {
		return nil, errors.New("tls: give --ca or --fingerprint, not both")
	}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("tls: --ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("tls: --ca %s: no PEM certificate in it", caFile)
		}
		cfg.RootCAs = pool
	}
	if fingerprint != "" {
		want, err := ParseFingerprint(fingerprint)
		if err != nil {
			return nil, err
		}
		// The chain check is replaced, not skipped: VerifyConnection
		// refuses any certificate but the pinned one.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: the server sent no certificate")
			}
			got := Fingerprint(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
				return fmt.Errorf("tls: the server's certificate is %s, not the pinned %s", got, want)
			}
			return nil
		}
	}
	return cfg, nil
}

// LeafFingerprint is the fingerprint of c's first certificate.
func LeafFingerprint(c tls.Certificate) string {
	if len(c.Certificate) == 0 {
		return ""
	}
	return Fingerprint(c.Certificate[0])
}
