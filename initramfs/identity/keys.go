package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hnboot/hnboot/internal/durable"
	"golang.org/x/crypto/ssh"
)

// HostKey is one SSH host key pair.
type HostKey struct {
	Type        string // "ed25519" or "ecdsa": the ssh_host_<Type>_key file name part
	Private     []byte // OpenSSH private key file (PEM)
	Public      []byte // authorized_keys format line, with newline
	Fingerprint string // SHA256:...
}

// Identity is a host's generated secrets and their public parts.
type Identity struct {
	MachineID string // 32 lowercase hex digits, systemd format
	HostKeys  []HostKey
	// Fingerprints maps HostKey.Type to its SHA256 fingerprint, for logs
	// and for reporting to imaged.
	Fingerprints map[string]string
	// Notes say what Ensure had to repair (a corrupt file set aside and
	// regenerated); the init logs them.
	Notes []string
}

var keyTypes = []string{"ed25519", "ecdsa"}

// Ensure loads the host's machine-id and SSH host keys from stateDir
// (hostpart/.hnboot/identity), generating any that are missing, once: later
// boots, whatever the image, get the same ones, so SSH clients never see a
// changed host key after an upgrade. Files are written atomically and
// private ones with mode 0600. A corrupt file is renamed *.corrupt and
// replaced, with a note, rather than failing the boot over it.
// A nil rand means crypto/rand.
func Ensure(stateDir string, rand io.Reader) (Identity, error) {
	if rand == nil {
		rand = cryptorand.Reader
	}
	id := Identity{Fingerprints: map[string]string{}}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return id, fmt.Errorf("identity: create %s: %w", stateDir, err)
	}
	mid, note, err := ensureMachineID(filepath.Join(stateDir, "machine-id"), rand)
	if err != nil {
		return id, err
	}
	id.MachineID = mid
	if note != "" {
		id.Notes = append(id.Notes, note)
	}
	for _, typ := range keyTypes {
		k, note, err := ensureKey(filepath.Join(stateDir, "ssh_host_"+typ+"_key"), typ, rand)
		if err != nil {
			return id, err
		}
		if note != "" {
			id.Notes = append(id.Notes, note)
		}
		id.HostKeys = append(id.HostKeys, k)
		id.Fingerprints[typ] = k.Fingerprint
	}
	return id, nil
}

// ValidMachineID reports whether s is a systemd machine-id: 32 lowercase
// hex digits, not all zero.
func ValidMachineID(s string) bool {
	if len(s) != 32 || s == strings.Repeat("0", 32) {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func ensureMachineID(path string, rand io.Reader) (string, string, error) {
	b, err := os.ReadFile(path)
	var note string
	switch {
	case err == nil && ValidMachineID(strings.TrimSpace(string(b))):
		return strings.TrimSpace(string(b)), "", nil
	case err == nil:
		if note, err = setAside(path, "not a machine-id"); err != nil {
			return "", "", err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", "", fmt.Errorf("identity: read %s: %w", path, err)
	}
	// systemd makes machine-ids look like version 4 UUIDs; do the same so
	// tools that check for it are happy.
	raw := make([]byte, 16)
	if _, err := io.ReadFull(rand, raw); err != nil {
		return "", "", fmt.Errorf("identity: random for machine-id: %w", err)
	}
	raw[6] = raw[6]&0x0F | 0x40
	raw[8] = raw[8]&0x3F | 0x80
	mid := hex.EncodeToString(raw)
	if err := durable.WriteFile(path, []byte(mid+"\n"), 0o444); err != nil {
		return "", "", fmt.Errorf("identity: %w", err)
	}
	return mid, note, nil
}

// ensureKey loads or creates one private key. The .pub file beside it is
// always re-derived from the private key, so a crash between the two
// writes, or a hand-edited .pub, cannot leave them mismatched.
func ensureKey(path, typ string, rand io.Reader) (HostKey, string, error) {
	var note string
	var signer crypto.Signer
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		raw, perr := ssh.ParseRawPrivateKey(b)
		if s, ok := raw.(crypto.Signer); perr == nil && ok && keyType(s) == typ {
			signer = s
			break
		}
		if note, err = setAside(path, "not an "+typ+" SSH private key"); err != nil {
			return HostKey{}, "", err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return HostKey{}, "", fmt.Errorf("identity: read %s: %w", path, err)
	}
	if signer == nil {
		if signer, err = generate(typ, rand); err != nil {
			return HostKey{}, "", fmt.Errorf("identity: generate %s key: %w", typ, err)
		}
		blk, err := ssh.MarshalPrivateKey(signer, "")
		if err != nil {
			return HostKey{}, "", fmt.Errorf("identity: marshal %s key: %w", typ, err)
		}
		b = pem.EncodeToMemory(blk)
		if err := durable.WriteFile(path, b, 0o600); err != nil {
			return HostKey{}, "", fmt.Errorf("identity: %w", err)
		}
	}
	pub, err := ssh.NewPublicKey(signer.Public())
	if err != nil {
		return HostKey{}, "", fmt.Errorf("identity: public part of %s: %w", path, err)
	}
	line := ssh.MarshalAuthorizedKey(pub)
	if old, err := os.ReadFile(path + ".pub"); err != nil || !bytes.Equal(old, line) {
		if err := durable.WriteFile(path+".pub", line, 0o644); err != nil {
			return HostKey{}, "", fmt.Errorf("identity: %w", err)
		}
	}
	return HostKey{Type: typ, Private: b, Public: line, Fingerprint: ssh.FingerprintSHA256(pub)}, note, nil
}

func generate(typ string, rand io.Reader) (crypto.Signer, error) {
	switch typ {
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand)
		return k, err
	case "ecdsa":
		// Go ignores rand here unless GODEBUG=cryptocustomrand=1; the
		// key then comes from the system CSPRNG, which is what we want.
		return ecdsa.GenerateKey(elliptic.P256(), rand)
	}
	return nil, fmt.Errorf("unknown key type %q", typ)
}

func keyType(s crypto.Signer) string {
	switch k := s.(type) {
	case ed25519.PrivateKey, *ed25519.PrivateKey:
		return "ed25519"
	case *ecdsa.PrivateKey:
		if k.Curve == elliptic.P256() {
			return "ecdsa"
		}
	}
	return ""
}

// setAside renames a bad file to path.corrupt (replacing an older one) so
// an operator can look at it, and says so.
func setAside(path, why string) (string, error) {
	if err := os.Rename(path, path+".corrupt"); err != nil {
		return "", fmt.Errorf("identity: set aside %s: %w", path, err)
	}
	return fmt.Sprintf("%s is %s; moved to %s.corrupt and generated a new one", path, why, path), nil
}
