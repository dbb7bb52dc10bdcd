package testvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hnboot/hnboot/fleet"
)

// The fleet demo (make demo, TestFleetDemo): imaged serve in a network
// namespace of its own, two QEMU hosts that PXE-boot from it and run the
// agent, a rollout of an update to both (the canary first), then the big
// red button (imaged fleet revert of their group) and both hosts back on
// the old image. Everything it starts lives in the namespace or under
// FleetDemoOptions.Dir, and is gone when RunFleetDemo returns.

// FleetDemoOptions shape one run.
type FleetDemoOptions struct {
	Fixture *Fixture  // the built init, mkimage, imaged, kernel and initramfs (Build)
	Dir     string    // work directory: images, disks, fleet state, console logs
	Out     io.Writer // the story, step by step
	// Shots, if set, is where the dashboard's screenshots go, one per step
	// (see fleetDemoShot); "" takes none.
	Shots string
}

// FleetDemoStep is one step of the story and when it ended.
type FleetDemoStep struct {
	Name    string
	Elapsed time.Duration // since the start of the run
	Shot    string        // the dashboard's screenshot after it, if any
}

// FleetDemoResult is what the run saw at its end.
type FleetDemoResult struct {
	Steps []FleetDemoStep
	// Final is each host's image (name@version) in the server's status at
	// the end, by hostname; Old and New the two images.
	Final    map[string]string
	Old, New string
	RevertID map[string]string // hostname: the audit log's revert-applied entry for it
	Boots    map[string]int    // hostname: QEMU boots
}

const (
	demoNet    = "10.77.0"
	demoServer = demoNet + ".1"
	demoHTTP   = demoServer + ":8080" // the boot HTTP: iPXE, kernels, blobs, check-ins
	// demoAdmin is the admin API and the dashboard: the namespace's
	// loopback, which the boot network does not reach; forwarded to this
	// machine's loopback for the operator.
	demoAdmin = "127.0.0.1:8081"
	demoGroup = "web"
	demoToken = "demo-admin-token-0123456789abcdef"
)

// demoHosts are the fleet: the canary first.
var demoHosts = []struct{ name, mac string }{
	{"web-1", "52:54:00:4e:00:01"},
	{"web-2", "52:54:00:4e:00:02"},
}

// demoInit is /sbin/init of the demo's images: the network from the MAC
// (web-1 gets .61, web-2 .62: outside the DHCP pool), then the agent,
// which confirms a trial boot once its health check passes, stages what
// the server assigns, takes reverts and reboots at once.
const demoInit = `#!/bin/sh
export PATH=/bin:/sbin
[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/class ] || mount -t sysfs sysfs /sys
echo "HNTEST booted image=$(cat /etc/hn-image)"
mac=$(cat /sys/class/net/eth0/address)
ip link set lo up
ip link set eth0 up
ip addr add ` + demoNet + `.$((60 + 0x${mac##*:}))/24 dev eth0
exec imaged agent --config /etc/hnboot/agent.yaml
`

const demoAgent = `server: http://` + demoHTTP + `
interval: 2s
reboot: immediate
lldp_listen: 0s
health:
  commands:
    - name: hostpart-mounted
      command: [/bin/grep, -q, " /hostpart ", /proc/mounts]
      timeout: 5s
  settle: 2s
  deadline: 60s
  interval: 1s
`

// demoImage builds web@VERSION: the busybox test root with the agent, and
// the test kernel and initramfs in /boot for PXE, as real images have.
func demoImage(ctx context.Context, f *Fixture, dir, version string) (string, error) {
	tree := filepath.Join(dir, "tree-"+version)
	if err := RootTree(tree, RootOptions{Name: demoGroup + "@" + version}); err != nil {
		return "", err
	}
	defer os.RemoveAll(tree)
	for _, a := range []string{"ip", "test", "sed", "head"} {
		os.Symlink("busybox", filepath.Join(tree, "bin", a))
	}
	for _, d := range []string{"etc/hnboot", "boot"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return "", err
		}
	}
	for dst, src := range map[string]string{"sbin/imaged": f.Imaged, "boot/vmlinuz": f.Kernel, "boot/initramfs": f.Initramfs} {
		b, err := os.ReadFile(src)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(tree, dst), b, 0o755); err != nil {
			return "", err
		}
	}
	for p, body := range map[string]string{"sbin/init": demoInit, "etc/hnboot/agent.yaml": demoAgent} {
		if err := os.WriteFile(filepath.Join(tree, p), []byte(body), 0o755); err != nil {
			return "", err
		}
	}
	img := filepath.Join(dir, demoGroup+"-"+version+".img")
	return img, f.Run(ctx, "rootfs", "--from", tree, "--out", img, "--name", demoGroup, "--version", version)
}

func sha256File(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// fleetDemo is one run's state.
type fleetDemo struct {
	o      FleetDemoOptions
	start  time.Time
	ns     *NetNS
	api    string // the admin API from this side of the namespace: http://127.0.0.1:PORT
	tokens string
	log    *demoLog
	web    *browser // nil: no screenshots
	res    FleetDemoResult
	mu     sync.Mutex // res.Boots, say
}

// demoLog keeps imaged serve's output for the error report.
type demoLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *demoLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *demoLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (d *fleetDemo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.o.Out, "  [%5.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func (d *fleetDemo) step(name string) {
	d.mu.Lock()
	fmt.Fprintf(d.o.Out, "\n==> [%5.1fs] %s\n", time.Since(d.start).Seconds(), name)
	d.mu.Unlock()
}

// done ends a step: the dashboard's screenshot, the elapsed time.
func (d *fleetDemo) done(ctx context.Context, name, page string) {
	s := FleetDemoStep{Name: name, Elapsed: time.Since(d.start)}
	if d.web != nil && d.o.Shots != "" && page != "" {
		p := filepath.Join(d.o.Shots, fmt.Sprintf("%02d-%s.png", len(d.res.Steps)+1, name))
		if err := d.web.shot(ctx, page, p); err != nil {
			d.say("%v", err)
		} else {
			s.Shot = p
			d.say("dashboard %s: screenshot %s", page, p)
		}
	}
	d.res.Steps = append(d.res.Steps, s)
}

// RunFleetDemo runs the demo; it returns when the hosts are back on the
// old image, or on the first failure, or when ctx ends (Ctrl-C), having
// stopped the VMs and the server and removed the namespace.
func RunFleetDemo(ctx context.Context, o FleetDemoOptions) (res *FleetDemoResult, err error) {
	d := &fleetDemo{o: o, start: time.Now(), log: &demoLog{}}
	d.res.Final, d.res.RevertID, d.res.Boots = map[string]string{}, map[string]string{}, map[string]int{}
	f := o.Fixture
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n--- imaged serve (last lines)\n%s", err, tail(d.log.String(), 30))
		}
	}()

	d.step("building the images web@1 (running) and web@2 (the update): busybox roots with imaged agent, the kernel and initramfs in /boot")
	imgs := map[string]string{}
	digests := map[string]string{}
	for _, v := range []string{"1", "2"} {
		p, err := demoImage(ctx, f, o.Dir, v)
		if err != nil {
			return nil, err
		}
		if digests[v], err = sha256File(p); err != nil {
			return nil, err
		}
		imgs[v] = p
		d.say("web@%s: %s %s", v, p, digests[v][:19])
	}
	d.res.Old, d.res.New = demoGroup+"@1", demoGroup+"@2"
	d.done(ctx, "images", "")

	d.step("the fleet: group web on web@1, hosts web-1 (the canary) and web-2, a rollout \"update\" to web@2 in two waves")
	state := filepath.Join(o.Dir, "fleet")
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, err
	}
	var y strings.Builder
	fmt.Fprintf(&y, "images:\n  - {name: web, version: \"1\", digest: %s, path: %s}\n  - {name: web, version: \"2\", digest: %s, path: %s}\n",
		digests["1"], imgs["1"], digests["2"], imgs["2"])
	fmt.Fprintf(&y, "groups:\n  - {name: %s, image: web@1}\nhosts:\n", demoGroup)
	for _, h := range demoHosts {
		fmt.Fprintf(&y, "  - {mac: %q, hostname: %s, group: %s}\n", h.mac, h.name, demoGroup)
	}
	fmt.Fprintf(&y, "rollouts:\n  - name: update\n    image: web@2\n    group: %s\n    waves:\n      - hosts: [%s]\n      - percent: 100\n    revert_on_halt: true\n    deadline: 15m\n",
		demoGroup, demoHosts[0].name)
	if err := os.WriteFile(filepath.Join(state, "fleet.yaml"), []byte(y.String()), 0o644); err != nil {
		return nil, err
	}
	d.tokens = filepath.Join(o.Dir, "tokens")
	if err := os.WriteFile(d.tokens, []byte("demo "+demoToken+"\n"), 0o600); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Out, "%s", indent(y.String(), "    | "))

	d.step("imaged serve in a network namespace: a bridge with two tap devices, DHCP (full), TFTP and HTTP on " + demoHTTP + ", the admin API and dashboard on the namespace's " + demoAdmin)
	if d.ns, err = NewNetNS("hndemo"); err != nil {
		return nil, err
	}
	defer func() {
		if cerr := d.ns.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("remove namespace %s: %w", d.ns.Name, cerr)
		}
	}()
	if err := d.ns.Bridge("br0", demoServer+"/24"); err != nil {
		return nil, err
	}
	for i := range demoHosts {
		if err := d.ns.Tap(fmt.Sprintf("tap%d", i), "br0"); err != nil {
			return nil, err
		}
	}
	stop, err := d.serve(ctx, state)
	if err != nil {
		return nil, err
	}
	defer stop()
	ln, err := d.ns.Forward("127.0.0.1:0", demoAdmin)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	d.api = "http://" + ln.Addr().String()
	d.say("namespace %s; from this machine the admin API and dashboard are at %s (forwarded into the namespace)", d.ns.Name, d.api)
	d.say("dashboard: %s/ui/   (token file %s)", d.api, d.tokens)
	// The browser also presses the big red button, so it starts
	// with or without screenshots.
	if d.web, err = d.dashboard(ctx); err != nil {
		return nil, err
	}
	if d.web != nil {
		defer d.web.close()
	}
	d.done(ctx, "serve", "/ui/")

	d.step("power on: both hosts PXE-boot web@1 from their disks and run the agent")
	hctx, hcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { hcancel(); wg.Wait() }()
	for i, h := range demoHosts {
		disk := filepath.Join(o.Dir, h.name+".disk")
		if err := f.Run(ctx, "disk", "--out", disk, "--size", "1G", "--root", imgs["1"]); err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() { defer wg.Done(); d.power(hctx, h.name, h.mac, fmt.Sprintf("tap%d", i), disk) }()
	}
	if err := d.waitHosts(ctx, "both hosts on web@1", 6*time.Minute, func(h fleet.HostStatus) bool {
		return h.Current.Digest == digests["1"] && h.State == fleet.StateOK
	}); err != nil {
		return nil, err
	}
	if err := d.cli(ctx, "fleet", "status"); err != nil {
		return nil, err
	}
	d.done(ctx, "booted", "/ui/hosts")

	d.step("the update: imaged fleet rollout start update (web-1 first; web-2 once web-1 confirmed web@2)")
	if err := d.cli(ctx, "fleet", "rollout", "start", "update"); err != nil {
		return nil, err
	}
	last := ""
	if err := d.wait(ctx, "the rollout done", 12*time.Minute, func() (bool, error) {
		var st fleet.RolloutStatus
		if err := d.get(ctx, "/api/rollouts/update", &st); err != nil {
			return false, err
		}
		now := fmt.Sprintf("%s wave %d", st.State, st.Wave)
		if now != last {
			d.say("rollout update: %s %s", now, st.Reason)
			last = now
		}
		switch st.State {
		case "done":
			return true, nil
		case "halted", "aborted":
			return false, fmt.Errorf("rollout update %s: %s", st.State, st.Reason)
		}
		return false, nil
	}); err != nil {
		return nil, err
	}
	if err := d.waitHosts(ctx, "both hosts confirmed on web@2", 3*time.Minute, func(h fleet.HostStatus) bool {
		return h.Current.Digest == digests["2"] && h.State == fleet.StateOK
	}); err != nil {
		return nil, err
	}
	if err := d.cli(ctx, "fleet", "rollout", "status", "update"); err != nil {
		return nil, err
	}
	d.done(ctx, "rolled-out", "/ui/rollouts")

	groupPage := "/ui/hosts?" + url.Values{"group": {demoGroup}}.Encode()
	d.step("the big red button: pressed on the dashboard (" + groupPage + ": type " + demoGroup + " into #confirm-group, click #revert-group; the whole fleet back to what it ran before)")
	reverted, err := d.pressRevert(ctx, groupPage)
	if err != nil {
		return nil, err
	}
	d.done(ctx, "revert-pressed", reverted)
	if err := d.waitHosts(ctx, "both hosts back on web@1", 6*time.Minute, func(h fleet.HostStatus) bool {
		return h.Current.Digest == digests["1"] && h.State == fleet.StateOK && h.RevertPending == nil
	}); err != nil {
		return nil, err
	}
	if err := d.cli(ctx, "fleet", "status"); err != nil {
		return nil, err
	}
	var st fleet.Status
	if err := d.get(ctx, "/api/status", &st); err != nil {
		return nil, err
	}
	for _, h := range st.Hosts {
		d.res.Final[h.Hostname] = h.Current.Ref
	}
	// Which hosts applied the revert, in the audit log.
	var audit []fleet.AuditEntry
	if err := d.get(ctx, "/api/audit", &audit); err != nil {
		return nil, err
	}
	for _, e := range audit {
		if e.Action == "revert-applied" && e.Host != "" {
			d.res.RevertID[e.Host] = e.Detail
			d.say("audit: %s %s: %s", e.Who, e.Action, e.Detail)
		}
	}
	d.done(ctx, "reverted", "/ui/hosts")
	d.step(fmt.Sprintf("done in %v: web-1 and web-2 run web@1 again, web@2 kept on their disks as hn-root-broken.img", time.Since(d.start).Round(time.Second)))
	hcancel()
	wg.Wait()
	d.mu.Lock()
	res = &d.res
	d.mu.Unlock()
	return res, nil
}

// pressRevert presses the group's big red button in the browser and
// checks that the reverted page lists every host with the revert
// pending (or already applied); it returns that page for the screenshot.
// No CLI fallback: a demo that says it pressed the button on the
// dashboard fails when it could not.
func (d *fleetDemo) pressRevert(ctx context.Context, groupPage string) (string, error) {
	if d.web == nil {
		return "", fmt.Errorf("the big red button: this imaged has no dashboard (/ui/), nothing to press")
	}
	page, applied, rows, err := d.web.pressRevert(ctx, groupPage, "confirm-group", "revert-group", demoGroup)
	if err != nil {
		return "", fmt.Errorf("the big red button on the dashboard: %w", err)
	}
	d.say("dashboard %s: %s", page, applied)
	for _, r := range rows {
		d.say("dashboard: revert of %s", r)
	}
	if len(rows) != len(demoHosts) {
		return "", fmt.Errorf("the big red button on the dashboard: %s lists %d hosts (%q), want %d", page, len(rows), rows, len(demoHosts))
	}
	for _, r := range rows {
		if !strings.HasSuffix(r, " pending") && !strings.HasSuffix(r, " applied") {
			return "", fmt.Errorf("the big red button on the dashboard: %s shows %q, want the revert pending", page, r)
		}
	}
	return page, nil
}

// dashboard opens the browser on the dashboard and logs in; an imaged
// without one (no /ui/) gives nil: the story goes on without screenshots
// until the big red button, which needs the dashboard.
func (d *fleetDemo) dashboard(ctx context.Context) (*browser, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", d.api+"/ui/login", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		d.say("this imaged has no dashboard (GET /ui/login: 404): no screenshots")
		return nil, nil
	}
	return newBrowser(ctx, d.api, demoToken, filepath.Join(d.o.Dir, "chromium"))
}

// serve starts imaged serve in the namespace; stop ends it with SIGTERM.
func (d *fleetDemo) serve(ctx context.Context, state string) (stop func(), err error) {
	cache := filepath.Join(d.o.Dir, "cache")
	cmd := d.ns.Command(context.WithoutCancel(ctx), d.o.Fixture.Imaged, "serve", "--interface", "br0", "--http", demoHTTP, "--admin", demoAdmin,
		"--dhcp-mode", "full", "--pool", demoNet+".100-"+demoNet+".150", "--answer-rs",
		"--cmdline", "console=ttyS0 panic=-1 no_timer_check hn.hostpart=LABEL=hostpart hn.checkin=60s",
		"--state", state, "--observed", filepath.Join(d.o.Dir, "fleet.db"), "--tokens", d.tokens,
		"--cache", cache, "--images", filepath.Join(d.o.Dir, "images"),
		"--service-logs", filepath.Join(d.o.Dir, "service-logs"))
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(d.log.String(), "msg=serving"); {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("imaged serve exited: %v", err)
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("imaged serve not serving after 60 s")
		}
	}
	return stop, nil
}

// power keeps one host running as a machine's power supply would: when
// QEMU exits (the agent rebooted it: QEMU runs with -no-reboot) it
// starts it again, until ctx ends.
func (d *fleetDemo) power(ctx context.Context, name, mac, tap, disk string) {
	logf, err := os.Create(filepath.Join(d.o.Dir, name+".console"))
	if err != nil {
		d.say("%s: %v", name, err)
		return
	}
	defer logf.Close()
	for ctx.Err() == nil {
		d.mu.Lock()
		d.res.Boots[name]++
		n := d.res.Boots[name]
		d.mu.Unlock()
		d.say("%s: power on (boot %d): PXE", name, n)
		vm, err := Start(ctx, Options{
			Disk: disk, Netns: d.ns.Name, Memory: 1024,
			Console: demoConsole{d: d, host: name}, Log: logf,
			Extra: []string{
				"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
				"-device", "e1000,netdev=n0,mac=" + mac + ",bootindex=0",
			},
		})
		if err != nil {
			d.say("%s: %v", name, err)
			return
		}
		select {
		case <-vm.Done():
			d.say("%s: rebooting (QEMU exited after %v)", name, vm.Since().Round(time.Second))
		case <-ctx.Done():
			vm.Kill()
			return
		}
		vm.Kill()
	}
}

// demoConsole shows what the story needs from a host's console: the
// image it booted and the init's promote/revert decisions.
type demoConsole struct {
	d    *fleetDemo
	host string
}

func (c demoConsole) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		switch {
		case strings.Contains(l, "HNTEST booted"):
			c.d.say("%s: console: %s", c.host, strings.TrimSpace(l[strings.Index(l, "HNTEST booted")+len("HNTEST "):]))
		case strings.Contains(l, "hninit:") && (strings.Contains(l, "action=promote") || strings.Contains(l, "action=revert")):
			c.d.say("%s: console: %s", c.host, strings.TrimSpace(l[strings.Index(l, "hninit:"):]))
		}
	}
	return len(p), nil
}

// cli runs imaged (the admin client) as an operator would and shows it.
func (d *fleetDemo) cli(ctx context.Context, args ...string) error {
	args = append(append([]string{}, args...), "--server", d.api, "--token-file", d.tokens)
	fmt.Fprintf(d.o.Out, "    $ imaged %s\n", strings.Join(args[:len(args)-4], " "))
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, d.o.Fixture.Imaged, args...).CombinedOutput()
	fmt.Fprint(d.o.Out, indent(string(out), "    "))
	if err != nil {
		return fmt.Errorf("imaged %s: %v", strings.Join(args, " "), err)
	}
	return nil
}

func (d *fleetDemo) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", d.api+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+demoToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// wait polls cond every second until it holds, fails, or timeout.
func (d *fleetDemo) wait(ctx context.Context, what string, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			d.say("%s", what)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: not after %v", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// waitHosts waits until every demo host's status satisfies ok, showing
// each host's state as it changes.
func (d *fleetDemo) waitHosts(ctx context.Context, what string, timeout time.Duration, ok func(fleet.HostStatus) bool) error {
	seen := map[string]string{}
	return d.wait(ctx, what, timeout, func() (bool, error) {
		var st fleet.Status
		if err := d.get(ctx, "/api/status", &st); err != nil {
			return false, nil // the server may be busy; try again
		}
		n := 0
		for _, h := range st.Hosts {
			s := fmt.Sprintf("%s, runs %s", h.State, orDash(h.Current.Ref))
			if seen[h.Hostname] != s {
				d.say("%s: server sees %s", h.Hostname, s)
				seen[h.Hostname] = s
			}
			if ok(h) {
				n++
			}
		}
		return n == len(demoHosts), nil
	})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix) + "\n"
}
