package main

import (
	"bytes"
	"log/slog"
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
