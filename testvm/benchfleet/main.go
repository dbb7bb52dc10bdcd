// Command benchfleet measures imaged serve's fleet database side by side:
// the JSON-lines store of imaged before the database (built from the git
// history, the parent of the commit that removed it), SQLite and
// PostgreSQL (a private cluster on a Unix socket, fsync and synchronous
// commit on, as in production). For each: 10,000 simulated hosts check in
// over HTTP (POST /checkin, as the init does, so the boot ledger is
// written too), twice each, 64 at a time: check-ins per second and the
// latency's p50 and p99; then `imaged fleet status` over the 10,000 hosts
// (wall time of the CLI) and imaged's peak RSS.
//
// Everything runs on 127.0.0.1 and stops by itself. It prints a markdown
// table. Run it from the repository: go run ./testvm/benchfleet
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/pgtest"
	"github.com/hnboot/hnboot/testvm"
)

var (
	hosts       = flag.Int("hosts", 10000, "simulated hosts")
	rounds      = flag.Int("rounds", 2, "check-ins per host")
	concurrency = flag.Int("concurrency", 64, "hosts checking in at once")
	only        = flag.String("only", "", "comma-separated backends to run (old,sqlite,postgres); default all")
	keep        = flag.Bool("keep", false, "keep the work directory")
)

const token = "bench-0123456789abcdef0123"

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "benchfleet: "+format+"\n", args...) }

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchfleet:", err)
		os.Exit(1)
	}
}

type result struct {
	name            string
	rate            float64
	p50, p99        time.Duration
	refused, stored int
	status          time.Duration
	statusHosts     int
	rss             int64 // KiB
	note            string
}

func run() error {
	dir, err := os.MkdirTemp("", "hnboot-benchfleet-")
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
	fleetDir := filepath.Join(dir, "fleet")
	if err := writeFleet(fleetDir, *hosts); err != nil {
		return err
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("bench "+token+"\n"), 0o600); err != nil {
		return err
	}
	want := func(name string) bool { return *only == "" || strings.Contains(","+*only+",", ","+name+",") }

	var results []result
	if want("old") {
		r := result{name: "old JSON-lines store"}
		old, commit, err := buildOld(dir)
		if err != nil {
			logf("old store: %v", err)
			r.note = "not measured: " + err.Error()
		} else {
			logf("old store: imaged built from %s", commit)
			r, err = measure(r.name, old, imaged, dir, fleetDir, tokens, "--observed", filepath.Join(dir, "old.db"))
			if err != nil {
				return fmt.Errorf("old store: %w", err)
			}
		}
		results = append(results, r)
	}
	if want("sqlite") {
		r, err := measure("SQLite", imaged, imaged, dir, fleetDir, tokens,
			"--db", "sqlite://"+filepath.Join(dir, "fleet.db"), "--observed", filepath.Join(dir, "none.db"))
		if err != nil {
			return fmt.Errorf("sqlite: %w", err)
		}
		results = append(results, r)
	}
	if want("postgres") {
		cl, err := pgtest.Start(filepath.Join(dir, "pg"), pgtest.Options{Durable: true, Log: logf})
		if err != nil {
			return err
		}
		r, err := measure("PostgreSQL", imaged, imaged, dir, fleetDir, tokens,
			"--db", cl.URL("postgres"), "--observed", filepath.Join(dir, "none.db"))
		cl.Stop()
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		results = append(results, r)
	}
	printTable(results)
	return nil
}

// writeFleet declares n hosts in one group on one image.
func writeFleet(dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("images:\n  - {name: base, version: \"1\", digest: " + digest("1") + ", path: /nonexistent/base-1.img}\n" +
		"  - {name: base, version: \"2\", digest: " + digest("2") + ", path: /nonexistent/base-2.img}\n" +
		"groups:\n  - {name: bench, image: base@1}\nhosts:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {mac: \"%s\", hostname: h%05d, group: bench}\n", mac(i), i)
	}
	return os.WriteFile(filepath.Join(dir, "fleet.yaml"), []byte(b.String()), 0o644)
}

func digest(c string) string { return "sha256:" + strings.Repeat(c, 64) }

func mac(i int) string { return fmt.Sprintf("52:54:01:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff) }

// buildOld builds imaged as it was before the database: the parent of the
// last commit that changed the old store's OpenStore.
func buildOld(dir string) (string, string, error) {
	out, err := exec.Command("git", "log", "-1", "--format=%H", "-S", "func OpenStore(path string, log *slog.Logger) (*Store, error)", "--", "fleet/store.go").Output()
	commit := strings.TrimSpace(string(out))
	if err != nil || commit == "" {
		return "", "", fmt.Errorf("no git history with the old store (%v)", err)
	}
	commit += "^"
	src := filepath.Join(dir, "old-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", "", err
	}
	arch := exec.Command("git", "archive", commit)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, _ := arch.StdoutPipe()
	untar.Stdin = pipe
	if err := untar.Start(); err != nil {
		return "", "", err
	}
	if err := arch.Run(); err != nil {
		return "", "", fmt.Errorf("git archive %s: %w", commit, err)
	}
	if err := untar.Wait(); err != nil {
		return "", "", fmt.Errorf("untar %s: %w", commit, err)
	}
	bin := filepath.Join(dir, "imaged-old")
	b := exec.Command("go", "build", "-o", bin, "./cmd/imaged")
	b.Dir = src
	if out, err := b.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build the old imaged: %v\n%s", err, out)
	}
	return bin, commit, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// measure runs server (an imaged binary) with the backend's flags, loads
// it and reads its status with cli (the current imaged).
func measure(name, server, cli, dir, fleetDir, tokens string, backend ...string) (result, error) {
	r := result{name: name}
	addr, err := freePort()
	if err != nil {
		return r, err
	}
	args := append([]string{"serve", "--server-ip", "127.0.0.1", "--dhcp-mode", "off", "--tftp", "off",
		"--http", addr, "--state", fleetDir, "--tokens", tokens, "--cache", filepath.Join(dir, "cache-"+strings.Fields(name)[0]),
		"--log-level", "warn"}, backend...)
	// The imaged of this tree (server == cli) has its admin API on
	// --admin; the old one built from git served it on --http.
	adminAddr := addr
	if server == cli {
		if adminAddr, err = freePort(); err != nil {
			return r, err
		}
		args = append(args, "--admin", adminAddr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, server, args...)
	var logBuf syncBuf
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	base, admin := "http://"+addr, "http://"+adminAddr
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: *concurrency, MaxConnsPerHost: *concurrency}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest("GET", admin+"/api/status", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("%s not ready after 60 s: %v\n%s", name, err, logBuf.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	logf("%s: %d hosts x %d check-ins, %d at once", name, *hosts, *rounds, *concurrency)

	type job struct{ host, round int }
	jobs := make(chan job)
	lat := make([][]time.Duration, *concurrency)
	refused := make([]int, *concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range *concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				body := checkinBody(j.host, j.round)
				t0 := time.Now()
				resp, err := client.Post(base+"/checkin", "application/json", bytes.NewReader(body))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				lat[w] = append(lat[w], time.Since(t0))
				if err != nil || resp.StatusCode/100 != 2 {
					refused[w]++
				}
			}
		}()
	}
	for round := range *rounds {
		for h := range *hosts {
			jobs <- job{h, round}
		}
	}
	close(jobs)
	wg.Wait()
	wall := time.Since(start)
	var all []time.Duration
	for w := range lat {
		all = append(all, lat[w]...)
		r.refused += refused[w]
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	r.rate = float64(len(all)) / wall.Seconds()
	r.p50, r.p99 = all[len(all)/2], all[len(all)*99/100]
	logf("%s: %.0f check-ins/s, p50 %v, p99 %v, %d refused; peak RSS so far %d MiB", name, r.rate, r.p50, r.p99, r.refused, testvm.PeakRSS(cmd.Process.Pid)/1024)

	// imaged fleet status, as an operator runs it: the best of three.
	for i := range 3 {
		t0 := time.Now()
		c := exec.Command(cli, "fleet", "status", "--server", admin, "--token-file", tokens)
		c.Stdout = io.Discard
		var stderr bytes.Buffer
		c.Stderr = &stderr
		if err := c.Run(); err != nil {
			return r, fmt.Errorf("imaged fleet status: %v: %s", err, stderr.String())
		}
		if d := time.Since(t0); i == 0 || d < r.status {
			r.status = d
		}
	}
	var st struct {
		Hosts []struct {
			LastCheckin *json.RawMessage `json:"last_checkin"`
		} `json:"hosts"`
	}
	req, _ := http.NewRequest("GET", admin+"/api/status", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return r, err
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		return r, err
	}
	r.statusHosts = len(st.Hosts)
	for _, h := range st.Hosts {
		if h.LastCheckin != nil {
			r.stored++
		}
	}
	r.rss = testvm.PeakRSS(cmd.Process.Pid)
	logf("%s: fleet status %v (%d hosts, %d with a check-in), peak RSS %d MiB", name, r.status, r.statusHosts, r.stored, r.rss/1024)
	if r.stored != *hosts {
		return r, errors.New("not every host's check-in is in the status")
	}
	return r, nil
}

func checkinBody(host, round int) []byte {
	img := digest("1")
	c := checkin.Checkin{
		MAC: mac(host), Hostname: fmt.Sprintf("h%05d", host), Source: checkin.SourceInit,
		Booted: img, Action: "boot", Kernel: "6.1.0-28-amd64", UptimeSeconds: int64(3 + round),
		Images:       checkin.Slots{Current: img, Old: digest("2")},
		SSHHostKeys:  []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"},
		Fingerprints: []string{"SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"},
	}
	b, _ := json.Marshal(c)
	return b
}

func printTable(rs []result) {
	cell := func(f func(r result) string) string {
		var cs []string
		for _, r := range rs {
			if r.note != "" {
				cs = append(cs, "-")
				continue
			}
			cs = append(cs, f(r))
		}
		return strings.Join(cs, " | ")
	}
	var head []string
	for _, r := range rs {
		head = append(head, r.name)
	}
	fmt.Printf("\n| fleet database (%d hosts x %d check-ins, %d at once; %d CPUs) | %s | target |\n|---|%s---|\n",
		*hosts, *rounds, *concurrency, runtime.NumCPU(), strings.Join(head, " | "), strings.Repeat("---|", len(rs)))
	fmt.Printf("| check-ins/s | %s | >= 2,000 (SQLite) |\n", cell(func(r result) string { return fmt.Sprintf("%.0f", r.rate) }))
	fmt.Printf("| check-in latency p50 | %s | - |\n", cell(func(r result) string { return ms(r.p50) }))
	fmt.Printf("| check-in latency p99 | %s | - |\n", cell(func(r result) string { return ms(r.p99) }))
	fmt.Printf("| check-ins refused (non-2xx) | %s | 0 |\n", cell(func(r result) string { return fmt.Sprint(r.refused) }))
	fmt.Printf("| hosts with their check-in in the status | %s | %d |\n", cell(func(r result) string { return fmt.Sprint(r.stored) }), *hosts)
	fmt.Printf("| `imaged fleet status`, %d hosts | %s | < 1 s |\n", *hosts, cell(func(r result) string { return ms(r.status) }))
	fmt.Printf("| imaged peak RSS | %s | < 150 MiB |\n", cell(func(r result) string { return fmt.Sprintf("%.0f MiB", float64(r.rss)/1024) }))
	for _, r := range rs {
		if r.note != "" {
			fmt.Printf("\n%s: %s\n", r.name, r.note)
		}
	}
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.0f ms", float64(d)/1e6)
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 {
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
