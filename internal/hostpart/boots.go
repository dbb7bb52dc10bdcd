package hostpart

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/layout"
)

// Boot summarizes one boot's init log (.hnboot/boots/boot.N.log). The
// agent reports the last one in its check-in, so the type is the
// check-in's, defined once in package checkin.
type Boot = checkin.Boot

const maxProblems = 5

// ReadBoots reads up to n boot logs, newest first; missing ones are skipped.
func ReadBoots(dir string, n int) []Boot {
	var out []Boot
	for i := 0; i < n && i < 10; i++ {
		p := filepath.Join(dir, layout.BootsDir, fmt.Sprintf("boot.%d.log", i))
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		bt := ParseBootLog(string(b))
		bt.N = i
		if fi, err := os.Stat(p); err == nil {
			bt.Time = fi.ModTime()
		}
		out = append(out, bt)
	}
	return out
}

// ParseBootLog summarizes the `hninit:` lines of one boot.
func ParseBootLog(log string) Boot {
	var b Boot
	for _, line := range strings.Split(log, "\n") {
		i := strings.Index(line, "hninit: ")
		if i < 0 {
			continue
		}
		msg := line[i+len("hninit: "):]
		if j := strings.Index(msg, "] "); strings.HasPrefix(msg, "[") && j > 0 {
			msg = msg[j+2:]
		}
		switch {
		case strings.HasPrefix(msg, "ERROR: "):
			b.Errors++
			addProblem(&b, strings.TrimPrefix(msg, "ERROR: "))
		case strings.HasPrefix(msg, "WARNING: "):
			b.Warnings++
			addProblem(&b, strings.TrimPrefix(msg, "WARNING: "))
		}
		kv := fields(msg)
		switch {
		case strings.HasPrefix(msg, "rotation done"):
			b.Action = kv["action"]
			b.Trial = kv["trial"] == "true"
			b.TriesLeft, _ = strconv.Atoi(kv["tries_left"])
		case strings.HasPrefix(msg, "mounted image read-only"):
			// The log is saved just before switch_root, so this is the
			// last word on which image booted (a fallback shows here).
			b.Image = filepath.Base(kv["image"])
		case strings.HasPrefix(msg, "ERROR: cannot boot:"):
			b.Image = "rescue"
		}
	}
	var s []string
	if b.Image != "" {
		s = append(s, "booted "+b.Image)
	} else {
		s = append(s, "no image mounted")
	}
	if b.Action != "" {
		s = append(s, "action "+b.Action)
	}
	if b.Trial {
		s = append(s, fmt.Sprintf("on trial, %d tries left", b.TriesLeft))
	}
	s = append(s, fmt.Sprintf("%d warnings, %d errors", b.Warnings, b.Errors))
	b.Summary = strings.Join(s, ", ")
	return b
}

func addProblem(b *Boot, msg string) {
	if len(b.Problems) < maxProblems {
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		b.Problems = append(b.Problems, msg)
	}
}

// fields parses the trailing key=value pairs of a log message.
func fields(msg string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(msg) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}
