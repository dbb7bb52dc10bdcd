package boot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hnboot/hnboot/initramfs/diskcheck"
	"github.com/hnboot/hnboot/initramfs/netup"
	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/httpget"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/randseed"
)

// The fake machine: a temporary directory is hostpart, the System records
// what the init asks of it, and an httptest server plays imaged.

const fakeMAC = "52:54:00:12:34:56"

// fakeImage is a file the init takes for an ext4 image: a superblock that
// blkid accepts, the image's name at the start (the fake mount reads it)
// and filler that makes each image's digest its own.
func fakeImage(name string, size int) []byte {
	b := make([]byte, size)
	copy(b, "hnimage:"+name+"\n")
	for i := 4096; i < size; i++ {
		b[i] = byte(i*7) ^ name[0]
	}
	sb := b[1024:2048]
	clear(sb)
	le := binary.LittleEndian
	le.PutUint32(sb[0x4:], uint32(size/1024)) // blocks
	le.PutUint32(sb[0x18:], 0)                // 1 KiB blocks
	le.PutUint16(sb[0x38:], 0xEF53)
	le.PutUint32(sb[0x60:], 0x40) // extents: ext4
	copy(sb[0x68:0x78], name)
	return b
}

func imageName(path string) string {
	b := make([]byte, 64)
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	n, _ := f.Read(b)
	s, ok := strings.CutPrefix(string(b[:n]), "hnimage:")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(s, "\n")
	return name
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

type fakeSys struct {
	t     *testing.T
	paths Paths

	cmdline string
	release string

	mu          sync.Mutex
	calls       []string
	loops       map[string]string // loop device -> file
	mounted     map[string]string // target -> image name
	noInit      map[string]bool   // images without /sbin/init
	badMount    map[string]bool   // images that fail to mount
	switched    string
	rescued     error
	netErr      error
	netHang     bool // NetUp waits for the context
	noHostpart  bool
	hostpartErr error // mounting hostpart fails so
	// lateDisk: hostpart's driver has no known alias: the partition shows
	// up lateDisk after LoadAll, which takes slowAll.
	lateDisk, slowAll time.Duration
	allDone           time.Time
	http              *httpget.Client
	skew              time.Duration
}

func (s *fakeSys) log(format string, a ...any) {
	s.mu.Lock()
	s.calls = append(s.calls, fmt.Sprintf(format, a...))
	s.mu.Unlock()
}

func (s *fakeSys) Cmdline() (string, error) { return s.cmdline, nil }
func (s *fakeSys) Release() string {
	if s.release == "" {
		return "6.1.0-test-amd64"
	}
	return s.release
}
func (s *fakeSys) LoadHardware(found func() bool)          {}
func (s *fakeSys) LoadNetworkDrivers()                     {}
func (s *fakeSys) LoadModules(why string, names ...string) {}
func (s *fakeSys) LoadAll() {
	s.log("loadall")
	s.Sleep(s.slowAll)
	s.allDone = s.Now()
}

func (s *fakeSys) FindPartition(spec string) (string, blkid.Info, error) {
	if s.noHostpart || s.lateDisk > 0 && (s.allDone.IsZero() || s.Now().Sub(s.allDone) < s.lateDisk) {
		return "", blkid.Info{}, errors.New("no such partition")
	}
	return "/dev/vda2", blkid.Info{Type: "ext4", Label: layout.HostpartLabel}, nil
}

func (s *fakeSys) CheckDisk(dev, image string) (diskcheck.Report, string, bool) {
	return diskcheck.Report{Disk: "/dev/vda"}, "/dev/vda", true
}

func (s *fakeSys) Mount(source, target, fstype, data string, flags uintptr) error {
	s.log("mount %s %s %s", source, target, fstype)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case target == s.paths.Hostpart:
		return s.hostpartErr
	case target == s.paths.Image:
		name := imageName(s.loops[source])
		if s.badMount[name] {
			return errors.New("bad superblock")
		}
		s.mounted[target] = name
	case target == s.paths.NewRoot:
		name := s.mounted[s.paths.Image]
		if !s.noInit[name] {
			os.MkdirAll(filepath.Join(target, "sbin"), 0o755)
			os.WriteFile(filepath.Join(target, "sbin", "init"), []byte(name), 0o755)
		}
		s.mounted[target] = name
	}
	return nil
}

func (s *fakeSys) Unmount(target string) error {
	s.mu.Lock()
	delete(s.mounted, target)
	s.mu.Unlock()
	if target == s.paths.NewRoot {
		os.RemoveAll(target) // the overlay's files go with it
	}
	return nil
}

func (s *fakeSys) MoveMount(from, to string) error      { s.log("move %s %s", from, to); return nil }
func (s *fakeSys) Remount(target string, ro bool) error { return nil }

func (s *fakeSys) AttachLoop(file string) (string, func() error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dev := fmt.Sprintf("/dev/loop%d", len(s.loops))
	s.loops[dev] = file
	return dev, func() error { return nil }, nil
}

func (s *fakeSys) Sync()                         {}
func (s *fakeSys) Sethostname(name string) error { s.log("hostname %s", name); return nil }
func (s *fakeSys) KexecLoad(k, i, c string) error {
	s.log("kexec load %s %s", k, c)
	return errors.New("no kexec in tests")
}
func (s *fakeSys) KexecReboot() error { return errors.New("no kexec in tests") }

func (s *fakeSys) SwitchRoot(root, init string) error {
	s.mu.Lock()
	s.switched = s.mounted[root]
	s.mu.Unlock()
	return nil
}

func (s *fakeSys) Rescue(reason error) { s.rescued = reason }

func (s *fakeSys) BootNIC(mac string) (string, string, error) { return "eth0", fakeMAC, nil }

func (s *fakeSys) NetUp(ctx context.Context, ifname string) (netup.Lease, error) {
	s.log("netup %s", ifname)
	if s.netHang {
		<-ctx.Done()
		return netup.Lease{}, fmt.Errorf("DHCP on %s: no offer: %w", ifname, ctx.Err())
	}
	if s.netErr != nil {
		return netup.Lease{}, s.netErr
	}
	return netup.Lease{Interface: ifname, Address: &net.IPNet{IP: net.IPv4(10, 0, 0, 50), Mask: net.CIDRMask(24, 32)}, Server: net.IPv4(10, 0, 0, 1)}, nil
}

func (s *fakeSys) NetDown(l netup.Lease) error {
	s.log("netdown %s %s ours=%v", l.Interface, l.Address, l.Ours())
	return nil
}

func (s *fakeSys) SHA256() func() hash.Hash { return sha256.New }

func (s *fakeSys) HTTP() HTTP {
	if s.http == nil {
		return &httpget.Client{}
	}
	return s.http
}

func (s *fakeSys) Random() randseed.Kernel { return readyPool{} }

// The clock runs as fast as the init sleeps: waiting 30 s for a disk
// takes no time.
func (s *fakeSys) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Add(s.skew)
}

func (s *fakeSys) Sleep(d time.Duration) {
	s.mu.Lock()
	s.skew += d
	s.mu.Unlock()
}

// readyPool is a machine with an initialized random pool.
type readyPool struct{}

func (readyPool) BootID() (string, error)           { return "test-boot", nil }
func (readyPool) Ready(n int) ([]byte, bool, error) { return make([]byte, n), true, nil }
func (readyPool) Insecure(n int) ([]byte, error)    { return make([]byte, n), nil }
func (readyPool) Add(b []byte, bits int) error      { return nil }

// fakeImaged plays imaged: the assignment, the blobs (with Range), their
// manifests and the check-ins.
type fakeImaged struct {
	*httptest.Server
	mu       sync.Mutex
	assigned *Assigned // nil: 404
	config   string    // JSON fields of the host configuration added to the answer ("" none)
	blobs    map[string][]byte
	manif    map[string][]byte
	corrupt  bool  // flip a byte of every blob
	cutAt    int64 // drop the connection after this many blob bytes (once)
	hang     bool  // never answer /desired
	served   int64 // blob bytes sent
	checkins []checkin.Checkin
}

func newImaged(t *testing.T) *fakeImaged {
	f := &fakeImaged{blobs: map[string][]byte{}, manif: map[string][]byte{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeImaged) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	assigned, config, hang, corrupt, cut := f.assigned, f.config, f.hang, f.corrupt, f.cutAt
	key := strings.TrimPrefix(r.URL.Path, "/blobs/")
	blob, isBlob := f.blobs[key]
	man, isMan := f.manif[strings.TrimSuffix(key, ".json")]
	if isBlob {
		f.cutAt = 0
	}
	f.mu.Unlock()
	switch {
	case r.Method == "POST" && r.URL.Path == "/checkin":
		var c checkin.Checkin
		json.NewDecoder(r.Body).Decode(&c)
		f.mu.Lock()
		f.checkins = append(f.checkins, c)
		f.mu.Unlock()
		w.WriteHeader(204)
	case strings.HasSuffix(r.URL.Path, "/desired"):
		if hang {
			<-r.Context().Done()
			return
		}
		if assigned == nil {
			http.Error(w, `{"error": "not in the fleet"}`, 404)
			return
		}
		body, _ := json.Marshal(assigned)
		if config != "" { // the answer is a fleet.DesiredHost: the configuration inline
			body = append(append(body[:len(body)-1], ','), config[1:]...)
		}
		w.Write(body)
	case strings.HasSuffix(key, ".json") && isMan:
		w.Write(man)
	case isBlob:
		if corrupt {
			blob = bytes.Clone(blob)
			blob[len(blob)/2] ^= 0xff
		}
		http.ServeContent(&cutWriter{ResponseWriter: w, f: f, limit: cut}, r, "", time.Time{}, bytes.NewReader(blob))
	default:
		http.NotFound(w, r)
	}
}

type cutWriter struct {
	http.ResponseWriter
	f     *fakeImaged
	n     int64
	limit int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if c.limit > 0 && c.n+int64(len(p)) > c.limit {
		p = p[:c.limit-c.n]
		n, _ := c.ResponseWriter.Write(p)
		c.add(n)
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // a server killed mid-download
	}
	n, err := c.ResponseWriter.Write(p)
	c.add(n)
	return n, err
}

func (c *cutWriter) add(n int) {
	c.n += int64(n)
	c.f.mu.Lock()
	c.f.served += int64(n)
	c.f.mu.Unlock()
}

// publish serves img as name version, with a manifest signed by k (nil:
// unsigned; noManifest: none).
func (f *fakeImaged) publish(t *testing.T, name string, img []byte, k *manifest.PrivateKey, noManifest bool) AssignedImage {
	t.Helper()
	d := digestOf(img)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobs[d] = img
	if !noManifest {
		f.manif[d] = manifestOf(t, img, name, k)
	}
	return AssignedImage{Name: name, Version: "1", Digest: d, Size: int64(len(img))}
}

func manifestOf(t *testing.T, img []byte, name string, k *manifest.PrivateKey) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), name+".img")
	os.WriteFile(p, img, 0o644)
	m, err := manifest.New(p, manifest.Fields{Name: name, Version: "1", FS: "ext4", BuildTime: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if k != nil {
		if err := m.Sign(k); err != nil {
			t.Fatal(err)
		}
	}
	return m.Marshal()
}

// world is one host: its hostpart, its System, its console.
type world struct {
	t     *testing.T
	paths Paths
	sys   *fakeSys
	log   *bytes.Buffer
	mu    *sync.Mutex
}

func newWorld(t *testing.T, slots map[string][]byte) *world {
	t.Helper()
	root := t.TempDir()
	p := Paths{
		Hostpart:  filepath.Join(root, "hostpart"),
		Image:     filepath.Join(root, "run/image"),
		RW:        filepath.Join(root, "run/rw"),
		NewRoot:   filepath.Join(root, "newroot"),
		Initramfs: filepath.Join(root, "initramfs"),
		RAM:       filepath.Join(root, "run/ram"),
		Proc:      filepath.Join(root, "proc"),
	}
	os.MkdirAll(p.Hostpart, 0o755)
	writeMeminfo(t, p.Proc, 8<<30)
	for name, b := range slots {
		if err := os.WriteFile(filepath.Join(p.Hostpart, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &world{t: t, paths: p, log: &bytes.Buffer{}, mu: &sync.Mutex{},
		sys: &fakeSys{t: t, paths: p, loops: map[string]string{}, mounted: map[string]string{}, noInit: map[string]bool{}, badMount: map[string]bool{}}}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// boot runs one boot with cmdline and returns its outcome; the console
// is in w.log.
func (w *world) boot(cmdline string) Outcome {
	w.t.Helper()
	w.sys.cmdline = cmdline
	w.sys.switched, w.sys.rescued = "", nil
	w.sys.mounted = map[string]string{}
	w.mu.Lock()
	w.log.Reset()
	w.mu.Unlock()
	b := &Boot{Sys: w.sys, Paths: w.paths, Log: slog.New(slog.NewTextHandler(lockedWriter{w.mu, w.log}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	out := b.Run(context.Background())
	if b.id != nil {
		// A rescue does not wait for the host keys; the test's cleanup must.
		<-b.id.done
	}
	if testing.Verbose() {
		w.t.Logf("boot %q:\n%s", cmdline, w.console())
	}
	return out
}

func (w *world) console() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.String()
}

// slot is the image name in a hostpart file ("" when absent).
func (w *world) slot(name string) string { return imageName(filepath.Join(w.paths.Hostpart, name)) }

func (w *world) exists(name string) bool {
	_, err := os.Stat(filepath.Join(w.paths.Hostpart, name))
	return err == nil
}

func (w *world) read(name string) string {
	b, _ := os.ReadFile(filepath.Join(w.paths.Hostpart, name))
	return string(b)
}

// httpgetClient is the init's client with short timeouts for tests.
var httpgetClient = httpget.Client{Timeout: 2 * time.Second, IdleTimeout: 2 * time.Second}
