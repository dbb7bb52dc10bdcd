// Command benchui measures the dashboard's pages over a fleet of 10,000
// hosts that all checked in (SQLite, in one process with the dashboard,
// served over loopback): for the overview, the first and the last page
// of the hosts table, a filtered table and a host's page, the server's
// render time (the handler, median of 5) and the bytes sent.
//
// It prints a markdown table. Run it from the repository:
// go run ./testvm/benchui
package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/fleet/dashboard"
	"github.com/hnboot/hnboot/internal/checkin"
)

var (
	hosts = flag.Int("hosts", 10000, "hosts in the fleet, each with a check-in")
	keep  = flag.Bool("keep", false, "keep the work directory")
)

const token = "bench-ui-0123456789abcdef"

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "benchui: "+format+"\n", args...) }

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchui:", err)
		os.Exit(1)
	}
}

func mac(i int) string  { return fmt.Sprintf("52:54:04:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff) }
func dig(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

func run() error {
	dir, err := os.MkdirTemp("", "benchui-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	var b strings.Builder
	b.WriteString("images:\n  - {name: base, version: \"1\", digest: " + dig('1') + ", path: /nonexistent/base-1.img}\n" +
		"  - {name: base, version: \"2\", digest: " + dig('2') + ", path: /nonexistent/base-2.img}\n" +
		"groups:\n")
	for g := range 20 {
		fmt.Fprintf(&b, "  - {name: g%02d, image: base@1, labels: {rack: r%02d}}\n", g, g%5)
	}
	b.WriteString("hosts:\n")
	for i := range *hosts {
		fmt.Fprintf(&b, "  - {mac: %q, hostname: h%05d, group: g%02d}\n", mac(i), i, i%20)
	}
	os.MkdirAll(filepath.Join(dir, "fleet"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "fleet", "fleet.yaml"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	os.WriteFile(filepath.Join(dir, "tokens"), []byte("bench "+token+"\n"), 0o600)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f, err := fleet.New(fleet.Options{Dir: filepath.Join(dir, "fleet"), DB: "sqlite://" + filepath.Join(dir, "fleet.db"),
		TokenFile: filepath.Join(dir, "tokens"), PollInterval: -1, Logger: log})
	if err != nil {
		return err
	}
	defer f.Close()
	t0 := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	var mu sync.Mutex
	var ciErr error
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				cur := dig('1')
				if i%10 == 0 {
					cur = dig('2')
				}
				c := &checkin.Checkin{MAC: mac(i), Hostname: fmt.Sprintf("h%05d", i), Source: checkin.SourceAgent, Booted: cur,
					Images: checkin.Slots{Current: cur, Old: dig('2')}, Trial: i%7 == 0, Kernel: "6.1.0-bench-amd64", UptimeSeconds: int64(i)}
				if err := f.Checkin(c); err != nil {
					mu.Lock()
					ciErr = err
					mu.Unlock()
				}
			}
		}()
	}
	for i := range *hosts {
		work <- i
	}
	close(work)
	wg.Wait()
	if ciErr != nil {
		return ciErr
	}
	logf("%d hosts checked in in %v", *hosts, time.Since(t0).Round(time.Millisecond))

	d, err := dashboard.New(f, dashboard.Options{Logger: log})
	if err != nil {
		return err
	}
	var tm sync.Mutex
	var last time.Duration
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		d.ServeHTTP(w, r)
		tm.Lock()
		last = time.Since(start)
		tm.Unlock()
	}))
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.PostForm(srv.URL+"/ui/login", url.Values{"token": {token}})
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("login: %s", resp.Status)
	}
	pages := []struct{ name, path string }{
		{"overview", "/ui/"},
		{"hosts, page 1 (100 rows)", "/ui/hosts"},
		{"hosts, last page", fmt.Sprintf("/ui/hosts?page=%d", (*hosts+99)/100)},
		{"hosts, group g03 sorted by state", "/ui/hosts?group=g03&sort=state"},
		{"hosts, label rack=r02, state trial", "/ui/hosts?label=rack%3Dr02&state=trial"},
		{"a host", "/ui/hosts/h04242"},
	}
	fmt.Printf("\n### Dashboard pages over %d hosts (server render time, median of 5)\n\n", *hosts)
	fmt.Println("| page | render | bytes |")
	fmt.Println("| --- | ---: | ---: |")
	for _, p := range pages {
		var times []time.Duration
		n := 0
		for range 5 {
			resp, err := c.Get(srv.URL + p.path)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("GET %s: %s", p.path, resp.Status)
			}
			n = len(body)
			tm.Lock()
			times = append(times, last)
			tm.Unlock()
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		fmt.Printf("| %s | %.1f ms | %d KiB |\n", p.name, float64(times[2].Microseconds())/1000, n>>10)
	}
	return nil
}
