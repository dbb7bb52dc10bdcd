package manifest

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Key files are one line: a type word and the base64 key.
//
//	KEY      hnboot-ed25519-private <base64 of the 32-byte seed>
//	KEY.pub  hnboot-ed25519-public <base64 of the 32-byte public key>
const (
	privateTag = "hnboot-ed25519-private"
	publicTag  = "hnboot-ed25519-public"
)

// PublicKey is an ed25519 public key.
type PublicKey struct{ key ed25519.PublicKey }

// PrivateKey is an ed25519 private key.
type PrivateKey struct{ key ed25519.PrivateKey }

// GenerateKey makes a key pair from rand (crypto/rand.Reader).
func GenerateKey(rand io.Reader) (*PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand)
	if err != nil {
		return nil, err
	}
	return &PrivateKey{priv}, nil
}

// Public returns the public half.
func (k *PrivateKey) Public() PublicKey { return PublicKey{k.key.Public().(ed25519.PublicKey)} }

// ID names a public key: the first 8 bytes of its sha256, in hex.
func (k PublicKey) ID() string {
	s := sha256.Sum256(k.key)
	return hex.EncodeToString(s[:8])
}

// Marshal returns the KEY.pub file form.
func (k PublicKey) Marshal() []byte {
	return []byte(publicTag + " " + base64.StdEncoding.EncodeToString(k.key) + "\n")
}

// Marshal returns the KEY file form.
func (k *PrivateKey) Marshal() []byte {
	return []byte(privateTag + " " + base64.StdEncoding.EncodeToString(k.key.Seed()) + "\n")
}

func parseLine(b []byte, tag string, size int) ([]byte, error) {
	f := strings.Fields(string(b))
	if len(f) != 2 || f[0] != tag {
		other := privateTag
		if tag == privateTag {
			other = publicTag
		}
		if len(f) == 2 && f[0] == other {
			return nil, fmt.Errorf("this is a %s key, want a %s one", strings.TrimPrefix(other, "hnboot-ed25519-"), strings.TrimPrefix(tag, "hnboot-ed25519-"))
		}
		return nil, fmt.Errorf("not an hnboot key file (want one line %q; make one with mkimage keygen)", tag+" BASE64")
	}
	k, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil || len(k) != size {
		return nil, fmt.Errorf("key is not %d bytes of base64", size)
	}
	return k, nil
}

// ParsePublicKey reads the KEY.pub file form.
func ParsePublicKey(b []byte) (PublicKey, error) {
	k, err := parseLine(b, publicTag, ed25519.PublicKeySize)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{ed25519.PublicKey(k)}, nil
}

// ParsePrivateKey reads the KEY file form.
func ParsePrivateKey(b []byte) (*PrivateKey, error) {
	seed, err := parseLine(b, privateTag, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	return &PrivateKey{ed25519.NewKeyFromSeed(seed)}, nil
}

// ReadPublicKey reads a KEY.pub file.
func ReadPublicKey(path string) (PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return PublicKey{}, err
	}
	k, err := ParsePublicKey(b)
	if err != nil {
		return PublicKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ReadPrivateKey reads a KEY file.
func ReadPrivateKey(path string) (*PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WriteKeyPair writes k to path (mode 0600) and its public half to
// path.pub (0644). It refuses to overwrite an existing key.
func WriteKeyPair(path string, k *PrivateKey) error {
	for _, p := range []string{path, path + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists; remove it first or choose another --out (a key is never overwritten)", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(k.Marshal()); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	if err := os.WriteFile(path+".pub", k.Public().Marshal(), 0o644); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}
