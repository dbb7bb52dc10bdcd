package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/manifest"
)

// Two small trees, ext4 and squashfs: package lists recorded at rootfs,
// and what mkimage diff says of them.
func TestRootfsPackagesAndDiff(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	tmp := t.TempDir()
	status := func(ssl string) string {
		return "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nVersion: " + ssl + "\n\n" +
			"Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b7\n"
	}
	trees := map[string]map[string]string{
		"a": {"var/lib/dpkg/status": status("3.0.15-1~deb12u1"), "usr/lib/libssl.so.3": "old", "etc/gone": "x", "etc/same": "same"},
		"b": {"var/lib/dpkg/status": status("3.0.16-1~deb12u1") + "\nPackage: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7.88.1\n",
			"usr/lib/libssl.so.3": "new!", "etc/new": "y", "etc/same": "same"},
		"none": {"etc/os-release": "ID=busybox\n"},
	}
	for _, fsType := range []string{"ext4", "squashfs"} {
		img := map[string]string{}
		for name, files := range trees {
			dir := filepath.Join(tmp, fsType, name)
			for p, c := range files {
				os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
				os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644)
			}
			img[name] = filepath.Join(tmp, fsType, name+".img")
			out, err := mkimage(t, "rootfs", "--from", dir, "--out", img[name], "--fs", fsType)
			if err != nil {
				t.Fatal(err)
			}
			if name == "none" && !strings.Contains(out, "no packages recorded: the tree has no /var/lib/dpkg/status") {
				t.Errorf("%s: rootfs of a tree without dpkg says:\n%s", fsType, out)
			}
		}
		l, err := manifest.ReadPackages(manifest.PackagesFor(img["b"]))
		if err != nil || l.Source != manifest.SourceDpkg || len(l.Packages) != 3 || l.Packages[0].Name != "bash" {
			t.Errorf("%s: package list of b = %+v, %v", fsType, l, err)
		}
		out, err := mkimage(t, "diff", "--json", img["a"], img["b"])
		if err != nil {
			t.Fatal(err)
		}
		var d ImageDiff
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("%s: %v\n%s", fsType, err, out)
		}
		want := ImageDiff{A: img["a"], B: img["b"],
			PackagesAdded:   []manifest.Package{{Name: "curl", Version: "7.88.1", Arch: "amd64"}},
			PackagesChanged: []manifest.PackageChange{{Name: "libssl3", Arch: "amd64", From: "3.0.15-1~deb12u1", To: "3.0.16-1~deb12u1"}},
			FilesCompared:   true, FilesAdded: []string{"etc/new"}, FilesRemoved: []string{"etc/gone"},
			FilesChanged: []FileChange{{"usr/lib/libssl.so.3", "content"}, {"var/lib/dpkg/status", "content"}}}
		if !reflect.DeepEqual(d, want) {
			t.Errorf("%s: mkimage diff =\n%+v\nwant\n%+v", fsType, d, want)
		}
		out, err = mkimage(t, "diff", img["a"]+".json", img["none"]+".json")
		if err != nil || !strings.Contains(out, "packages: 0 added, 2 removed, 0 changed") || !strings.Contains(out, "no /var/lib/dpkg/status") || !strings.Contains(out, "files: not compared") {
			t.Errorf("%s: diff of manifests = %v\n%s", fsType, err, out)
		}
	}
}
