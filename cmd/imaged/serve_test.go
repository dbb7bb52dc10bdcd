package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test run `imaged serve` as a child process (this test
// binary re-executed), so SIGTERM handling is exercised for real.
func TestMain(m *testing.M) {
	if os.Getenv("IMAGED_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func TestServeSupervisesServices(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "x.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "started")
	pidFile := filepath.Join(dir, "pid")
	svc := filepath.Join(dir, "services.yaml")
	yaml := "services:\n  - name: hello\n    command: /bin/sh\n    args: [\"-c\", \"echo $$ > " + pidFile + "; echo started >> " + marker + "; exec sleep 300\"]\n"
	if err := os.WriteFile(svc, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "serve", "--server-ip", "127.0.0.1", "--dhcp-mode", "off", "--tftp", "off",
		"--http", "127.0.0.1:0", "--image", img, "--allow-unknown", "--cache", filepath.Join(dir, "cache"),
		"--services", svc, "--service-logs", filepath.Join(dir, "logs"))
	cmd.Env = append(os.Environ(), "IMAGED_TEST_MAIN=1")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(marker); err == nil && len(b) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("imaged serve --services did not start the service within 20 s\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(pidFile)
	child, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("imaged serve exit after SIGTERM = %v, want clean\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("imaged serve did not stop within 30 s of SIGTERM\n%s", out.String())
	}
	// The supervised child must be gone (stopped and reaped), not orphaned.
	if child > 0 && syscall.Kill(child, 0) == nil {
		t.Errorf("service process %d still alive after imaged serve exited", child)
		syscall.Kill(child, syscall.SIGKILL)
	}
	if !strings.Contains(out.String(), "supervisor: started") {
		t.Errorf("serve log does not show the service starting:\n%s", out.String())
	}
}

// syncBuffer is the child's output, read while the child writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServeReloadsOnSIGHUP: the command, not the fleet library, owns the
// process's signals; a SIGHUP reloads the fleet directory and does not end
// the server.
func TestServeReloadsOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "fleet")
	if err := os.CopyFS(state, os.DirFS("../../fleet/testdata/example")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "serve", "--server-ip", "127.0.0.1", "--dhcp-mode", "off", "--tftp", "off",
		"--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--state", state, "--observed", filepath.Join(dir, "fleet.db"), "--cache", filepath.Join(dir, "cache"))
	cmd.Env = append(os.Environ(), "IMAGED_TEST_MAIN=1")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitFor := func(what, s string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), s); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("imaged serve: %s: no %q in its log within 20 s\n%s", what, s, out.String())
			}
		}
	}
	waitFor("start", "msg=serving") // logged once the signal handlers are set
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor("SIGHUP", "fleet: reloaded")
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("imaged serve exit after SIGHUP, SIGTERM = %v, want clean\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("imaged serve did not stop within 30 s of SIGTERM\n%s", out.String())
	}
}
