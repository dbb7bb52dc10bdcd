// Command benchbuild times the CI pipeline's first two steps on
// examples/ci/minimal.yaml and prints a markdown table: mmdebstrap alone
// (the reference: the same tree as a tarball, what a pipeline without
// mkimage would start from), then mkimage build with an empty package
// cache, twice with the cache warm (the digests must be equal: the
// build is reproducible), and mkimage test of the image under TCG.
//
//	go run ./testvm/benchbuild
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/recipe"
	"github.com/hnboot/hnboot/testvm"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchbuild:", err)
		os.Exit(1)
	}
}

type row struct{ what, took, note string }

func run() error {
	ctx := context.Background()
	root, err := testvm.ModuleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "hnboot-benchbuild-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f, err := testvm.Build(ctx, dir, nil)
	if err != nil {
		return err
	}
	rec := filepath.Join(root, "examples", "ci", "minimal.yaml")
	cache := filepath.Join(dir, "apt")
	var rows []row
	env := append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000", "HNBOOT_KVM=off")

	// The reference: mmdebstrap alone, with the plan mkimage build runs.
	r, err := recipe.ReadFile(rec)
	if err != nil {
		return err
	}
	po := recipe.PlanOptions{Arch: "amd64", Stage: filepath.Join(dir, "ref"), Out: filepath.Join(dir, "ref", "tree.tar"), Mode: "auto", Version: "1"}
	if po.Machine, po.AptFiles, err = recipe.MachineSources("/etc/apt"); err != nil {
		return err
	}
	os.MkdirAll(po.Stage, 0o755)
	start := time.Now()
	if _, err := r.Tree(ctx, recipe.TreeOptions{PlanOptions: po, Stdout: io.Discard, Stderr: io.Discard}); err != nil {
		return err
	}
	st, _ := os.Stat(po.Out)
	rows = append(rows, row{"mmdebstrap alone (reference), no cache", secs(time.Since(start)), fmt.Sprintf("tarball %d MiB", st.Size()>>20)})
	os.RemoveAll(po.Stage)

	var digests []string
	var img string
	for i, what := range []string{"mkimage build, empty package cache", "mkimage build, cache warm", "mkimage build, cache warm"} {
		img = filepath.Join(dir, fmt.Sprintf("ci-%d.img", i))
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, f.MkImage, "build", rec, "--out", img, "--version", "1", "--cache", cache)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("mkimage build: %v\n%s", err, out.String())
		}
		took := time.Since(start)
		d, err := fileSHA(img)
		if err != nil {
			return err
		}
		digests = append(digests, d)
		note := ""
		if m := regexp.MustCompile(`(\d+) \(([^)]*)\) downloaded`).FindStringSubmatch(out.String()); m != nil {
			note = m[1] + " packages (" + m[2] + ") downloaded"
		}
		st, _ := os.Stat(img)
		rows = append(rows, row{what, secs(took), fmt.Sprintf("%s; image %d MiB, sha256 %s", note, st.Size()>>20, d[:12])})
		if i < 2 {
			os.Remove(img)
		}
	}
	same := "no: " + strings.Join(digests, " ")
	if digests[0] == digests[1] && digests[1] == digests[2] {
		same = "yes, sha256 " + digests[0]
	}
	rows = append(rows, row{"three builds byte-identical", "", same})

	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, f.MkImage, "test", img, "--kvm", "off")
	cmd.Env, cmd.Stdout, cmd.Stderr = env, &out, &out
	start = time.Now()
	err = cmd.Run()
	note := "healthy"
	if err != nil {
		note = "FAILED: " + err.Error()
	}
	rows = append(rows, row{"mkimage test (UEFI, TCG)", secs(time.Since(start)), note})

	fmt.Printf("\nexamples/ci/minimal.yaml (bookworm minbase, systemd, linux-image-amd64 cut to a VM's modules)\n\n")
	fmt.Println("| step | wall time | notes |")
	fmt.Println("| --- | --- | --- |")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s |\n", r.what, r.took, r.note)
	}
	return nil
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func fileSHA(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
