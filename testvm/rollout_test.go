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
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/simhost"
)

// agentBadConfig is the agent of an image that never confirms its trial:
// its health check fails, and the agent reports the boot unhealthy.
const agentBadConfig = `server: http://` + agentServerIP + `
interval: 2s
reboot: never
lldp_listen: 0s
health:
  commands:
    - name: app-ok
      command: [/bin/sh, -c, "exit 1"]
      timeout: 5s
  settle: 3s
  deadline: 20s
  interval: 1s
`

var (
	badOnce sync.Once
	badImg  string
	badErr  error
)

// agentBadImage builds agentBad once: agentB's tree with that agent.
func agentBadImage(t *testing.T, f *Fixture) string {
	t.Helper()
	badOnce.Do(func() {
		tree := filepath.Join(f.Dir, "tree-agentBad")
		os.RemoveAll(tree)
		if badErr = RootTree(tree, RootOptions{Name: "agentBad"}); badErr != nil {
			return
		}
		for _, a := range []string{"ip", "test", "sed", "head"} {
			os.Symlink("busybox", filepath.Join(tree, "bin", a))
		}
		os.MkdirAll(filepath.Join(tree, "etc", "hnboot"), 0o755)
		imaged, err := os.ReadFile(f.Imaged)
		if err != nil {
			badErr = err
			return
		}
		for p, c := range map[string]string{"sbin/init": agentInit, "sbin/imaged": string(imaged), "etc/hnboot/agent.yaml": agentBadConfig} {
			if badErr = os.WriteFile(filepath.Join(tree, p), []byte(c), 0o755); badErr != nil {
				return
			}
		}
		badImg = filepath.Join(f.Dir, "agentBad.img")
		badErr = f.Run(context.Background(), "rootfs", "--from", tree, "--out", badImg)
	})
	if badErr != nil {
		t.Fatalf("building agentBad: %v", badErr)
	}
	return badImg
}

func rolloutStatus(t *testing.T, base, name string) fleet.RolloutStatus {
	t.Helper()
	resp, err := http.Get(base + "/api/rollouts/" + name)
	if err != nil {
		return fleet.RolloutStatus{}
	}
	defer resp.Body.Close()
	var st fleet.RolloutStatus
	json.NewDecoder(resp.Body).Decode(&st)
	return st
}

// TestRolloutQEMU: one QEMU host running the agent is the canary of a
// real rollout (imaged serve, the agent's download, reboot, trial and
// confirmation); once it confirmed, the next wave (four simulated hosts
// speaking the same API) starts by itself and the rollout is done. Then
// a rollout of an image whose health checks fail: the canary boots it on
// trial and never confirms, the rollout halts after the canary, never
// starts its second wave, and reverts the canary, which boots the image
// it ran before with the bad one broken.
func TestRolloutQEMU(t *testing.T) {
	f, imgs := agentFixture(t)
	bad := agentBadImage(t, f)
	dA, dB, dBad := sha(t, imgs["agentA"]), sha(t, imgs["agentB"]), sha(t, bad)

	state := t.TempDir()
	fleetDir := filepath.Join(state, "fleet")
	os.Mkdir(fleetDir, 0o755)
	sims := []string{"52:54:00:77:10:01", "52:54:00:77:10:02", "52:54:00:77:10:03", "52:54:00:77:10:04"}
	var y strings.Builder
	fmt.Fprintf(&y, `images:
  - {name: A, version: "1", digest: %s, path: %s}
  - {name: B, version: "2", digest: %s, path: %s}
  - {name: Bad, version: "3", digest: %s, path: %s}
groups:
  - {name: web, image: A@1}
hosts:
  - {mac: %q, hostname: agent-host, group: web, labels: {role: canary}}
`, dA, imgs["agentA"], dB, imgs["agentB"], dBad, bad, testMAC)
	for i, m := range sims {
		fmt.Fprintf(&y, "  - {mac: %q, hostname: sim-%d, group: web}\n", m, i+1)
	}
	y.WriteString(`rollouts:
  - name: to-b
    image: B@2
    group: web
    waves:
      - hosts: [agent-host]
      - percent: 100
    deadline: 10m
  - name: to-bad
    image: Bad@3
    group: web
    waves:
      - hosts: [agent-host]
      - percent: 100
    revert_on_halt: true
    deadline: 10m
`)
	os.WriteFile(filepath.Join(fleetDir, "fleet.yaml"), []byte(y.String()), 0o644)
	const token = "e2e-rollout-token-0123456789"
	tokens := filepath.Join(state, "tokens")
	os.WriteFile(tokens, []byte("e2e "+token+"\n"), 0o600)

	srvAddr, adminAddr := freePort(t), freePort(t)
	srv := &serveProc{t: t, bin: f.Imaged, addr: srvAddr, log: new(bytes.Buffer), args: []string{"serve",
		"--interface", "lo", "--dhcp-mode", "off", "--tftp", "off", "--http", srvAddr, "--admin", adminAddr,
		"--http-url", "http://" + agentServerIP, "--state", fleetDir,
		"--observed", filepath.Join(state, "fleet.db"), "--tokens", tokens,
		"--open-reads", "--cache", filepath.Join(state, "cache")}}
	srv.start()
	defer srv.kill()
	base := "http://" + srvAddr // the boot listener, where hosts speak
	admin := "http://" + adminAddr

	px := &proxy{backend: srvAddr, served: map[string]int64{}, ranges: map[string][]string{}}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: px}
	go hs.Serve(pl)
	defer hs.Close()

	// The simulated hosts of the second wave.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var simHosts []*simhost.Host
	for _, m := range sims {
		h := simhost.New(m, base, dA, time.Second)
		simHosts = append(simHosts, h)
		go h.Run(ctx)
	}

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
	start := time.Now()
	vm := bootVM()
	defer func() { vm.Kill() }()
	if _, err := vm.Expect(`HNTEST booted image=agentA`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	waitState(t, "the server to see A on the canary", 90*time.Second, vm, func() bool {
		h := fleetStatus(t, admin)
		return h.Current.Digest == dA && h.State == fleet.StateOK
	})

	// Rollout to-b: the canary alone first.
	adminPost(t, admin, "/api/rollouts/to-b/start", token, nil)
	st := rolloutStatus(t, admin, "to-b")
	if st.State != "running" || st.Waves[0].Hosts != 1 || st.Waves[1].Hosts != 4 {
		t.Fatalf("to-b after start: %+v", st)
	}
	if err := vm.Wait(4 * time.Minute); err != nil { // the agent stages B and reboots
		t.Fatalf("waiting for the canary to reboot into B: %v", err)
	}
	for _, h := range simHosts {
		if cur, _ := h.Current(); cur != dA {
			t.Errorf("simulated host %s moved to %s while the canary had not confirmed", h.MAC, cur)
		}
	}
	vm = bootVM()
	if _, err := vm.Expect(`HNTEST booted image=agentB`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	waitState(t, "to-b's canary confirmed and the rollout done", 3*time.Minute, vm, func() bool {
		return rolloutStatus(t, admin, "to-b").State == "done"
	})
	st = rolloutStatus(t, admin, "to-b")
	t.Logf("to-b done after %v: %s", time.Since(start).Round(time.Second), st.Reason)
	if !st.Waves[1].Started.After(st.Waves[0].GateMet) && !st.Waves[1].Started.Equal(st.Waves[0].GateMet) {
		t.Errorf("wave 2 started %v, before the canary's gate %v", st.Waves[1].Started, st.Waves[0].GateMet)
	}
	for _, h := range simHosts {
		if cur, trial := h.Current(); cur != dB || trial {
			t.Errorf("simulated host %s runs %s (trial %v) after to-b", h.MAC, cur, trial)
		}
	}

	// Rollout to-bad: the canary boots Bad on trial, its health fails.
	adminPost(t, admin, "/api/rollouts/to-bad/start", token, nil)
	if err := vm.Wait(4 * time.Minute); err != nil {
		t.Fatalf("waiting for the canary to reboot into Bad: %v", err)
	}
	vm = bootVM()
	if _, err := vm.Expect(`HNTEST booted image=agentBad`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	waitState(t, "to-bad halted", 3*time.Minute, vm, func() bool { return rolloutStatus(t, admin, "to-bad").State == "halted" })
	st = rolloutStatus(t, admin, "to-bad")
	t.Logf("to-bad halted: %s", st.Reason)
	if !strings.Contains(st.Reason, "wave 1:") || !strings.Contains(st.Reason, "health checks failed") || !st.Waves[1].Started.IsZero() {
		t.Errorf("to-bad: %s (%s), wave 2 started %v; want halted in wave 1 by the failed health checks, wave 2 never started", st.State, st.Reason, st.Waves[1].Started)
	}
	for _, h := range simHosts {
		if cur, _ := h.Current(); cur != dB {
			t.Errorf("simulated host %s moved to %s by a rollout halted at its canary", h.MAC, cur)
		}
	}
	// The canary is reverted: its agent writes system-revert (the
	// pending revert) and the host boots B again, Bad broken. The agent of
	// Bad has reboot: never, so the test reboots it as an operator would.
	waitState(t, "the agent to take the revert", 2*time.Minute, vm, func() bool {
		for _, c := range px.checkins() {
			if p, ok := c["pending"].([]any); ok {
				for _, x := range p {
					if strings.Contains(fmt.Sprint(x), "revert") {
						return true
					}
				}
			}
		}
		return false
	})
	vm.Kill()
	vm = bootVM()
	if _, err := vm.Expect(`HNTEST booted image=agentB`, bootTimeout); err != nil {
		t.Fatal(err)
	}
	waitState(t, "the server to see B current and Bad broken", 2*time.Minute, vm, func() bool {
		h := fleetStatus(t, admin)
		return h.Current.Digest == dB && h.LastCheckin != nil && h.LastCheckin.Images.Broken == dBad
	})
	var audit []fleet.AuditEntry
	resp, err := http.Get(admin + "/api/audit?host=agent-host")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		json.Unmarshal(b, &audit)
	}
	var story []string
	for _, e := range audit {
		if strings.HasPrefix(e.Action, "rollout") || e.Action == "revert-applied" {
			story = append(story, e.Who+" "+e.Action+": "+e.Detail)
		}
	}
	t.Logf("the canary's story in the audit log:\n  %s", strings.Join(story, "\n  "))
	if len(story) < 6 {
		t.Errorf("audit log has %d rollout entries for the canary, want its transitions", len(story))
	}
	t.Logf("total %v", time.Since(start).Round(time.Second))
	vm.Kill()
}
