// Command benchdelta measures delta updates side by side, in one table:
// two real Debian images made by debootstrap from this machine's package
// sources, the second after a real security update (apt-get upgrade from
// the suite's -updates and -security, one package added;
// testvm.DebianUpdated), staged onto a hostpart that holds the first.
// Bytes on the wire (counted by the server, headers included) for
// hnboot's delta (its missing chunks as zstd frames of the pack, and as
// raw ranges of the image with the pack hidden), the full image, rsync of
// the two trees (the practical floor; uncompressed and -z), zsync and
// casync on the same pair; and the time to stage on loopback and through
// a 1 Gbit/s link (tc tbf inside network namespaces). Run it with
// `make bench`.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/httpget"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/stage"
	"github.com/hnboot/hnboot/testvm"
)

const (
	runs      = 3
	shapedNet = "10.79.0"
	rate      = "1gbit"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchdelta:", err)
		os.Exit(1)
	}
}

// counter counts the bytes a listener's connections write: what the
// server puts on the wire above TCP, headers included.
type counter struct {
	net.Listener
	n atomic.Int64
}

func (c *counter) Accept() (net.Conn, error) {
	conn, err := c.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countConn{Conn: conn, n: &c.n}, nil
}

type countConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// where is one way to reach the server: loopback, or the shaped link.
type where struct {
	name string
	base string // http://host:port
	cnt  *counter
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	cmd  func(ctx context.Context, name string, args ...string) *exec.Cmd
}

type result struct {
	bytes int64
	secs  []float64
}

func (r result) median() float64 {
	s := append([]float64(nil), r.secs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func need(tools ...string) error {
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found: apt-get install rsync zsync casync iproute2 (or scripts/deps.sh)", t)
		}
	}
	return nil
}

func run(out io.Writer) error {
	ctx := context.Background()
	if err := need("rsync", "zsync", "zsyncmake", "casync", "tc", "ip", "curl"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "hnboot-benchdelta-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f, err := testvm.Build(ctx, dir, io.Discard)
	if err != nil {
		return err
	}
	base, err := testvm.DebianBase(ctx, os.Stderr)
	if err != nil {
		return err
	}
	upd, err := testvm.DebianUpdated(ctx, os.Stderr)
	if err != nil {
		return err
	}
	// The base without apt's lists, as the update leaves them: the pair
	// differs by the update alone.
	t1 := filepath.Join(dir, "tree-v1")
	if out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", base, t1).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s: %v: %s", base, err, out)
	}
	lists, _ := filepath.Glob(filepath.Join(t1, "var/lib/apt/lists/*"))
	for _, l := range lists {
		os.RemoveAll(l)
	}
	changed, err := packageChanges(t1, upd)
	if err != nil {
		return err
	}
	srv := filepath.Join(dir, "srv")
	os.MkdirAll(srv, 0o755)
	v1, v2 := filepath.Join(dir, "v1.img"), filepath.Join(srv, "v2.img")
	for _, b := range []struct{ tree, out, version string }{{t1, v1, "1"}, {upd, v2, "2"}} {
		start := time.Now()
		if err := f.Run(ctx, "rootfs", "--from", b.tree, "--out", b.out, "--name", "debian", "--version", b.version); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "benchdelta: %s in %v\n", b.out, time.Since(start).Round(100*time.Millisecond))
	}
	m2, err := manifest.ReadFile(layout.ManifestFor(v2))
	if err != nil {
		return err
	}
	digest, size := "sha256:"+m2.SHA256, m2.Size
	ixb, err := os.ReadFile(v2 + layout.ChunksSuffix)
	if err != nil {
		return err
	}
	ix, err := chunkindex.Parse(ixb)
	if err != nil {
		return err
	}
	// imaged's layout too (/blobs/DIGEST, .json, .chunks), with v1's
	// index published beside: a static server can hold the same.
	m1, err := manifest.ReadFile(layout.ManifestFor(v1))
	if err != nil {
		return err
	}
	blobs := filepath.Join(srv, "blobs")
	os.MkdirAll(blobs, 0o755)
	for src, dst := range map[string]string{v2: digest, layout.ManifestFor(v2): digest + layout.ManifestSuffix,
		v2 + layout.ChunksSuffix: digest + layout.ChunksSuffix, v2 + layout.PackSuffix: digest + layout.PackSuffix,
		v1 + layout.ChunksSuffix: "sha256:" + m1.SHA256 + layout.ChunksSuffix} {
		if err := os.Link(src, filepath.Join(blobs, dst)); err != nil {
			return err
		}
	}
	if out, err := exec.CommandContext(ctx, "zsyncmake", "-o", v2+".zsync", "-u", "v2.img", v2).CombinedOutput(); err != nil {
		return fmt.Errorf("zsyncmake: %v: %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "casync", "make", "--store="+filepath.Join(srv, "store.castr"), filepath.Join(srv, "v2.caibx"), v2).CombinedOutput(); err != nil {
		return fmt.Errorf("casync make: %v: %s", err, out)
	}

	// Loopback, and a 1 Gbit/s link: the server in one namespace, the
	// client in another, a veth pair between them shaped by tc.
	fs := hidePack(firstRange(http.FileServer(http.Dir(srv))))
	lo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	loC := &counter{Listener: lo}
	go (&http.Server{Handler: fs}).Serve(loC)
	nsS, err := testvm.NewNetNS("hnbdS")
	if err != nil {
		return err
	}
	defer nsS.Close()
	nsC, err := testvm.NewNetNS("hnbdC")
	if err != nil {
		return err
	}
	defer nsC.Close()
	for _, c := range [][]string{
		{"link", "add", "hnbdS0", "netns", nsS.Name, "type", "veth", "peer", "name", "hnbdC0", "netns", nsC.Name},
		{"-n", nsS.Name, "addr", "add", shapedNet + ".1/24", "dev", "hnbdS0"},
		{"-n", nsC.Name, "addr", "add", shapedNet + ".2/24", "dev", "hnbdC0"},
		{"-n", nsS.Name, "link", "set", "hnbdS0", "up"},
		{"-n", nsC.Name, "link", "set", "hnbdC0", "up"},
	} {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	for _, ns := range []*testvm.NetNS{nsS, nsC} {
		dev := map[*testvm.NetNS]string{nsS: "hnbdS0", nsC: "hnbdC0"}[ns]
		if out, err := ns.Command(ctx, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "20ms").CombinedOutput(); err != nil {
			return fmt.Errorf("tc in %s: %v: %s", ns.Name, err, out)
		}
	}
	sl, err := nsS.Listen(shapedNet + ".1:8080")
	if err != nil {
		return err
	}
	slC := &counter{Listener: sl}
	go (&http.Server{Handler: fs}).Serve(slC)
	ways := []where{
		{"loopback", "http://" + lo.Addr().String(), loC, (&net.Dialer{}).DialContext, exec.CommandContext},
		{rate + "/s", "http://" + shapedNet + ".1:8080", slC, nsC.DialContext, nsC.Command},
	}

	hp := filepath.Join(dir, "hostpart")
	os.MkdirAll(hp, 0o755)
	if err := os.Link(v1, filepath.Join(hp, layout.Current)); err != nil {
		return err
	}
	// v1's manifest beside it, as staging leaves it: the host knows v1's
	// digest without hashing it.
	if b, err := os.ReadFile(layout.ManifestFor(v1)); err != nil {
		return err
	} else if err := os.WriteFile(filepath.Join(hp, layout.ManifestFor(layout.Current)), b, 0o644); err != nil {
		return err
	}
	v1Index := filepath.Join(hp, layout.ChunksDir, m1.SHA256+layout.ChunksSuffix)
	clean := func() {
		for _, n := range []string{layout.New, layout.ManifestFor(layout.New), layout.NewPart, layout.Staging, "out.img", "out.img.part", "zsync.out"} {
			os.Remove(filepath.Join(hp, n))
		}
		os.RemoveAll(filepath.Join(hp, ".hnboot", "images"))
		os.RemoveAll(filepath.Join(hp, layout.ChunksDir))
	}
	// how v1's chunks are found: its index kept on hostpart, fetched
	// from the server (/blobs/DIGEST.chunks), or v1 read.
	const kept, fetched, read, raw = "kept", "fetched", "read", "raw"
	delta := func(w where, how string) error {
		url := w.base + "/blobs/" + digest
		switch how {
		case raw:
			url = w.base + rawPrefix + "/blobs/" + digest // the pack 404s: raw ranges of the image
		case kept:
			// v1 was staged by delta itself: its index is kept.
			os.MkdirAll(filepath.Dir(v1Index), 0o755)
			if err := copyFile(v1+layout.ChunksSuffix, v1Index); err != nil {
				return err
			}
		case read:
			url = w.base + "/v2.img" // no digest in the URL: no index of v1 to ask for
		}
		res, err := stage.Stage(ctx, hp, stage.Request{Source: stage.HTTPSource{URL: url, Client: &httpget.Client{Dial: w.dial}}, Digest: digest, Size: size, Reserve: 1})
		if err == nil && res.Delta == nil {
			err = fmt.Errorf("no delta: %s", res.Fallback)
		}
		if err == nil && (how == read) != (len(res.Delta.Scanned) == 1) {
			err = fmt.Errorf("delta (%s): v1 indexed %v, scanned %v", how, res.Delta.Indexed, res.Delta.Scanned)
		}
		if err == nil && (how == raw) != (res.Delta.PackChunks == 0) {
			err = fmt.Errorf("delta (%s): %d of %d chunks from the pack (%s)", how, res.Delta.PackChunks, res.Delta.FetchedChunks, res.Delta.PackFallback)
		}
		if err == nil {
			fmt.Fprintf(os.Stderr, "benchdelta: %s: %s; index %d bytes; scan %v, %v in all\n", w.name, res.Delta, res.Delta.IndexBytes, res.Delta.Scan.Round(time.Millisecond), res.Took.Round(time.Millisecond))
		}
		return err
	}
	check := func(name string) error {
		got, err := digestOf(filepath.Join(hp, name))
		if err != nil || got != digest {
			return fmt.Errorf("%s: %s, want %s (%v)", name, got, digest, err)
		}
		return nil
	}
	methods := []struct {
		name string
		fn   func(w where) error
		file string
	}{
		{"hnboot delta, v1's index from the server", func(w where) error { return delta(w, fetched) }, layout.New},
		{"hnboot delta, v1's index kept on hostpart", func(w where) error { return delta(w, kept) }, layout.New},
		{"hnboot delta, v1 read for its chunks", func(w where) error { return delta(w, read) }, layout.New},
		{"hnboot delta, raw ranges (pack hidden), index fetched", func(w where) error { return delta(w, raw) }, layout.New},
		{"hnboot full download (--no-delta)", func(w where) error {
			_, err := stage.Stage(ctx, hp, stage.Request{Source: stage.HTTPSource{URL: w.base + "/v2.img", Client: &httpget.Client{Dial: w.dial}}, Digest: digest, Size: size, Reserve: 1, NoDelta: true})
			return err
		}, layout.New},
		{"zsync -i v1.img", func(w where) error {
			c := w.cmd(ctx, "zsync", "-q", "-i", v1, "-o", filepath.Join(hp, "out.img"), w.base+"/v2.img.zsync")
			c.Dir = hp
			if out, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("zsync: %v: %s", err, out)
			}
			return nil
		}, "out.img"},
		{"casync extract --seed=v1.img", func(w where) error {
			c := w.cmd(ctx, "casync", "extract", "--seed="+v1, "--store="+w.base+"/store.castr", w.base+"/v2.caibx", filepath.Join(hp, "out.img"))
			if out, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("casync extract: %v: %s", err, out)
			}
			return nil
		}, "out.img"},
	}
	results := map[string]map[string]*result{}
	for _, m := range methods {
		results[m.name] = map[string]*result{}
		for _, w := range ways {
			r := &result{}
			for i := 0; i < runs; i++ {
				clean()
				dropCaches(v2)
				w.cnt.n.Store(0)
				start := time.Now()
				if err := m.fn(w); err != nil {
					return fmt.Errorf("%s over %s: %w", m.name, w.name, err)
				}
				r.secs = append(r.secs, time.Since(start).Seconds())
				r.bytes = w.cnt.n.Load()
				if err := check(m.file); err != nil {
					return fmt.Errorf("%s over %s: %w", m.name, w.name, err)
				}
			}
			results[m.name][w.name] = r
			fmt.Fprintf(os.Stderr, "benchdelta: %s over %s: %d bytes, %.2f s\n", m.name, w.name, r.bytes, r.median())
		}
	}
	clean()
	rs, err := rsyncBytes(ctx, dir, t1, upd, false)
	if err != nil {
		return err
	}
	rsz, err := rsyncBytes(ctx, dir, t1, upd, true)
	if err != nil {
		return err
	}

	fmt.Fprintf(out, "\nDelta update of a Debian %s image (ext4, %.1f MiB, %d chunks): %s\n", testvm.DebianSuite, float64(size)/(1<<20), len(ix.Chunks), changed)
	fmt.Fprintf(out, "onto a hostpart that holds v1; bytes the server sent (headers included), median time of %d runs\n\n", runs)
	fmt.Fprintf(out, "| %-55s | %12s | %8s | %9s | %11s | %10s | %10s |\n", "method", "bytes", "of image", "vs rsync", "vs rsync -z", "loopback", rate+"/s")
	fmt.Fprintf(out, "|%s|%s|%s|%s|%s|%s|%s|\n", dashes(57), dashes(14), dashes(10), dashes(11), dashes(13), dashes(12), dashes(12))
	row := func(name string, b int64, lo, sh string) {
		fmt.Fprintf(out, "| %-55s | %12d | %7.2f%% | %8.2fx | %10.2fx | %10s | %10s |\n", name, b, 100*float64(b)/float64(size), float64(b)/float64(rs), float64(b)/float64(rsz), lo, sh)
	}
	for _, m := range methods {
		r := results[m.name]
		row(m.name, r[ways[1].name].bytes, fmt.Sprintf("%.2f s", r[ways[0].name].median()), fmt.Sprintf("%.2f s", r[ways[1].name].median()))
	}
	row("rsync -a --no-whole-file of the two trees", rs, "-", "-")
	row("rsync -az --no-whole-file of the two trees", rsz, "-", "-")
	d, keptR, scan, rawR, full := results[methods[0].name][ways[1].name], results[methods[1].name][ways[1].name], results[methods[2].name][ways[1].name], results[methods[3].name][ways[1].name], results[methods[4].name][ways[1].name]
	fmt.Fprintf(out, "\nTargets: delta <= 10%% of the image's bytes (%.2f%%), within 1.5x of rsync (%.2fx; %.2fx by raw ranges, %.2fx of rsync -z), no slower than a full\n",
		100*float64(d.bytes)/float64(size), float64(d.bytes)/float64(rs), float64(rawR.bytes)/float64(rs), float64(d.bytes)/float64(rsz))
	fmt.Fprintf(out, "download at %s/s (%.2f s, %.2f s with v1's index kept, %.2f s reading v1, against %.2f s). The delta's bytes\n", rate, d.median(), keptR.median(), scan.median(), full.median())
	fmt.Fprintf(out, "include the indexes (v2's: %d bytes) and every request's headers. Chunks are content-defined (%d/%d/%d KiB), each\n",
		len(ixb), chunkindex.MinSize>>10, (1<<chunkindex.AverageBits)>>10, chunkindex.MaxSize>>10)
	fmt.Fprintf(out, "fetched as its own zstd frame, ranges of v2.img.zst (%.1f MiB, %.0f%% of the image); a\n", float64(ix.PackSize)/(1<<20), 100*float64(ix.PackSize)/float64(size))
	fmt.Fprintf(out, "host keeps the index of each image it staged, else asks the server for the current image's (checked against the\n")
	fmt.Fprintf(out, "manifest beside it), else reads the image. zsync uses fixed blocks and its own .zsync file, casync a chunk store;\n")
	fmt.Fprintf(out, "rsync compares the trees file by file (no image): the floor for any method that ships an image; rsync -z\n")
	fmt.Fprintf(out, "compresses its stream (zlib) between two processes on a pipe, counted by --stats.\n")
	return nil
}

// packageChanges says what the update changed, by dpkg's records.
func packageChanges(a, b string) (string, error) {
	va, err := testvm.DpkgVersions(a)
	if err != nil {
		return "", err
	}
	vb, err := testvm.DpkgVersions(b)
	if err != nil {
		return "", err
	}
	var up, add []string
	for p, v := range vb {
		switch old, ok := va[p]; {
		case !ok:
			add = append(add, p+" "+v)
		case old != v:
			up = append(up, p)
		}
	}
	sort.Strings(up)
	sort.Strings(add)
	return fmt.Sprintf("%d packages upgraded by %s-updates and -security (%s), %d added (%s)",
		len(up), testvm.DebianSuite, strings.Join(up, " "), len(add), strings.Join(add, ", ")), nil
}

var rsyncRx = regexp.MustCompile(`Total bytes (sent|received): ([0-9,]+)`)

// rsyncBytes is what rsync moves to bring a copy of tree a to tree b, in
// both directions (its checksums go to the sender, the data back).
//
// With compress, rsync -z talks to the receiver through a "remote shell"
// that runs it here (-e, the host name dropped): the two processes speak
// rsync's protocol over a pipe, compressed, and --stats counts the bytes
// on it. Checked on a tree of text files: 1,790,198 bytes sent without
// -z, 16,396 with it, over the pipe and in local mode alike (rsync 3
// compresses local transfers too, over its socketpair); the pipe makes
// it plain that the count is of a transport.
func rsyncBytes(ctx context.Context, dir, a, b string, compress bool) (int64, error) {
	dst := filepath.Join(dir, "rsync-dst")
	if out, err := exec.CommandContext(ctx, "cp", "-a", a, dst).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("cp: %v: %s", err, out)
	}
	defer os.RemoveAll(dst)
	args := []string{"-a", "-H", "--numeric-ids", "--no-whole-file", "--delete", "--stats", b + "/", dst + "/"}
	if compress {
		rsh := filepath.Join(dir, "rsh")
		if err := os.WriteFile(rsh, []byte("#!/bin/sh\nshift\nexec \"$@\"\n"), 0o755); err != nil {
			return 0, err
		}
		args = append([]string{"-z", "-e", rsh}, args[:len(args)-1]...)
		args = append(args, "localhost:"+dst+"/")
	}
	out, err := exec.CommandContext(ctx, "rsync", args...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("rsync: %v: %s", err, out)
	}
	var n int64
	for _, m := range rsyncRx.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseInt(strings.ReplaceAll(m[2], ",", ""), 10, 64)
		n += v
	}
	if n == 0 {
		return 0, fmt.Errorf("rsync --stats printed no totals:\n%s", out)
	}
	return n, nil
}

func digestOf(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	d, _, err := manifest.Digest(f)
	return "sha256:" + d, err
}

// dropCaches evicts the served image from the page cache, so every run
// reads it from disk as a server would; the host's v1 stays cached.
func dropCaches(p string) {
	if f, err := os.Open(p); err == nil {
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
}

// firstRange answers a request for several ranges with the first one
// alone (a single-part 206), as servers may: zsync 0.6.2 loops on Go's
// multipart/byteranges answers, and asks again for the rest.
func firstRange(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rng := r.Header.Get("Range"); strings.Contains(rng, ",") {
			r.Header.Set("Range", rng[:strings.Index(rng, ",")])
		}
		h.ServeHTTP(w, r)
	})
}

// rawPrefix serves the same files without the packs: /raw/blobs/DIGEST
// is the blob, its .json and .chunks, and its .zst is 404, so a host
// fetches the missing chunks as raw ranges of the image, as before packs.
const rawPrefix = "/raw"

func hidePack(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := strings.CutPrefix(r.URL.Path, rawPrefix+"/")
		if !ok {
			h.ServeHTTP(w, r)
			return
		}
		if strings.HasSuffix(p, layout.PackSuffix) {
			http.NotFound(w, r)
			return
		}
		r.URL.Path = "/" + p
		h.ServeHTTP(w, r)
	})
}

func dashes(n int) string { return strings.Repeat("-", n) }

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}
