package testvm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/layout"
)

// The assigned image at boot: a PXE host with a local disk and no agent
// in its images. imaged serve runs in the lab's namespace behind a
// counting proxy (the hosts reach the proxy at labHTTP, imaged listens
// on labBackend), so the tests see every blob byte the host gets, can
// corrupt them, and can kill imaged mid-download.

const (
	labBackend   = labServer + ":8081"
	fetchToken   = "fetch-admin-token-0123456789"
	fetchCmdline = labCmdline + " hn.tries=3"
)

// fetchLab is a lab with a fleet directory, imaged behind a proxy, and one
// PXE host (a disk holding PA).
type fetchLab struct {
	*lab
	t          *testing.T
	state      string
	px         *proxy
	imaged     *exec.Cmd
	done       chan error
	mac        string
	cmdline    string // the hosts' kernel command line (imaged serve --cmdline)
	disk       string
	dA, dB     string
	sizeB      int64
	servingGen int
	// noEntropy boots the host on QEMU's default CPU without an RNG
	// device (no RDRAND, an empty pool), as many real servers and VMs:
	// nothing on the boot path may wait for entropy.
	noEntropy bool
}

func newFetchLab(t *testing.T, mac, assigned string) *fetchLab {
	t.Helper()
	imgs := pxeImages(t)
	dA, dB := fileDigest(t, imgs["PA"]), fileDigest(t, imgs["PB"])
	yaml := fmt.Sprintf(`images:
  - {name: A, version: "1", digest: %s, path: %s}
  - {name: B, version: "2", digest: %s, path: %s}
hosts:
  - mac: %s
    hostname: pxe-fetch
    image: %s
`, dA, imgs["PA"], dB, imgs["PB"], mac, assigned)
	fl := newFleetLab(t, mac, yaml, fetchCmdline)
	fl.dA, fl.dB = dA, dB
	fi, err := os.Stat(imgs["PB"])
	if err != nil {
		t.Fatal(err)
	}
	fl.sizeB = fi.Size()
	fl.disk = pxeDisk(t, imgs["PA"])
	return fl
}

// newFleetLab is a lab whose imaged serves the fleet directory of yaml
// behind the counting proxy, with cmdline for its hosts; the caller
// makes the disk.
func newFleetLab(t *testing.T, mac, yaml, cmdline string) *fetchLab {
	t.Helper()
	fl := &fetchLab{lab: newLab(t, 1), t: t, state: t.TempDir(), mac: mac, cmdline: cmdline}
	dir := filepath.Join(fl.state, "fleet")
	os.Mkdir(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "fleet.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fl.state, "tokens"), []byte("e2e "+fetchToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fl.px = &proxy{backend: labBackend, served: map[string]int64{}, ranges: map[string][]string{},
		transport: &http.Transport{DialContext: fl.ns.DialContext, DisableKeepAlives: true}}
	ln, err := fl.ns.Listen(labHTTP)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: fl.px}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	fl.start()
	t.Cleanup(fl.stop)
	return fl
}

// start runs imaged serve (again, after a kill: same state and store).
func (fl *fetchLab) start() {
	fl.t.Helper()
	f := fixture(fl.t)
	args := []string{"serve", "--interface", "br0", "--http", labBackend, "--admin", labAdmin, "--http-url", "http://" + labHTTP,
		"--cache", filepath.Join(fl.state, "cache"), "--cmdline", fl.cmdline, "--log-level", "debug", "--answer-rs",
		"--dhcp-mode", "full", "--pool", labNet + ".100-" + labNet + ".150",
		"--state", filepath.Join(fl.state, "fleet"), "--observed", filepath.Join(fl.state, "fleet.db"),
		"--tokens", filepath.Join(fl.state, "tokens")}
	cmd := fl.ns.Command(context.Background(), f.Imaged, args...)
	cmd.Stdout, cmd.Stderr = fl.log, fl.log
	if err := cmd.Start(); err != nil {
		fl.t.Fatal(err)
	}
	fl.imaged, fl.done = cmd, make(chan error, 1)
	go func(done chan error) { done <- cmd.Wait() }(fl.done)
	fl.servingGen++
	deadline := time.Now().Add(60 * time.Second)
	for strings.Count(fl.log.String(), "msg=serving") < fl.servingGen {
		select {
		case err := <-fl.done:
			fl.t.Fatalf("imaged serve exited: %v\n%s", err, fl.log.String())
		default:
		}
		if time.Now().After(deadline) {
			fl.t.Fatalf("imaged serve not ready after 60 s\n%s", fl.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill is a crash of imaged: SIGKILL through ip netns exec's child.
func (fl *fetchLab) kill() {
	if fl.imaged == nil {
		return
	}
	// ip netns exec execs the program: the pid is imaged's.
	fl.imaged.Process.Signal(syscall.SIGKILL)
	<-fl.done
	fl.imaged = nil
}

func (fl *fetchLab) stop() {
	if fl.imaged == nil {
		return
	}
	fl.imaged.Process.Signal(syscall.SIGTERM)
	select {
	case <-fl.done:
	case <-time.After(40 * time.Second):
		fl.imaged.Process.Kill()
	}
	fl.imaged = nil
}

// boot PXE-boots the host until the image's init is done, and returns the
// console.
func (fl *fetchLab) boot(image string) string {
	fl.t.Helper()
	vm := fl.start1()
	con := expectBooted(fl.t, vm, image)
	if err := vm.Wait(60 * time.Second); err != nil {
		fl.t.Fatal(err)
	}
	vm.Kill()
	return con
}

func (fl *fetchLab) start1() *VM {
	return fl.lab.start(fl.t, pxeHost{tap: "tap0", mac: fl.mac, disk: fl.disk, noEntropy: fl.noEntropy})
}

// netUpWithin checks that every "network up" of the init's console took
// at most limit (DHCP must not wait for the kernel's random pool), and
// that there was one.
func netUpWithin(t *testing.T, con string, limit time.Duration) {
	t.Helper()
	ms := regexp.MustCompile(`network up .*took=(\S+)`).FindAllStringSubmatch(con, -1)
	if len(ms) == 0 {
		t.Errorf("the console has no \"network up\" line")
	}
	for _, m := range ms {
		d, err := time.ParseDuration(m[1])
		if err != nil || d > limit {
			t.Errorf("network up took %s, want at most %v (no wait for entropy): %s", m[1], limit, m[0])
		}
	}
}

func (fl *fetchLab) served() int64 {
	fl.px.mu.Lock()
	defer fl.px.mu.Unlock()
	return fl.px.served[fl.dB] + fl.px.served[fl.dB+layout.PackSuffix]
}

func (fl *fetchLab) status() fleet.HostStatus {
	fl.t.Helper()
	code, body := fl.labAPI(fl.t, "GET", "/api/status", fetchToken, "")
	var st fleet.Status
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || len(st.Hosts) != 1 {
		fl.t.Fatalf("GET /api/status: %d %s", code, body)
	}
	return st.Hosts[0]
}

// onDisk checks the hostpart files after a boot.
func (fl *fetchLab) onDisk(want map[string]string, absent ...string) {
	fl.t.Helper()
	err := WithHostpart(fl.disk, func(dir string) error {
		for name, d := range want {
			if got := fileDigest(fl.t, filepath.Join(dir, name)); got != d {
				fl.t.Errorf("%s is %s, want %s", name, got, d)
			}
		}
		for _, name := range absent {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				fl.t.Errorf("%s present on hostpart", name)
			}
		}
		return nil
	})
	if err != nil {
		fl.t.Fatal(err)
	}
}

// TestPXEFetchAssigned: the host runs A; `imaged fleet assign` gives it
// B; at the next PXE boot the init asks imaged what to run and builds B
// by delta in hn-root-new.img.part (the chunks of A on hostpart, the rest
// fetched with Range requests), verifies it, renames it and promotes it
// on trial in the same boot: B runs on trial, its file on hostpart is
// byte for byte the published one, A is old, and the check-in says how B
// came. No agent runs anywhere.
func TestPXEFetchAssigned(t *testing.T) {
	fl := newFetchLab(t, "52:54:00:77:00:30", "A@1")
	fl.noEntropy = true
	con := fl.boot("PA")
	netUpWithin(t, con, 10*time.Second)
	wantConsole(t, con, "already is the assigned image", "checked in")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := fl.ns.Command(ctx, fixture(t).Imaged, "fleet", "assign", "--server", "http://"+labAdmin,
		"--token-file", filepath.Join(fl.state, "tokens"), "pxe-fetch", "B@2").CombinedOutput()
	if err != nil {
		t.Fatalf("imaged fleet assign pxe-fetch B@2: %v\n%s", err, out)
	}
	start := time.Now()
	con = fl.boot("PB")
	t.Logf("assign B -> B running: one PXE boot, %v", time.Since(start).Round(time.Second))
	netUpWithin(t, con, 10*time.Second)
	wantConsole(t, con, "imaged assigns image=B 2", "fetching the assigned image", "image downloaded", "image built by delta", "action=promote", "HNTEST trial=")
	logLines(t, con, "image downloaded", "downloading ", "by delta", "rotation done")
	fl.px.mu.Lock()
	ranges := append(fl.px.ranges[fl.dB], fl.px.ranges[fl.dB+layout.PackSuffix]...)
	index, pack := fl.px.served[fl.dB+layout.ChunksSuffix], fl.px.served[fl.dB+layout.PackSuffix]
	fl.px.mu.Unlock()
	got := fl.served()
	t.Logf("B by delta: %d bytes of its %d fetched (%d of them zstd frames of its pack) in %d ranges, index %d bytes", got, fl.sizeB, pack, len(ranges), index)
	// A and B differ in a few files: far less than B travels, and it
	// travels compressed, as frames of B's pack.
	if got == 0 || got > fl.sizeB/4 || index == 0 || pack == 0 {
		t.Errorf("proxy served %d bytes of B (index %d, pack %d), want a delta from the pack: more than none, at most a quarter of its %d", got, index, pack, fl.sizeB)
	}
	for _, r := range ranges {
		if !strings.HasPrefix(r, "bytes=") || strings.HasSuffix(r, "-") {
			t.Errorf("blob request with Range %q, want bounded ranges only", r)
		}
	}
	line := fl.waitLog(t, 30*time.Second, `kind=checkin `, macRe(fl.mac), `booted=`+regexp.QuoteMeta(fl.dB))
	if !strings.Contains(line, "action=promote") {
		t.Errorf("check-in after the fetch: %s", line)
	}
	st := fl.status()
	if st.LastCheckin == nil || st.LastCheckin.Images.Old != fl.dA {
		t.Errorf("server's status of the host: %+v", st)
	} else if s := st.LastCheckin.Staging; s == nil || s.Mode != "delta" || s.Fetched < got || s.Local == 0 || s.LocalChunks == 0 {
		t.Errorf("check-in's staging = %+v, want a delta with its local and fetched bytes", s)
	}
	fl.onDisk(map[string]string{"hn-root.img": fl.dB, "hn-root-old.img": fl.dA}, "hn-root-new.img", "hn-root-new.img.part")
	err = WithHostpart(fl.disk, func(dir string) error {
		a, err := os.ReadFile(filepath.Join(dir, "hn-root.img"))
		if err != nil {
			return err
		}
		b, err := os.ReadFile(pxeImages(t)["PB"])
		if err != nil {
			return err
		}
		if !bytes.Equal(a, b) {
			t.Errorf("hn-root.img built by delta differs from the published B")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPXEFetchResumesAfterServerCrash: imaged is killed when a third of
// B has reached the host; the boot goes on with A and keeps the part
// file; imaged comes back, and the next boot resumes the download where
// it stopped (a Range request) and promotes B. In all the host received
// B's bytes about once.
func TestPXEFetchResumesAfterServerCrash(t *testing.T) {
	fl := newFetchLab(t, "52:54:00:77:00:31", "B@2")
	fl.px.mu.Lock()
	fl.px.noChunks = true // a whole download, resumed (deltas resume in internal/stage's tests)
	fl.px.rate = 4 << 20  // slow enough to be cut mid-way under TCG
	fl.px.cutDig, fl.px.cutAt = fl.dB, fl.sizeB/3
	fl.px.cut = fl.kill
	fl.px.mu.Unlock()
	con := fl.boot("PA")
	wantConsole(t, con, "fetching the assigned image", "kept in hn-root-new.img.part")
	logLines(t, con, "fetching the assigned image failed", "switching root")
	cut := fl.served()
	t.Logf("imaged killed after %d of %d bytes", cut, fl.sizeB)
	err := WithHostpart(fl.disk, func(dir string) error {
		fi, err := os.Stat(filepath.Join(dir, "hn-root-new.img.part"))
		if err != nil || fi.Size() == 0 || fi.Size() > cut {
			t.Errorf("after the crash: hn-root-new.img.part %v (%v), want the %d bytes received", fi, err, cut)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	fl.px.mu.Lock()
	fl.px.rate = 0
	fl.px.mu.Unlock()
	fl.start()
	con = fl.boot("PB")
	wantConsole(t, con, "resuming download", "image downloaded", "action=promote")
	logLines(t, con, "resuming download", "image downloaded", "rotation done")
	fl.px.mu.Lock()
	ranges := fl.px.ranges[fl.dB]
	fl.px.mu.Unlock()
	total := fl.served()
	t.Logf("B served in all: %d bytes for a %d-byte image, Range headers %q", total, fl.sizeB, ranges)
	if total < fl.sizeB || total > fl.sizeB+(1<<20) {
		t.Errorf("host received %d bytes of B in all, want about its %d", total, fl.sizeB)
	}
	if len(ranges) != 2 || !strings.HasPrefix(ranges[1], "bytes=") {
		t.Errorf("blob requests' Range headers = %q, want the second to resume", ranges)
	}
	fl.waitLog(t, 30*time.Second, `kind=checkin `, macRe(fl.mac), `booted=`+regexp.QuoteMeta(fl.dB))
	fl.onDisk(map[string]string{"hn-root.img": fl.dB, "hn-root-old.img": fl.dA}, "hn-root-new.img.part")
}

// TestPXEFetchCorruptBlob: what the host receives for B is not B (the
// proxy flips a byte): the download is discarded, B's digest is
// remembered as failed, A boots, and imaged shows the host failed on B;
// the next boot does not download B again.
func TestPXEFetchCorruptBlob(t *testing.T) {
	fl := newFetchLab(t, "52:54:00:77:00:32", "B@2")
	fl.px.mu.Lock()
	fl.px.corrupt = fl.dB
	fl.px.mu.Unlock()
	con := fl.boot("PA")
	wantConsole(t, con, "fetching the assigned image", "is corrupt", "remembered as failed", "checked in")
	logLines(t, con, "is corrupt", "switching root")
	fl.onDisk(map[string]string{"hn-root.img": fl.dA}, "hn-root-new.img", "hn-root-new.img.part", "hn-root-old.img")
	err := WithHostpart(fl.disk, func(dir string) error {
		b, err := os.ReadFile(filepath.Join(dir, ".hnboot", "failed-digests"))
		if err != nil || !strings.Contains(string(b), fl.dB) {
			t.Errorf(".hnboot/failed-digests = %q (%v), want B %s", b, err, fl.dB)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fl.waitLog(t, 30*time.Second, `kind=checkin `, macRe(fl.mac), `booted=`+regexp.QuoteMeta(fl.dA))
	if st := fl.status(); st.State != fleet.StateFailed {
		t.Errorf("server's state of the host = %q, want %q", st.State, fleet.StateFailed)
	}
	served := fl.served()
	con = fl.boot("PA")
	wantConsole(t, con, "remembered as failed on this host")
	logLines(t, con, "not fetching")
	if fl.served() != served {
		t.Errorf("the boot after the corrupt download fetched B again (%d more bytes)", fl.served()-served)
	}
}

// logLines logs the init's console lines that contain any of subs.
func logLines(t *testing.T, con string, subs ...string) {
	t.Helper()
	for _, l := range strings.Split(con, "\n") {
		for _, s := range subs {
			if strings.Contains(l, "hninit:") && strings.Contains(l, s) {
				t.Log(l)
				break
			}
		}
	}
}
