package testvm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/layout"
)

// The agent's end-to-end test: a host whose images run `imaged agent`
// from their /sbin/init, talking to a real `imaged serve` on the host's
// loopback through QEMU's restricted user network (the guest reaches
// 10.0.2.100:80, forwarded to a counting proxy in this test, which
// forwards to imaged serve; nothing else leaves the VM).

const agentServerIP = "10.0.2.100"

// agentInit is /sbin/init of the agent images.
const agentInit = `#!/bin/sh
export PATH=/bin:/sbin
[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/class ] || mount -t sysfs sysfs /sys
echo "HNTEST booted image=$(cat /etc/hn-image)"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
imaged agent --config /etc/hnboot/agent.yaml &
# Show imaged status once the boot is confirmed (at once on a confirmed image).
( while [ -e /hostpart/hn-root.trial ]; do sleep 1; done
  echo "HNTEST status begin"; imaged status; echo "HNTEST status end" ) &
while true; do sleep 3600; done
`

const agentConfig = `server: http://` + agentServerIP + `
interval: 2s
reboot: immediate
health:
  commands:
    - name: hostpart-mounted
      command: [/bin/grep, -q, " /hostpart ", /proc/mounts]
      timeout: 5s
  settle: 3s
  deadline: 90s
  interval: 1s
`

var (
	agentOnce   sync.Once
	agentImages map[string]string
	agentErr    error
)

// agentFixture builds the images A and B that run the agent, once.
func agentFixture(t *testing.T) (*Fixture, map[string]string) {
	t.Helper()
	f := fixture(t)
	agentOnce.Do(func() {
		agentImages = map[string]string{}
		imaged, err := os.ReadFile(f.Imaged)
		if err != nil {
			agentErr = err
			return
		}
		for _, name := range []string{"agentA", "agentB"} {
			tree := filepath.Join(f.Dir, "tree-"+name)
			os.RemoveAll(tree)
			if err := RootTree(tree, RootOptions{Name: name}); err != nil {
				agentErr = err
				return
			}
			for _, a := range []string{"ip", "test", "sed", "head"} {
				os.Symlink("busybox", filepath.Join(tree, "bin", a))
			}
			os.MkdirAll(filepath.Join(tree, "etc", "hnboot"), 0o755)
			for p, c := range map[string]struct {
				data []byte
				mode os.FileMode
			}{
				"sbin/init":             {[]byte(agentInit), 0o755},
				"sbin/imaged":           {imaged, 0o755},
				"etc/hnboot/agent.yaml": {[]byte(agentConfig), 0o644},
			} {
				if err := os.WriteFile(filepath.Join(tree, p), c.data, c.mode); err != nil {
					agentErr = err
					return
				}
			}
			img := filepath.Join(f.Dir, name+".img")
			if err := f.Run(context.Background(), "rootfs", "--from", tree, "--out", img); err != nil {
				agentErr = err
				return
			}
			agentImages[name] = img
		}
	})
	if agentErr != nil {
		t.Fatalf("building the agent images: %v", agentErr)
	}
	return f, agentImages
}

// serveProc is `imaged serve` on loopback, restartable on the same port.
type serveProc struct {
	t    *testing.T
	bin  string
	args []string
	addr string
	cmd  *exec.Cmd
	log  *bytes.Buffer
}

func (s *serveProc) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", s.addr); err == nil {
			c.Close()
			return
		}
	}
	s.t.Fatalf("imaged serve did not listen on %s:\n%s", s.addr, s.log)
}

// kill is a crash: SIGKILL, no graceful shutdown.
func (s *serveProc) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proxy sits between the guest and imaged serve: it counts the blob bytes
// it passes on, throttles them, can corrupt one image's blob or call cut
// halfway through one, and keeps every check-in body.
type proxy struct {
	backend string
	mu      sync.Mutex
	served  map[string]int64 // digest → bytes passed to the guest
	ranges  map[string][]string
	corrupt string // digest whose blob and chunk pack get one byte flipped per response
	cutAt   int64  // call cut once cutDigest's bytes reach this
	cutDig  string
	cut     func()
	rate    int64 // bytes per second for blobs
	// noChunks answers 404 for the chunk indexes (/blobs/D.chunks), so
	// hosts download images whole (the tests of resuming a download).
	noChunks bool
	checks   []map[string]any
	// transport reaches the backend; nil is http.DefaultTransport (the
	// PXE lab's proxy dials into its namespace).
	transport http.RoundTripper
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
	}
	if r.URL.Path == "/api/checkin" {
		var m map[string]any
		json.Unmarshal(body, &m)
		p.mu.Lock()
		p.checks = append(p.checks, m)
		p.mu.Unlock()
	}
	p.mu.Lock()
	noChunks := p.noChunks
	p.mu.Unlock()
	if noChunks && strings.HasPrefix(r.URL.Path, "/blobs/") && strings.HasSuffix(r.URL.Path, layout.ChunksSuffix) {
		http.NotFound(w, r)
		return
	}
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+p.backend+r.URL.RequestURI(), bytes.NewReader(body))
	req.Header = r.Header.Clone()
	rt := p.transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	digest, isBlob := strings.CutPrefix(r.URL.Path, "/blobs/")
	if !isBlob {
		io.Copy(w, resp.Body)
		return
	}
	p.mu.Lock()
	p.ranges[digest] = append(p.ranges[digest], r.Header.Get("Range"))
	p.mu.Unlock()
	buf := make([]byte, 64<<10)
	first := true
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			p.mu.Lock()
			if first && p.corrupt != "" && (digest == p.corrupt || digest == p.corrupt+layout.PackSuffix) {
				chunk[0] ^= 0xff
			}
			first = false
			p.served[digest] += int64(n)
			doCut := p.cut != nil && digest == p.cutDig && p.served[digest] >= p.cutAt
			cut := p.cut
			if doCut {
				p.cut = nil
			}
			rate := p.rate
			p.mu.Unlock()
			if _, err := w.Write(chunk); err != nil {
				return
			}
			if doCut {
				cut() // the server dies: what it sent so far is all the guest gets
				panic(http.ErrAbortHandler)
			}
			if rate > 0 {
				time.Sleep(time.Duration(int64(n) * int64(time.Second) / rate))
			}
		}
		if rerr != nil {
			if rerr != io.EOF {
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

func (p *proxy) checkins() []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]map[string]any(nil), p.checks...)
}

func fleetStatus(t *testing.T, base string) fleet.HostStatus {
	t.Helper()
	resp, err := http.Get(base + "/api/status")
	if err != nil {
		return fleet.HostStatus{}
	}
	defer resp.Body.Close()
	var st fleet.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || len(st.Hosts) == 0 {
		return fleet.HostStatus{}
	}
	return st.Hosts[0]
}

func adminPost(t *testing.T, base, path, token string, body any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s: %s", path, resp.Status, out)
	}
	t.Logf("POST %s: %s", path, bytes.TrimSpace(out))
}

func waitState(t *testing.T, what string, timeout time.Duration, vm *VM, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := ""
			if vm != nil {
				msg = tail(vm.Console(), 40)
			}
			t.Fatalf("timed out after %v waiting for %s\n%s", timeout, what, msg)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func sha(t *testing.T, path string) string {
	d := digest(t, path)
	return fmt.Sprintf("sha256:%x", d[:])
}

// TestAgentUpdateConfirmRevert: the host runs A; the server assigns a
// corrupted C (refused and reported), then B (the server is killed halfway
// through the download and restarted: the agent resumes), the host reboots
// into B on trial, the agent confirms it after its health checks, the
// server shows B good; a revert from the server's API brings the host back
// to A, with B broken and remembered as failed.
func TestAgentUpdateConfirmRevert(t *testing.T) {
	f, imgs := agentFixture(t)
	dA, dB, dC := sha(t, imgs["agentA"]), sha(t, imgs["agentB"]), sha(t, images["C"])
	sizeB, _ := os.Stat(imgs["agentB"])

	state := t.TempDir()
	os.WriteFile(filepath.Join(state, "fleet.yaml"), []byte(fmt.Sprintf(`images:
  - {name: A, version: "1", digest: %s, path: %s}
  - {name: B, version: "2", digest: %s, path: %s}
  - {name: C, version: "3", digest: %s, path: %s}
hosts:
  - mac: %s
    hostname: agent-host
    image: A@1
`, dA, imgs["agentA"], dB, imgs["agentB"], dC, images["C"], testMAC)), 0o644)
	const token = "e2e-admin-token-0123456789"
	os.WriteFile(filepath.Join(state, "tokens"), []byte("e2e "+token+"\n"), 0o600)
	os.Mkdir(filepath.Join(state, "fleet"), 0o755)
	os.Rename(filepath.Join(state, "fleet.yaml"), filepath.Join(state, "fleet", "fleet.yaml"))

	srvAddr, adminAddr := freePort(t), freePort(t)
	srv := &serveProc{t: t, bin: f.Imaged, addr: srvAddr, log: new(bytes.Buffer), args: []string{"serve",
		"--interface", "lo", "--dhcp-mode", "off", "--tftp", "off", "--http", srvAddr, "--admin", adminAddr,
		"--http-url", "http://" + agentServerIP, "--state", filepath.Join(state, "fleet"),
		"--observed", filepath.Join(state, "fleet.db"), "--tokens", filepath.Join(state, "tokens"),
		"--open-reads", "--cache", filepath.Join(state, "cache")}}
	srv.start()
	defer srv.kill()
	base := "http://" + adminAddr // the admin API; the guest reaches srvAddr through px

	// Whole downloads (no chunk indexes): this test resumes one cut
	// halfway; delta updates are TestPXEFetchAssigned's.
	px := &proxy{backend: srvAddr, served: map[string]int64{}, ranges: map[string][]string{}, corrupt: dC, rate: 4 << 20, noChunks: true}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: px}
	go hs.Serve(pl)
	defer hs.Close()

	diskPath := filepath.Join(t.TempDir(), "disk.img")
	if err := f.Run(context.Background(), "disk", "--out", diskPath, "--size", "1G", "--root", imgs["agentA"]); err != nil {
		t.Fatal(err)
	}
	bootVM := func() *VM {
		vm, err := Start(context.Background(), Options{
			Kernel: f.Kernel, Initrd: f.Initramfs, Disk: diskPath,
			Append: "hn.hostpart=LABEL=hostpart",
			Extra: []string{
				"-netdev", fmt.Sprintf("user,id=n1,restrict=on,guestfwd=tcp:%s:80-cmd:busybox nc %s", agentServerIP, strings.Replace(pl.Addr().String(), ":", " ", 1)),
				"-device", "virtio-net-pci,netdev=n1,mac=" + testMAC,
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return vm
	}

	// Boot 1: A, confirmed.
	start := time.Now()
	vm := bootVM()
	defer func() { vm.Kill() }()
	if _, err := vm.Expect(`HNTEST booted image=agentA`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("boot 1 (A) in %v", vm.Since().Round(time.Second))
	waitState(t, "the server to see A current", 90*time.Second, vm, func() bool {
		h := fleetStatus(t, base)
		return h.Current.Digest == dA && h.State == fleet.StateOK
	})

	// C is corrupted on the way: refused and reported.
	adminPost(t, base, "/api/assign", token, map[string]string{"host": "agent-host", "image": "C@3"})
	waitState(t, "the agent to report C's download as corrupt", 90*time.Second, vm, func() bool {
		for _, c := range px.checkins() {
			if s, ok := c["staging"].(map[string]any); ok && s["digest"] == dC && s["state"] == "failed" && strings.Contains(fmt.Sprint(s["error"]), "corrupt") {
				t.Logf("agent reported: %v", s["error"])
				return true
			}
		}
		return false
	})

	// B: the server is killed halfway through the download, then restarted.
	px.mu.Lock()
	px.cutDig, px.cutAt = dB, sizeB.Size()/2
	px.cut = func() { srv.kill(); t.Logf("imaged serve killed after %d bytes of B", sizeB.Size()/2) }
	px.mu.Unlock()
	adminPost(t, base, "/api/assign", token, map[string]string{"host": "agent-host", "image": "B@2"})
	waitState(t, "the cut", 120*time.Second, vm, func() bool { px.mu.Lock(); defer px.mu.Unlock(); return px.cut == nil })
	time.Sleep(3 * time.Second) // the agent's next round finds no server
	srv.start()
	t.Log("imaged serve restarted")

	// The agent resumes, stages B, reboots (policy immediate): QEMU exits.
	if err := vm.Wait(3 * time.Minute); err != nil {
		t.Fatalf("waiting for the reboot into B: %v", err)
	}
	px.mu.Lock()
	servedB, rangesB := px.served[dB], px.ranges[dB]
	px.mu.Unlock()
	t.Logf("B: %d bytes served for a %d-byte image, requests with Range %q", servedB, sizeB.Size(), rangesB)
	if len(rangesB) < 2 || !strings.HasPrefix(rangesB[len(rangesB)-1], "bytes=") || rangesB[len(rangesB)-1] == "bytes=0-" {
		t.Errorf("B's download was not resumed with a Range request: %q", rangesB)
	}
	if servedB > sizeB.Size()+256<<10 {
		t.Errorf("B: %d bytes served for a %d-byte image: the resumed download fetched again what it had", servedB, sizeB.Size())
	}

	// Boot 2: B on trial; the agent confirms it after its health checks.
	vm = bootVM()
	if _, err := vm.Expect(`HNTEST booted image=agentB`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("boot 2 (B) in %v", vm.Since().Round(time.Second))
	waitState(t, "the server to show B good", 120*time.Second, vm, func() bool {
		h := fleetStatus(t, base)
		return h.Current.Digest == dB && h.State == fleet.StateOK && h.LastCheckin != nil && !h.LastCheckin.Trial
	})
	m, err := vm.Expect(`(?s)HNTEST status begin\n(.*?)HNTEST status end`, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("imaged status on the host running B:\n%s", m[1])
	for _, want := range []string{"current  hn-root.img", "B 2", "old      hn-root-old.img", "A", "trial:    none"} {
		if !strings.Contains(m[1], want) {
			t.Errorf("imaged status lacks %q", want)
		}
	}

	// Revert from the server's API: back to A, B broken.
	adminPost(t, base, "/api/revert", token, map[string]string{"host": "agent-host"})
	if err := vm.Wait(2 * time.Minute); err != nil {
		t.Fatalf("waiting for the revert reboot: %v", err)
	}
	vm = bootVM()
	if _, err := vm.Expect(`HNTEST booted image=agentA`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("boot 3 (A again) in %v", vm.Since().Round(time.Second))
	waitState(t, "the server to show A current and B broken", 120*time.Second, vm, func() bool {
		h := fleetStatus(t, base)
		return h.Current.Digest == dA && h.LastCheckin != nil && h.LastCheckin.Images.Broken == dB && h.RevertPending == nil
	})
	h := fleetStatus(t, base)
	if len(h.LastCheckin.FailedDigests) != 1 || h.LastCheckin.FailedDigests[0] != dB {
		t.Errorf("after the revert the host reports failed digests %v, want [%s]", h.LastCheckin.FailedDigests, dB)
	}
	t.Logf("server: %s current %s, state %s, broken %s; total %v", h.Hostname, h.Current.Ref, h.State, h.LastCheckin.Images.Broken[:19], time.Since(start).Round(time.Second))
	vm.Kill()
}
