package randseed

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

// fakePool is a kernel pool that becomes ready when 256 bits are credited
// (or is ready from the start). It checks that a seed is never fed to it
// while it is still the one on disk.
type fakePool struct {
	t       *testing.T
	dir     string
	boot    string
	ready   bool
	added   [][]byte
	credits []int
}

func (p *fakePool) BootID() (string, error) { return p.boot, nil }

func (p *fakePool) Ready(n int) ([]byte, bool, error) {
	if !p.ready {
		return nil, false, nil
	}
	return bytes.Repeat([]byte{0xaa}, n), true, nil
}

func (p *fakePool) Insecure(n int) ([]byte, error) { return bytes.Repeat([]byte{0x55}, n), nil }

func (p *fakePool) Add(b []byte, bits int) error {
	if on, err := os.ReadFile(filepath.Join(p.dir, layout.RandomSeed)); err == nil {
		if s, err := Parse(on); err == nil && bytes.Equal(s.Bytes, b) {
			p.t.Errorf("seed fed to the kernel while it is still on disk: a crash now would credit it twice")
		}
	}
	p.added = append(p.added, b)
	p.credits = append(p.credits, bits)
	if bits >= 256 {
		p.ready = true
	}
	return nil
}

func TestLoad(t *testing.T) {
	seed := bytes.Repeat([]byte{7}, Size)
	file := func(credit bool, boot string) string {
		return string(Seed{Bytes: seed, Credit: credit, Boot: boot}.Marshal())
	}
	for _, tc := range []struct {
		name    string
		file    string // "" : none
		ready   bool   // pool initialized before Load
		credit  bool   // the old seed was credited
		mixed   bool   // the old seed was given to the kernel at all
		next    bool   // the seed left on disk is creditable
		why     string
		readyAt bool // pool initialized after Load
	}{
		{"first boot, no RNG", "", false, false, false, false, "first boot", false},
		{"first boot, RNG", "", true, false, false, true, "first boot", true},
		{"seed from the last boot", file(true, "boot-1"), false, true, true, true, "written by boot boot-1", true},
		{"seed from the last boot, pool already ready", file(true, "boot-1"), true, true, true, true, "boot-1", true},
		{"seed written before the pool was ready", file(false, "boot-1"), false, false, true, false, "before the pool was initialized", false},
		{"seed written by this boot", file(true, "boot-2"), false, false, true, false, "this boot", false},
		{"garbage", "random bytes\n", false, false, false, false, "not a seed written by the hnboot init", false},
		{"short seed", "hnboot-random-seed 1 credit=yes boot=boot-1\nabcd\n", false, false, false, false, "at least 32 bytes", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.file != "" {
				os.MkdirAll(filepath.Join(dir, layout.StateDir), 0o755)
				os.WriteFile(filepath.Join(dir, layout.RandomSeed), []byte(tc.file), 0o600)
			}
			k := &fakePool{t: t, dir: dir, boot: "boot-2", ready: tc.ready}
			r, err := Load(dir, k)
			if err != nil {
				t.Fatal(err)
			}
			if r.Credited != tc.credit || (len(k.added) > 0) != tc.mixed || r.Next != tc.next || r.Ready != tc.readyAt || !strings.Contains(r.Why, tc.why) {
				t.Errorf("Load = %+v, added %d seeds (credits %v); want credited %v, mixed %v, next creditable %v, ready %v, why ~%q",
					r, len(k.added), k.credits, tc.credit, tc.mixed, tc.next, tc.readyAt, tc.why)
			}
			b, err := os.ReadFile(filepath.Join(dir, layout.RandomSeed))
			if err != nil {
				t.Fatal(err)
			}
			s, err := Parse(b)
			if err != nil || s.Boot != "boot-2" || s.Credit != tc.next || len(s.Bytes) != Size || bytes.Equal(s.Bytes, seed) {
				t.Errorf("seed left on disk = %+v, %v; want a new %d-byte seed by boot-2, credit %v", s, err, Size, tc.next)
			}
		})
	}
}

// Boots in a row without an RNG: the first waits for its pool (key
// generation) and leaves a creditable seed with Refresh; every later boot
// starts with an initialized pool.
func TestLoadBootsInARow(t *testing.T) {
	dir := t.TempDir()
	k := &fakePool{t: t, dir: dir, boot: "a"}
	if r, err := Load(dir, k); err != nil || r.Credited || r.Next {
		t.Fatalf("first boot: %+v, %v", r, err)
	}
	if ok, err := Refresh(dir, k); ok || err != nil {
		t.Fatalf("Refresh with the pool not ready = %v, %v; want nothing written", ok, err)
	}
	k.ready = true // key generation waited for it
	if ok, err := Refresh(dir, k); !ok || err != nil {
		t.Fatalf("Refresh with the pool ready = %v, %v; want a creditable seed", ok, err)
	}
	if ok, _ := Refresh(dir, k); ok {
		t.Errorf("second Refresh in the same boot wrote again")
	}
	for _, boot := range []string{"b", "c"} {
		k = &fakePool{t: t, dir: dir, boot: boot}
		if r, err := Load(dir, k); err != nil || !r.Credited || !r.Ready || !r.Next {
			t.Fatalf("boot %s (no RNG): %+v, %v; want the seed credited, the pool ready and a creditable seed left", boot, r, err)
		}
		if ok, _ := Refresh(dir, k); ok {
			t.Errorf("boot %s: Refresh after a Load that left a creditable seed wrote again", boot)
		}
	}
}
