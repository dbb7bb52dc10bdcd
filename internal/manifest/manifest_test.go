package manifest

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func setup(t *testing.T) (dir, img string, k *PrivateKey) {
	t.Helper()
	dir = t.TempDir()
	img = filepath.Join(dir, "web.img")
	if err := os.WriteFile(img, bytes.Repeat([]byte("image"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return dir, img, k
}

func TestNewAndMarshal(t *testing.T) {
	_, img, _ := setup(t)
	m, err := New(img, Fields{Version: "1.2", FS: "ext4", KernelRelease: "6.1.0-9-amd64", BuildTime: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "format": "hnboot-manifest-1",
  "name": "web",
  "version": "1.2",
  "sha256": "` + m.SHA256 + `",
  "size": 5000,
  "fs": "ext4",
  "kernel_release": "6.1.0-9-amd64",
  "build_time": "2023-11-14T22:13:20Z"
}
`
	if got := string(m.Marshal()); got != want {
		t.Errorf("Marshal() = %s, want %s", got, want)
	}
	back, err := Parse(m.Marshal())
	if err != nil || *back != *m {
		t.Errorf("Parse(Marshal()) = %+v, %v, want %+v", back, err, m)
	}
}

func TestVerify(t *testing.T) {
	_, img, k := setup(t)
	other, err := GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signedM := func(t *testing.T) *Manifest {
		m, err := New(img, Fields{FS: "ext4", BuildTime: time.Unix(0, 0)})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Sign(k); err != nil {
			t.Fatal(err)
		}
		// Through the file form, as the init sees it.
		m, err = Parse(m.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, tt := range []struct {
		name    string
		change  func(t *testing.T, m *Manifest) // before verifying
		image   []byte                          // replaces the image when not nil
		trusted []PublicKey
		want    error
	}{
		{"signed, trusted", nil, nil, []PublicKey{k.Public()}, nil},
		{"signed, two keys trusted", nil, nil, []PublicKey{other.Public(), k.Public()}, nil},
		{"signed, no key configured", nil, nil, nil, nil},
		{"unsigned, no key configured", func(t *testing.T, m *Manifest) { m.Signature, m.KeyID = "", "" }, nil, nil, nil},
		{"unsigned, key configured", func(t *testing.T, m *Manifest) { m.Signature, m.KeyID = "", "" }, nil, []PublicKey{k.Public()}, ErrUnsigned},
		{"wrong key", nil, nil, []PublicKey{other.Public()}, ErrUnknownKey},
		{"signed by other key, same id claimed", func(t *testing.T, m *Manifest) { m.Sign(other); m.KeyID = k.Public().ID() }, nil, []PublicKey{k.Public()}, ErrBadSignature},
		{"tampered manifest: version", func(t *testing.T, m *Manifest) { m.Version = "evil" }, nil, []PublicKey{k.Public()}, ErrBadSignature},
		{"tampered manifest: digest", func(t *testing.T, m *Manifest) { m.SHA256 = strings.Repeat("0", 64) }, nil, []PublicKey{k.Public()}, ErrBadSignature},
		{"garbage signature", func(t *testing.T, m *Manifest) { m.Signature = "!!" }, nil, []PublicKey{k.Public()}, ErrBadSignature},
		{"tampered image, same size", nil, bytes.Repeat([]byte("imagf"), 1000), []PublicKey{k.Public()}, ErrDigest},
		{"tampered image, unsigned check", nil, bytes.Repeat([]byte("imagf"), 1000), nil, ErrDigest},
		{"truncated image", nil, bytes.Repeat([]byte("image"), 999), []PublicKey{k.Public()}, ErrSize},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := signedM(t)
			if tt.change != nil {
				tt.change(t, m)
			}
			path := img
			if tt.image != nil {
				path = filepath.Join(t.TempDir(), "tampered.img")
				if err := os.WriteFile(path, tt.image, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := m.VerifyFile(path, tt.trusted)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("VerifyFile(%s) = %v, want %v", tt.name, err, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `{"format":"other"}`,
		`{"format":"hnboot-manifest-1","sha256":"abc","size":1}`,
		`{"format":"hnboot-manifest-1","sha256":"` + strings.Repeat("z", 64) + `","size":1}`,
		`{"format":"hnboot-manifest-1","sha256":"` + strings.Repeat("a", 64) + `","size":0}`,
	} {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("Parse(%q) = %v, want ErrFormat", in, err)
		}
	}
}

func TestKeys(t *testing.T) {
	dir, _, k := setup(t)
	p := filepath.Join(dir, "fleet.key")
	if err := WriteKeyPair(p, k); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode = %v, %v, want 0600", st.Mode(), err)
	}
	if err := WriteKeyPair(p, k); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("WriteKeyPair(existing) = %v, want an error saying it exists", err)
	}
	priv, err := ReadPrivateKey(p)
	if err != nil || priv.Public().ID() != k.Public().ID() {
		t.Errorf("ReadPrivateKey() = %v, %v, want key %s", priv, err, k.Public().ID())
	}
	pub, err := ReadPublicKey(p + ".pub")
	if err != nil || pub.ID() != k.Public().ID() {
		t.Errorf("ReadPublicKey() = %v, %v, want key %s", pub, err, k.Public().ID())
	}
	if _, err := ReadPublicKey(p); err == nil || !strings.Contains(err.Error(), "private key, want a public") {
		t.Errorf("ReadPublicKey(private key) = %v, want an error naming the mix-up", err)
	}
	if _, err := ParsePublicKey([]byte("hnboot-ed25519-public AAAA\n")); err == nil {
		t.Errorf("ParsePublicKey(short key) = nil error, want one")
	}
}

func TestDigestSparse(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name   string
		layout func(f *os.File)
	}{
		{"empty", func(f *os.File) {}},
		{"dense", func(f *os.File) { f.Write(bytes.Repeat([]byte("x"), 3<<20+5)) }},
		{"hole at start", func(f *os.File) { f.WriteAt([]byte("end"), 5<<20) }},
		{"hole at end", func(f *os.File) { f.Write([]byte("start")); f.Truncate(7 << 20) }},
		{"holes between", func(f *os.File) {
			f.WriteAt([]byte("a"), 0)
			f.WriteAt([]byte("b"), 2<<20+17)
			f.WriteAt([]byte("c"), 9<<20)
			f.Truncate(12<<20 + 3)
		}},
	} {
		p := filepath.Join(dir, tt.name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		tt.layout(f)
		f.Close()
		b, _ := os.ReadFile(p)
		want, _, _ := Digest(bytes.NewReader(b))
		m, err := New(p, Fields{})
		if err != nil || m.SHA256 != want || m.Size != int64(len(b)) {
			t.Errorf("New(%s) = sha256 %s size %d, %v; want %s, %d (as read)", tt.name, m.SHA256, m.Size, err, want, len(b))
		}
	}
}

// A manifest signed as mkimage signed them before package lists existed
// (testdata/old-signed.json, kept as bytes) still parses and verifies:
// the package list is a companion file, so neither the Manifest struct
// nor its canonical bytes changed, and inits and agents in the field
// verify new manifests as before.
// Its package list verifies with the same key and names the same image.
func TestOldSignedManifestVerifies(t *testing.T) {
	pub, err := ReadPublicKey("testdata/old-signed.pub")
	if err != nil {
		t.Fatal(err)
	}
	m, err := ReadFile("testdata/old-signed.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CheckSignature([]PublicKey{pub}); err != nil {
		t.Errorf("old signed manifest: %v", err)
	}
	l, err := ReadPackages("testdata/packages-signed.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CheckSignature([]PublicKey{pub}); err != nil || l.SHA256 != m.SHA256 || len(l.Packages) != 2 {
		t.Errorf("package list: %v, sha256 %s (manifest %s), %d packages", err, l.SHA256, m.SHA256, len(l.Packages))
	}
	// A changed list no longer verifies; neither does a manifest's
	// signature pasted onto it (another domain).
	l.Packages[0].Version = "2.36-9+deb12u11"
	if err := l.CheckSignature([]PublicKey{pub}); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered package list: %v, want ErrBadSignature", err)
	}
}

func TestDiffPackages(t *testing.T) {
	a := []Package{{"bash", "5.2.15-2+b7", "amd64"}, {"libssl3", "3.0.15-1~deb12u1", "amd64"}, {"tzdata", "2024a-0+deb12u1", "all"}}
	b := []Package{{"bash", "5.2.15-2+b7", "amd64"}, {"libssl3", "3.0.16-1~deb12u1", "amd64"}, {"curl", "7.88.1-10+deb12u8", "amd64"}}
	added, removed, changed := DiffPackages(a, b)
	if len(added) != 1 || added[0].Name != "curl" || len(removed) != 1 || removed[0].Name != "tzdata" ||
		len(changed) != 1 || changed[0] != (PackageChange{"libssl3", "amd64", "3.0.15-1~deb12u1", "3.0.16-1~deb12u1"}) {
		t.Errorf("DiffPackages = %v, %v, %v", added, removed, changed)
	}
}
