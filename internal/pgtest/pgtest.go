// Package pgtest runs a private PostgreSQL cluster for tests and
// benchmarks: initdb into a directory of its own, the server on a Unix
// socket only (no TCP port: nothing outside the machine can reach it, and
// clusters of parallel runs cannot collide), stopped and removed after.
// It uses Debian's postgresql package (binaries in
// /usr/lib/postgresql/VERSION/bin, the newest found at run time) and needs
// no system service.
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// InstallHint is what a missing PostgreSQL tells the user to run.
const InstallHint = "install PostgreSQL: apt-get install postgresql (or run scripts/deps.sh as root)"

// Bin finds the directory of initdb, pg_ctl and postgres.
func Bin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("PostgreSQL's initdb not found (no /usr/lib/postgresql/*/bin/initdb, none in $PATH): %s", InstallHint)
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Options tune a cluster.
type Options struct {
	// Durable keeps PostgreSQL's fsync and synchronous commit on (for
	// benchmarks); tests turn them off, which only matters if the machine
	// loses power.
	Durable bool
	Log     func(format string, args ...any) // where to report; nil: silent
}

// Cluster is a running private cluster.
type Cluster struct {
	Dir     string // data directory
	SockDir string // the Unix socket's directory
	User    string // the superuser
	bin     string
	cred    *syscall.Credential // the unprivileged user the server runs as (nil: the caller)
	n       atomic.Int64
	opts    Options
	cleanup []string
}

// Start initdb's a cluster under dir (created; removed by Stop) and
// starts it. As root, the cluster belongs to and runs as nobody:
// PostgreSQL refuses to run as root.
func Start(dir string, opts Options) (*Cluster, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: filepath.Join(dir, "data"), bin: bin, User: "hnboot", opts: opts}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// A Unix socket path holds ~107 bytes: a test's temp dir can be
	// longer, so the socket gets a short directory of its own.
	sock := filepath.Join(dir, "sock")
	if len(sock)+len("/.s.PGSQL.5432") > 100 {
		if sock, err = os.MkdirTemp("", "pgs"); err != nil {
			return nil, err
		}
		c.cleanup = append(c.cleanup, sock)
	} else if err := os.Mkdir(sock, 0o700); err != nil {
		return nil, err
	}
	c.SockDir = sock
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			return nil, fmt.Errorf("pgtest: PostgreSQL refuses root, and there is no user nobody to run it as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		// nobody must reach its directories: make the path to them
		// traversable (not readable) below the temporary directory, and
		// give it the leaves.
		tmp := filepath.Clean(os.TempDir())
		for p := filepath.Dir(dir); strings.HasPrefix(p, tmp+"/"); p = filepath.Dir(p) {
			if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 == 0 {
				os.Chmod(p, fi.Mode().Perm()|0o011)
			}
		}
		for _, p := range []string{dir, sock} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, fmt.Errorf("pgtest: %w", err)
			}
		}
	}
	if err := c.run("initdb", "-D", c.Dir, "-U", c.User, "--auth=trust", "--encoding=UTF8", "--no-sync"); err != nil {
		c.removeAll()
		return nil, err
	}
	if err := c.StartServer(); err != nil {
		c.removeAll()
		return nil, err
	}
	return c, nil
}

// T starts a cluster for t in t.TempDir(), stopped and removed when t
// ends. A missing PostgreSQL fails t with the install command: a test
// that skipped would pass without testing anything.
func T(t testing.TB) *Cluster {
	t.Helper()
	c, err := Start(t.TempDir(), Options{Log: t.Logf})
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = "/"
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "TZ=UTC")
	return cmd
}

func (c *Cluster) run(name string, args ...string) error {
	out, err := c.command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// StartServer starts the server (again, after StopServer).
func (c *Cluster) StartServer() error {
	o := fmt.Sprintf("-k %s -h '' -c max_connections=200", c.SockDir)
	if !c.opts.Durable {
		o += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
	}
	return c.run("pg_ctl", "start", "-w", "-t", "60", "-D", c.Dir, "-l", filepath.Join(c.Dir, "server.log"), "-o", o)
}

// StopServer stops the server fast (connections are cut), as a crash or
// an administrator's restart would.
func (c *Cluster) StopServer() error {
	return c.run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", c.Dir)
}

// Stop stops the server and removes the cluster.
func (c *Cluster) Stop() {
	if err := c.StopServer(); err != nil && c.opts.Log != nil {
		c.opts.Log("%v", err)
	}
	c.removeAll()
}

func (c *Cluster) removeAll() {
	os.RemoveAll(c.Dir)
	for _, p := range c.cleanup {
		os.RemoveAll(p)
	}
}

// URL is the connection URL of database db ("" → postgres).
func (c *Cluster) URL(db string) string {
	if db == "" {
		db = "postgres"
	}
	return "postgres://" + c.User + "@/" + db + "?host=" + url.QueryEscape(c.SockDir) + "&sslmode=disable"
}

// NewDatabase creates a fresh database and returns its URL, so each test
// starts empty on one shared cluster.
func (c *Cluster) NewDatabase() (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.n.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", c.SockDir, "-U", c.User, "-d", "postgres", "-c", "CREATE DATABASE "+name)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("pgtest: CREATE DATABASE %s: %v\n%s", name, err, out)
	}
	return c.URL(name), nil
}

// Psql runs one SQL command in database db as the superuser and returns
// its unaligned output.
func (c *Cluster) Psql(db, sql string) (string, error) {
	cmd := exec.Command(filepath.Join(c.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", c.SockDir, "-U", c.User, "-d", db, "-c", sql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pgtest: psql %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}
