// Package cli is the one command-line style of mkimage and imaged: every
// command and subcommand has a usage text (synopsis, description, flags),
// --help and -h print it on stdout and exit 0, a wrong flag or argument
// exits 2 with the reason on stderr, and a failure exits 1 with the
// reason on stderr.
//
// A program is a Group of Commands (a Command may itself run a Group);
// main stays two lines:
//
//	func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
//	func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
//		return cli.Main(context.Background(), "prog", program, args, stdin, stdout, stderr)
//	}
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Exit codes.
const (
	ExitOK      = 0 // done, or --help
	ExitFailure = 1 // the command ran and failed
	ExitUsage   = 2 // the command was called wrongly: unknown flag, missing argument
)

// IO is a command's standard streams.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Command is one command or subcommand.
type Command struct {
	Name  string // the word that selects it, e.g. "status"
	Short string // one line for its group's command list
	// Run runs it; name is the full command name ("imaged fleet status")
	// for its usage text and messages, args what follows that name.
	Run func(ctx context.Context, name string, args []string, io IO) error
	// Group, instead of Run, makes the command a group of subcommands.
	Group *Group
}

// Group is a program or a command with subcommands.
type Group struct {
	// Doc is the description printed above the command list; its first
	// line says what the program or group is.
	Doc      string
	Commands []Command
	// Footer is printed after the command list (environment, notes).
	Footer string
	// Default, if set, runs when no command is given or the first
	// argument is a flag other than --help: a group that also is a
	// command of its own ("imaged fleet rollout" lists, "imaged fleet
	// rollout start NAME" acts).
	Default func(ctx context.Context, name string, args []string, io IO) error
}

// Main runs the program g named prog and returns its exit status,
// printing errors on stderr.
func Main(ctx context.Context, prog string, g *Group, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return Exit(stderr, prog, g.Run(ctx, prog, args, IO{Stdin: stdin, Stdout: stdout, Stderr: stderr}))
}

// Run dispatches args[0] to its command. No command, or an unknown one,
// is a usage error; "help", -h and --help print the group's usage on
// stdout ("help CMD" prints CMD's).
func (g *Group) Run(ctx context.Context, name string, args []string, std IO) error {
	if g.Default != nil && (len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "-help" && args[0] != "--help") {
		return g.Default(ctx, name, args, std)
	}
	if len(args) == 0 {
		return &UsageError{Cmd: name, Msg: "no command given", Usage: g.Usage(name)}
	}
	switch args[0] {
	case "-h", "-help", "--help":
		fmt.Fprint(std.Stdout, g.Usage(name))
		return flag.ErrHelp
	case "help":
		if len(args) == 1 {
			fmt.Fprint(std.Stdout, g.Usage(name))
			return flag.ErrHelp
		}
		return g.Run(ctx, name, []string{args[1], "--help"}, std)
	}
	c := g.find(args[0])
	if c == nil {
		return &UsageError{Cmd: name, Msg: fmt.Sprintf("unknown command %q", args[0]), Usage: g.Usage(name)}
	}
	full := name + " " + c.Name
	if c.Group != nil {
		return c.Group.Run(ctx, full, args[1:], std)
	}
	return c.Run(ctx, full, args[1:], std)
}

func (g *Group) find(name string) *Command {
	for i := range g.Commands {
		if g.Commands[i].Name == name {
			return &g.Commands[i]
		}
	}
	return nil
}

// Usage is the group's usage text: its description, its commands, and
// how to get a command's help.
func (g *Group) Usage(name string) string {
	var b strings.Builder
	if g.Doc != "" {
		b.WriteString(strings.TrimRight(g.Doc, "\n") + "\n\n")
	}
	fmt.Fprintf(&b, "Usage: %s COMMAND [flags] [arguments]\n\nCommands:\n", name)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, c := range g.Commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.Name, c.Short)
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nRun \"%s COMMAND --help\" for a command's usage, flags and examples.\n", name)
	if g.Footer != "" {
		b.WriteString("\n" + strings.TrimRight(g.Footer, "\n") + "\n")
	}
	return b.String()
}

// Walk calls fn with the full name of every runnable command under g
// (subgroups included, and the subgroups themselves), for tests that
// must cover every command.
func (g *Group) Walk(name string, fn func(name string, c *Command)) {
	for i := range g.Commands {
		c := &g.Commands[i]
		full := name + " " + c.Name
		fn(full, c)
		if c.Group != nil {
			c.Group.Walk(full, fn)
		}
	}
}

// UsageError is a command called wrongly. It exits 2; Exit prints Msg and
// then Usage or, when Usage is empty, a pointer to --help.
type UsageError struct {
	Cmd   string // full command name, e.g. "imaged fleet assign"
	Msg   string
	Usage string
}

func (e *UsageError) Error() string { return e.Cmd + ": " + e.Msg }

// ExitError makes a command exit with Code (a status of its own beyond
// 0, 1 and 2, documented in its usage); Err, when set, is printed as a
// failure is.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Exit prints err for the user and returns the exit status: 0 for nil
// or flag.ErrHelp (the usage is already on stdout), 2 for a UsageError,
// an ExitError's code, 1 for anything else.
func Exit(stderr io.Writer, prog string, err error) int {
	var ue *UsageError
	var ee *ExitError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &ee):
		if ee.Err != nil {
			msg := ee.Err.Error()
			if !strings.HasPrefix(msg, prog+":") && !strings.HasPrefix(msg, prog+" ") {
				msg = prog + ": " + msg
			}
			fmt.Fprintln(stderr, msg)
		}
		return ee.Code
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, ue.Error())
		if ue.Usage != "" {
			fmt.Fprint(stderr, "\n"+ue.Usage)
		} else {
			fmt.Fprintf(stderr, "Run \"%s --help\" for its usage.\n", ue.Cmd)
		}
		return ExitUsage
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, prog+":") && !strings.HasPrefix(msg, prog+" ") {
		msg = prog + ": " + msg
	}
	fmt.Fprintln(stderr, msg)
	return ExitFailure
}

// FlagSet is a command's flags and usage. Flags may come before, between
// and after positional arguments ("--" ends the flags).
type FlagSet struct {
	*flag.FlagSet
	name  string
	usage string
	io    IO
	args  []string
}

// NewFlagSet returns the flag set of the command called name (its full
// name, as given to Command.Run). usage is its synopsis and description,
// e.g. "Usage: mkimage keygen --out KEY\n\nMakes a key pair...\n"; the
// flags are listed after it.
func NewFlagSet(name, usage string, std IO) *FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // Parse returns every error; Exit prints it once
	fs.Usage = func() {}
	return &FlagSet{FlagSet: fs, name: name, usage: usage, io: std}
}

// Usage is the full usage text: synopsis, description, flags.
func (f *FlagSet) Usage() string {
	var b strings.Builder
	b.WriteString(strings.TrimRight(f.usage, "\n") + "\n")
	n := 0
	f.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return b.String()
	}
	b.WriteString("\nFlags:\n")
	f.VisitAll(func(fl *flag.Flag) {
		typ, help := flag.UnquoteUsage(fl)
		line := "  --" + fl.Name
		if typ != "" {
			line += " " + typ
		}
		b.WriteString(line + "\n")
		b.WriteString("        " + strings.ReplaceAll(help, "\n", "\n        "))
		if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "0" && fl.DefValue != "[]" {
			fmt.Fprintf(&b, " (default %q)", fl.DefValue)
		}
		b.WriteString("\n")
	})
	return b.String()
}

// Parse parses args. --help or -h prints the usage on stdout and returns
// flag.ErrHelp (Exit turns it into status 0); an unknown flag or a bad
// value returns a UsageError carrying the usage.
func (f *FlagSet) Parse(args []string) error {
	f.args = nil
	for {
		err := f.FlagSet.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(f.io.Stdout, f.Usage())
			return flag.ErrHelp
		}
		if err != nil {
			return &UsageError{Cmd: f.name, Msg: err.Error(), Usage: f.Usage()}
		}
		rest := f.FlagSet.Args()
		if len(rest) == 0 {
			return nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			f.args = append(f.args, rest...)
			return nil
		}
		f.args = append(f.args, rest[0])
		args = rest[1:]
	}
}

// Args are the positional arguments.
func (f *FlagSet) Args() []string { return f.args }

// Arg is the i'th positional argument, or "".
func (f *FlagSet) Arg(i int) string {
	if i < len(f.args) {
		return f.args[i]
	}
	return ""
}

// NArg is the number of positional arguments.
func (f *FlagSet) NArg() int { return len(f.args) }

// Usagef returns a UsageError for this command (a wrong or missing
// argument); Exit prints it with a pointer to --help.
func (f *FlagSet) Usagef(format string, args ...any) error {
	return &UsageError{Cmd: f.name, Msg: fmt.Sprintf(format, args...)}
}

// WantArgs checks the number of positional arguments, between min and max
// (max < 0: no limit), naming them in the error (e.g. "IMAGE").
func (f *FlagSet) WantArgs(min, max int, what string) error {
	n := len(f.args)
	switch {
	case n < min:
		return f.Usagef("missing %s", what)
	case max >= 0 && n > max:
		if max == 0 {
			return f.Usagef("unexpected argument %q", f.args[0])
		}
		return f.Usagef("too many arguments (want %s): %q", what, strings.Join(f.args, " "))
	}
	return nil
}

// Name is the command's full name.
func (f *FlagSet) Name() string { return f.name }
