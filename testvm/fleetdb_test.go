package testvm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/pgtest"
)

// Several servers, one fleet, end to end: two imaged serve in the lab
// namespace, server 1 on br0 (where the QEMU host PXE-boots, full DHCP)
// and server 2 on br1 (DHCP off: imaged refuses a second DHCP server in one
// network namespace, as it would beside dnsmasq), sharing one PostgreSQL
// (a private cluster on a Unix socket; a pathname socket is reachable from
// the namespace).
const (
	lab2Net  = "10.78.0"
	lab2HTTP = lab2Net + ".1:8080"
)

// nsClient is an HTTP client whose connections are made inside the
// namespace (nsDial).
func nsClient(ns string) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: nsDial(ns), MaxIdleConnsPerHost: 64}}
}

// nsDial dials inside the namespace: the dialing goroutine's thread
// enters it for the socket() call, the socket stays there.
func nsDial(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		var d net.Dialer
		c, derr := d.DialContext(ctx, network, addr)
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with its goroutine rather
			// than running other goroutines in the namespace.
			if c != nil {
				c.Close()
			}
			return nil, fmt.Errorf("back to the test's namespace: %w", err)
		}
		runtime.UnlockOSThread()
		return c, derr
	}
}

// fleetServer is one imaged serve of the two.
type fleetServer struct {
	name, http string
	admin      string // the admin API, on the namespace's loopback
	cmd        *exec.Cmd
	log        *syncLog
	done       chan error
	killed     bool
}

// startFleetServer starts imaged serve on iface in the lab namespace and
// waits until it serves.
func (l *lab) startFleetServer(t *testing.T, name, iface, httpAddr, adminAddr string, args ...string) *fleetServer {
	t.Helper()
	f := fixture(t)
	all := append([]string{"serve", "--interface", iface, "--http", httpAddr, "--admin", adminAddr,
		"--cache", t.TempDir(), "--cmdline", labCmdline, "--log-level", "debug"}, args...)
	s := &fleetServer{name: name, http: httpAddr, admin: adminAddr, log: &syncLog{}, done: make(chan error, 1)}
	s.cmd = l.ns.Command(context.Background(), f.Imaged, all...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, tail(s.log.String(), 60))
		}
		if s.killed {
			return
		}
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("%s did not stop cleanly on SIGTERM: %v", name, err)
			}
		case <-time.After(40 * time.Second):
			s.cmd.Process.Kill()
			t.Errorf("%s ignored SIGTERM for 40 s", name)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(s.log.String(), "msg=serving") {
		select {
		case err := <-s.done:
			t.Fatalf("%s exited: %v\n%s", name, err, s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 60 s\n%s", name, s.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

// api calls a server's HTTP API; body "" sends none.
func api(t *testing.T, c *http.Client, method, url, token, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// simMAC is simulated host i of the kill test.
func simMAC(i int) string { return fmt.Sprintf("52:54:00:78:%02x:%02x", i>>8, i&0xff) }

// TestPXETwoServersOneFleet: a host PXE-boots from server 1; an assignment
// and then the big red button are sent to server 2 and reach the host's
// next boots through server 1 (within a second of the call, by
// PostgreSQL's NOTIFY); `imaged fleet status` on either server shows the
// same host. Then 200 simulated hosts check in through both servers while
// server 2 is killed with SIGKILL: every check-in that was acknowledged is
// in the database, and server 1 keeps serving (and takes the leader lock).
func TestPXETwoServersOneFleet(t *testing.T) {
	f := fixture(t)
	imgs := pxeImages(t)
	dA, dB := fileDigest(t, imgs["PA"]), fileDigest(t, imgs["PB"])
	mac := "52:54:00:77:00:30"
	const token = "two-servers-admin-token-0123456789"
	const simHosts = 200

	cl := pgtest.T(t)
	dbURL, err := cl.NewDatabase()
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	var yaml strings.Builder
	fmt.Fprintf(&yaml, `images:
  - {name: A, version: "1", digest: %s, path: %s}
  - {name: B, version: "2", digest: %s, path: %s}
hosts:
  - mac: %s
    hostname: pxe-two
    image: A@1
`, dA, imgs["PA"], dB, imgs["PB"], mac)
	for i := range simHosts {
		fmt.Fprintf(&yaml, "  - {mac: \"%s\", hostname: sim-%03d, image: A@1}\n", simMAC(i), i)
	}
	tokens := filepath.Join(state, "tokens")
	if err := os.WriteFile(tokens, []byte("e2e "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Each server has its own copy of the fleet directory, as on two machines.
	var desired [2]string
	for i := range desired {
		desired[i] = filepath.Join(state, fmt.Sprintf("fleet%d", i+1))
		os.Mkdir(desired[i], 0o755)
		if err := os.WriteFile(filepath.Join(desired[i], "fleet.yaml"), []byte(yaml.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	l := newLab(t, 1)
	if err := l.ns.Bridge("br1", lab2Net+".1/24"); err != nil {
		t.Fatal(err)
	}
	s1 := l.startFleetServer(t, "server 1", "br0", labHTTP, labAdmin, "--answer-rs", "--dhcp-mode", "full", "--pool", labNet+".100-"+labNet+".150",
		"--state", desired[0], "--tokens", tokens, "--db", dbURL, "--observed", filepath.Join(state, "none1.db"))
	s2 := l.startFleetServer(t, "server 2", "br1", lab2HTTP, "127.0.0.1:8082", "--dhcp-mode", "off",
		"--state", desired[1], "--tokens", tokens, "--db", dbURL, "--observed", filepath.Join(state, "none2.db"))
	c := nsClient(l.ns.Name)
	url1 := "http://" + labHTTP // boot: iPXE scripts
	admin1, admin2 := "http://"+s1.admin, "http://"+s2.admin

	// waitScript waits for server 1's iPXE script of the host to match.
	waitScript := func(what string, match func(string) bool) {
		t.Helper()
		start := time.Now()
		for {
			code, script := api(t, c, "GET", url1+"/boot/"+mac+".ipxe", "", "")
			if code == 200 && match(script) {
				t.Logf("%s: on server 1 after %v", what, time.Since(start).Round(time.Millisecond))
				if d := time.Since(start); d > time.Second {
					t.Errorf("%s took %v to reach server 1, want < 1 s", what, d)
				}
				return
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s: server 1's script after 10 s:\n%s", what, script)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// B is assigned on server 2 and staged on the disk; the host's boot
	// through server 1 promotes it, A becomes old.
	d := pxeDisk(t, imgs["PA"])
	err = stageNew(d, imgs["PB"])
	if err != nil {
		t.Fatal(err)
	}
	if code, body := api(t, c, "POST", admin2+"/api/assign", token, `{"host":"pxe-two","image":"B@2"}`); code != 200 {
		t.Fatalf("assign on server 2: %d %s", code, body)
	}
	waitScript("the assignment made on server 2", func(s string) bool { return strings.Contains(s, "/images/"+dB+"/") })
	pxeBoot := func(image string) string {
		t.Helper()
		vm := l.start(t, pxeHost{tap: "tap0", mac: mac, disk: d})
		con := expectBooted(t, vm, image)
		if err := vm.Wait(60 * time.Second); err != nil {
			t.Fatal(err)
		}
		vm.Kill()
		return con
	}
	con := pxeBoot("PB")
	wantConsole(t, con, "action=promote", "checked in")
	(&lab{log: s1.log}).waitLog(t, 30*time.Second, `kind=checkin `, macRe(mac), `booted=`+regexp.QuoteMeta(dB))
	var st fleet.Status
	code, body := api(t, c, "GET", admin2+"/api/status", token, "")
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || st.Hosts[0].LastCheckin == nil || st.Hosts[0].LastCheckin.Images.Old != dA {
		t.Fatalf("server 2's status after the host checked in through server 1: %d, want its check-in with old image A\n%.2000s", code, body)
	}

	// The red button, pressed on server 2 with the CLI.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := l.ns.Command(ctx, f.Imaged, "fleet", "revert", "--json", "--server", admin2, "--token-file", tokens, "pxe-two").CombinedOutput()
	var res []fleet.RevertResult
	if err != nil || json.Unmarshal(out, &res) != nil || len(res) != 1 || res[0].PinnedTo != "A@1" {
		t.Fatalf("imaged fleet revert on server 2: %v\n%s", err, out)
	}
	id := res[0].ID
	waitScript("the revert pressed on server 2", func(s string) bool {
		return strings.Contains(s, "hn.revert="+id) && strings.Contains(s, "/images/"+dA+"/")
	})
	con = pxeBoot("PA")
	wantConsole(t, con, "hn.revert="+id, "action=revert", "checked in")
	(&lab{log: s1.log}).waitLog(t, 30*time.Second, `kind=checkin `, macRe(mac), `revert_applied=`+regexp.QuoteMeta(id))

	// Both servers tell the same story, the CLI's way (a context of its
	// own: the boot before took what it took on a busy machine).
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var lines [2]string
	for i, url := range []string{admin1, admin2} {
		out, err := l.ns.Command(ctx, f.Imaged, "fleet", "status", "--server", url, "--token-file", tokens).CombinedOutput()
		if err != nil {
			t.Fatalf("imaged fleet status on server %d: %v\n%s", i+1, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "pxe-two ") {
				lines[i] = line
			}
		}
		t.Logf("imaged fleet status on server %d:\n%s", i+1, out[:min(len(out), 600)])
	}
	if lines[0] == "" || lines[0] != lines[1] || !strings.Contains(lines[0], " ok ") {
		t.Errorf("pxe-two in imaged fleet status:\n server 1: %q\n server 2: %q\nwant the same line, state ok", lines[0], lines[1])
	}

	// The kill test.
	killServerUnderLoad(t, c, cl, dbURL, s1, s2, simHosts, token)
	if code, script := api(t, c, "GET", url1+"/boot/"+mac+".ipxe", "", ""); code != 200 || !strings.Contains(script, "/images/"+dA+"/") {
		t.Errorf("server 1 after server 2 was killed: iPXE script %d\n%s", code, script)
	}
}

// killServerUnderLoad: simHosts goroutines post real check-ins, each host
// alternating between the two servers (as hosts of two boot networks
// would, and moving on when one does not answer), for 12 s; server 2 is
// killed with SIGKILL after 4 s. Afterwards the database holds, for every
// host, its last acknowledged check-in or a later one; server 1 went on
// acknowledging after the kill and takes the leader lock.
func killServerUnderLoad(t *testing.T, c *http.Client, cl *pgtest.Cluster, dbURL string, s1, s2 *fleetServer, simHosts int, token string) {
	t.Helper()
	const run, killAt = 12 * time.Second, 4 * time.Second
	start := time.Now()
	acked := make([]int, simHosts) // the last acknowledged round per host, -1: none
	var mu sync.Mutex
	ackedAfterKill, sent, refused := 0, 0, 0
	var killed time.Time
	var wg sync.WaitGroup
	for h := range simHosts {
		acked[h] = -1
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; time.Since(start) < run; round++ {
				srv := []*fleetServer{s1, s2}[(h+round)%2]
				b, _ := json.Marshal(checkin.Checkin{MAC: simMAC(h), Source: checkin.SourceAgent, Hostname: fmt.Sprintf("sim-%03d", h),
					UptimeSeconds: int64(round), Images: checkin.Slots{Current: "sha256:" + strings.Repeat("a", 64)}})
				resp, err := c.Post("http://"+srv.http+"/api/checkin", "application/json", bytes.NewReader(b))
				ok := false
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					ok = resp.StatusCode == 200
				}
				mu.Lock()
				sent++
				if ok {
					acked[h] = round
					if !killed.IsZero() && srv == s1 {
						ackedAfterKill++
					}
				} else {
					refused++
				}
				mu.Unlock()
				if !ok {
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(killAt)
	mu.Lock()
	s2.killed = true
	s2.cmd.Process.Kill()
	killed = time.Now()
	mu.Unlock()
	<-s2.done
	wg.Wait()
	t.Logf("kill test: %d check-ins sent by %d hosts in %v, %d not acknowledged (server 2 killed at %v), %d acknowledged by server 1 after the kill",
		sent, simHosts, run, refused, killAt, ackedAfterKill)
	if ackedAfterKill == 0 {
		t.Errorf("server 1 acknowledged no check-in after server 2 was killed")
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cl.Psql(strings.TrimPrefix(u.Path, "/"),
		`SELECT mac || ' ' || (body::jsonb->>'uptime_seconds') FROM observed WHERE mac LIKE '52:54:00:78:%'`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		var m string
		var round int
		if _, err := fmt.Sscanf(line, "%s %d", &m, &round); err == nil {
			stored[m] = round
		}
	}
	lost := 0
	for h, r := range acked {
		if r < 0 {
			continue
		}
		if got, ok := stored[simMAC(h)]; !ok || got < r {
			lost++
			if lost < 5 {
				t.Errorf("host %s: check-in round %d was acknowledged, the database has round %d (present %v)", simMAC(h), r, got, ok)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d acknowledged check-ins are not in the database", lost)
	}
	// Server 1 serves on and runs the once-only work now.
	deadline := time.Now().Add(15 * time.Second)
	for {
		var st fleet.Status
		code, body := api(t, c, "GET", "http://"+s1.admin+"/api/status", token, "")
		if code == 200 && json.Unmarshal([]byte(body), &st) == nil && st.Database.Leader {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server 1 after server 2's death: status %d, leader %v, want 200 and the leader lock", code, st.Database.Leader)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
