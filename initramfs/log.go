package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// consoleHandler prints slog records as `hninit: [ 1.234567] msg k=v`, the
// timestamp being CLOCK_MONOTONIC like the kernel's own log, so init steps
// line up with dmesg. It also keeps every line for the boot log on hostpart.
type consoleHandler struct {
	mu    *sync.Mutex
	w     io.Writer
	debug bool
	lines *[]string
	attrs []slog.Attr
}

func newConsoleHandler(w io.Writer, debug bool) *consoleHandler {
	return &consoleHandler{mu: new(sync.Mutex), w: w, debug: debug, lines: new([]string)}
}

func (h *consoleHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.debug || l >= slog.LevelInfo
}

func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func (h *consoleHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "hninit: [%11.6f] ", monotonic())
	switch {
	case r.Level >= slog.LevelError:
		b.WriteString("ERROR: ")
	case r.Level >= slog.LevelWarn:
		b.WriteString("WARNING: ")
	}
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	line := b.String()
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.lines = append(*h.lines, line)
	_, err := fmt.Fprintln(h.w, line)
	return err
}

func (h *consoleHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return &n
}

func (h *consoleHandler) WithGroup(string) slog.Handler { return h }

// Lines returns what was logged so far.
func (h *consoleHandler) Lines() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), *h.lines...)
}
