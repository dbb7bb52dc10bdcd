package testvm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// upgradable finds a package of the Debian tree at root that apt knows
// in another version and that has no maintainer script of its own
// (a library: dpkg only runs ldconfig's trigger), so installing it into
// a copy of the tree is a plain package upgrade.
func upgradable(t *testing.T, root string) (name, from, to string) {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "var/lib/dpkg/status"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type pkg struct{ name, version, arch string }
	var pkgs []pkg
	var cur pkg
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		switch k {
		case "":
			if cur.name != "" {
				pkgs = append(pkgs, cur)
			}
			cur = pkg{}
		case "Package":
			cur.name = v
		case "Version":
			cur.version = v
		case "Architecture":
			cur.arch = v
		}
	}
	if cur.name != "" {
		pkgs = append(pkgs, cur)
	}
	for _, p := range pkgs {
		if !strings.HasPrefix(p.name, "lib") {
			continue
		}
		scripts, _ := filepath.Glob(filepath.Join(root, "var/lib/dpkg/info", p.name+"*.p*inst"))
		if len(scripts) > 0 {
			continue
		}
		out, err := exec.Command("apt-cache", "madison", p.name).Output()
		if err != nil {
			t.Fatalf("apt-cache madison %s: %v (install apt, run apt-get update)", p.name, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			fs := strings.Split(l, "|")
			if len(fs) >= 3 && strings.Contains(fs[2], "Packages") {
				if v := strings.TrimSpace(fs[1]); v != p.version && strings.Contains(fs[2], p.arch) {
					return p.name, p.version, v
				}
			}
		}
	}
	t.Fatalf("no library of %s has another version in apt's lists: run apt-get update (the test upgrades one package in a copy of the tree)", root)
	return
}

// TestMkimageDiffPackageUpgrade: two real debootstrapped trees, the second
// with one package upgraded by dpkg; mkimage diff of their images names
// that package's versions and its changed files, and of their manifests
// the same packages.
func TestMkimageDiffPackageUpgrade(t *testing.T) {
	f := fixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	base, err := DebianBase(ctx, f.Log)
	if err != nil {
		t.Fatal(err)
	}
	name, from, to := upgradable(t, base)
	t.Logf("upgrading %s %s -> %s", name, from, to)
	debs := filepath.Join(CacheDir(), "debs")
	os.MkdirAll(debs, 0o755)
	matches, _ := filepath.Glob(filepath.Join(debs, name+"_*.deb"))
	var deb string
	for _, m := range matches {
		if out, _ := exec.Command("dpkg-deb", "-f", m, "Version").Output(); strings.TrimSpace(string(out)) == to {
			deb = m
		}
	}
	if deb == "" {
		cmd := exec.CommandContext(ctx, "apt-get", "download", name+"="+to)
		cmd.Dir = debs
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("apt-get download %s=%s: %v\n%s", name, to, err, out)
		}
		matches, _ = filepath.Glob(filepath.Join(debs, name+"_*.deb"))
		for _, m := range matches {
			if out, _ := exec.Command("dpkg-deb", "-f", m, "Version").Output(); strings.TrimSpace(string(out)) == to {
				deb = m
			}
		}
	}
	if deb == "" {
		t.Fatalf("no .deb of %s %s in %s", name, to, debs)
	}
	dir := t.TempDir()
	treeB := filepath.Join(dir, "tree-b")
	if out, err := exec.Command("cp", "-a", base, treeB).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "dpkg", "--root="+treeB, "--force-depends", "-i", deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg --root %s -i %s: %v\n%s", treeB, deb, err, out)
	}
	imgA, imgB := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for img, tree := range map[string]string{imgA: base, imgB: treeB} {
		if err := f.Run(ctx, "rootfs", "--from", tree, "--out", img, "--no-boot-files"); err != nil {
			t.Fatal(err)
		}
	}
	diff := func(a, b string) map[string]json.RawMessage {
		t.Helper()
		start := time.Now()
		out, err := exec.CommandContext(ctx, f.MkImage, "diff", "--json", a, b).Output()
		if err != nil {
			t.Fatalf("mkimage diff %s %s: %v\n%s", a, b, err, out)
		}
		t.Logf("mkimage diff %s %s: %v", filepath.Base(a), filepath.Base(b), time.Since(start).Round(time.Millisecond))
		var m map[string]json.RawMessage
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatal(err)
		}
		for k, v := range m {
			var b bytes.Buffer
			json.Compact(&b, v)
			m[k] = b.Bytes()
		}
		return m
	}
	want := fmt.Sprintf(`[{"Name":%q,"Arch":"amd64","From":%q,"To":%q}]`, name, from, to)
	d := diff(imgA, imgB)
	if got := string(d["packages_changed"]); got != want {
		t.Errorf("packages_changed = %s, want %s", got, want)
	}
	if string(d["packages_added"]) != "null" || string(d["packages_removed"]) != "null" {
		t.Errorf("added %s, removed %s; want none", d["packages_added"], d["packages_removed"])
	}
	var changed []struct{ Path, What string }
	json.Unmarshal(d["files_changed"], &changed)
	status, lib := false, false
	for _, c := range changed {
		status = status || c.Path == "var/lib/dpkg/status"
		lib = lib || strings.HasPrefix(c.Path, "usr/lib/") || strings.HasPrefix(c.Path, "usr/share/doc/"+name)
	}
	if !status || !lib {
		t.Errorf("files changed %v: want var/lib/dpkg/status and the package's files", changed)
	}
	t.Logf("files changed: %d, added %s, removed %s", len(changed), d["files_added"], d["files_removed"])
	// From the manifests, the same packages.
	dm := diff(imgA+".json", imgB+".json")
	if got := string(dm["packages_changed"]); got != want || string(dm["files_compared"]) != "false" {
		t.Errorf("diff of the manifests: packages_changed %s, files_compared %s; want %s, false", got, dm["files_compared"], want)
	}
}
