package cli

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantPos string
		wantV   bool
		wantErr string
	}{
		{[]string{"a", "-v", "b"}, "a b", true, ""},
		{[]string{"-v", "--", "-x", "b"}, "-x b", true, ""},
		{[]string{"a", "--", "-v"}, "a -v", false, ""},
		{[]string{"a", "--nope"}, "", false, "flag provided but not defined: -nope"},
		{[]string{"a", "--help"}, "", false, "flag: help requested"},
	} {
		var out, errs bytes.Buffer
		fs := NewFlagSet("prog cmd", "Usage: prog cmd [-v] ARG...\n", IO{Stdout: &out, Stderr: &errs})
		v := fs.Bool("v", false, "verbose")
		err := fs.Parse(tc.args)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tc.wantErr) || (tc.wantErr == "" && err != nil) {
			t.Errorf("Parse(%q) = %v, want error %q", tc.args, err, tc.wantErr)
			continue
		}
		if err == nil && (strings.Join(fs.Args(), " ") != tc.wantPos || *v != tc.wantV) {
			t.Errorf("Parse(%q): args %q, -v %v; want %q, %v", tc.args, fs.Args(), *v, tc.wantPos, tc.wantV)
		}
		if errors.Is(err, flag.ErrHelp) && !strings.HasPrefix(out.String(), "Usage: prog cmd") {
			t.Errorf("Parse(%q): stdout %q, want the usage", tc.args, out.String())
		}
		if errs.Len() > 0 {
			t.Errorf("Parse(%q) wrote on stderr: %q (Exit prints errors, once)", tc.args, errs.String())
		}
	}
}

func TestExit(t *testing.T) {
	for _, tc := range []struct {
		err    error
		code   int
		stderr string
	}{
		{nil, 0, ""},
		{flag.ErrHelp, 0, ""},
		{&UsageError{Cmd: "prog cmd", Msg: "missing ARG"}, 2, "prog cmd: missing ARG\nRun \"prog cmd --help\" for its usage.\n"},
		{&UsageError{Cmd: "prog cmd", Msg: "bad flag", Usage: "Usage: prog cmd\n"}, 2, "prog cmd: bad flag\n\nUsage: prog cmd\n"},
		{errors.New("disk full"), 1, "prog: disk full\n"},
		{errors.New("prog cmd: disk full"), 1, "prog cmd: disk full\n"},
	} {
		var b bytes.Buffer
		if code := Exit(&b, "prog", tc.err); code != tc.code || b.String() != tc.stderr {
			t.Errorf("Exit(%v) = %d, %q; want %d, %q", tc.err, code, b.String(), tc.code, tc.stderr)
		}
	}
}
