package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/internal/pgtest"
	"github.com/hnboot/hnboot/internal/testkernel"
)

// The README's commands are extracted from its ```sh blocks (one command
// a line, a trailing \ continues it, # starts a comment), so a changed
// README is tested as it now reads. They run in order, in one temporary
// directory that is also $HOME, with the mkimage, imaged and hninit built
// from this tree first on PATH, inside a network namespace of their own:
// `imaged serve` binds DHCP, TFTP and :8080 on its loopback as the README
// shows, touching no port of the machine. A command "works" when it
// exits 0; `imaged serve` lines are daemons: started, ready when :8080
// accepts connections, kept for the lines after them, and stopped with SIGTERM (exit
// 0) before the next one or at the end.

// readmeSubst is every change the test makes to a README command, in
// order: the README's placeholders, and what keeps the commands inside
// the test's directory and namespace. WORK, MODULES and CACHE stand for
// the test's directory, the test kernel's modules and serve's state;
// PGURL a database of a private PostgreSQL cluster.
var readmeSubst = []struct{ old, new, why string }{
	{"--server ...", "--server http://127.0.0.1:8081 --token-file ~/.hnboot-token", "the README's placeholder for the server flags (the admin listener)"},
	{"http://imaged:8080", "http://127.0.0.1:8080", "the server runs on the namespace's loopback"},
	{"--interface br0", "--interface lo", "the namespace's only interface"},
	{"--interface br1", "--interface lo", "the namespace's only interface"},
	{"postgres://hnboot@db/hnboot", "PGURL", "a private PostgreSQL cluster the test starts (internal/pgtest)"},
	{"/etc/hnboot/", "WORK/etc/hnboot/", "the fleet directory, tokens and services files the test writes"},
	{"/lib/modules/$(uname -r)", "MODULES", "this machine's kernel may have no modules; the test kernel has"},
	{"imaged serve ", "imaged serve --cache CACHE/cache --observed CACHE/fleet.db --service-logs CACHE/logs --images CACHE/images ", "serve's default state under /var stays untouched"},
}

// readmeSkip lists the README commands the test does not run, each with
// why and the check it runs instead (in the repository's root).
var readmeSkip = []struct {
	prefix, why string
	check       []string
}{
	{"make demo", "boots QEMU for minutes; testvm's end-to-end tests boot the same way", []string{"make", "-n", "demo"}},
	{"make test", "this test is part of make test", []string{"make", "-n", "test"}},
}

// readmeDaemons are commands that keep running: started, ready when
// they accept TCP connections at ready, stopped with SIGTERM.
var readmeDaemons = []struct{ prefix, ready string }{
	{"imaged serve", "127.0.0.1:8080"},
}

// readmeCommand is one command line of the README.
type readmeCommand struct {
	line int
	text string
}

// readmeCommands extracts the command lines of path's ```sh blocks.
func readmeCommands(path string) ([]readmeCommand, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []readmeCommand
	in := false
	var cur *readmeCommand
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		t := strings.TrimSpace(l)
		switch {
		case !in && (t == "```sh" || t == "```bash" || t == "```console"):
			in = true
			continue
		case in && t == "```":
			if cur != nil {
				return nil, fmt.Errorf("%s:%d: the block ends inside a continued command", path, n)
			}
			in = false
			continue
		case !in:
			continue
		}
		t = strings.TrimSpace(stripComment(l))
		if cur == nil {
			if t == "" {
				continue
			}
			cur = &readmeCommand{line: n}
		}
		cont := strings.HasSuffix(t, "\\")
		cur.text = strings.TrimSpace(cur.text + " " + strings.TrimSuffix(t, "\\"))
		if !cont {
			out = append(out, *cur)
			cur = nil
		}
	}
	if in {
		return nil, fmt.Errorf("%s: a ```sh block is not closed", path)
	}
	return out, sc.Err()
}

// stripComment cuts a shell comment: a # at the start or after a blank,
// outside quotes.
func stripComment(l string) string {
	var quote byte
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && (i == 0 || l[i-1] == ' ' || l[i-1] == '\t'):
			return l[:i]
		}
	}
	return l
}

func TestReadmeExtraction(t *testing.T) {
	dir := t.TempDir()
	md := "# x\n```sh\nmkimage a --b c   # a comment\n\n# only a comment\nimaged x \\\n  --y 'z # not a comment'\n```\n```\nnot sh\n```\n"
	os.WriteFile(filepath.Join(dir, "R.md"), []byte(md), 0o644)
	got, err := readmeCommands(filepath.Join(dir, "R.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := []readmeCommand{{3, "mkimage a --b c"}, {6, "imaged x --y 'z # not a comment'"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("readmeCommands = %v, want %v", got, want)
	}
}

const readmeNetnsEnv = "HNBOOT_README_TEST_NETNS"

// TestReadmeCommands runs every command line the README shows (see the
// comment above readmeSubst).
func TestReadmeCommands(t *testing.T) {
	if os.Getenv(readmeNetnsEnv) == "" {
		readmeInNamespace(t)
		return
	}
	bin := os.Getenv(readmeNetnsEnv)
	if err := loopbackUp(); err != nil {
		t.Fatalf("bringing up lo in the test's network namespace: %v", err)
	}
	cmds, err := readmeCommands("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	state := t.TempDir()
	kernel := testkernel.Must(t)
	readmeFixture(t, work)
	env := append(os.Environ(), "HOME="+work, "PATH="+bin+":"+os.Getenv("PATH"), "IMAGED_SERVER=", "IMAGED_TOKEN_FILE=")
	pg := pgtest.T(t)
	pgURL, err := pg.NewDatabase()
	if err != nil {
		t.Fatal(err)
	}
	repl := strings.NewReplacer("WORK", work, "MODULES", kernel.Modules, "CACHE", state, "PGURL", "'"+pgURL+"'") // quoted: the URL holds &

	// A fleet server from the start, so a command shown before the README's
	// own `imaged serve` line has one too; each README serve line replaces
	// the running server.
	daemon := startDaemon(t, "the test's fleet server", repl.Replace("imaged serve --interface lo --state WORK/etc/hnboot/fleet --tokens WORK/etc/hnboot/tokens --cache CACHE/cache --observed CACHE/fleet.db --service-logs CACHE/logs"),
		work, env, readmeDaemons[0].ready)
	defer func() { daemon.stop(t) }()
	skipsUsed := map[string]bool{}
	ran := 0
	for _, c := range cmds {
		where := fmt.Sprintf("README.md:%d: %s", c.line, c.text)
		if skip := skipOf(c.text); skip >= 0 {
			s := readmeSkip[skip]
			skipsUsed[s.prefix] = true
			check := exec.Command(s.check[0], s.check[1:]...)
			check.Dir = "../.."
			if out, err := check.CombinedOutput(); err != nil {
				t.Errorf("%s: not run (%s), and its check %q fails: %v\n%s", where, s.why, strings.Join(s.check, " "), err, out)
			}
			t.Logf("%s: not run: %s; checked with %s", where, s.why, strings.Join(s.check, " "))
			continue
		}
		text := c.text
		for _, s := range readmeSubst {
			text = strings.ReplaceAll(text, s.old, repl.Replace(s.new))
		}
		ran++
		if text != c.text {
			where += "\n  ran as: " + text
		}
		if ready := daemonOf(text); ready != "" {
			daemon.stop(t)
			daemon = startDaemon(t, where, text, work, env, ready)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-c", text)
		cmd.Dir, cmd.Env = work, env
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s\n  failed: %v\n%s", where, err, indent(out))
			continue
		}
		t.Logf("%s\n  ok:\n%s", where, indent(out))
	}
	for _, s := range readmeSkip {
		if !skipsUsed[s.prefix] {
			t.Errorf("readmeSkip lists %q, which the README no longer shows: remove it", s.prefix)
		}
	}
	if ran == 0 {
		t.Error("no README command ran: are the ```sh blocks gone?")
	}
}

func skipOf(cmd string) int {
	for i, s := range readmeSkip {
		if cmd == s.prefix || strings.HasPrefix(cmd, s.prefix+" ") {
			return i
		}
	}
	return -1
}

func daemonOf(cmd string) string {
	for _, d := range readmeDaemons {
		if strings.HasPrefix(cmd, d.prefix+" ") {
			return d.ready
		}
	}
	return ""
}

// readmeInNamespace builds the binaries and runs TestReadmeCommands again
// in this test binary, in a new network namespace (and a user namespace
// when not root).
func readmeInNamespace(t *testing.T) {
	bin := t.TempDir()
	for name, pkg := range map[string]string{"imaged": ".", "mkimage": "../mkimage", "hninit": "../../initramfs"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReadmeCommands$", "-test.count=1", "-test.v", "-test.timeout=20m")
	cmd.Env = append(os.Environ(), readmeNetnsEnv+"="+bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if os.Getuid() != 0 {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
	}
	out, err := cmd.CombinedOutput()
	t.Logf("the README's commands, in their own network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("README commands failed (%v); see above", err)
	}
}

// loopbackUp sets lo up in this (new) network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// readmeFixture writes what the README's commands take as given, in
// work: a root tarball, an image for the static server, and the fleet
// server's configuration (/etc/hnboot, ~/.hnboot-token) with the hosts,
// group and image the fleet commands name.
func readmeFixture(t *testing.T, work string) {
	t.Helper()
	const token = "readme-0123456789abcdef"
	base13 := randomFile(t, filepath.Join(work, "images", "base-1.3.img"), 1<<20)
	files := map[string]string{
		"etc/hnboot/fleet/images.yaml": "images:\n  - name: base\n    version: \"1.3\"\n    digest: " + base13 + "\n    path: " + filepath.Join(work, "images", "base-1.3.img") + "\n",
		"etc/hnboot/fleet/groups.yaml": "groups:\n  - name: web\n    image: base@1.3\n",
		"etc/hnboot/fleet/hosts.yaml":  "hosts:\n  - mac: 52:54:00:12:34:56\n    hostname: web-07\n    group: web\n",
		"etc/hnboot/tokens":            "ops " + token + "\n",
		"etc/hnboot/services.yaml":     "services:\n  - name: sleeper\n    command: /bin/sleep\n    args: [\"300\"]\n",
		".hnboot-token":                token + "\n",
	}
	for name, body := range files {
		p := filepath.Join(work, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	randomFile(t, filepath.Join(work, "hn-root.img"), 1<<20)
	writeRootTarball(t, filepath.Join(work, "debian-root.tar.zst"))
}

func randomFile(t *testing.T, path string, size int) string {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeRootTarball writes a small root tree as .tar.zst, with what
// mkimage rootfs generalizes away.
func writeRootTarball(t *testing.T, path string) {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	for _, e := range []struct {
		name, body string
		dir        bool
	}{
		{"etc/", "", true},
		{"etc/os-release", "ID=debian\nVERSION_ID=12\n", false},
		{"etc/hostname", "builder\n", false},
		{"etc/machine-id", "0123456789abcdef0123456789abcdef\n", false},
		{"etc/ssh/", "", true},
		{"etc/ssh/ssh_host_ed25519_key", "secret\n", false},
		{"sbin/", "", true},
		{"sbin/init", "#!/bin/sh\nexec /bin/sh\n", false},
	} {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}
		if e.dir {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

type readmeDaemon struct {
	where   string
	cmd     *exec.Cmd
	out     *bytes.Buffer
	done    chan error
	stopped bool
}

func startDaemon(t *testing.T, where, text, dir string, env []string, ready string) *readmeDaemon {
	t.Helper()
	d := &readmeDaemon{where: where, out: new(bytes.Buffer), done: make(chan error, 1)}
	// exec: the signal goes to the command itself, not to bash.
	d.cmd = exec.Command("bash", "-c", "exec "+text)
	d.cmd.Dir, d.cmd.Env = dir, env
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	cmd := d.cmd
	go func() { d.done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-d.done:
			t.Fatalf("%s\n  exited before it was ready: %v\n%s", where, err, indent(d.out.Bytes()))
		default:
		}
		if c, err := net.DialTimeout("tcp", ready, time.Second); err == nil {
			c.Close()
			t.Logf("%s\n  running (%s accepts connections)", where, ready)
			return d
		}
		if time.Now().After(deadline) {
			d.cmd.Process.Kill()
			<-d.done
			t.Fatalf("%s\n  %s did not answer within 30 s\n%s", where, ready, indent(d.out.Bytes()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the daemon with SIGTERM; it must exit 0 within 30 s.
func (d *readmeDaemon) stop(t *testing.T) {
	if d == nil || d.stopped {
		return
	}
	t.Helper()
	d.stopped = true
	cmd := d.cmd
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("%s\n  after SIGTERM: %v\n%s", d.where, err, indent(d.out.Bytes()))
			return
		}
		t.Logf("%s\n  stopped by SIGTERM, exit status 0; its log:\n%s", d.where, indent(d.out.Bytes()))
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-d.done
		t.Errorf("%s\n  still running 30 s after SIGTERM\n%s", d.where, indent(d.out.Bytes()))
	}
}

func indent(b []byte) string {
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
