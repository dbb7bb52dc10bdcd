package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func makeTree(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{"boot", "etc/ssh", "usr/bin", "empty"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"boot/vmlinuz":   strings.Repeat("kernel", 10000),
		"etc/hostname":   "",
		"etc/os-release": "ID=hnboot\n",
		"usr/bin/tool":   "#!/bin/sh\necho hi\n",
	}
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(strings.Repeat("long/", 20)+"target", filepath.Join(dir, "longlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "usr/bin/tool"), filepath.Join(dir, "usr/bin/tool2")); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1600000000, 0)
	ts := []unix.Timespec{unix.NsecToTimespec(old.UnixNano()), unix.NsecToTimespec(old.UnixNano())}
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error {
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

func TestDefaultSize(t *testing.T) {
	for _, tt := range []struct{ tree, want int64 }{
		{0, 16 * mib},
		{10 * mib, 29 * mib},
		{1000 * mib, 1316 * mib},
	} {
		if got := DefaultSize(tt.tree); got != tt.want {
			t.Errorf("DefaultSize(%d) = %d, want %d", tt.tree, got, tt.want)
		}
	}
}

func TestBuildReproducible(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	makeTree(t, src)
	// A second copy of the same tree: same content and mtimes, but other
	// ctimes, inode numbers and directory order; and a tarball of it.
	src2 := filepath.Join(tmp, "src2")
	if out, err := exec.Command("cp", "-a", src, src2).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	tarball := filepath.Join(tmp, "src.tar.gz")
	if out, err := exec.Command("tar", "-C", src, "--numeric-owner", "-czf", tarball, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	for _, fsType := range []string{Ext4, Squashfs} {
		t.Run(fsType, func(t *testing.T) {
			var imgs [][]byte
			for i, from := range []string{src, src, src2, tarball} {
				out := filepath.Join(tmp, fmt.Sprintf("%s-%d.img", fsType, i))
				res, err := Build(context.Background(), Options{From: from, Out: out, FS: fsType, Epoch: 1700000000, HasEpoch: true})
				if err != nil {
					t.Fatal(err)
				}
				if fsType == Ext4 && res.Size != 17*mib {
					t.Errorf("Build(%s).Size = %d, want %d", from, res.Size, 17*mib)
				}
				if got := fmt.Sprint(res.Changes); got != "[{/etc/hostname removed}]" {
					t.Errorf("Build(%s).Changes = %s, want [{/etc/hostname removed}]", from, got)
				}
				b, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				imgs = append(imgs, b)
				if tmps := temporaries(t, out); len(tmps) > 0 {
					t.Errorf("Build left %v behind", tmps)
				}
			}
			for i := 1; i < len(imgs); i++ {
				if !bytes.Equal(imgs[0], imgs[i]) {
					t.Errorf("%s build %d differs from build 0, want byte-identical images with SOURCE_DATE_EPOCH", fsType, i)
				}
			}
		})
	}
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".hnboot-rootfs-") {
			t.Errorf("Build left its staging directory %s behind", e.Name())
		}
	}

	img := filepath.Join(tmp, "ext4-0.img")
	if out, err := exec.Command("/sbin/e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
	out, err := exec.Command("/sbin/dumpe2fs", "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "Filesystem volume name:   hn-root") {
		t.Errorf("dumpe2fs -h %s: want label hn-root, got\n%s", img, out)
	}
	for _, tt := range []struct{ cmd, want string }{
		{"cat /boot/vmlinuz", strings.Repeat("kernel", 10000)},
		{"cat /etc/os-release", "ID=hnboot\n"},
		{"stat /bin", "Fast link dest: \"usr/bin\""},
		{"stat /usr/bin/tool2", "Links: 2"},
		{"stat /etc/os-release", "mtime: 0x5f5e1000"},
		{"stat /etc/os-release", "ctime: 0x6553f100"},
		{"stat /etc/os-release", "crtime: 0x6553f100"},
		{"ls -l /empty", "."},
	} {
		out, err := exec.Command("/sbin/debugfs", "-R", tt.cmd, img).Output()
		if err != nil {
			t.Errorf("debugfs -R %q: %v", tt.cmd, err)
		}
		if !strings.Contains(string(out), tt.want) {
			t.Errorf("debugfs -R %q = %q, want it to contain %q", tt.cmd, out, tt.want)
		}
	}
	out, err = exec.Command("unsquashfs", "-lln", filepath.Join(tmp, "squashfs-0.img")).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -lln: %v: %s", err, out)
	}
	// Owners are the tree's: the test's own uid and gid.
	for _, want := range []string{"squashfs-root/usr/bin/tool2", "squashfs-root/bin -> usr/bin", fmt.Sprintf(" %d/%d ", os.Getuid(), os.Getgid())} {
		if !strings.Contains(string(out), want) {
			t.Errorf("unsquashfs -lln = %s, want it to contain %q", out, want)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	makeTree(t, src)
	big := filepath.Join(src, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte{1}, 3*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		o    Options
		want string
	}{
		{"missing dir", Options{From: filepath.Join(tmp, "nope"), Out: filepath.Join(tmp, "a.img")}, "--from"},
		{"file not dir", Options{From: big, Out: filepath.Join(tmp, "b.img")}, "not a directory"},
		{"too small", Options{From: src, Out: filepath.Join(tmp, "c.img"), Size: 3 * mib}, "--size"},
		{"no out", Options{From: src}, "--out"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(context.Background(), tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
			if tt.o.Out != "" {
				if _, err := os.Stat(tt.o.Out); err == nil {
					t.Errorf("Build(%s) left %s behind", tt.name, tt.o.Out)
				}
				if tmps := temporaries(t, tt.o.Out); len(tmps) > 0 {
					t.Errorf("Build(%s) left %v behind", tt.name, tmps)
				}
			}
		})
	}
}

// temporaries lists what Build's atomic writer (durable's temporary file,
// .NAME<random> beside out) left behind.
func temporaries(t *testing.T, out string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
