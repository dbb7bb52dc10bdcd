package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/hnboot/hnboot/agent"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/cli"
)

const probeHelp = `Usage: mkimage probe --health FILE [--console DEV] [--no-poweroff]

Runs inside the system "mkimage test" boots (it starts it from the test
disk; there is no need to run it by hand): the health checks of FILE's
health: section (an agent.yaml, as "imaged agent" reads it: units,
system, commands, settle, deadline, interval), with the agent's own code,
until they pass for the settle period or the deadline passes. Each change
of the verdict and the final result go to DEV as lines that start with
"hnboot-probe:" (the last one "hnboot-probe: result {JSON}"), then the
system powers off.
`

// probePrefix starts every line the probe prints; probeResult the last.
const (
	probePrefix = "hnboot-probe: "
	probeResult = probePrefix + "result "
)

// probeReport is what the probe prints at the end.
type probeReport struct {
	checkin.Health
	FailedUnits []string `json:"failed_units,omitempty"`
}

func runProbe(ctx context.Context, name string, args []string, std cli.IO) error {
	fs := cli.NewFlagSet(name, probeHelp, std)
	health := fs.String("health", "", "agent.yaml whose health: section to run (required)")
	console := fs.String("console", "/dev/console", "where to print the progress and the result")
	noPoweroff := fs.Bool("no-poweroff", false, "stay up after the result")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *health == "" {
		return fs.Usagef("--health is required")
	}
	c, err := agent.LoadConfig(*health)
	if err != nil {
		return err
	}
	checks := c.Health
	if checks.Empty() {
		checks.System = true // as the agent does under systemd
	}
	var out io.Writer = std.Stdout
	if f, err := os.OpenFile(*console, os.O_WRONLY|os.O_APPEND, 0); err == nil {
		defer f.Close()
		out = f
	}
	last := ""
	v := agent.RunChecks(ctx, checks, agent.SystemProber{}, time.Now(), func(v agent.Verdict) {
		if line := v.State + ": " + v.Reason; line != last {
			fmt.Fprintln(out, probePrefix+line)
			last = line
		}
	})
	rep := probeReport{Health: v}
	if v.State != agent.HealthPassed {
		if b, err := exec.CommandContext(ctx, "systemctl", "list-units", "--failed", "--no-legend", "--plain").Output(); err == nil {
			for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				if f := strings.Fields(l); len(f) > 0 {
					rep.FailedUnits = append(rep.FailedUnits, f[0])
				}
			}
		}
	}
	b, _ := json.Marshal(rep)
	fmt.Fprintln(out, probeResult+string(b))
	if !*noPoweroff {
		exec.CommandContext(ctx, "systemctl", "poweroff", "--no-block").Run()
	}
	return nil
}
