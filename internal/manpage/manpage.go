// Package manpage makes a roff manual page from a program's own --help
// texts, as help2man does, but for programs with subcommands: the page
// holds the top-level usage and one subsection per command (groups of
// commands recursively), so the manual cannot drift from the binary it
// ships with.
package manpage

import (
	"bufio"
	"fmt"
	"strings"
)

// Page is one manual page.
type Page struct {
	Name    string // the program, e.g. "imaged"
	Section string // "1" for user commands, "8" for daemons and admin tools
	Version string // shown in the footer
	Date    string // YYYY-MM-DD, in the footer (from SOURCE_DATE_EPOCH: reproducible)
	Source  string // the footer's source, e.g. "hnboot"
	Help    string // NAME --help
	// Commands are the subcommands' --help texts, in order; Name is the
	// full command line ("imaged fleet status").
	Commands []Command
}

// Command is one subcommand's help.
type Command struct{ Name, Help string }

// Commands returns the command names listed in a --help text: the
// indented first words of the lines after "Commands:" up to the next
// blank line (the layout internal/cli prints).
func Commands(help string) []string {
	var names []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.TrimSpace(l) == "Commands:":
			in = true
		case in && strings.TrimSpace(l) == "":
			in = false
		case in && strings.HasPrefix(l, "  "):
			if f := strings.Fields(l); len(f) > 0 {
				names = append(names, f[0])
			}
		}
	}
	return names
}

// Summary is the first paragraph of a --help text joined into one line
// with the program's name removed from its start ("imaged is hnboot's
// fleet daemon: ..." gives "hnboot's fleet daemon: ..."), for NAME.
func Summary(name, help string) string {
	para, _, _ := strings.Cut(strings.TrimSpace(help), "\n\n")
	s := strings.Join(strings.Fields(para), " ")
	s = strings.TrimPrefix(s, name+" is ")
	s = strings.TrimPrefix(s, name+" ")
	return strings.TrimSuffix(s, ".")
}

// Escape makes text safe inside a roff no-fill block: backslashes become
// \e, a dot or quote at a line's start is shielded with \&, and hyphens
// are written \- so flags copy and paste as ASCII.
func Escape(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(s, "\n") {
		if i > 0 {
			b.WriteByte('\n')
		}
		l = strings.ReplaceAll(l, `\`, `\e`)
		l = strings.ReplaceAll(l, "-", `\-`)
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			l = `\&` + l
		}
		b.WriteString(l)
	}
	return b.String()
}

// quote makes an argument of a roff request (.TH, .SS): double quotes
// inside are doubled as groff reads them.
func quote(s string) string { return `"` + strings.ReplaceAll(Escape(s), `"`, `""`) + `"` }

// Render writes the page in man(7) roff.
func Render(p Page) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH %s %s %s %s %s\n", strings.ToUpper(p.Name), p.Section, quote(p.Date),
		quote(p.Source+" "+p.Version), quote(p.Source))
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", Escape(p.Name), Escape(Summary(p.Name, p.Help)))
	b.WriteString(".SH DESCRIPTION\n")
	block(&b, p.Help)
	if len(p.Commands) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, c := range p.Commands {
			fmt.Fprintf(&b, ".SS %s\n", quote(c.Name))
			block(&b, c.Help)
		}
	}
	b.WriteString(".SH SEE ALSO\nThe README of hnboot, in /usr/share/doc/hnboot.\n")
	return []byte(b.String())
}

// block writes help text verbatim (no filling, no adjusting): --help is
// laid out for a terminal already.
func block(b *strings.Builder, text string) {
	b.WriteString(".nf\n")
	b.WriteString(Escape(strings.TrimRight(text, "\n")))
	b.WriteString("\n.fi\n")
}
