package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/cli/clitest"
)

// imaged runs the command line and returns what it printed and its exit
// status.
func imaged(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = run(args, strings.NewReader(""), &o, &e)
	return o.String(), e.String(), code
}

// Every command and subcommand: --help and -h on stdout with status 0,
// an unknown flag on stderr with status 2.
func TestHelp(t *testing.T) {
	clitest.CheckHelp(t, "imaged", program, func(args []string, stdout, stderr *bytes.Buffer) int {
		return run(args, strings.NewReader(""), stdout, stderr)
	}, []string{
		"imaged",
		"imaged serve",
		"imaged agent",
		"imaged status",
		"imaged stage",
		"imaged revert",
		"imaged mark-good",
		"imaged passwd",
		"imaged fleet",
		"imaged fleet status",
		"imaged fleet assign",
		"imaged fleet revert",
		"imaged fleet rollout",
		"imaged fleet rollout start",
		"imaged fleet rollout pause",
		"imaged fleet rollout resume",
		"imaged fleet rollout abort",
		"imaged fleet rollout status",
		"imaged fleet why",
		"imaged fleet hosts",
		"imaged fleet host",
		"imaged fleet packages",
		"imaged fleet known-hosts",
		"imaged fleet audit",
		"imaged fleet publish",
		"imaged fleet images",
		"imaged fleet prune",
	})
}

// Wrong calls exit 2 with the reason and a pointer to --help on stderr,
// nothing on stdout; failures exit 1.
func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args   []string
		code   int
		errHas string
	}{
		{nil, 2, "imaged: no command given"},
		{[]string{"frobnicate"}, 2, `imaged: unknown command "frobnicate"`},
		{[]string{"fleet"}, 2, "imaged fleet: no command given"},
		{[]string{"fleet", "status"}, 2, "--server URL (or $IMAGED_SERVER) is required"},
		{[]string{"fleet", "status", "--server", "http://127.0.0.1:1", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"fleet", "assign", "--server", "http://127.0.0.1:1"}, 2, "name the target and the image"},
		{[]string{"fleet", "assign", "--server", "http://127.0.0.1:1", "web"}, 2, "name the image (name@version), or --clear"},
		{[]string{"fleet", "assign", "--server", "http://127.0.0.1:1", "web", "base@1", "--clear"}, 2, "not both"},
		{[]string{"fleet", "assign", "--server", "http://127.0.0.1:1", "--host", "a", "--group", "b", "x@1"}, 2, "not both"},
		{[]string{"fleet", "assign", "--server", "http://127.0.0.1:1", "--host", "a", "x@1", "y@2"}, 2, "too many arguments"},
		{[]string{"fleet", "revert", "--server", "http://127.0.0.1:1"}, 2, "name the TARGET"},
		{[]string{"fleet", "why", "--server", "http://127.0.0.1:1"}, 2, "missing HOST or MAC"},
		{[]string{"fleet", "status", "--server", "http://127.0.0.1:1"}, 1, "imaged: fleet: Get \"http://127.0.0.1:1/api/status\""},
		{[]string{"stage", "--hostpart", "/nonexistent"}, 2, "missing FILE or URL"},
		{[]string{"revert", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"serve", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"agent", "--config", "/nonexistent/agent.yaml"}, 1, "/nonexistent/agent.yaml"},
		{[]string{"help", "fleet"}, 0, ""},
	} {
		out, stderr, code := imaged(tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.errHas) {
			t.Errorf("imaged %q = status %d, stderr %q; want %d and %q", tt.args, code, stderr, tt.code, tt.errHas)
		}
		if code == 2 && (out != "" || !strings.Contains(stderr, "--help")) {
			t.Errorf("imaged %q: stdout %q, stderr %q; want nothing on stdout and a pointer to --help on stderr", tt.args, out, stderr)
		}
	}
}
