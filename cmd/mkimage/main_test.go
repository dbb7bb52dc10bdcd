package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"512", 512, false},
		{"64M", 64 << 20, false},
		{"64MiB", 64 << 20, false},
		{"2G", 2 << 30, false},
		{"3T", 3 << 40, false},
		{"1.5G", 3 << 29, false},
		{"128m", 128 << 20, false},
		{"", 0, true},
		{"-1G", 0, true},
		{"lots", 0, true},
	} {
		got, err := parseSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v, want %d, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestHelpAndUsage(t *testing.T) {
	for _, tt := range []struct {
		args       []string
		wantErr    error
		wantStdout string
	}{
		{[]string{"--help"}, nil, "mkimage rootfs"},
		{[]string{"rootfs", "--help"}, nil, "Examples:"},
		{[]string{"initramfs", "--help"}, nil, "--kernel-modules"},
		{[]string{"disk", "--help"}, nil, "--hostpart-fs"},
		{[]string{"version", "--help"}, nil, "Usage: mkimage version"},
		{[]string{"version"}, nil, "mkimage "},
		{nil, errUsage, ""},
		{[]string{"frobnicate"}, errUsage, ""},
		{[]string{"rootfs"}, errUsage, ""},
		{[]string{"rootfs", "--from", "x", "--out", "y", "--size", "huge"}, errUsage, ""},
		{[]string{"initramfs", "--out", "x"}, errUsage, ""},
		{[]string{"disk", "--root", "x", "--out", "y"}, errUsage, ""},
		{[]string{"disk", "--bogus"}, errUsage, ""},
		{[]string{"rootfs", "extra"}, errUsage, ""},
	} {
		var stdout, stderr bytes.Buffer
		err := run(tt.args, nil, &stdout, &stderr)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("run(%q) = %v, want %v", tt.args, err, tt.wantErr)
		}
		if !strings.Contains(stdout.String(), tt.wantStdout) {
			t.Errorf("run(%q) stdout = %q, want it to contain %q", tt.args, stdout.String(), tt.wantStdout)
		}
		if code := exitCode(err, &bytes.Buffer{}); (tt.wantErr == nil) != (code == 0) {
			t.Errorf("exitCode(run(%q)) = %d", tt.args, code)
		}
	}
}

func TestInitramfsMissingInit(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	err := run([]string{"initramfs", "--kernel-modules", dir, "--out", filepath.Join(dir, "i"), "--init", filepath.Join(dir, "hninit")}, nil, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "--init") {
		t.Errorf("run(initramfs without init) = %v, want an error naming --init", err)
	}
}

func TestRootfsCommand(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc/motd"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out := filepath.Join(dir, "hn-root.img")
	var stdout, stderr bytes.Buffer
	if err := run([]string{"rootfs", "--from", src, "--out", out, "--size", "32M"}, nil, &stdout, &stderr); err != nil {
		t.Fatalf("run(rootfs) = %v\n%s", err, stderr.String())
	}
	if st, err := os.Stat(out); err != nil || st.Size() != 32<<20 {
		t.Errorf("rootfs image %s: %v, want 32 MiB", out, err)
	}
	if !strings.Contains(stdout.String(), out) {
		t.Errorf("run(rootfs) stdout = %q, want the image path", stdout.String())
	}

	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if err := run([]string{"rootfs", "--from", src, "--out", out}, nil, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("run(rootfs) with a bad SOURCE_DATE_EPOCH = %v, want an error naming it", err)
	}
}
