// Package clitest checks that a program built on package cli keeps the
// one command-line style: every command and subcommand answers --help and
// -h with its usage on stdout and status 0, and an unknown flag with the
// reason and the usage on stderr and status 2.
package clitest

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/cli"
)

// Run is a program's run function: arguments in, exit status out.
type Run func(args []string, stdout, stderr *bytes.Buffer) int

// CheckHelp runs every command in want (full names, "mkimage rootfs"; the
// program itself included) with --help, -h and an unknown flag, and fails
// t when a command of g is missing from want or behaves otherwise.
func CheckHelp(t *testing.T, prog string, g *cli.Group, run Run, want []string) {
	t.Helper()
	listed := map[string]bool{}
	for _, w := range want {
		listed[w] = true
	}
	all := []string{prog}
	g.Walk(prog, func(name string, _ *cli.Command) { all = append(all, name) })
	for _, name := range all {
		if !listed[name] {
			t.Errorf("%s is not in the help table: add it", name)
		}
		delete(listed, name)
	}
	for name := range listed {
		t.Errorf("%s is in the help table but is not a command", name)
	}
	for _, name := range want {
		words := strings.Fields(name)[1:]
		for _, tc := range []struct {
			flag     string
			code     int
			onStdout bool
			errHas   string
		}{
			{"--help", cli.ExitOK, true, ""},
			{"-h", cli.ExitOK, true, ""},
			{"--no-such-flag", cli.ExitUsage, false, "no-such-flag"},
		} {
			args := append(append([]string(nil), words...), tc.flag)
			var stdout, stderr bytes.Buffer
			code := run(args, &stdout, &stderr)
			usage := "Usage: " + name
			if code != tc.code {
				t.Errorf("%s %s: exit status %d, want %d\nstdout: %s\nstderr: %s", name, tc.flag, code, tc.code, stdout.String(), stderr.String())
				continue
			}
			out, other := stdout.String(), stderr.String()
			if !tc.onStdout {
				out, other = other, out
			}
			if !strings.Contains(out, usage+" ") && !strings.Contains(out, usage+"\n") {
				t.Errorf("%s %s: the usage (%q...) is not on %s:\n%s", name, tc.flag, usage, map[bool]string{true: "stdout", false: "stderr"}[tc.onStdout], out)
			}
			if other != "" {
				t.Errorf("%s %s: unexpected output on %s: %q", name, tc.flag, map[bool]string{true: "stderr", false: "stdout"}[tc.onStdout], other)
			}
			if !strings.Contains(out, tc.errHas) {
				t.Errorf("%s %s: output does not name %q:\n%s", name, tc.flag, tc.errHas, out)
			}
		}
	}
}
