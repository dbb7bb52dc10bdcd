// Command benchrollout measures rollouts and the inventory on a real
// imaged serve (SQLite, loopback): 1,000 simulated hosts (goroutines
// speaking the agent's HTTP API, package simhost; one round a second)
// converge through a 4-wave rollout with zero soak, beside the same
// hosts moved by a plain group assignment (no waves, no gates): wall time
// and imaged's CPU time per host. Then 10,000 hosts check in running one
// of two images with package lists, and `imaged fleet packages` is timed
// beside `imaged fleet status` over the same hosts.
//
// It prints markdown tables. Run it from the repository:
// go run ./testvm/benchrollout
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/simhost"
)

var (
	hosts    = flag.Int("hosts", 1000, "simulated hosts for the rollout")
	invHosts = flag.Int("inventory-hosts", 10000, "hosts for the packages query")
	every    = flag.Duration("every", time.Second, "the simulated hosts' round")
	keep     = flag.Bool("keep", false, "keep the work directory")
)

const token = "bench-0123456789abcdef0123"

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "benchrollout: "+format+"\n", args...) }

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchrollout:", err)
		os.Exit(1)
	}
}

func mac(i int) string { return fmt.Sprintf("52:54:03:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff) }

// writeFleet declares n hosts in group bench on base@1, images 1 and 2
// (small files, each with a package list), and a 4-wave rollout to 2.
func writeFleet(dir string, n int) (map[string]string, error) {
	os.MkdirAll(dir, 0o755)
	ds := map[string]string{}
	var b strings.Builder
	b.WriteString("images:\n")
	for _, v := range []string{"1", "2"} {
		p := filepath.Join(dir, "base-"+v+".img")
		if err := os.WriteFile(p, []byte("bench image "+v+"\n"), 0o644); err != nil {
			return nil, err
		}
		d, err := digest.File(p, nil)
		if err != nil {
			return nil, err
		}
		ds[v] = d
		var pkgs []manifest.Package
		for i := 0; i < 400; i++ {
			pkgs = append(pkgs, manifest.Package{Name: fmt.Sprintf("lib%03d", i), Version: "1." + v, Arch: "amd64"})
		}
		pkgs = append(pkgs, manifest.Package{Name: "libssl3", Version: "3.0.1" + v + "-1~deb12u1", Arch: "amd64"})
		l := manifest.NewPackageList(strings.TrimPrefix(d, "sha256:"), manifest.SourceDpkg, "", pkgs)
		if err := l.WriteFile(manifest.PackagesFor(p)); err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "  - {name: base, version: %q, digest: %s, path: %s}\n", v, d, p)
	}
	b.WriteString("groups:\n  - {name: bench, image: base@1}\nhosts:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {mac: %q, hostname: h%05d, group: bench}\n", mac(i), i)
	}
	b.WriteString(`rollouts:
  - name: bench
    image: base@2
    group: bench
    waves: [{count: 10}, {percent: 10}, {percent: 50}, {percent: 100}]
`)
	return ds, os.WriteFile(filepath.Join(dir, "fleet.yaml"), []byte(b.String()), 0o644)
}

type server struct {
	cmd   *exec.Cmd
	base  string // the boot listener, where hosts check in
	admin string // the admin API
	log   bytes.Buffer
}

func startServer(imaged, dir string) (*server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	adminAddr := al.Addr().String()
	al.Close()
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("bench "+token+"\n"), 0o600)
	s := &server{base: "http://" + addr, admin: "http://" + adminAddr}
	s.cmd = exec.Command(imaged, "serve", "--interface", "lo", "--dhcp-mode", "off", "--tftp", "off", "--http", addr, "--admin", adminAddr,
		"--state", filepath.Join(dir, "fleet"), "--db", "sqlite://"+filepath.Join(dir, "fleet.db"), "--observed", filepath.Join(dir, "none.db"),
		"--tokens", tokens, "--open-reads", "--cache", filepath.Join(dir, "cache"))
	s.cmd.Stdout, s.cmd.Stderr = &s.log, &s.log
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(s.admin + "/api/status"); err == nil {
			resp.Body.Close()
			return s, nil
		}
	}
	s.stop()
	return nil, fmt.Errorf("imaged serve did not answer:\n%s", s.log.String())
}

func (s *server) stop() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

// cpu is the server's user+system CPU time so far.
func (s *server) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func (s *server) post(path string, body any) error {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, s.admin+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s", path, resp.Status)
	}
	return nil
}

type result struct {
	name      string
	wall      time.Duration
	cpuPerHst time.Duration
	note      string
}

// converge runs n simulated hosts against a fresh server, calls move, and
// waits until every host runs image 2 confirmed.
func converge(imaged, dir, name string, n int, move func(*server) error) (result, error) {
	os.RemoveAll(dir)
	os.MkdirAll(dir, 0o755)
	ds, err := writeFleet(filepath.Join(dir, "fleet"), n)
	if err != nil {
		return result{}, err
	}
	s, err := startServer(imaged, dir)
	if err != nil {
		return result{}, err
	}
	defer s.stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	var hs []*simhost.Host
	var wg sync.WaitGroup
	for i := range n {
		h := simhost.New(mac(i), s.base, ds["1"], *every)
		h.Client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
		hs = append(hs, h)
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * *every / time.Duration(n))
			h.Run(ctx)
		}()
	}
	defer wg.Wait()
	defer cancel()
	time.Sleep(2 * *every) // every host checked in once
	cpu0, t0 := s.cpu(), time.Now()
	if err := move(s); err != nil {
		return result{}, err
	}
	for {
		done := 0
		for _, h := range hs {
			if cur, trial := h.Current(); cur == ds["2"] && !trial {
				done++
			}
		}
		if done == n {
			break
		}
		if time.Since(t0) > 10*time.Minute {
			return result{}, fmt.Errorf("%s: %d of %d hosts converged after 10 minutes", name, done, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := result{name: name, wall: time.Since(t0)}
	r.cpuPerHst = (s.cpu() - cpu0) / time.Duration(n)
	logf("%s: %d hosts in %v, imaged CPU %v per host", name, n, r.wall.Round(time.Millisecond), r.cpuPerHst)
	return r, nil
}

func run() error {
	dir, err := os.MkdirTemp("", "hnboot-benchrollout-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	imaged := filepath.Join(dir, "imaged")
	if out, err := exec.Command("go", "build", "-o", imaged, "./cmd/imaged").CombinedOutput(); err != nil {
		return fmt.Errorf("go build imaged: %v\n%s", err, out)
	}
	var rs []result
	r, err := converge(imaged, filepath.Join(dir, "assign"), "imaged fleet assign of the group (no waves)", *hosts, func(s *server) error {
		return s.post("/api/assign", map[string]string{"group": "bench", "image": "base@2"})
	})
	if err != nil {
		return err
	}
	rs = append(rs, r)
	r, err = converge(imaged, filepath.Join(dir, "rollout"), "rollout: 4 waves (10, 10%, 50%, 100%), zero soak", *hosts, func(s *server) error {
		return s.post("/api/rollouts/bench/start", nil)
	})
	if err != nil {
		return err
	}
	rs = append(rs, r)
	fmt.Printf("\n### %d simulated hosts converge (round %v; imaged serve, SQLite)\n\n", *hosts, *every)
	fmt.Println("| how | time to converge | imaged CPU per host |")
	fmt.Println("| --- | ---: | ---: |")
	for _, r := range rs {
		fmt.Printf("| %s | %.1f s | %.2f ms |\n", r.name, r.wall.Seconds(), float64(r.cpuPerHst.Microseconds())/1000)
	}
	return inventory(imaged, filepath.Join(dir, "inventory"))
}

// inventory: invHosts hosts check in, half on each image; the CLI's
// packages and status queries are timed.
func inventory(imaged, dir string) error {
	os.MkdirAll(dir, 0o755)
	ds, err := writeFleet(filepath.Join(dir, "fleet"), *invHosts)
	if err != nil {
		return err
	}
	s, err := startServer(imaged, dir)
	if err != nil {
		return err
	}
	defer s.stop()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	work := make(chan int)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				v := ds[strconv.Itoa(1+i%2)]
				c := checkin.Checkin{MAC: mac(i), Source: checkin.SourceAgent, Booted: v, Images: checkin.Slots{Current: v}}
				b, _ := json.Marshal(c)
				resp, err := cl.Post(s.base+"/api/checkin", "application/json", bytes.NewReader(b))
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = errors.New(resp.Status)
					}
				}
				if err != nil {
					errMu.Lock()
					firstErr = err
					errMu.Unlock()
				}
			}
		}()
	}
	for i := range *invHosts {
		work <- i
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("check-ins: %w", firstErr)
	}
	time1 := func(args ...string) (time.Duration, error) {
		best := time.Duration(1 << 62)
		for range 3 {
			t0 := time.Now()
			out, err := exec.Command(imaged, append(args, "--server", s.admin)...).CombinedOutput()
			if err != nil {
				return 0, fmt.Errorf("imaged %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			best = min(best, time.Since(t0))
		}
		return best, nil
	}
	pk, err := time1("fleet", "packages", "libssl3")
	if err != nil {
		return err
	}
	st, err := time1("fleet", "status")
	if err != nil {
		return err
	}
	fmt.Printf("\n### Inventory queries over %d hosts (best of 3, wall time of the CLI)\n\n", *invHosts)
	fmt.Println("| query | time |")
	fmt.Println("| --- | ---: |")
	fmt.Printf("| `imaged fleet packages libssl3` (2 images, 401 packages each) | %.0f ms |\n", float64(pk.Microseconds())/1000)
	fmt.Printf("| `imaged fleet status` (reference: every host's state) | %.0f ms |\n", float64(st.Microseconds())/1000)
	if pk > time.Second {
		return fmt.Errorf("imaged fleet packages took %v over %d hosts, over the 1 s target", pk, *invHosts)
	}
	return nil
}
