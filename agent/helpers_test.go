package agent

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	mrand "math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/stage"
)

// The staging's own tests are in internal/stage; these helpers make the
// same images, keys and manifests for the agent's.

func testImage(t *testing.T, size int) ([]byte, string) {
	t.Helper()
	data := make([]byte, size)
	mrand.New(mrand.NewSource(int64(size))).Read(data)
	sum := sha256.Sum256(data)
	return data, "sha256:" + hex.EncodeToString(sum[:])
}

func newKey(t *testing.T) *manifest.PrivateKey {
	t.Helper()
	k, err := manifest.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keysOf(ks ...*manifest.PrivateKey) stage.Keys {
	var out stage.Keys
	for _, k := range ks {
		out.Add(k.Public(), "test")
	}
	return out
}

// signedManifest returns the manifest of data, signed with k when k is
// not nil.
func signedManifest(t *testing.T, data []byte, k *manifest.PrivateKey) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	os.WriteFile(p, data, 0o644)
	m, err := manifest.New(p, manifest.Fields{Name: "web", Version: "42", FS: "ext4", BuildTime: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if k != nil {
		if err := m.Sign(k); err != nil {
			t.Fatal(err)
		}
	}
	return m.Marshal()
}
