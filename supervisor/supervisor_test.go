package supervisor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestNextDelay(t *testing.T) {
	c := Service{Backoff: 100 * time.Millisecond, BackoffMax: time.Second, StableAfter: 10 * time.Second}
	for _, x := range []struct {
		prev, ran, want time.Duration
	}{
		{0, 0, 100 * time.Millisecond},
		{100 * time.Millisecond, time.Millisecond, 200 * time.Millisecond},
		{400 * time.Millisecond, time.Second, 800 * time.Millisecond},
		{800 * time.Millisecond, time.Second, time.Second}, // capped
		{time.Second, time.Second, time.Second},
		{time.Second, 10 * time.Second, 100 * time.Millisecond}, // a stable run resets
	} {
		if got := NextDelay(x.prev, x.ran, c); got != x.want {
			t.Errorf("NextDelay(%v, ran %v) = %v, want %v", x.prev, x.ran, got, x.want)
		}
	}
}

func TestShouldRestart(t *testing.T) {
	for _, c := range []struct {
		policy string
		failed bool
		want   bool
	}{
		{RestartAlways, false, true}, {RestartAlways, true, true},
		{RestartOnFailure, false, false}, {RestartOnFailure, true, true},
		{RestartNever, false, false}, {RestartNever, true, false},
	} {
		if got := ShouldRestart(c.policy, c.failed); got != c.want {
			t.Errorf("ShouldRestart(%s, failed=%v) = %v, want %v", c.policy, c.failed, got, c.want)
		}
	}
}

func TestParse(t *testing.T) {
	good := "listen: :8080\nservices:\n  - name: a\n    command: /bin/true\n    restart: always\n    backoff: 2s\n    backoff_max: 30s\n"
	svcs, err := Parse("serve.yaml", []byte(good))
	if err != nil || len(svcs) != 1 || svcs[0].Backoff != 2*time.Second || svcs[0].BackoffMax != 30*time.Second || svcs[0].StopTimeout != 10*time.Second || svcs[0].Restart != RestartAlways {
		t.Errorf("Parse(good) = %+v, %v, want one service with backoff 2s, max 30s, default stop_timeout 10s", svcs, err)
	}
	for _, c := range []struct{ name, in, want string }{
		{"unknown key", "services:\n  - name: a\n    command: x\n    colour: red\n", `serve.yaml:4: unknown key "colour"`},
		{"bad duration", "services:\n  - name: a\n    command: x\n    backoff: soon\n", "serve.yaml:4: backoff:"},
		{"bad policy", "services:\n  - name: a\n    command: x\n    restart: sometimes\n", `serve.yaml:2: service a: restart "sometimes"`},
		{"no command", "services:\n  - name: a\n", "serve.yaml:2: service a: command missing"},
		{"duplicate", "services:\n  - name: a\n    command: x\n  - name: a\n    command: y\n", "serve.yaml:4: duplicate service a (first at line 2)"},
	} {
		_, err := Parse("serve.yaml", []byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%s) = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

func TestRing(t *testing.T) {
	for _, c := range []struct {
		writes []string
		want   string
	}{
		{[]string{"ab\n"}, "ab\n"},
		{[]string{"a1\n", "b2\n", "c3\n"}, "b2\nc3\n"}, // wrapped: starts at a line
		{[]string{"0123456789abcdef\n"}, ""},           // one line longer than the ring: no whole line kept
	} {
		r := NewRing(8)
		for _, w := range c.writes {
			r.Write([]byte(w))
		}
		if got := string(r.Bytes()); got != c.want {
			t.Errorf("Ring(8) after %q = %q, want %q", c.writes, got, c.want)
		}
	}
}

// start runs a supervisor in the background; stop cancels it and returns
// how long Run took to return.
func start(t *testing.T, svcs []Service, opts Options) (*Supervisor, func() time.Duration) {
	t.Helper()
	opts.Logger = quiet()
	s, err := New(svcs, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	stopped := false
	stop := func() time.Duration {
		if stopped {
			return 0
		}
		stopped = true
		t0 := time.Now()
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("Run did not return 20s after cancel")
		}
		return time.Since(t0)
	}
	t.Cleanup(func() { stop() })
	return s, stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("waited 10s for %s", what)
}

// noChildren checks that the test process has no child left, not even a
// zombie: wait4(-1, WNOHANG) must say ECHILD.
func noChildren(t *testing.T) {
	t.Helper()
	var ws syscall.WaitStatus
	pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
	if !errors.Is(err, syscall.ECHILD) {
		t.Errorf("wait4(-1, WNOHANG) after Run = pid %d, %v, want ECHILD (no children, no zombies)", pid, err)
	}
}

func TestCrashLoopBacksOffAndSparesOthers(t *testing.T) {
	s, stop := start(t, []Service{
		{Name: "crash", Command: "sh", Args: []string{"-c", "exit 3"}, Backoff: 20 * time.Millisecond, BackoffMax: 80 * time.Millisecond},
		{Name: "steady", Command: "sleep", Args: []string{"60"}},
	}, Options{})
	var starts []time.Time
	waitFor(t, "5 restarts of crash", func() bool {
		st := s.Status()[0]
		if len(starts) == 0 || !st.LastStart.Equal(starts[len(starts)-1]) {
			if !st.LastStart.IsZero() {
				starts = append(starts, st.LastStart)
			}
		}
		return st.Restarts >= 5
	})
	st := s.Status()
	if st[0].LastExit != "exit status 3" {
		t.Errorf("crash LastExit = %q, want exit status 3", st[0].LastExit)
	}
	if st[1].State != StateRunning || st[1].Starts != 1 || st[1].Restarts != 0 {
		t.Errorf("steady = %+v, want running, started once, never restarted", st[1])
	}
	// Gaps between starts grow to the cap: the last ones are >= 80ms.
	if n := len(starts); n >= 4 {
		if gap := starts[n-1].Sub(starts[n-2]); gap < 80*time.Millisecond {
			t.Errorf("gap between late restarts = %v, want >= the 80ms cap", gap)
		}
	}
	if d := stop(); d > 3*time.Second {
		t.Errorf("stop took %v, want well under the 10s stop timeout (sleep dies on SIGTERM)", d)
	}
	for _, x := range s.Status() {
		if x.State != StateStopped || x.PID != 0 {
			t.Errorf("%s after stop = %s pid %d, want stopped pid 0", x.Name, x.State, x.PID)
		}
	}
	noChildren(t)
}

func TestPolicies(t *testing.T) {
	for _, c := range []struct {
		name, policy, script string
		want                 string
	}{
		{"never after failure", RestartNever, "exit 1", StateFailed},
		{"on-failure after success", RestartOnFailure, "exit 0", StateExited},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, stop := start(t, []Service{{Name: "x", Command: "sh", Args: []string{"-c", c.script}, Restart: c.policy, Backoff: 10 * time.Millisecond}}, Options{})
			waitFor(t, "state "+c.want, func() bool { return s.Status()[0].State == c.want })
			time.Sleep(50 * time.Millisecond)
			if st := s.Status()[0]; st.State != c.want || st.Starts != 1 || st.Restarts != 0 {
				t.Errorf("status = %+v, want %s after exactly one start", st, c.want)
			}
			stop()
			noChildren(t)
		})
	}
	s, stop := start(t, []Service{{Name: "x", Command: "sh", Args: []string{"-c", "exit 0"}, Restart: RestartAlways, Backoff: 10 * time.Millisecond}}, Options{})
	waitFor(t, "always: 3 restarts after exit 0", func() bool { return s.Status()[0].Restarts >= 3 })
	stop()
	noChildren(t)
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	// sh ignores SIGTERM, and so does its background sleep (ignored
	// signals survive exec).
	s, stop := start(t, []Service{{Name: "stubborn", Command: "sh",
		Args:        []string{"-c", `trap "" TERM; sleep 60 & echo $! > ` + pidFile + `; wait; wait`},
		StopTimeout: 300 * time.Millisecond}}, Options{})
	waitFor(t, "the child's pid file", func() bool { b, _ := os.ReadFile(pidFile); return strings.HasSuffix(string(b), "\n") })
	b, _ := os.ReadFile(pidFile)
	child, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	d := stop()
	if d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("stop took %v, want the 300ms SIGTERM deadline then SIGKILL", d)
	}
	if st := s.Status()[0]; st.State != StateStopped || st.LastExit != "signal: killed" {
		t.Errorf("status = %s %q, want stopped, signal: killed", st.State, st.LastExit)
	}
	// The grandchild was in the process group and got SIGKILL too.
	waitFor(t, "the grandchild to be gone", func() bool {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(child) + "/stat")
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
	noChildren(t)
}

func TestOutputCaptured(t *testing.T) {
	dir := t.TempDir()
	s, stop := start(t, []Service{{Name: "talker", Command: "sh", Args: []string{"-c", "echo hello; echo oops >&2; printf partial"}, Restart: RestartNever}},
		Options{LogDir: dir})
	waitFor(t, "talker to exit", func() bool { return s.Status()[0].State == StateExited })
	stop()
	ring, ok := s.Logs("talker")
	file, err := os.ReadFile(filepath.Join(dir, "talker.log"))
	if !ok || err != nil {
		t.Fatalf("Logs(talker) = %v; log file: %v", ok, err)
	}
	for _, want := range []string{" stdout: hello\n", " stderr: oops\n", " stdout: partial\n"} {
		if !strings.Contains(string(ring), want) {
			t.Errorf("ring = %q, want it to contain %q", ring, want)
		}
		if !strings.Contains(string(file), want) {
			t.Errorf("log file = %q, want it to contain %q", file, want)
		}
	}
}

func TestStartFailureIsAFailure(t *testing.T) {
	s, stop := start(t, []Service{{Name: "missing", Command: "/nonexistent/bin", Backoff: 10 * time.Millisecond}}, Options{})
	waitFor(t, "2 restarts of a command that does not exist", func() bool { return s.Status()[0].Restarts >= 2 })
	if st := s.Status()[0]; !strings.HasPrefix(st.LastExit, "start: ") || st.Starts != 0 {
		t.Errorf("status = %+v, want LastExit start: ... and no successful start", st)
	}
	stop()
}
