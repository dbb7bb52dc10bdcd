// Package randseed carries entropy from one boot to the next in a seed
// file on hostpart (layout.RandomSeed), as systemd-random-seed and
// seedrng do, so that a host without RDRAND or a virtio-rng device has an
// initialized random pool at the start of every boot but the first, and
// nothing the init does later (SSH host keys) waits for it.
//
// At boot Load reads the seed, replaces it on disk with a new one before
// feeding the old one to the kernel (so a crash never lets one seed be
// credited twice), and credits it to the kernel's pool (RNDADDENTROPY)
// only when it was written by a previous boot from an initialized pool.
// Once the pool is initialized it writes a seed drawn from it, which the
// next boot may credit. A seed that is not creditable (first boot, copied
// files, a seed written by this same boot) is still mixed in, uncredited.
//
// The seed file is text:
//
//	hnboot-random-seed 1 credit=yes boot=<boot_id of the writer>
//	<128 hex digits: 64 bytes>
//
// A cloned hostpart carries its seed to every clone: the file is mixed
// with the clone's own entropy, but credited once per clone. Clone
// hostparts before their first boot, or remove the file.
package randseed

import (
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
)

// Size is the seed's length: 512 bits, twice what the kernel needs to
// consider its pool initialized.
const Size = 64

// creditBits is what a creditable seed is worth to the kernel: 256 bits
// initialize the pool (Linux 5.18 and later).
const creditBits = 256

const magic = "hnboot-random-seed 1"

// Kernel is the random pool, as Load needs it.
type Kernel interface {
	// BootID is /proc/sys/kernel/random/boot_id: different on every boot
	// (kexec included).
	BootID() (string, error)
	// Ready reads n random bytes if the pool is initialized, without
	// blocking; ok is false when it is not (getrandom GRND_NONBLOCK
	// returned EAGAIN).
	Ready(n int) (b []byte, ok bool, err error)
	// Insecure reads n bytes that may come from an uninitialized pool
	// (GRND_INSECURE), never blocking.
	Insecure(n int) ([]byte, error)
	// Add mixes b into the pool, crediting bits of entropy (0: mixed
	// only).
	Add(b []byte, bits int) error
}

// Seed is the content of the seed file.
type Seed struct {
	Bytes  []byte
	Credit bool   // written from an initialized pool
	Boot   string // boot_id of the boot that wrote it
}

// Parse reads a seed file; an error says what is wrong with it.
func Parse(b []byte) (Seed, error) {
	var s Seed
	head, body, ok := strings.Cut(string(b), "\n")
	f := strings.Fields(head)
	if !ok || len(f) != 4 || f[0]+" "+f[1] != magic || !strings.HasPrefix(f[3], "boot=") {
		return s, errors.New("not a seed written by the hnboot init")
	}
	switch f[2] {
	case "credit=yes":
		s.Credit = true
	case "credit=no":
	default:
		return s, fmt.Errorf("bad credit field %q", f[2])
	}
	s.Boot = strings.TrimPrefix(f[3], "boot=")
	raw, err := hex.DecodeString(strings.TrimSpace(body))
	if err != nil || len(raw) < 32 {
		return s, errors.New("seed is not at least 32 bytes of hex")
	}
	s.Bytes = raw
	return s, nil
}

// Marshal is the seed file's content.
func (s Seed) Marshal() []byte {
	c := "no"
	if s.Credit {
		c = "yes"
	}
	return []byte(fmt.Sprintf("%s credit=%s boot=%s\n%s\n", magic, c, s.Boot, hex.EncodeToString(s.Bytes)))
}

// Creditable is the rule: a seed counts as entropy only when it was
// drawn from an initialized pool by an earlier boot. Returns the reason
// when it does not.
func Creditable(s Seed, thisBoot string) (bool, string) {
	switch {
	case len(s.Bytes) < 32:
		return false, "no seed"
	case !s.Credit:
		return false, "written before the pool was initialized"
	case s.Boot == "" || s.Boot == thisBoot:
		return false, "written by this boot"
	}
	return true, "written by boot " + s.Boot
}

// Result says what Load did, for the log.
type Result struct {
	Found    bool   // a seed file was read
	Credited bool   // its entropy was credited
	Why      string // why it was (not) credited
	Ready    bool   // the pool is initialized now
	Saved    bool   // a new seed file was written
	Next     bool   // the seed written may be credited by the next boot
}

// Load feeds the seed on the hostpart in dir to the kernel and leaves a
// fresh one for the next boot. It never blocks on the pool. An error is
// returned with what was done so far; the boot goes on.
func Load(dir string, k Kernel) (Result, error) {
	var r Result
	boot, err := k.BootID()
	if err != nil {
		return r, fmt.Errorf("random seed: %w", err)
	}
	path := filepath.Join(dir, layout.RandomSeed)
	var old Seed
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		r.Found = true
		if old, err = Parse(b); err != nil {
			r.Why = path + ": " + err.Error()
			old = Seed{}
		}
	case !errors.Is(err, fs.ErrNotExist):
		return r, fmt.Errorf("random seed: %w", err)
	default:
		r.Why = "no seed yet (first boot)"
	}
	credit, why := Creditable(old, boot)
	if r.Why == "" {
		r.Why = why
	}

	// Replace the seed before using it: a crash from here on cannot
	// credit the same bytes twice.
	fresh, ready, err := k.Ready(Size)
	if err != nil {
		return r, fmt.Errorf("random seed: getrandom: %w", err)
	}
	if !ready {
		if fresh, err = k.Insecure(Size); err != nil {
			return r, fmt.Errorf("random seed: getrandom: %w", err)
		}
	}
	next := Seed{Bytes: mix(old.Bytes, fresh), Credit: ready, Boot: boot}
	fsys := durable.Root(dir)
	if err := fsys.WriteFile(layout.RandomSeed, next.Marshal()); err != nil {
		return r, fmt.Errorf("random seed: %w", err)
	}
	r.Saved, r.Next = true, next.Credit

	if len(old.Bytes) > 0 {
		bits := 0
		if credit {
			bits = creditBits
		}
		if err := k.Add(old.Bytes, bits); err != nil {
			return r, fmt.Errorf("random seed: add to the kernel's pool: %w", err)
		}
		r.Credited = credit
	}
	if ready {
		r.Ready = true
		return r, nil
	}
	// The pool may be initialized now (credited seed): draw the next
	// boot's seed from it, creditable.
	fresh, ready, err = k.Ready(Size)
	if err != nil || !ready {
		return r, err
	}
	r.Ready = true
	next = Seed{Bytes: mix(next.Bytes, fresh), Credit: true, Boot: boot}
	if err := fsys.WriteFile(layout.RandomSeed, next.Marshal()); err != nil {
		return r, fmt.Errorf("random seed: %w", err)
	}
	r.Next = true
	return r, nil
}

// Refresh writes a creditable seed for the next boot if the pool is
// initialized now and the seed on disk is not creditable yet: the init
// calls it late in a boot that started without entropy (the first boot,
// whose pool the SSH key generation waited for), so the next boot starts
// with an initialized pool. It reports whether it wrote one. It never
// blocks.
func Refresh(dir string, k Kernel) (bool, error) {
	boot, err := k.BootID()
	if err != nil {
		return false, fmt.Errorf("random seed: %w", err)
	}
	var cur Seed
	if b, err := os.ReadFile(filepath.Join(dir, layout.RandomSeed)); err == nil {
		cur, _ = Parse(b)
	}
	if cur.Credit && cur.Boot == boot {
		return false, nil // Load already left one
	}
	fresh, ready, err := k.Ready(Size)
	if err != nil || !ready {
		return false, err
	}
	next := Seed{Bytes: mix(cur.Bytes, fresh), Credit: true, Boot: boot}
	if err := durable.Root(dir).WriteFile(layout.RandomSeed, next.Marshal()); err != nil {
		return false, fmt.Errorf("random seed: %w", err)
	}
	return true, nil
}

// mix is SHA-512 over a label, the old seed and the fresh bytes: the new
// seed keeps the old seed's entropy without revealing it.
func mix(old, fresh []byte) []byte {
	h := sha512.New()
	h.Write([]byte(magic))
	h.Write(old)
	h.Write(fresh)
	return h.Sum(nil)
}
