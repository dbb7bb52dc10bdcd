package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

// Checks are the declared health checks of a trial boot. The trial is
// confirmed (hn-root.trial removed) only when every check has passed
// continuously for Settle; when that has not happened by Deadline the
// boot is reported unhealthy, with the reason.
type Checks struct {
	// Units are systemd units that must be active (systemctl is-active).
	Units []string `yaml:"units" json:"units,omitempty"`
	// System requires systemctl is-system-running to say "running"
	// (set by default when systemd runs and nothing else is declared).
	System bool `yaml:"system" json:"system,omitempty"`
	// Commands must exit 0 within their timeout.
	Commands []CommandCheck `yaml:"commands" json:"commands,omitempty"`
	Settle   time.Duration  `yaml:"settle" json:"settle"`     // default 30s
	Deadline time.Duration  `yaml:"deadline" json:"deadline"` // default 10m, counted from the agent's start
	Interval time.Duration  `yaml:"interval" json:"interval"` // between rounds; default 5s
}

// CommandCheck is one command run each round.
type CommandCheck struct {
	Name    string        `yaml:"name" json:"name"`
	Command []string      `yaml:"command" json:"command"` // argv, no shell
	Timeout time.Duration `yaml:"timeout" json:"timeout"` // default 10s
}

func (c *Checks) defaults() {
	if c.Settle <= 0 {
		c.Settle = 30 * time.Second
	}
	if c.Deadline <= 0 {
		c.Deadline = 10 * time.Minute
	}
	if c.Interval <= 0 {
		c.Interval = 5 * time.Second
	}
	for i := range c.Commands {
		if c.Commands[i].Timeout <= 0 {
			c.Commands[i].Timeout = 10 * time.Second
		}
		if c.Commands[i].Name == "" && len(c.Commands[i].Command) > 0 {
			c.Commands[i].Name = c.Commands[i].Command[0]
		}
	}
}

// Empty reports whether nothing is declared.
func (c Checks) Empty() bool { return len(c.Units) == 0 && len(c.Commands) == 0 && !c.System }

// Observation is one check's result in one round, as the check-in
// reports it.
type Observation = checkin.Observation

// Health states.
const (
	HealthPending = "pending"
	HealthPassed  = "passed"
	HealthFailed  = "failed"
)

// Verdict is the outcome of the checks so far, as the check-in reports it.
type Verdict = checkin.Health

// Judge turns rounds of observations into a verdict. It is pure: the
// caller supplies the time of each round.
type Judge struct {
	Checks  Checks
	Start   time.Time
	okSince time.Time
}

// Observe records one round taken at now.
func (j *Judge) Observe(now time.Time, obs []Observation) Verdict {
	v := Verdict{State: HealthPending, Last: obs}
	var bad []string
	for _, o := range obs {
		if !o.OK {
			s := o.Check
			if o.Detail != "" {
				s += ": " + o.Detail
			}
			bad = append(bad, s)
		}
	}
	if len(bad) == 0 {
		if j.okSince.IsZero() {
			j.okSince = now
		}
		if now.Sub(j.okSince) >= j.Checks.Settle {
			v.State = HealthPassed
			v.Reason = fmt.Sprintf("%d checks healthy for %v", len(obs), j.Checks.Settle)
			return v
		}
	} else {
		j.okSince = time.Time{}
	}
	if now.Sub(j.Start) < j.Checks.Deadline {
		if len(bad) > 0 {
			v.Reason = "waiting: " + strings.Join(bad, "; ")
		} else {
			v.Reason = fmt.Sprintf("healthy for %v of %v", now.Sub(j.okSince).Round(time.Second), j.Checks.Settle)
		}
		return v
	}
	v.State = HealthFailed
	if len(bad) > 0 {
		v.Reason = fmt.Sprintf("not healthy after %v: %s", j.Checks.Deadline, strings.Join(bad, "; "))
	} else {
		v.Reason = fmt.Sprintf("healthy for only %v of the %v settle period at the %v deadline", now.Sub(j.okSince).Round(time.Second), j.Checks.Settle, j.Checks.Deadline)
	}
	return v
}

// Prober takes one round of observations.
type Prober interface {
	Probe(ctx context.Context, c Checks) []Observation
}

// SystemProber asks systemctl about units and runs the commands.
type SystemProber struct{}

// Probe implements Prober.
func (SystemProber) Probe(ctx context.Context, c Checks) []Observation {
	var out []Observation
	if c.System {
		s, _ := output(ctx, 10*time.Second, "systemctl", "is-system-running")
		out = append(out, Observation{Check: "system", OK: s == "running", Detail: "systemctl is-system-running: " + s})
	}
	for _, u := range c.Units {
		s, _ := output(ctx, 10*time.Second, "systemctl", "is-active", u)
		out = append(out, Observation{Check: "unit " + u, OK: s == "active", Detail: s})
	}
	for _, cc := range c.Commands {
		if len(cc.Command) == 0 {
			out = append(out, Observation{Check: "command " + cc.Name, Detail: "empty command"})
			continue
		}
		s, err := output(ctx, cc.Timeout, cc.Command[0], cc.Command[1:]...)
		o := Observation{Check: "command " + cc.Name, OK: err == nil}
		if err != nil {
			o.Detail = err.Error()
			if s != "" {
				o.Detail += ": " + s
			}
		}
		out = append(out, o)
	}
	if len(out) == 0 {
		out = append(out, Observation{Check: "none declared", OK: true, Detail: "no health checks configured: only the settle period"})
	}
	return out
}

// output runs a command and returns its trimmed, shortened output.
func output(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var b bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &b, &b
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	s := strings.TrimSpace(b.String())
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s, err
}

// RunChecks runs rounds until the verdict is final or ctx ends. report is
// called after every round (may be nil).
func RunChecks(ctx context.Context, c Checks, p Prober, start time.Time, report func(Verdict)) Verdict {
	c.defaults()
	j := &Judge{Checks: c, Start: start}
	for {
		v := j.Observe(time.Now(), p.Probe(ctx, c))
		if report != nil {
			report(v)
		}
		if v.State != HealthPending {
			return v
		}
		select {
		case <-ctx.Done():
			return Verdict{State: HealthPending, Reason: "stopped: " + ctx.Err().Error()}
		case <-time.After(c.Interval):
		}
	}
}

func systemdRunning() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}
