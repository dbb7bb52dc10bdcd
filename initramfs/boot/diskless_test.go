package boot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/stage"
)

func writeMeminfo(t *testing.T, proc string, avail int64) {
	t.Helper()
	os.MkdirAll(proc, 0o755)
	body := fmt.Sprintf("MemTotal:       %d kB\nMemFree:        %d kB\nMemAvailable:   %d kB\n", 2*avail/1024, avail/1024, avail/1024)
	if err := os.WriteFile(filepath.Join(proc, "meminfo"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func parse(t *testing.T, line string) cmdline.Config {
	t.Helper()
	c, warns := cmdline.Parse(line)
	if len(warns) > 0 {
		t.Fatalf("Parse(%q): %q", line, warns)
	}
	return c
}

func TestDiskDecision(t *testing.T) {
	notFound := errors.New("no partition matches LABEL=hostpart after 5s")
	badFS := errors.New("mount hostpart /dev/vda2 (ext4): bad superblock")
	for _, tc := range []struct {
		cmdline           string
		findErr, mountErr error
		mode              DiskMode
		why               string
	}{
		{"", nil, nil, OnDisk, "hostpart is mounted"},
		{"hn.server=http://s", nil, nil, OnDisk, "hostpart is mounted"},
		{"hn.server=http://s", notFound, nil, FromRAM, "no hostpart: no partition matches LABEL=hostpart after 5s; booting the assigned image from RAM"},
		{"hn.server=http://s hn.diskless", nil, nil, FromRAM, "hn.diskless is set; booting the assigned image from RAM"},
		{"hn.server=http://s", nil, badFS, FromRAM, "hostpart does not mount: mount hostpart /dev/vda2 (ext4): bad superblock; booting the assigned image from RAM"},
		{"", notFound, nil, NoBoot, "no hostpart: no partition matches LABEL=hostpart after 5s; booting from RAM needs hn.server="},
		{"hn.diskless", nil, nil, NoBoot, "hn.diskless is set; booting from RAM needs hn.server="},
		{"hn.server=http://s hn.checkin=off", notFound, nil, NoBoot, "hn.checkin=off forbids it"},
		{"hn.server=http://s hn.fetch=off", notFound, nil, NoBoot, "hn.fetch=off forbids it"},
		{"hn.server=http://s hn.kexeced", notFound, nil, NoBoot, "a kexec'd boot has no image in RAM"},
	} {
		mode, why := DiskDecision(DiskInput{Cfg: parse(t, tc.cmdline), FindErr: tc.findErr, MountErr: tc.mountErr})
		if mode != tc.mode || !strings.Contains(why, tc.why) {
			t.Errorf("DiskDecision(%q, %v, %v) = %v, %q; want %v, %q", tc.cmdline, tc.findErr, tc.mountErr, mode, why, tc.mode, tc.why)
		}
	}
}

func TestHostpartWait(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    time.Duration
		why     string
	}{
		{"", 30 * time.Second, "the default"},
		{"hn.server=http://s", 5 * time.Second, "hn.server= is set"},
		{"hn.server=http://s hn.checkin=off", 30 * time.Second, "the default"},
		{"hn.server=http://s hn.diskwait=20s", 20 * time.Second, "hn.diskwait="},
		{"hn.diskwait=2m", 2 * time.Minute, "hn.diskwait="},
	} {
		if got, why := HostpartWait(parse(t, tc.cmdline)); got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("HostpartWait(%q) = %v, %q; want %v, %q", tc.cmdline, got, why, tc.want, tc.why)
		}
	}
}

func TestMemoryDecision(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		size, avail int64
		err         error
		ok          bool
		why         string
	}{
		{1024 * mib, 4096 * mib, nil, true, "the image needs 1.3 GiB in RAM (1.0 GiB + 256 MiB margin), MemAvailable is 4.0 GiB"},
		{1024 * mib, 1280 * mib, nil, true, "needs 1.3 GiB"},
		{1024 * mib, 1279 * mib, nil, false, "not enough memory to run from RAM: the image needs 1.3 GiB (1.0 GiB image + 256 MiB margin), MemAvailable is 1.2 GiB; give the host more memory, assign a smaller image, or give it a disk with a hostpart partition"},
		{3 << 30, 900 * mib, nil, false, "needs 3.3 GiB (3.0 GiB image + 256 MiB margin), MemAvailable is 900 MiB"},
		{0, 4096 * mib, nil, false, "did not say the image's size"},
		{1024 * mib, 0, errors.New("open /proc/meminfo: no such file"), false, "cannot read MemAvailable (open /proc/meminfo: no such file)"},
	} {
		if ok, why := MemoryDecision(tc.size, tc.avail, tc.err); ok != tc.ok || !strings.Contains(why, tc.why) {
			t.Errorf("MemoryDecision(%d, %d, %v) = %v, %q; want %v, %q", tc.size, tc.avail, tc.err, ok, why, tc.ok, tc.why)
		}
	}
}

func TestInstallDecision(t *testing.T) {
	b := AssignedImage{Name: "B", Version: "2", Digest: digestOf(imgB)}
	failed := func(d string) string {
		if d == b.Digest {
			return "reverted"
		}
		return ""
	}
	for _, tc := range []struct {
		name string
		in   InstallInput
		want Fetch
	}{
		{"assigned", InstallInput{Assigned: Assigned{Image: b}, Current: "sha256:" + strings.Repeat("0", 64)},
			Fetch{Get: true, Why: "imaged assigns B 2 (sha256:" + b.Digest[7:19] + ")"}},
		{"server down", InstallInput{AssignedErr: errors.New("connection refused")}, Fetch{Why: "imaged did not say what to run: connection refused"}},
		{"nothing assigned", InstallInput{Assigned: Assigned{}}, Fetch{Why: "imaged assigns no image to this host"}},
		{"bad digest", InstallInput{Assigned: Assigned{Image: AssignedImage{Digest: "md5:x"}}}, Fetch{Why: `imaged's digest "md5:x" is not sha256:<64 hex>`}},
		{"current is assigned", InstallInput{Assigned: Assigned{Image: b}, Current: b.Digest},
			Fetch{Why: "hn-root.img already is the assigned image B 2 (sha256:" + b.Digest[7:19] + "), and it does not boot"}},
		{"failed before", InstallInput{Assigned: Assigned{Image: b}, Failed: failed},
			Fetch{Refused: true, Why: "the assigned image B 2 (sha256:" + b.Digest[7:19] + ") is remembered as failed on this host (reverted, in .hnboot/failed-digests); imaged stage --force overrides"}},
		{"failed before, forced", InstallInput{Assigned: Assigned{Image: b, Force: true}, Failed: failed},
			Fetch{Get: true, Why: "imaged assigns B 2 (sha256:" + b.Digest[7:19] + ")"}},
	} {
		if got := InstallDecision(tc.in); got != tc.want {
			t.Errorf("%s: InstallDecision = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestRecoverServer(t *testing.T) {
	for _, tc := range []struct {
		cmdline, remembered string
		server, why         string
	}{
		{"hn.server=http://s", "", "http://s", "hn.server="},
		{"", "http://r:8080\n", "http://r:8080", "remembered from the last check-in"},
		{"hn.kexeced", "http://r:8080", "http://r:8080", "remembered"},
		{"", "", "", "no hn.server= and no server remembered in .hnboot/server"},
		{"", "ftp://x", "", "not an http URL"},
		{"hn.server=http://s hn.checkin=off", "", "", "hn.checkin=off: no network at boot"},
		{"hn.server=http://s hn.fetch=off", "", "", "hn.fetch=off: no download at boot"},
	} {
		if s, why := RecoverServer(parse(t, tc.cmdline), tc.remembered); s != tc.server || !strings.Contains(why, tc.why) {
			t.Errorf("RecoverServer(%q, %q) = %q, %q; want %q, %q", tc.cmdline, tc.remembered, s, why, tc.server, tc.why)
		}
	}
}

// The help lists hn.diskless and hn.diskwait (generated from cmdline.Keys).
func TestUsageHasDiskless(t *testing.T) {
	u := cmdline.Usage()
	for _, k := range []string{"hn.diskless ", "hn.diskwait=DURATION"} {
		if !strings.Contains(u, "  "+k) {
			t.Errorf("Usage lacks %s:\n%s", k, u)
		}
	}
}

// A disk whose driver only LoadAll brings, and LoadAll slow: the init
// still waits for the partition to show up before it boots from RAM.
func TestFindHostpartAfterSlowLoadAll(t *testing.T) {
	w := newWorld(t, map[string][]byte{layout.Current: imgA})
	srv := newImaged(t)
	w.sys.http = &httpgetClient
	srv.assign(srv.publish(t, "A", imgA, nil, false))
	w.sys.slowAll, w.sys.lateDisk = 4*time.Second, 700*time.Millisecond
	out := w.boot("hn.server=" + srv.URL)
	if out.Image != layout.Current || w.sys.switched != "A" || strings.Contains(w.console(), "diskless") {
		t.Errorf("boot ended with %+v, switched to %q; want A from hostpart\n%s", out, w.sys.switched, w.console())
	}
}

var garbage = []byte(strings.Repeat("not an image, just garbage\n", 4096))

// TestRunDiskless boots fake hosts without hostpart (or told to ignore
// it) from RAM, and checks what the running system gets.
func TestRunDiskless(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmdline string
		slots   map[string][]byte
		setup   func(t *testing.T, w *world, srv *fakeImaged)
		image   string // the image booted from RAM; "" a rescue
		console []string
	}{
		{"no hostpart, a server: B from RAM", "hn.server=SRV", nil,
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.noHostpart = true },
			"B", []string{"no hostpart: no partition matches LABEL=hostpart after 5s (hn.server= is set", "booting the assigned image from RAM", "MemAvailable is 8.0 GiB", "fetching the assigned image into RAM",
				"identity: hostname web-07 (from imaged)", "netdown eth0 10.0.0.50/24 ours=true"}},
		{"hn.diskless: the disk is left alone", "hn.server=SRV hn.diskless", map[string][]byte{layout.Current: imgA},
			nil, "B", []string{"hn.diskless is set; booting the assigned image from RAM"}},
		{"hostpart does not mount: B from RAM", "hn.server=SRV", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.hostpartErr = errors.New("bad superblock") },
			"B", []string{"hostpart does not mount: mount hostpart /dev/vda2 (ext4)", "bad superblock"}},
		{"not enough memory: rescue naming both numbers", "hn.server=SRV", nil,
			func(t *testing.T, w *world, srv *fakeImaged) {
				w.sys.noHostpart = true
				writeMeminfo(t, w.paths.Proc, 200<<20)
			},
			"", []string{"not enough memory to run from RAM: the image needs 256 MiB (256 KiB image + 256 MiB margin), MemAvailable is 200 MiB; give the host more memory"}},
		{"no hostpart, no server: rescue", "", nil,
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.noHostpart = true },
			"", []string{"after 30s (the default)", "booting from RAM needs hn.server="}},
		{"server down: rescue with the reason", "hn.server=http://127.0.0.1:1", nil,
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.noHostpart = true },
			"", []string{"diskless: nothing to boot from RAM: imaged did not say what to run", "connection refused"}},
		{"corrupt blob: rescue", "hn.server=SRV", nil,
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.noHostpart = true; srv.corrupt = true },
			"", []string{"downloading the assigned image B 1", "is corrupt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.slots)
			srv := newImaged(t)
			w.sys.http = &httpgetClient
			srv.assign(srv.publish(t, "B", imgB, nil, false))
			if tc.setup != nil {
				tc.setup(t, w, srv)
			}
			out := w.boot(strings.ReplaceAll(tc.cmdline, "SRV", srv.URL))
			con := w.console() + strings.Join(w.sys.calls, "\n")
			for _, c := range tc.console {
				if !strings.Contains(con, c) {
					t.Errorf("console lacks %q", c)
				}
			}
			if tc.image == "" {
				if out.Rescue == nil || w.sys.rescued == nil {
					t.Errorf("boot ended with %+v, want the rescue shell", out)
				}
				return
			}
			if out.Image != layout.Current || out.Rescue != nil || w.sys.switched != tc.image {
				t.Fatalf("boot ended with %+v, switched to %q; want %s from RAM\n%s", out, w.sys.switched, tc.image, con)
			}
			if n := strings.Count(con, "/hostpart and /data0 are absent"); n != 1 {
				t.Errorf("the init says %d times that /hostpart and /data0 are absent, want once", n)
			}
			if got := imageName(filepath.Join(w.paths.RAM, layout.Current)); got != tc.image {
				t.Errorf("RAM holds %q, want %s", got, tc.image)
			}
			if !strings.Contains(con, "mount tmpfs "+w.paths.RAM+" tmpfs") {
				t.Errorf("no tmpfs mounted on %s", w.paths.RAM)
			}
			if strings.Contains(con, "move ") || strings.Contains(con, "mount /dev/vda2 ") && w.sys.hostpartErr == nil {
				t.Errorf("hostpart mounted or moved into the new root:\n%s", strings.Join(w.sys.calls, "\n"))
			}
			for _, p := range []string{layout.HostpartMount, layout.DataLink} {
				if _, err := os.Lstat(filepath.Join(w.paths.NewRoot, p)); err == nil {
					t.Errorf("the running system has %s", p)
				}
			}
			fstab, _ := os.ReadFile(filepath.Join(w.paths.NewRoot, layout.FstabFile))
			if strings.Contains(string(fstab), " /hostpart ") || !strings.Contains(string(fstab), " /boot/loader ") {
				t.Errorf("fstab:\n%s", fstab)
			}
			if _, err := os.Stat(filepath.Join(w.paths.NewRoot, layout.SSHHostKeyGlob[:len(layout.SSHHostKeyGlob)-1]+"ed25519_key")); err != nil {
				t.Errorf("no SSH host key in the running system: %v", err)
			}
			if w.slot(layout.Current) != "" && w.slot(layout.Current) != "A" {
				t.Errorf("hostpart's %s changed to %q", layout.Current, w.slot(layout.Current))
			}
			if len(srv.checkins) != 1 || srv.checkins[0].Action != "diskless" || srv.checkins[0].Booted != digestOf(imgB) {
				t.Errorf("check-ins %+v, want one with action diskless, booted B", srv.checkins)
			}
			if t.Failed() {
				t.Logf("console:\n%s", con)
			}
		})
	}
}

// TestRunRecovery boots fake hosts whose local images all fail.
func TestRunRecovery(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmdline string
		slots   map[string][]byte
		setup   func(t *testing.T, w *world, srv *fakeImaged)
		booted  bool     // B booted from hn-root.img; false: the rescue shell
		aside   []string // files kept aside
		console []string
	}{
		{"garbage current and old: B recovered, garbage kept aside", "hn.server=SRV", map[string][]byte{layout.Current: garbage, layout.Old: garbage[1:]}, nil,
			true, []string{layout.CurrentBroken, layout.OldBroken}, []string{"no image could be booted", "recovering over the network", "action=recover", "recovered: the assigned image is hn-root.img",
				"identity: hostname web-07 (from imaged)", "netdown eth0 10.0.0.50/24 ours=true"}},
		{"server remembered on hostpart", "", map[string][]byte{layout.Current: garbage},
			func(t *testing.T, w *world, srv *fakeImaged) {
				os.MkdirAll(filepath.Join(w.paths.Hostpart, layout.StateDir), 0o755)
				os.WriteFile(filepath.Join(w.paths.Hostpart, layout.Server), []byte(srv.URL+"\n"), 0o644)
			},
			true, []string{layout.CurrentBroken}, []string{"because=\"remembered from the last check-in"}},
		{"an empty hostpart gets the assigned image", "hn.server=SRV", nil, nil,
			true, nil, []string{"hn-root.img is missing"}},
		{"kexec'd boot, A does not start: recovered although it mounts", "hn.server=SRV hn.kexeced", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.noInit["A"] = true },
			true, []string{layout.CurrentBroken}, []string{"has no /sbin/init", "identity: hostname web-07 (from imaged)", "netdown eth0 10.0.0.50/24 ours=true"}},
		{"server down: rescue with the reason", "hn.server=http://127.0.0.1:1", map[string][]byte{layout.Current: garbage}, nil,
			false, nil, []string{"cannot boot: no image could be booted", "no recovery over the network: imaged did not say what to run", "connection refused"}},
		{"no server known: rescue with the reason", "", map[string][]byte{layout.Current: garbage}, nil,
			false, nil, []string{"no recovery over the network: no hn.server= and no server remembered"}},
		{"hn.fetch=off: rescue", "hn.server=SRV hn.fetch=off", map[string][]byte{layout.Current: garbage}, nil,
			false, nil, []string{"no recovery over the network: hn.fetch=off"}},
		{"corrupt download: rescue, remembered as failed", "hn.server=SRV", map[string][]byte{layout.Current: garbage},
			func(t *testing.T, w *world, srv *fakeImaged) { srv.corrupt = true },
			false, nil, []string{"no recovery over the network: fetching the assigned image B 1", "is corrupt"}},
		{"the recovered image does not boot either: rescue, remembered as failed", "hn.server=SRV", map[string][]byte{layout.Current: garbage},
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.noInit["B"] = true },
			false, []string{layout.CurrentBroken}, []string{"the recovered image B 1", "does not boot either"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.slots)
			srv := newImaged(t)
			w.sys.http = &httpgetClient
			srv.assign(srv.publish(t, "B", imgB, nil, false))
			if tc.setup != nil {
				tc.setup(t, w, srv)
			}
			out := w.boot(strings.ReplaceAll(tc.cmdline, "SRV", srv.URL))
			con := w.console() + strings.Join(w.sys.calls, "\n")
			for _, c := range tc.console {
				if !strings.Contains(con, c) {
					t.Errorf("console lacks %q", c)
				}
			}
			for _, f := range tc.aside {
				if !w.exists(f) {
					t.Errorf("%s not kept aside", f)
				}
			}
			fm, _ := stage.LoadFailed(w.paths.Hostpart)
			if _, failed := fm[digestOf(imgB)]; failed != strings.Contains(tc.name, "remembered as failed") {
				t.Errorf("B in the failure memory: %v", failed)
			}
			for _, f := range []string{layout.Recover, layout.RecoverPart, layout.Journal} {
				if w.exists(f) {
					t.Errorf("%s left on hostpart", f)
				}
			}
			if !tc.booted {
				if out.Rescue == nil || w.sys.rescued == nil {
					t.Errorf("boot ended with %+v, want the rescue shell", out)
				}
				if !strings.Contains(fmt.Sprint(w.sys.rescued), "no recovery over the network") {
					t.Errorf("the rescue shell's reason %q does not say why there was no recovery", w.sys.rescued)
				}
				if t.Failed() {
					t.Logf("console:\n%s", con)
				}
				return
			}
			if out.Image != layout.Current || w.sys.switched != "B" || w.slot(layout.Current) != "B" {
				t.Fatalf("boot ended with %+v, switched to %q, hn-root.img %q; want B\n%s", out, w.sys.switched, w.slot(layout.Current), con)
			}
			if w.exists(layout.Old) || w.exists(layout.Trial) {
				t.Errorf("old image or trial left beside the recovered image")
			}
			if c := srv.checkins[len(srv.checkins)-1]; c.Action != "recover" || c.Booted != digestOf(imgB) {
				t.Errorf("last check-in: action %q booted %s; want recover, B", c.Action, c.Booted)
			}
			// The next boot boots B as any boot does.
			served := srv.served
			if out := w.boot(strings.ReplaceAll(tc.cmdline, "SRV", srv.URL)); w.sys.switched != "B" || out.Rescue != nil || srv.served != served {
				t.Errorf("the boot after the recovery: %+v, switched to %q, %d more bytes\n%s", out, w.sys.switched, srv.served-served, w.console())
			}
			if t.Failed() {
				t.Logf("console:\n%s", con)
			}
		})
	}
	// A recovered image that did not boot is not fetched again.
	w := newWorld(t, map[string][]byte{layout.Current: garbage})
	srv := newImaged(t)
	w.sys.http = &httpgetClient
	srv.assign(srv.publish(t, "B", imgB, nil, false))
	w.sys.noInit["B"] = true
	w.boot("hn.server=" + srv.URL)
	f, _ := stage.LoadFailed(w.paths.Hostpart)
	if _, ok := f[digestOf(imgB)]; !ok {
		t.Fatalf("B, recovered and not booting, is not in the failure memory")
	}
	served := srv.served
	out := w.boot("hn.server=" + srv.URL)
	if out.Rescue == nil || srv.served != served || !strings.Contains(out.Rescue.Error(), "already is the assigned image B 1") {
		t.Errorf("the boot after a failed recovery: %+v, %d more bytes served", out, srv.served-served)
	}
}
