package main

// The image download at boot against curl: the same VM fetches the same
// blob from the same imaged serve twice, once by the hnboot init (the
// assigned image, into hn-root-new.img.part: sha256 while writing,
// fsync) and, once it switched root into that image, by curl (to a file
// on hostpart followed by sync, and to /dev/null). Kept in its own file:
// the boot-time table in main.go is someone else's.

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/httpget"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/stage"
	"github.com/hnboot/hnboot/testvm"
)

const (
	fetchNet    = "10.78.0"
	fetchServer = fetchNet + ".1:8080"
	fetchMAC    = "52:54:00:78:00:01"
	fetchFiller = 96 << 20 // bytes of incompressible data in the image
)

// benchCurlInit is /sbin/init of the downloaded image: it times curl on
// the blob the init just fetched, the URL from hnbench.url= on the
// kernel command line (the hnboot init ignores keys it does not know).
const benchCurlInit = `#!/bin/sh
export PATH=/bin:/sbin:/usr/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The hnboot init hands the NIC over down and unconfigured (the image's
# network manager owns it): configure it as the init's lease did.
ip link set eth0 up
ip addr add 10.78.0.100/24 dev eth0
url=$(sed -n 's/.*hnbench.url=\([^ ]*\).*/\1/p' /proc/cmdline)
up() { cut -d' ' -f1 /proc/uptime; }
t0=$(up)
echo "BENCH cpus=$(grep -c ^processor /proc/cpuinfo)"
curl -sS -o /hostpart/curl.out -w '%{size_download}' "$url" > /tmp/size
sync
t1=$(up)
echo "BENCH curl-file bytes=$(cat /tmp/size) t0=$t0 t1=$t1"
sha256sum /hostpart/curl.out > /dev/null
t2=$(up)
echo "BENCH curl-sha bytes=$(cat /tmp/size) t0=$t0 t1=$t2"
rm -f /hostpart/curl.out
sync
echo "BENCH curl-null $(curl -sS -o /dev/null -w 'bytes=%{size_download} secs=%{time_total}' "$url")"
echo "HNTEST end"
poweroff -f
`

type fetchSample struct{ init, curlFile, curlSHA, curlNull float64 } // MB/s

// fetchBench boots the download benchmark runs times and prints its table.
func fetchBench(ctx context.Context, f *testvm.Fixture, dir string, runs int, console bool, out io.Writer) error {
	if _, err := exec.LookPath("curl"); err != nil {
		return fmt.Errorf("curl not found: %s", testvm.InstallHint)
	}
	imgA, err := f.RootImage(ctx, testvm.RootOptions{Name: "fetchA", Confirm: true})
	if err != nil {
		return err
	}
	imgB, err := curlImage(ctx, f, dir)
	if err != nil {
		return err
	}
	base := filepath.Join(dir, "fetch-disk.img")
	if err := f.Run(ctx, "disk", "--root", imgA, "--out", base, "--size", "1G"); err != nil {
		return err
	}
	digest, size, err := fileDigest(imgB)
	if err != nil {
		return err
	}
	ns, err := testvm.NewNetNS("hnbfetch")
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := ns.Bridge("br0", fetchNet+".1/24"); err != nil {
		return err
	}
	if err := ns.Tap("tap0", "br0"); err != nil {
		return err
	}
	srv := ns.Command(ctx, f.Imaged, "serve", "--interface", "br0", "--http", fetchServer, "--cache", filepath.Join(dir, "fetch-cache"),
		"--dhcp-mode", "full", "--pool", fetchNet+".100-"+fetchNet+".150", "--host", fetchMAC+",bench-fetch,"+imgB)
	logf, err := os.Create(filepath.Join(dir, "fetch-imaged.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	if err := waitFile(logf.Name(), "msg=serving", time.Minute); err != nil {
		return err
	}

	fmt.Fprintf(out, "\nImage download at boot, %.1f MiB blob from imaged serve (same VM, same server, virtio-net, TCG), median of %d runs\n\n", float64(size)/(1<<20), runs)
	fmt.Fprintf(out, "| %-6s | %-58s | %10s | %8s |\n|%s|%s|%s|%s|\n", "vCPUs", "download", "MB/s", "vs curl", dashes(8), dashes(60), dashes(12), dashes(10))
	for _, cpus := range []int{1, 2} {
		var samples []fetchSample
		for i := 0; i < runs; i++ {
			s, err := fetchOnce(ctx, f, ns, base, dir, digest, cpus, console)
			if err != nil {
				return fmt.Errorf("download run %d (%d vCPUs): %w", i+1, cpus, err)
			}
			samples = append(samples, s)
			fmt.Fprintf(os.Stderr, "bench: download run %d/%d, %d vCPUs: init %.1f MB/s, curl to file %.1f MB/s, curl to /dev/null %.1f MB/s\n", i+1, runs, cpus, s.init, s.curlFile, s.curlNull)
		}
		med := func(g func(fetchSample) float64) float64 {
			v := make([]float64, len(samples))
			for i, s := range samples {
				v[i] = g(s)
			}
			sort.Float64s(v)
			return v[len(v)/2]
		}
		initM, fileM, shaM, nullM := med(func(s fetchSample) float64 { return s.init }), med(func(s fetchSample) float64 { return s.curlFile }),
			med(func(s fetchSample) float64 { return s.curlSHA }), med(func(s fetchSample) float64 { return s.curlNull })
		fmt.Fprintf(out, "| %6d | %-58s | %10.1f | %7.2fx |\n", cpus, "hnboot init: hn-root-new.img.part, sha256, fsync, rename", initM, initM/fileM)
		fmt.Fprintf(out, "| %6d | %-58s | %10.1f | %7.2fx |\n", cpus, "curl -o FILE on hostpart, then sync", fileM, 1.0)
		fmt.Fprintf(out, "| %6d | %-58s | %10.1f | %7.2fx |\n", cpus, "curl -o FILE, sync, then sha256sum FILE (the same work)", shaM, shaM/fileM)
		fmt.Fprintf(out, "| %6d | %-58s | %10.1f | %7.2fx |\n", cpus, "curl -o /dev/null", nullM, nullM/fileM)
	}
	fmt.Fprintf(out, "\nTarget: the init >= 0.9x curl to a file. The init's figure is bytes over its stage's whole time (manifest\n")
	fmt.Fprintf(out, "fetched first, free space checked, sha256 of every byte, fsync, rename); curl's to a file includes the sync.\n")
	fmt.Fprintf(out, "Under QEMU's TCG Go's SHA-256 runs at about 28 MB/s per vCPU (natively 1.4 GB/s), the kernel's C sha256 2-3x faster:\n")
	fmt.Fprintf(out, "the init times both and verifies with the faster (internal/afalg; its console says which). With one vCPU the\n")
	fmt.Fprintf(out, "hash still adds to the download's time; with two it runs beside the network and the disk.\n")
	return nativeFetch(ctx, ns, digest, size, dir, runs, out)
}

// nativeFetch runs the init's download code (internal/stage over
// internal/httpget, what the init runs) on this machine against the same
// server and blob, beside curl: the download without TCG's emulated
// SHA-256.
func nativeFetch(ctx context.Context, ns *testvm.NetNS, digest string, size int64, dir string, runs int, out io.Writer) error {
	url := "http://" + fetchServer + "/blobs/" + digest
	target := filepath.Join(dir, "native")
	var stageS, curlS []float64
	for i := 0; i < runs; i++ {
		os.RemoveAll(target)
		os.MkdirAll(target, 0o755)
		start := time.Now()
		_, err := stage.Stage(ctx, target, stage.Request{
			Source: stage.HTTPSource{URL: url, Client: &httpget.Client{Dial: ns.DialContext}}, Digest: digest, Size: size,
		})
		if err != nil {
			return fmt.Errorf("native stage: %w", err)
		}
		stageS = append(stageS, float64(size)/1e6/time.Since(start).Seconds())
		os.RemoveAll(target)
		os.MkdirAll(target, 0o755)
		start = time.Now()
		if out, err := ns.Command(ctx, "sh", "-c", "curl -sS -o "+filepath.Join(target, "curl.out")+" "+url+" && sync "+filepath.Join(target, "curl.out")).CombinedOutput(); err != nil {
			return fmt.Errorf("native curl: %v: %s", err, out)
		}
		curlS = append(curlS, float64(size)/1e6/time.Since(start).Seconds())
		fmt.Fprintf(os.Stderr, "bench: native download run %d/%d: stage %.0f MB/s, curl %.0f MB/s\n", i+1, runs, stageS[i], curlS[i])
	}
	os.RemoveAll(target)
	sort.Float64s(stageS)
	sort.Float64s(curlS)
	st, cu := stageS[len(stageS)/2], curlS[len(curlS)/2]
	fmt.Fprintf(out, "\nThe same download on this machine (no emulation: SHA-NI), same imaged, blob and namespace, median of %d runs\n\n", runs)
	fmt.Fprintf(out, "| %-58s | %10s | %8s |\n|%s|%s|%s|\n", "download", "MB/s", "vs curl", dashes(60), dashes(12), dashes(10))
	fmt.Fprintf(out, "| %-58s | %10.0f | %7.2fx |\n", "init's code (internal/stage + httpget): part, sha256, fsync", st, st/cu)
	fmt.Fprintf(out, "| %-58s | %10.0f | %7.2fx |\n", "curl -o FILE, then sync", cu, 1.0)
	return nil
}

var (
	initRx     = regexp.MustCompile(`image downloaded .*bytes=(\d+) .*took=(\S+) `)
	curlFileRx = regexp.MustCompile(`BENCH curl-file bytes=(\d+) t0=([0-9.]+) t1=([0-9.]+)`)
	curlSHARx  = regexp.MustCompile(`BENCH curl-sha bytes=(\d+) t0=([0-9.]+) t1=([0-9.]+)`)
	curlNullRx = regexp.MustCompile(`BENCH curl-null bytes=(\d+) secs=([0-9.]+)`)
)

func fetchOnce(ctx context.Context, f *testvm.Fixture, ns *testvm.NetNS, base, dir, digest string, cpus int, console bool) (fetchSample, error) {
	var s fetchSample
	disk := filepath.Join(dir, "fetch-boot.img")
	if err := copySparse(base, disk); err != nil {
		return s, err
	}
	url := "http://" + fetchServer + "/blobs/" + digest
	vm, err := testvm.Start(ctx, testvm.Options{
		Kernel: f.Kernel, Initrd: f.Initramfs, Disk: disk, Netns: ns.Name, Memory: 1024,
		Append: "quiet hn.server=http://" + fetchServer + " BOOTIF=01-" + strings.ReplaceAll(fetchMAC, ":", "-") + " hn.checkin=60s hnbench.url=" + url,
		Extra: []string{"-smp", strconv.Itoa(cpus), // the last -smp wins
			"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0,mac=" + fetchMAC},
	})
	if err != nil {
		return s, err
	}
	defer vm.Kill()
	if console {
		defer func() { fmt.Fprintln(os.Stderr, vm.Console()) }()
	}
	m, err := vm.Expect(initRx.String(), 5*time.Minute)
	if err != nil {
		return s, err
	}
	n, _ := strconv.ParseFloat(m[1], 64)
	took, err := time.ParseDuration(m[2])
	if err != nil || took <= 0 {
		return s, fmt.Errorf("init's download line: took=%q: %v", m[2], err)
	}
	s.init = n / 1e6 / took.Seconds()
	if m, err = vm.Expect(curlFileRx.String(), 5*time.Minute); err != nil {
		return s, err
	}
	n, _ = strconv.ParseFloat(m[1], 64)
	t0, _ := strconv.ParseFloat(m[2], 64)
	t1, _ := strconv.ParseFloat(m[3], 64)
	s.curlFile = n / 1e6 / (t1 - t0)
	if m, err = vm.Expect(curlSHARx.String(), 5*time.Minute); err != nil {
		return s, err
	}
	n, _ = strconv.ParseFloat(m[1], 64)
	t0, _ = strconv.ParseFloat(m[2], 64)
	t1, _ = strconv.ParseFloat(m[3], 64)
	s.curlSHA = n / 1e6 / (t1 - t0)
	if m, err = vm.Expect(curlNullRx.String(), 5*time.Minute); err != nil {
		return s, err
	}
	n, _ = strconv.ParseFloat(m[1], 64)
	secs, _ := strconv.ParseFloat(m[2], 64)
	s.curlNull = n / 1e6 / secs
	vm.Wait(time.Minute)
	return s, nil
}

// curlImage is a test root with curl (and the libraries it links) and
// fetchFiller bytes of random data, whose init times curl.
func curlImage(ctx context.Context, f *testvm.Fixture, dir string) (string, error) {
	tree := filepath.Join(dir, "tree-fetchB")
	os.RemoveAll(tree)
	if err := testvm.RootTree(tree, testvm.RootOptions{Name: "fetchB"}); err != nil {
		return "", err
	}
	for _, a := range []string{"sed", "ip"} {
		os.Symlink("busybox", filepath.Join(tree, "bin", a))
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		return "", err
	}
	files := []string{curl}
	ldd, err := exec.Command("ldd", curl).Output()
	if err != nil {
		return "", fmt.Errorf("ldd %s: %w", curl, err)
	}
	for _, l := range strings.Split(string(ldd), "\n") {
		for _, w := range strings.Fields(l) {
			if strings.HasPrefix(w, "/") {
				files = append(files, w)
			}
		}
	}
	for _, src := range files {
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			return "", err
		}
		b, err := os.ReadFile(real)
		if err != nil {
			return "", err
		}
		dst := filepath.Join(tree, src)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "sbin", "init"), []byte(benchCurlInit), 0o755); err != nil {
		return "", err
	}
	rnd, err := os.Open("/dev/urandom")
	if err != nil {
		return "", err
	}
	defer rnd.Close()
	filler, err := os.Create(filepath.Join(tree, "var", "filler"))
	if err != nil {
		return "", err
	}
	if _, err := io.CopyN(filler, rnd, fetchFiller); err != nil {
		filler.Close()
		return "", err
	}
	filler.Close()
	img := filepath.Join(dir, "fetchB.img")
	if err := f.Run(ctx, "rootfs", "--from", tree, "--out", img); err != nil {
		return "", err
	}
	return img, fullOnly(img)
}

// fullOnly makes img a full download: without its chunk index (the
// file, and its digest in the manifest) the init does not stage it by
// delta from the disk's image, which shares the busybox root and the
// zeros of free space with it. This table is the full download's.
func fullOnly(img string) error {
	if err := os.Remove(img + layout.ChunksSuffix); err != nil {
		return err
	}
	m, err := manifest.ReadFile(layout.ManifestFor(img))
	if err != nil {
		return err
	}
	m.Chunks = ""
	return m.WriteFile(layout.ManifestFor(img))
}

func fileDigest(path string) (string, int64, error) {
	out, err := exec.Command("sha256sum", path).Output()
	if err != nil {
		return "", 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", 0, err
	}
	return "sha256:" + strings.Fields(string(out))[0], fi.Size(), nil
}

func waitFile(path, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %q after %v:\n%s", path, want, timeout, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
