package main

import (
	"bytes"
	"log"
	"log/slog"
	"os"
	"regexp"
	"testing"
)

func TestConsoleHandler(t *testing.T) {
	for _, tc := range []struct {
		debug bool
		log   func(*slog.Logger)
		want  string // regexp of the whole output
	}{
		{false, func(l *slog.Logger) { l.Info("found hostpart", "device", "/dev/vda2") },
			`^hninit: \[\s*\d+\.\d{6}\] found hostpart device=/dev/vda2\n$`},
		{false, func(l *slog.Logger) { l.Warn("disk check: EFI-BOOT is missing") },
			`^hninit: \[\s*\d+\.\d{6}\] WARNING: disk check: EFI-BOOT is missing\n$`},
		{false, func(l *slog.Logger) { l.Error("cannot boot", "err", "x") },
			`^hninit: \[\s*\d+\.\d{6}\] ERROR: cannot boot err=x\n$`},
		{false, func(l *slog.Logger) { l.Debug("module", "name", "ext4") }, `^$`},
		{true, func(l *slog.Logger) { l.Debug("module", "name", "ext4") },
			`^hninit: \[\s*\d+\.\d{6}\] module name=ext4\n$`},
		{false, func(l *slog.Logger) { l.With("image", "hn-root.img").Info("mounted") },
			`^hninit: \[\s*\d+\.\d{6}\] mounted image=hn-root.img\n$`},
	} {
		var buf bytes.Buffer
		h := newConsoleHandler(&buf, tc.debug)
		tc.log(slog.New(h))
		if !regexp.MustCompile(tc.want).MatchString(buf.String()) {
			t.Errorf("console = %q, want match for %q", buf.String(), tc.want)
		}
		if got, want := len(h.Lines()), bytes.Count(buf.Bytes(), []byte("\n")); got != want {
			t.Errorf("Lines() kept %d lines, console has %d", got, want)
		}
	}
}

// TestRouteStdLog: u-root's packages log with the standard logger; after
// routeStdLog those lines are the init's debug records, so they show only
// with hn.debug, and as hninit: lines.
func TestRouteStdLog(t *testing.T) {
	orig := slog.Default()
	t.Cleanup(func() {
		slog.SetDefault(orig)
		slog.SetLogLoggerLevel(slog.LevelInfo)
		log.SetOutput(os.Stderr)
		log.SetFlags(log.LstdFlags)
	})
	var buf bytes.Buffer
	h := newConsoleHandler(&buf, false)
	routeStdLog(slog.New(h))
	log.Printf("Attempting to get DHCPv4 lease on %s", "eth0")
	if buf.Len() != 0 {
		t.Errorf("standard logger without hn.debug wrote %q, want nothing", buf.String())
	}
	h.debug = true
	log.Printf("switch_root: moving mounts")
	if got := buf.String(); !regexp.MustCompile(`^hninit: \[ *[0-9.]+\] switch_root: moving mounts\n$`).MatchString(got) {
		t.Errorf("standard logger with hn.debug wrote %q, want one hninit: line", got)
	}
}
