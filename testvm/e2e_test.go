package testvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testMAC is the NIC of every test host; the default hostname derives from it.
const testMAC = "52:54:00:12:34:56"

// bootTimeout is per boot: TCG on a busy 2-core machine is slow.
const bootTimeout = 180 * time.Second

var (
	fx     *Fixture
	fxErr  error
	images = map[string]string{} // name -> image path
)

// TestMain builds the init, the initramfs and the test images once per run.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hnboot-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	fx, fxErr = Build(ctx, dir, os.Stderr)
	if fxErr == nil {
		for _, o := range []RootOptions{{Name: "A", Confirm: true}, {Name: "B", Confirm: true}, {Name: "C"}} {
			p, err := fx.RootImage(ctx, o)
			if err != nil {
				fxErr = err
				break
			}
			images[o.Name] = p
		}
	}
	cancel()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func fixture(t *testing.T) *Fixture {
	t.Helper()
	if fxErr != nil {
		t.Fatalf("building the test fixture: %v", fxErr)
	}
	return fx
}

// disk builds a host disk with the named images in the given slots.
func disk(t *testing.T, slots map[string]string) string {
	t.Helper()
	f := fixture(t)
	out := filepath.Join(t.TempDir(), "disk.img")
	args := []string{"disk", "--out", out, "--size", "1G"}
	for _, flag := range []string{"root", "new", "old"} {
		if name, ok := slots[flag]; ok {
			args = append(args, "--"+flag, images[name])
		}
	}
	if err := f.Run(context.Background(), args...); err != nil {
		t.Fatal(err)
	}
	return out
}

// boot boots disk once with the fixture's initramfs, until the test
// image's init powers off, and returns the console. extra is appended to
// the kernel command line.
func boot(t *testing.T, diskPath, extra string) string {
	t.Helper()
	return bootWith(t, fixture(t).Initramfs, diskPath, extra)
}

// bootWith is boot with another initramfs.
func bootWith(t *testing.T, initrd, diskPath, extra string) string {
	t.Helper()
	return bootOpts(t, Options{Initrd: initrd}, diskPath, extra)
}

// bootOpts is boot with more QEMU options (o.Initrd "" is the fixture's).
func bootOpts(t *testing.T, o Options, diskPath, extra string) string {
	t.Helper()
	f := fixture(t)
	o.Kernel, o.Disk, o.MAC = f.Kernel, diskPath, testMAC
	if o.Initrd == "" {
		o.Initrd = f.Initramfs
	}
	o.Append = strings.TrimSpace("hn.hostpart=LABEL=hostpart " + extra)
	vm, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if _, err := vm.Expect(`HNTEST end`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("booted in %v", vm.Since().Round(time.Millisecond))
	return vm.Console()
}

// field returns the value printed by the test image as `HNTEST key=value`.
func field(t *testing.T, console, key string) string {
	t.Helper()
	for _, l := range strings.Split(console, "\n") {
		if i := strings.Index(l, "HNTEST "+key+"="); i >= 0 {
			v := l[i+len("HNTEST "+key+"="):]
			if j := strings.IndexByte(v, ' '); j >= 0 && key != "hostpart" {
				v = v[:j]
			}
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("console has no HNTEST %s=\n%s", key, tail(console, 60))
	return ""
}

func wantConsole(t *testing.T, console string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(console, w) {
			t.Errorf("console lacks %q\n%s", w, tail(console, 60))
		}
	}
}

// slots reports which test image (A, B, C, "?" for unknown content) is in
// each hn-root*.img slot of the disk, and the other files on hostpart.
type hostState struct {
	Slots map[string]string // file name -> image name
	Files map[string]string // small file name -> content
}

func inspect(t *testing.T, diskPath string) hostState {
	t.Helper()
	sums := map[[32]byte]string{}
	for name, p := range images {
		sums[digest(t, p)] = name
	}
	st := hostState{Slots: map[string]string{}, Files: map[string]string{}}
	err := WithHostpart(diskPath, func(dir string) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			switch {
			case strings.HasPrefix(e.Name(), "hn-root") && strings.Contains(e.Name(), ".img"):
				name, ok := sums[digest(t, p)]
				if !ok {
					name = "?"
				}
				st.Slots[e.Name()] = name
			case e.Type().IsRegular():
				b, _ := os.ReadFile(p)
				st.Files[e.Name()] = strings.TrimSpace(string(b))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func digest(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func wantSlots(t *testing.T, st hostState, want map[string]string) {
	t.Helper()
	for _, slot := range []string{"hn-root.img", "hn-root-new.img", "hn-root-old.img", "hn-root-broken.img", "hn-root-new.img.rejected"} {
		if st.Slots[slot] != want[slot] {
			t.Errorf("hostpart %s holds image %q, want %q (all slots: %v)", slot, st.Slots[slot], want[slot], st.Slots)
		}
	}
}

func writeHostpart(t *testing.T, diskPath string, files map[string]string) {
	t.Helper()
	err := WithHostpart(diskPath, func(dir string) error {
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestFirstBoot(t *testing.T) {
	d := disk(t, map[string]string{"root": "A"})
	con := boot(t, d, "")
	if got := field(t, con, "booted image"); got != "A" {
		t.Errorf("booted image = %q, want A", got)
	}
	wantConsole(t, con, "HNTEST hostpart-mounted", "HNTEST fstab-ok", "hninit: [", "switching root")
	if got := field(t, con, "data0"); got != "/hostpart/data" {
		t.Errorf("/data0 -> %q, want /hostpart/data", got)
	}
	mid := field(t, con, "machine-id")
	if len(mid) != 32 {
		t.Errorf("machine-id = %q, want 32 hex digits", mid)
	}
	if h, want := field(t, con, "hostname"), "hn-525400123456"; h != want {
		t.Errorf("hostname = %q, want %q (generated from the MAC by the init, not the image's)", h, want)
	}
	if uts := field(t, con, "uts"); uts != "hn-525400123456" {
		t.Errorf("kernel hostname = %q, want hn-525400123456", uts)
	}
	st := inspect(t, d)
	wantSlots(t, st, map[string]string{"hn-root.img": "A"})
	if _, ok := st.Files["hn-root.trial"]; ok {
		t.Errorf("first boot left hn-root.trial; the installed image is not on trial")
	}
}

// TestFirstBootNoEntropy is the first boot on QEMU's default CPU (no
// RDRAND) without an RNG device: the SSH host keys wait for the kernel's
// pool (the kernel's jitter entropy fills it when the init blocks in
// getrandom), nothing else does, and the boot leaves a seed on hostpart
// so that the second boot starts with an initialized pool.
func TestFirstBootNoEntropy(t *testing.T) {
	d := disk(t, map[string]string{"root": "A"})
	for i, want := range []string{"random seed credited=false why=no seed yet", "random seed credited=true"} {
		con := bootOpts(t, Options{NoEntropy: true}, d, "")
		if got := field(t, con, "booted image"); got != "A" {
			t.Errorf("boot %d: booted image = %q, want A", i, got)
		}
		wantConsole(t, con, want, "host instantiated")
		if mid := field(t, con, "machine-id"); len(mid) != 32 {
			t.Errorf("boot %d: machine-id = %q", i, mid)
		}
		for _, l := range strings.Split(con, "\n") {
			if strings.Contains(l, "random") || strings.Contains(l, "waited for the host keys") || strings.Contains(l, "switching root") {
				t.Logf("boot %d: %s", i, l)
			}
		}
	}
	err := WithHostpart(d, func(dir string) error {
		b, err := os.ReadFile(filepath.Join(dir, ".hnboot", "random-seed"))
		if !strings.HasPrefix(string(b), "hnboot-random-seed 1 credit=yes") {
			t.Errorf(".hnboot/random-seed = %q (%v), want a creditable seed", b, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPromoteStagedImage(t *testing.T) {
	d := disk(t, map[string]string{"root": "A", "new": "B"})
	con := boot(t, d, "")
	if got := field(t, con, "booted image"); got != "B" {
		t.Errorf("booted image = %q, want B (the staged one)", got)
	}
	// The booted system sees itself on trial and confirms by removing the file.
	if got := field(t, con, "trial"); got != "2" {
		t.Errorf("tries left during the first trial boot = %q, want 2 (3 tries, one used)", got)
	}
	wantConsole(t, con, "HNTEST confirmed")
	st := inspect(t, d)
	wantSlots(t, st, map[string]string{"hn-root.img": "B", "hn-root-old.img": "A"})
	if _, ok := st.Files["hn-root.trial"]; ok {
		t.Errorf("hn-root.trial still present after the system confirmed")
	}
	// A confirmed image is no longer on trial: the next boot keeps it.
	con = boot(t, d, "")
	if got := field(t, con, "booted image"); got != "B" {
		t.Errorf("second boot: image = %q, want B", got)
	}
}

func TestSystemRevert(t *testing.T) {
	d := disk(t, map[string]string{"root": "B", "old": "A"})
	writeHostpart(t, d, map[string]string{"system-revert": ""})
	con := boot(t, d, "")
	if got := field(t, con, "booted image"); got != "A" {
		t.Errorf("booted image = %q, want A (the old one)", got)
	}
	st := inspect(t, d)
	wantSlots(t, st, map[string]string{"hn-root.img": "A", "hn-root-broken.img": "B"})
	if _, ok := st.Files["system-revert"]; ok {
		t.Errorf("system-revert still present after the revert")
	}
}

func TestRevertWithoutOldImage(t *testing.T) {
	d := disk(t, map[string]string{"root": "A"})
	writeHostpart(t, d, map[string]string{"system-revert": ""})
	con := boot(t, d, "")
	if got := field(t, con, "booted image"); got != "A" {
		t.Errorf("booted image = %q, want A (nothing to revert to)", got)
	}
	wantConsole(t, con, "hn-root-old.img")
	if !strings.Contains(con, "no hn-root-old.img") && !strings.Contains(con, "no old image") {
		t.Errorf("console does not say plainly that there is no old image to revert to\n%s", tail(con, 60))
	}
	st := inspect(t, d)
	wantSlots(t, st, map[string]string{"hn-root.img": "A"})
}

func TestUnconfirmedImageRevertsAfterTries(t *testing.T) {
	d := disk(t, map[string]string{"root": "A", "new": "C"})
	// C never confirms. With 2 tries: two trial boots of C, then A again.
	for i, want := range []string{"C", "C", "A"} {
		con := boot(t, d, "hn.tries=2")
		if got := field(t, con, "booted image"); got != want {
			t.Fatalf("boot %d: image = %q, want %q", i+1, got, want)
		}
	}
	st := inspect(t, d)
	wantSlots(t, st, map[string]string{"hn-root.img": "A", "hn-root-broken.img": "C"})
	if _, ok := st.Files["hn-root.trial"]; ok {
		t.Errorf("hn-root.trial still present after the automatic revert")
	}
}

func TestCorruptStagedImageRejected(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func([]byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		{"garbage", func(b []byte) []byte { return bytes.Repeat([]byte{0xA5}, len(b)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := disk(t, map[string]string{"root": "A"})
			img, err := os.ReadFile(images["B"])
			if err != nil {
				t.Fatal(err)
			}
			bad := tc.corrupt(img)
			err = WithHostpart(d, func(dir string) error {
				return os.WriteFile(filepath.Join(dir, "hn-root-new.img"), bad, 0o644)
			})
			if err != nil {
				t.Fatal(err)
			}
			con := boot(t, d, "")
			if got := field(t, con, "booted image"); got != "A" {
				t.Errorf("booted image = %q, want A (the staged image is bad)", got)
			}
			st := inspect(t, d)
			if st.Slots["hn-root-new.img.rejected"] == "" {
				t.Errorf("bad staged image not set aside as hn-root-new.img.rejected (slots %v)", st.Slots)
			}
			if _, ok := st.Slots["hn-root-new.img"]; ok {
				t.Errorf("bad staged image still staged as hn-root-new.img")
			}
			if st.Slots["hn-root.img"] != "A" {
				t.Errorf("hn-root.img holds %q, want A", st.Slots["hn-root.img"])
			}
		})
	}
}

func TestPowerCutDuringRotation(t *testing.T) {
	// hn.crashtest=N makes the init hang after N rotation operations; the
	// test then kills QEMU, which is a power cut as far as the disk knows.
	for _, n := range []int{1, 2, 3, 4} {
		t.Run(fmt.Sprintf("after_op_%d", n), func(t *testing.T) {
			d := disk(t, map[string]string{"root": "A", "new": "B", "old": "C"})
			f := fixture(t)
			vm, err := Start(context.Background(), Options{
				Kernel: f.Kernel, Initrd: f.Initramfs, Disk: d,
				Append: fmt.Sprintf("hn.crashtest=%d", n),
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := vm.Expect(`crashtest: power cut simulated`, bootTimeout); err != nil {
				vm.Kill()
				t.Fatal(err)
			}
			vm.Kill()
			con := boot(t, d, "")
			if got := field(t, con, "booted image"); got != "B" {
				t.Errorf("after a power cut at op %d: booted image = %q, want B (promotion finished)", n, got)
			}
			st := inspect(t, d)
			wantSlots(t, st, map[string]string{"hn-root.img": "B", "hn-root-old.img": "A"})
		})
	}
}

func TestIdentityStableAcrossUpdate(t *testing.T) {
	d := disk(t, map[string]string{"root": "A"})
	con := boot(t, d, "")
	mid, key, host := field(t, con, "machine-id"), field(t, con, "sshkey"), field(t, con, "hostname")
	err := WithHostpart(d, func(dir string) error {
		b, err := os.ReadFile(images["B"])
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "hn-root-new.img"), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	con = boot(t, d, "")
	if got := field(t, con, "booted image"); got != "B" {
		t.Fatalf("after staging B: booted image = %q, want B", got)
	}
	for _, c := range []struct{ key, before string }{{"machine-id", mid}, {"sshkey", key}, {"hostname", host}} {
		if got := field(t, con, c.key); got != c.before {
			t.Errorf("%s after update = %q, want unchanged %q", c.key, got, c.before)
		}
	}
}

func TestMissingEFIBootReported(t *testing.T) {
	d := disk(t, map[string]string{"root": "A"})
	if err := dropPartition(d, "EFI-BOOT"); err != nil {
		t.Fatal(err)
	}
	con := boot(t, d, "")
	if got := field(t, con, "booted image"); got != "A" {
		t.Errorf("booted image = %q, want A (a missing EFI-BOOT is not fatal)", got)
	}
	found := false
	for _, l := range strings.Split(con, "\n") {
		if strings.Contains(l, "hninit:") && strings.Contains(l, "EFI-BOOT") && strings.Contains(l, "missing") {
			found = true
		}
	}
	if !found {
		t.Errorf("console does not report the missing EFI-BOOT partition\n%s", tail(con, 60))
	}
}

func TestGenkernelCmdlineAlias(t *testing.T) {
	d := disk(t, map[string]string{"root": "A", "new": "B"})
	f := fixture(t)
	vm, err := Start(context.Background(), Options{
		Kernel: f.Kernel, Initrd: f.Initramfs, Disk: d,
		Append: "root=/dev/ram0 real_root=/hn-root.img raw_loop_root_host_partition=LABEL=hostpart ro",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if _, err := vm.Expect(`genkernel command line`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	m, err := vm.Expect(`HNTEST booted image=(\S+)`, bootTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != "B" {
		t.Errorf("booted image = %q, want B", m[1])
	}
	if err := vm.Wait(bootTimeout); err != nil {
		t.Fatal(err)
	}
}

func TestFallbackToOldWhenCurrentUnmountable(t *testing.T) {
	d := disk(t, map[string]string{"root": "A", "old": "B"})
	// hn-root.img damaged in place (not via staging): the init must still
	// come up, on the previous image. The superblock stays (so rotation
	// takes it as complete, as it would not a file that is no filesystem:
	// that one it replaces, see TestRepairGenkernelHalfMove), the group
	// descriptors after it go, so the mount fails.
	err := WithHostpart(d, func(dir string) error {
		f, err := os.OpenFile(filepath.Join(dir, "hn-root.img"), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte{0}, 1<<20-2048), 2048); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	con := boot(t, d, "")
	if got := field(t, con, "booted image"); got != "B" {
		t.Errorf("booted image = %q, want B (fallback to hn-root-old.img)", got)
	}
	wantConsole(t, con, "falling back to the previous image")
}
