package testvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The kernel's SHA-256 through AF_ALG (internal/afalg, what the init
// verifies downloads with under emulation) agrees with Go's on the test
// kernel: internal/afalg's own tests (built with -tags vmtest) run as
// the image's init, after the hnboot init loaded algif_hash for
// hn.modules= (modules stay loaded across switch_root).
func TestKernelSHA256(t *testing.T) {
	f := fixture(t)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := RootTree(tree, RootOptions{Name: "afalg"}); err != nil {
		t.Fatal(err)
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "test", "-c", "-tags", "vmtest", "-o", filepath.Join(tree, "bin", "afalg.test"), "./internal/afalg")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOAMD64=v1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go test -c ./internal/afalg: %v\n%s", err, out)
	}
	init := "#!/bin/sh\nexport PATH=/bin:/sbin\nmount -t proc proc /proc\n" +
		"/bin/afalg.test -test.v -test.count=1; echo \"HNTEST afalg rc=$?\"\necho \"HNTEST end\"\npoweroff -f\n"
	if err := os.WriteFile(filepath.Join(tree, "sbin", "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "afalg.img")
	if err := f.Run(context.Background(), "rootfs", "--from", tree, "--out", img); err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(dir, "disk.img")
	if err := f.Run(context.Background(), "disk", "--root", img, "--out", d, "--size", "1G"); err != nil {
		t.Fatal(err)
	}
	console := boot(t, d, "hn.modules=algif_hash")
	for _, want := range []string{"--- PASS: TestSHA256", "--- PASS: TestUnknownAlgorithm", "HNTEST afalg rc=0"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q:\n%s", want, console)
		}
	}
}
