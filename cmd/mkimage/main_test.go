package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/cli/clitest"
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

func runMkimage(args []string, stdout, stderr *bytes.Buffer) int {
	return run(args, nil, stdout, stderr)
}

// Every command and subcommand: --help and -h on stdout with status 0,
// an unknown flag on stderr with status 2.
func TestHelp(t *testing.T) {
	clitest.CheckHelp(t, "mkimage", program, runMkimage, []string{
		"mkimage",
		"mkimage build",
		"mkimage rootfs",
		"mkimage initramfs",
		"mkimage disk",
		"mkimage test",
		"mkimage probe",
		"mkimage keygen",
		"mkimage verify",
		"mkimage diff",
		"mkimage version",
	})
}

// Wrong calls exit 2 with the reason on stderr and nothing on stdout.
func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args   []string
		code   int
		errHas string
	}{
		{nil, 2, "no command given"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"rootfs"}, 2, "--from and --out are required"},
		{[]string{"rootfs", "--from", "x", "--out", "y", "--size", "huge"}, 2, "--size"},
		{[]string{"initramfs", "--out", "x"}, 2, "--kernel-modules and --out are required"},
		{[]string{"disk", "--root", "x", "--out", "y"}, 2, "--root, --out and --size are required"},
		{[]string{"rootfs", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"verify"}, 2, "missing IMAGE"},
		{[]string{"verify", "a.img", "b.img"}, 2, "too many arguments"},
		{[]string{"verify", "missing.img", "--key", "missing.pub"}, 1, "missing.pub"},
		{[]string{"build"}, 2, "missing RECIPE.yaml"},
		{[]string{"build", "web.yaml"}, 2, "--out is required"},
		{[]string{"build", "web.yaml", "--out", "w.img", "--mode", "fakeroot"}, 2, `--mode "fakeroot"`},
		{[]string{"build", "missing.yaml", "--out", "w.img"}, 1, "missing.yaml"},
		{[]string{"test"}, 2, "missing IMAGE"},
		{[]string{"test", "a.img", "--firmware", "coreboot"}, 2, `--firmware "coreboot"`},
		{[]string{"test", "a.img", "--kvm", "maybe"}, 2, `--kvm "maybe"`},
		{[]string{"test", "missing.img", "--kvm", "off"}, 3, "missing.img"},
		{[]string{"probe"}, 2, "--health is required"},
		{[]string{"version"}, 0, ""},
		{[]string{"help", "version"}, 0, ""},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tt.args, nil, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.errHas) {
			t.Errorf("mkimage %q = status %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.code, tt.errHas)
		}
		if code == 2 && (stdout.Len() > 0 || !strings.Contains(stderr.String(), "--help")) {
			t.Errorf("mkimage %q: stdout %q, stderr %q; want nothing on stdout and a pointer to --help on stderr", tt.args, stdout.String(), stderr.String())
		}
	}
}

func TestInitramfsMissingInit(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"initramfs", "--kernel-modules", dir, "--out", filepath.Join(dir, "i"), "--init", filepath.Join(dir, "hninit")}, nil, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "--init") {
		t.Errorf("mkimage initramfs without init = status %d, %q; want 1 and an error naming --init", code, stderr.String())
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
	if code := run([]string{"rootfs", "--from", src, "--out", out, "--size", "32M"}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("mkimage rootfs = status %d\n%s", code, stderr.String())
	}
	if st, err := os.Stat(out); err != nil || st.Size() != 32<<20 {
		t.Errorf("rootfs image %s: %v, want 32 MiB", out, err)
	}
	if !strings.Contains(stdout.String(), out) {
		t.Errorf("run(rootfs) stdout = %q, want the image path", stdout.String())
	}

	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	stderr.Reset()
	if code := run([]string{"rootfs", "--from", src, "--out", out}, nil, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "SOURCE_DATE_EPOCH") {
		t.Errorf("mkimage rootfs with a bad SOURCE_DATE_EPOCH = status %d, %q; want 1 and an error naming it", code, stderr.String())
	}
}

// A recipe with a mistake fails before anything is built, naming the
// recipe's file and line.
func TestBuildRecipeError(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(p, []byte("name: web\nversion: '1'\nsuite: bookworm\nfiles:\n  - path: /etc/motd\n    source: ../../etc/shadow\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"build", p, "--out", filepath.Join(dir, "web.img")}, nil, &stdout, &stderr)
	if want := p + ":6: files: source"; code != 1 || !strings.Contains(stderr.String(), want) {
		t.Errorf("mkimage build (bad recipe) = status %d, %q; want 1 and %q", code, stderr.String(), want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("a failed build left %d entries in %s, want only the recipe", len(ents), dir)
	}
}
