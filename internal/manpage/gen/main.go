// Command gen writes the manual page of an hnboot program from its own
// --help texts (see package manpage): make deb runs it on the binaries it
// packages.
//
//	go run ./internal/manpage/gen --section 8 --version 0.1.0 --out imaged.8 bin/imaged
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/manpage"
)

func main() {
	section := flag.String("section", "1", "manual section")
	version := flag.String("version", "", "version for the footer")
	out := flag.String("out", "", "output file")
	flag.Parse()
	if flag.NArg() != 1 || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: gen --section N --version V --out FILE BINARY")
		os.Exit(2)
	}
	bin := flag.Arg(0)
	name := filepath.Base(bin)
	help, err := helpOf(bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	p := manpage.Page{Name: name, Section: *section, Version: *version, Date: date(), Source: "hnboot", Help: help}
	if err := walk(bin, name, nil, help, &p.Commands); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, manpage.Render(p), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

// walk adds the help of every command listed in help, then of their own
// subcommands.
func walk(bin, name string, path []string, help string, into *[]manpage.Command) error {
	for _, c := range manpage.Commands(help) {
		args := append(append([]string{}, path...), c)
		h, err := helpOf(bin, args...)
		if err != nil {
			return err
		}
		*into = append(*into, manpage.Command{Name: name + " " + strings.Join(args, " "), Help: h})
		if err := walk(bin, name, args, h, into); err != nil {
			return err
		}
	}
	return nil
}

func helpOf(bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, append(args, "--help")...)
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s --help: %w", bin, strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// date is SOURCE_DATE_EPOCH's day, else today's, in UTC.
func date() string {
	t := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			t = time.Unix(n, 0)
		}
	}
	return t.UTC().Format("2006-01-02")
}
