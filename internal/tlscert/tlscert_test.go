package tlscert

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseFingerprint(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	colons := strings.TrimSuffix(strings.Repeat("AB:", 32), ":")
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"sha256:" + hex, "sha256:" + hex, true},
		{"SHA256:" + colons, "sha256:" + hex, true},
		{hex, "", false},
		{"sha256:" + hex[:62], "", false},
		{"sha256:" + strings.Repeat("zz", 32), "", false},
	} {
		got, err := ParseFingerprint(c.in)
		if got != c.want || (err == nil) != c.ok {
			t.Errorf("ParseFingerprint(%q) = %q, %v; want %q, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

// LoadOrCreate makes the pair once and loads the same one after.
func TestLoadOrCreateKeeps(t *testing.T) {
	dir := t.TempDir()
	cp, kp := filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	c1, created, err := LoadOrCreate(cp, kp, []string{"imaged.example", "10.0.0.2"}, time.Now())
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate = created %v, %v; want made", created, err)
	}
	c2, created, err := LoadOrCreate(cp, kp, nil, time.Now())
	if err != nil || created {
		t.Fatalf("second LoadOrCreate = created %v, %v; want loaded", created, err)
	}
	if LeafFingerprint(c1) != LeafFingerprint(c2) {
		t.Errorf("fingerprint changed across starts: %s, %s", LeafFingerprint(c1), LeafFingerprint(c2))
	}
	if err := c2.Leaf.VerifyHostname("imaged.example"); err != nil {
		t.Errorf("certificate not for imaged.example: %v", err)
	}
	if err := c2.Leaf.VerifyHostname("10.0.0.2"); err != nil {
		t.Errorf("certificate not for 10.0.0.2: %v", err)
	}
}
