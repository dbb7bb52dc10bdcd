// Command benchpxe measures imaged serve side by side with Debian's
// reference servers, on the loopback interface of a network namespace it
// creates for the run (nothing else can see the traffic) and deletes at
// the end:
//
//   - HTTP: a 1 GiB image blob to 50 concurrent clients, against nginx
//     serving the same file (target: >= 0.9x nginx);
//   - TFTP: undionly.kpxe and ipxe.efi to 200 concurrent clients at
//     blksize 1468, against tftpd-hpa (target: >= 1x);
//   - DHCP: offers per second from 1000 simulated PXE clients, and the
//     reply latency (iPXE waits 2 s for a proxy offer);
//   - a boot storm: 500 simulated hosts doing DHCP, TFTP, DHCP as iPXE,
//     the script, kernel and initramfs over HTTP; time until all are
//     served and imaged's peak RSS.
//
// It prints a markdown table. Every loop is bounded; it stops by itself.
// Run it as root: go run ./testvm/benchpxe
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/pin/tftp/v3"

	"github.com/hnboot/hnboot/testvm"
)

const (
	imagedHTTP = "127.0.0.1:18080"
	nginxHTTP  = "127.0.0.1:18081"
	imagedTFTP = "127.0.0.1:16969"
	hpaTFTP    = "127.0.0.1:16970"
	blksize    = 1468
)

var (
	httpClients = flag.Int("http-clients", 50, "concurrent HTTP clients")
	httpSize    = flag.Int64("http-size", 1<<30, "size of the HTTP test file")
	tftpClients = flag.Int("tftp-clients", 200, "concurrent TFTP clients")
	dhcpClients = flag.Int("dhcp-clients", 1000, "simulated DHCP clients")
	dhcpRounds  = flag.Int("dhcp-rounds", 10, "DISCOVERs per simulated client")
	stormHosts  = flag.Int("storm", 500, "hosts in the boot storm")
)

func main() {
	flag.Parse()
	var err error
	if os.Getenv("HNBENCH_INNER") == "" {
		err = outer()
	} else {
		err = inner()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchpxe:", err)
		os.Exit(1)
	}
}

// outer re-runs this program inside a fresh network namespace.
func outer() error {
	for _, tool := range []string{"nginx", "in.tftpd", "mkfs.ext4", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: %s", tool, testvm.InstallHint)
		}
	}
	ns, err := testvm.NewNetNS("hnbench")
	if err != nil {
		return err
	}
	defer ns.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := ns.Command(context.Background(), self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), "HNBENCH_INNER=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

type row struct{ name, imaged, ref, ratio, target string }

func inner() error {
	dir, err := os.MkdirTemp("", "hnbench-")
	if err != nil {
		return err
	}
	os.Chmod(dir, 0o755)
	defer os.RemoveAll(dir)
	logf("workdir %s", dir)

	root, err := testvm.ModuleRoot()
	if err != nil {
		return err
	}
	imaged := filepath.Join(dir, "imaged")
	b := exec.Command("go", "build", "-o", imaged, "./cmd/imaged")
	b.Dir = root
	if out, err := b.CombinedOutput(); err != nil {
		return fmt.Errorf("go build imaged: %v\n%s", err, out)
	}

	// The image: ext4 with an 8 MiB kernel and a 9 MiB initramfs in /boot,
	// httpSize bytes in all (sparse). nginx serves the same file.
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "boot"), 0o755)
	for name, n := range map[string]int{"vmlinuz": 8 << 20, "initramfs": 9 << 20} {
		buf := make([]byte, n)
		rand.Read(buf)
		os.WriteFile(filepath.Join(tree, "boot", name), buf, 0o644)
	}
	www := filepath.Join(dir, "www")
	os.MkdirAll(www, 0o755)
	img := filepath.Join(www, "image.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img, fmt.Sprint(*httpSize/1024)+"k").CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v\n%s", err, out)
	}
	os.Chmod(img, 0o644)
	tftpDir := filepath.Join(dir, "tftp")
	os.MkdirAll(tftpDir, 0o755)
	for _, f := range []string{"undionly.kpxe", "ipxe.efi"} {
		data, err := os.ReadFile(filepath.Join("/usr/lib/ipxe", f))
		if err != nil {
			return fmt.Errorf("%v (apt-get install ipxe)", err)
		}
		os.WriteFile(filepath.Join(tftpDir, f), data, 0o644)
	}

	// Servers.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := exec.CommandContext(ctx, imaged, "serve", "--interface", "lo", "--server-ip", "127.0.0.1",
		"--http", imagedHTTP, "--tftp", imagedTFTP, "--tftp-root", tftpDir, "--tftp-max", "1024",
		"--cache", filepath.Join(dir, "cache"), "--image", img, "--allow-unknown", "--log-level", "error")
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { srv.Process.Signal(os.Interrupt); srv.Wait() }()
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes auto; daemon off; pid %s/nginx.pid; error_log %s/nginx.err;
events { worker_connections 1024; }
http { sendfile on; tcp_nopush on; access_log off; types { } default_type application/octet-stream;
  client_body_temp_path %s; proxy_temp_path %s; fastcgi_temp_path %s; uwsgi_temp_path %s; scgi_temp_path %s;
  server { listen %s; root %s; } }
`, dir, dir, dir, dir, dir, dir, dir, nginxHTTP, www)), 0o644)
	ng := exec.CommandContext(ctx, "nginx", "-c", conf, "-p", dir)
	ng.Stderr = os.Stderr
	if err := ng.Start(); err != nil {
		return err
	}
	defer func() { ng.Process.Signal(os.Interrupt); ng.Wait() }()
	// tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which fails when
	// loopback is the only interface: bind the port on all (that is, lo).
	hpa := exec.CommandContext(ctx, "in.tftpd", "-L", "-s", tftpDir, "-a", ":"+strings.Split(hpaTFTP, ":")[1], "-B", fmt.Sprint(blksize), "-u", "nobody")
	hpa.Stderr = os.Stderr
	if err := hpa.Start(); err != nil {
		return err
	}
	defer func() { hpa.Process.Kill(); hpa.Wait() }()
	if err := waitHTTP("http://"+imagedHTTP+"/boot/52:54:00:00:00:01.ipxe", 120*time.Second); err != nil {
		return fmt.Errorf("imaged: %w", err)
	}
	if err := waitHTTP("http://"+nginxHTTP+"/image.img", 10*time.Second); err != nil {
		return fmt.Errorf("nginx: %w", err)
	}
	digest, err := scriptDigest()
	if err != nil {
		return err
	}
	var rows []row

	// HTTP.
	logf("HTTP: %d clients x %d MiB", *httpClients, *httpSize>>20)
	// Alternate the servers and keep each one's best of two runs: the
	// machine is shared and the first run warms the page cache.
	var ngRate, imRate float64
	for i := 0; i < 2; i++ {
		r, err := httpBench("http://"+nginxHTTP+"/image.img", *httpClients)
		if err != nil {
			return fmt.Errorf("nginx: %w", err)
		}
		ngRate = max(ngRate, r)
		r, err = httpBench("http://"+imagedHTTP+"/blobs/"+digest, *httpClients)
		if err != nil {
			return fmt.Errorf("imaged: %w", err)
		}
		imRate = max(imRate, r)
		logf("HTTP run %d: nginx %.0f MB/s, imaged %.0f MB/s", i+1, ngRate, imRate)
	}
	rows = append(rows, row{fmt.Sprintf("HTTP %d MiB blob, %d clients (MB/s, best of 2)", *httpSize>>20, *httpClients),
		fmt.Sprintf("%.0f", imRate), fmt.Sprintf("%.0f (nginx)", ngRate), fmt.Sprintf("%.2fx", imRate/ngRate), ">= 0.9x"})

	// TFTP.
	for _, f := range []string{"undionly.kpxe", "ipxe.efi"} {
		logf("TFTP: %s to %d clients", f, *tftpClients)
		hr, hfail, err := tftpBench(hpaTFTP, f, *tftpClients)
		if err != nil {
			return fmt.Errorf("tftpd-hpa: %w", err)
		}
		ir, ifail, err := tftpBench(imagedTFTP, f, *tftpClients)
		if err != nil {
			return fmt.Errorf("imaged: %w", err)
		}
		rows = append(rows, row{fmt.Sprintf("TFTP %s, %d clients, blksize %d (MB/s; failed)", f, *tftpClients, blksize),
			fmt.Sprintf("%.1f; %d", ir, ifail), fmt.Sprintf("%.1f; %d (tftpd-hpa)", hr, hfail), fmt.Sprintf("%.2fx", ir/hr), ">= 1x"})
	}

	// DHCP.
	logf("DHCP: %d clients x %d DISCOVERs", *dhcpClients, *dhcpRounds)
	dc, err := newDHCPClient()
	if err != nil {
		return err
	}
	defer dc.close()
	rate, p50, p99, lost, err := dhcpBench(dc, *dhcpClients, *dhcpRounds)
	if err != nil {
		return err
	}
	rows = append(rows, row{fmt.Sprintf("DHCP proxy offers/s, %d clients", *dhcpClients), fmt.Sprintf("%.0f (%d retried)", rate, lost), "-", "-", "-"})
	rows = append(rows, row{"DHCP reply latency p50 / p99", fmt.Sprintf("%v / %v", p50, p99), "-", "-", "< 2 s (iPXE)"})

	// Boot storm.
	logf("boot storm: %d hosts", *stormHosts)
	took, failed, err := storm(dc, *stormHosts)
	if err != nil {
		return err
	}
	rss := testvm.PeakRSS(srv.Process.Pid)
	rows = append(rows, row{fmt.Sprintf("boot storm, %d hosts: DHCP+TFTP+DHCP+script+kernel+initramfs", *stormHosts),
		fmt.Sprintf("all served in %v (%d failed)", took.Round(time.Millisecond), failed), "-", "-", "-"})
	rows = append(rows, row{"imaged peak RSS (whole run)", fmt.Sprintf("%.0f MiB", float64(rss)/1024), "-", "-", "-"})

	fmt.Printf("\n| benchmark (loopback, %d CPUs) | imaged | reference | ratio | target |\n|---|---|---|---|---|\n", numCPU())
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s | %s | %s |\n", r.name, r.imaged, r.ref, r.ratio, r.target)
	}
	return nil
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "benchpxe: "+format+"\n", args...) }

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func waitHTTP(u string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready: %v", u, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// scriptDigest reads the image digest from an iPXE script.
func scriptDigest() (string, error) {
	resp, err := http.Get("http://" + imagedHTTP + "/boot/52:54:00:00:00:01.ipxe")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	i := strings.Index(string(b), "/images/sha256:")
	if i < 0 {
		return "", fmt.Errorf("no digest in script:\n%s", b)
	}
	return string(b[i+8 : i+8+71]), nil
}

// httpBench downloads u with n concurrent clients and returns MB/s.
func httpBench(u string, n int) (float64, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: n, DisableCompression: true}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Minute}
	defer tr.CloseIdleConnections()
	var total atomic.Int64
	errc := make(chan error, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(u)
			if err != nil {
				errc <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				errc <- errors.New(resp.Status)
				return
			}
			k, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10))
			total.Add(k)
			if err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, err
	}
	return float64(total.Load()) / 1e6 / time.Since(start).Seconds(), nil
}

// tftpBench fetches file with n concurrent clients; MB/s and failures.
func tftpBench(addr, file string, n int) (float64, int, error) {
	var total atomic.Int64
	var failed atomic.Int32
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := tftpFetch(addr, file)
			total.Add(k)
			if err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() == int32(n) {
		return 0, n, fmt.Errorf("every transfer of %s from %s failed", file, addr)
	}
	return float64(total.Load()) / 1e6 / time.Since(start).Seconds(), int(failed.Load()), nil
}

func tftpFetch(addr, file string) (int64, error) {
	c, err := tftp.NewClient(addr)
	if err != nil {
		return 0, err
	}
	c.SetBlockSize(blksize)
	c.SetTimeout(2 * time.Second)
	c.SetRetries(5)
	wt, err := c.Receive(file, "octet")
	if err != nil {
		return 0, err
	}
	return wt.WriteTo(io.Discard)
}

// dhcpClient is one UDP socket on 127.0.0.1:68 shared by all simulated
// clients; replies are matched by transaction ID. Requests carry
// ciaddr=127.0.0.1 so the server's replies come back by unicast.
type dhcpClient struct {
	conn    *net.UDPConn
	mu      sync.Mutex
	waiters map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4
}

func newDHCPClient() (*dhcpClient, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 68})
	if err != nil {
		return nil, err
	}
	conn.SetReadBuffer(8 << 20)
	c := &dhcpClient{conn: conn, waiters: map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4{}}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m, err := dhcpv4.FromBytes(buf[:n])
			if err != nil {
				continue
			}
			c.mu.Lock()
			ch := c.waiters[m.TransactionID]
			delete(c.waiters, m.TransactionID)
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		}
	}()
	return c, nil
}

func (c *dhcpClient) close() { c.conn.Close() }

// exchange sends a DISCOVER for mac and waits for the offer, retrying
// after 1 s (as firmware does) up to 4 times. It returns the latency of
// the attempt that was answered and the number of retries.
func (c *dhcpClient) exchange(mac net.HardwareAddr, ipxe bool) (*dhcpv4.DHCPv4, time.Duration, int, error) {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover),
		dhcpv4.WithClientIP(net.IPv4(127, 0, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
	}
	if ipxe {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")))
	}
	for try := 0; try < 5; try++ {
		m, err := dhcpv4.New(mods...)
		if err != nil {
			return nil, 0, try, err
		}
		ch := make(chan *dhcpv4.DHCPv4, 1)
		c.mu.Lock()
		c.waiters[m.TransactionID] = ch
		c.mu.Unlock()
		start := time.Now()
		if _, err := c.conn.WriteToUDP(m.ToBytes(), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 67}); err != nil {
			return nil, 0, try, err
		}
		select {
		case r := <-ch:
			return r, time.Since(start), try, nil
		case <-time.After(time.Second):
			c.mu.Lock()
			delete(c.waiters, m.TransactionID)
			c.mu.Unlock()
		}
	}
	return nil, 0, 5, fmt.Errorf("no DHCP offer for %v after 5 tries", mac)
}

func benchMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xbe, 0x00, byte(i >> 16), byte(i >> 8), byte(i)}
}

// dhcpBench runs n clients, each doing rounds DISCOVERs back to back.
func dhcpBench(c *dhcpClient, n, rounds int) (rate float64, p50, p99 time.Duration, retried int, err error) {
	lat := make([]time.Duration, 0, n*rounds)
	var mu sync.Mutex
	var retries atomic.Int32
	var firstErr error
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				_, d, tries, err := c.exchange(benchMAC(i), false)
				retries.Add(int32(tries))
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, 0, 0, firstErr
	}
	el := time.Since(start)
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	return float64(len(lat)) / el.Seconds(), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), int(retries.Load()), nil
}

// storm boots n simulated hosts at once.
func storm(c *dhcpClient, n int) (time.Duration, int, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: n}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Minute}
	defer tr.CloseIdleConnections()
	var failed atomic.Int32
	var firstErr atomic.Value
	fail := func(err error) {
		failed.Add(1)
		firstErr.CompareAndSwap(nil, err)
	}
	get := func(u string) error {
		resp, err := hc.Get(u)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			mac := benchMAC(0x10000 + i)
			offer, _, _, err := c.exchange(mac, false)
			if err != nil {
				fail(err)
				return
			}
			if _, err := tftpFetch(imagedTFTP, offer.BootFileName); err != nil {
				fail(fmt.Errorf("tftp %s: %w", offer.BootFileName, err))
				return
			}
			offer, _, _, err = c.exchange(mac, true)
			if err != nil {
				fail(err)
				return
			}
			script := strings.Replace(offer.BootFileName, "127.0.0.1:18080", imagedHTTP, 1)
			resp, err := hc.Get(script)
			if err != nil {
				fail(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, l := range strings.Split(string(body), "\n") {
				f := strings.Fields(l)
				if len(f) >= 2 && f[0] == "kernel" {
					err = get(f[1])
				} else if len(f) >= 4 && f[0] == "initrd" {
					err = get(f[3])
				}
				if err != nil {
					fail(err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	if failed.Load() == int32(n) {
		return 0, n, fmt.Errorf("every host failed: %v", firstErr.Load())
	}
	if e := firstErr.Load(); e != nil {
		logf("storm: first failure: %v", e)
	}
	return time.Since(start), int(failed.Load()), nil
}
