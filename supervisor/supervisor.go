package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

// States of a service.
const (
	StateStarting = "starting"
	StateRunning  = "running"
	StateBackoff  = "backoff"  // waiting to restart
	StateExited   = "exited"   // ended and not restarted (policy), exit 0
	StateFailed   = "failed"   // ended and not restarted (policy), failure
	StateStopping = "stopping" // SIGTERM sent
	StateStopped  = "stopped"  // stopped by the supervisor
)

// ServiceStatus is one service's state, for status APIs and metrics. The
// agent reports it in its check-in, so the type is the check-in's,
// defined once in package checkin.
type ServiceStatus = checkin.Service

// Options configure a Supervisor.
type Options struct {
	LogDir      string // <LogDir>/<name>.log; empty: ring buffer only
	RingBytes   int    // per service; default 64 KiB
	MaxLogBytes int64  // a log file is rotated to .1 past this; default 10 MiB
	Logger      *slog.Logger
}

// Supervisor runs services. Create with New, start with Run.
type Supervisor struct {
	opts Options
	log  *slog.Logger
	svcs []*service
}

type service struct {
	cfg  Service
	log  *slog.Logger
	sink *sink

	mu sync.Mutex
	st ServiceStatus
}

// New validates the services. Nothing starts before Run.
func New(svcs []Service, opts Options) (*Supervisor, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RingBytes <= 0 {
		opts.RingBytes = 64 << 10
	}
	if opts.MaxLogBytes <= 0 {
		opts.MaxLogBytes = 10 << 20
	}
	s := &Supervisor{opts: opts, log: opts.Logger}
	seen := map[string]bool{}
	for _, c := range svcs {
		c.defaults()
		if err := c.validate(); err != nil {
			return nil, fmt.Errorf("supervisor: %w", err)
		}
		if seen[c.Name] {
			return nil, fmt.Errorf("supervisor: duplicate service %s", c.Name)
		}
		seen[c.Name] = true
		sv := &service{cfg: c, log: opts.Logger.With("service", c.Name)}
		sv.sink = newSink(opts.RingBytes)
		if opts.LogDir != "" {
			sv.sink.path = filepath.Join(opts.LogDir, c.Name+".log")
			sv.sink.max = opts.MaxLogBytes
			sv.st.LogFile = sv.sink.path
		}
		sv.st.Name, sv.st.State = c.Name, StateStarting
		s.svcs = append(s.svcs, sv)
	}
	return s, nil
}

// Run starts every service and keeps them by their policies until ctx
// ends; then it stops them all (SIGTERM to each process group, SIGKILL
// after the service's stop_timeout) and returns once every child has been
// waited for. Cancel ctx on SIGTERM (signal.NotifyContext) to stop
// gracefully.
func (s *Supervisor) Run(ctx context.Context) error {
	if s.opts.LogDir != "" {
		if err := os.MkdirAll(s.opts.LogDir, 0o755); err != nil {
			return fmt.Errorf("supervisor: %w", err)
		}
	}
	var wg sync.WaitGroup
	for _, sv := range s.svcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				// A bug in one service's loop must not take the others down.
				if r := recover(); r != nil {
					sv.log.Error("supervisor: service loop panicked", "panic", r)
					sv.set(func(st *ServiceStatus) { st.State, st.LastExit = StateFailed, fmt.Sprint("supervisor panic: ", r) })
				}
			}()
			sv.loop(ctx)
		}()
	}
	wg.Wait()
	for _, sv := range s.svcs {
		sv.sink.close()
	}
	return nil
}

// Status returns every service's state, in configuration order.
func (s *Supervisor) Status() []ServiceStatus {
	out := make([]ServiceStatus, 0, len(s.svcs))
	for _, sv := range s.svcs {
		sv.mu.Lock()
		out = append(out, sv.st)
		sv.mu.Unlock()
	}
	return out
}

// Logs returns the tail of a service's captured output (both streams,
// each line prefixed with time and stream).
func (s *Supervisor) Logs(name string) ([]byte, bool) {
	for _, sv := range s.svcs {
		if sv.cfg.Name == name {
			return sv.sink.ring.Bytes(), true
		}
	}
	return nil, false
}

func (sv *service) set(f func(*ServiceStatus)) {
	sv.mu.Lock()
	f(&sv.st)
	sv.mu.Unlock()
}

// NextDelay is the back-off policy: the first restart waits Backoff; each
// further one doubles, up to BackoffMax; a run of StableAfter or longer
// starts over from Backoff.
func NextDelay(prev, ranFor time.Duration, c Service) time.Duration {
	if prev <= 0 || ranFor >= c.StableAfter {
		return c.Backoff
	}
	return min(prev*2, c.BackoffMax)
}

// ShouldRestart applies the restart policy to how a run ended.
func ShouldRestart(policy string, failed bool) bool {
	switch policy {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return failed
	}
	return false
}

func (sv *service) loop(ctx context.Context) {
	var delay time.Duration
	for {
		if ctx.Err() != nil {
			sv.set(func(st *ServiceStatus) { st.State, st.PID = StateStopped, 0 })
			return
		}
		start := time.Now()
		exitErr, stopped := sv.runOnce(ctx)
		ranFor := time.Since(start)
		failed := exitErr != nil
		sv.set(func(st *ServiceStatus) {
			st.PID, st.ExitTime = 0, time.Now()
			st.LastExit = "exit status 0"
			if exitErr != nil {
				st.LastExit = exitErr.Error()
			}
		})
		if stopped || ctx.Err() != nil {
			sv.set(func(st *ServiceStatus) { st.State = StateStopped })
			return
		}
		if !ShouldRestart(sv.cfg.Restart, failed) {
			state := StateExited
			if failed {
				state = StateFailed
			}
			sv.log.Info("supervisor: service ended; not restarting (policy "+sv.cfg.Restart+")", "exit", sv.status().LastExit)
			sv.set(func(st *ServiceStatus) { st.State = state })
			<-ctx.Done()
			sv.set(func(st *ServiceStatus) {
				if st.State == state {
					st.State = StateStopped
				}
			})
			return
		}
		delay = NextDelay(delay, ranFor, sv.cfg)
		next := time.Now().Add(delay)
		sv.log.Warn("supervisor: service ended; restarting", "exit", sv.status().LastExit, "ran", ranFor.Round(time.Millisecond), "in", delay)
		sv.set(func(st *ServiceStatus) { st.State, st.NextStart = StateBackoff, next })
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			sv.set(func(st *ServiceStatus) { st.State, st.NextStart = StateStopped, time.Time{} })
			return
		case <-t.C:
		}
		sv.set(func(st *ServiceStatus) { st.Restarts++; st.NextStart = time.Time{} })
	}
}

func (sv *service) status() ServiceStatus {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.st
}

// runOnce starts the command and waits for it; when ctx ends first it stops
// the process group gracefully. stopped reports that the supervisor ended
// the run. The child is always waited for.
func (sv *service) runOnce(ctx context.Context) (exitErr error, stopped bool) {
	c := sv.cfg
	cmd := exec.Command(c.Command, c.Args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	outR, outW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start: %w", err), false
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return fmt.Errorf("start: %w", err), false
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	sv.set(func(st *ServiceStatus) { st.State, st.LastStart = StateStarting, time.Now() })
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		sv.sink.line("supervisor", "start failed: "+err.Error())
		return fmt.Errorf("start: %w", err), false
	}
	pid := cmd.Process.Pid
	sv.set(func(st *ServiceStatus) { st.State, st.PID = StateRunning, pid; st.Starts++ })
	sv.log.Info("supervisor: started", "pid", pid)

	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); sv.sink.copy("stdout", outR) }()
	go func() { defer readers.Done(); sv.sink.copy("stderr", errR) }()

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case exitErr = <-exited:
	case <-ctx.Done():
		stopped = true
		sv.set(func(st *ServiceStatus) { st.State = StateStopping })
		syscall.Kill(-pid, syscall.SIGTERM)
		t := time.NewTimer(c.StopTimeout)
		select {
		case exitErr = <-exited:
			t.Stop()
		case <-t.C:
			sv.log.Warn("supervisor: no exit after SIGTERM; sending SIGKILL to the process group", "deadline", c.StopTimeout)
			sv.sink.line("supervisor", fmt.Sprintf("no exit %s after SIGTERM: SIGKILL", c.StopTimeout))
			syscall.Kill(-pid, syscall.SIGKILL)
			exitErr = <-exited
		}
	}
	// Whatever the main process left in its group goes with it.
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		sv.log.Warn("supervisor: cleaning up the process group", "err", err)
	}
	// A process that left the group may still hold the pipes: stop waiting.
	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		outR.Close()
		errR.Close()
		<-done
	}
	outR.Close()
	errR.Close()
	return exitErr, stopped
}
