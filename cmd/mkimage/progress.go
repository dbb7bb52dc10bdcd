package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// progress draws a one-line bar on stderr when it is a terminal, at most
// ten times a second, and nothing otherwise (CI logs stay clean).
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	width int
	last  time.Time
	shown bool
}

func newProgress(w io.Writer, label string) *progress {
	p := &progress{w: w, label: label}
	f, ok := w.(*os.File)
	if !ok {
		return p
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col < 40 {
		return p
	}
	p.width = int(ws.Col)
	return p
}

// line renders the bar for done of total in width columns.
func progressLine(label string, done, total int64, width int) string {
	pct := 0.0
	if total > 0 {
		pct = min(float64(done)/float64(total), 1)
	}
	text := fmt.Sprintf(" %3.0f%% %s", pct*100, label)
	bar := width - len(text) - 2 // the brackets
	if bar < 10 {
		return text
	}
	n := int(pct * float64(bar))
	return "[" + strings.Repeat("=", n) + strings.Repeat(" ", bar-n) + "]" + text
}

func (p *progress) update(done, total int64) {
	if p == nil || p.width == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.last) < 100*time.Millisecond && done < total {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "\r%s", progressLine(p.label, done, total, p.width-1))
	p.shown = true
}

func (p *progress) done() {
	if p == nil || !p.shown {
		return
	}
	fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.width-1))
}
