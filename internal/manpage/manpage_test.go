package manpage

import (
	"strings"
	"testing"
)

const groupHelp = `imaged is hnboot's fleet daemon: the boot server, the host agent, and the
operator's commands on a host and on the fleet.

Usage: imaged COMMAND [flags] [arguments]

Commands:
  serve      PXE/TFTP/HTTP image server
  mark-good  confirm the current trial boot

Run "imaged COMMAND --help" for a command's usage.
`

func TestCommands(t *testing.T) {
	for _, tc := range []struct {
		help string
		want string
	}{
		{groupHelp, "serve mark-good"},
		{"Usage: imaged serve --interface IF [flags]\n\nFlags:\n  --http string\n", ""},
		{"Commands:\n  a  x\n\n  b  not a command\n", "a"},
	} {
		if got := strings.Join(Commands(tc.help), " "); got != tc.want {
			t.Errorf("Commands(%q) = %q, want %q", tc.help, got, tc.want)
		}
	}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct{ name, help, want string }{
		{"imaged", groupHelp, "hnboot's fleet daemon: the boot server, the host agent, and the operator's commands on a host and on the fleet"},
		{"mkimage", "mkimage builds images.\n\nUsage: ...", "builds images"},
	} {
		if got := Summary(tc.name, tc.help); got != tc.want {
			t.Errorf("Summary(%q, ...) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`--state DIR`, `\-\-state DIR`},
		{`a\b`, `a\eb`},
		{".TH evil\n'x\n ok", "\\&.TH evil\n\\&'x\n ok"},
	} {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRender(t *testing.T) {
	got := string(Render(Page{Name: "imaged", Section: "8", Version: "1.0", Date: "2026-12-03", Source: "hnboot",
		Help: groupHelp, Commands: []Command{{"imaged serve", "Usage: imaged serve\n.dangerous \"line\"\n"}}}))
	for _, want := range []string{
		`.TH IMAGED 8 "2026\-12\-03" "hnboot 1.0" "hnboot"`,
		".SH NAME\nimaged \\- hnboot's fleet daemon:",
		".SS \"imaged serve\"\n.nf\nUsage: imaged serve\n\\&.dangerous \"line\"\n.fi\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Render lacks %q:\n%s", want, got)
		}
	}
}
