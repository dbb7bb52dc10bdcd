package rootfs

import (
	"fmt"
	"io/fs"
	"strings"
	"testing"
)

func treeOf(t *testing.T, entries ...*Entry) *Tree {
	t.Helper()
	tr := NewTree()
	for _, e := range entries {
		tr.Add(e)
	}
	if err := tr.Finish(); err != nil {
		t.Fatal(err)
	}
	return tr
}

func file(p string, size int64) *Entry {
	return &Entry{Path: p, Mode: 0o644, Size: size, Data: "/src/" + p}
}

func TestCleanPath(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{"./usr/bin/", "usr/bin", ""},
		{"/etc", "etc", ""},
		{".", "", ""},
		{"a//b", "a/b", ""},
		{"../etc/passwd", "", "leaves the root"},
		{"a/../../b", "", "leaves the root"},
	} {
		got, err := CleanPath(tt.in)
		if (err != nil) != (tt.err != "") || (err != nil && !strings.Contains(err.Error(), tt.err)) || got != tt.want {
			t.Errorf("CleanPath(%q) = %q, %v, want %q, error containing %q", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestFinishHardLinks(t *testing.T) {
	// The tar names usr/bin/x first; the walk meets a/y first: a/y must
	// hold the inode and the data.
	tr := treeOf(t, file("usr/bin/x", 5), &Entry{Path: "a/y", Link: "usr/bin/x"}, &Entry{Path: "usr/bin/z", Link: "a/y"})
	var got []string
	tr.Walk(func(e *Entry) error {
		if e.Mode.IsRegular() || e.Link != "" {
			got = append(got, fmt.Sprintf("%s link=%q data=%q nlink=%d", e.Path, e.Link, e.Data, e.Nlink))
		}
		return nil
	})
	want := `[a/y link="" data="/src/usr/bin/x" nlink=3 usr/bin/x link="a/y" data="" nlink=0 usr/bin/z link="a/y" data="" nlink=0]`
	if fmt.Sprint(got) != want {
		t.Errorf("Finish() hard links = %v, want %v", got, want)
	}
	for _, bad := range [][]*Entry{
		{&Entry{Path: "a", Link: "missing"}},
		{&Entry{Path: "d", Mode: fs.ModeDir | 0o755}, &Entry{Path: "a", Link: "d"}},
		{file("f", 1), &Entry{Path: "f/g", Mode: 0o644}},
	} {
		tr := NewTree()
		for _, e := range bad {
			tr.Add(e)
		}
		if err := tr.Finish(); err == nil {
			t.Errorf("Finish(%v) = nil, want an error", bad[len(bad)-1].Path)
		}
	}
}

func TestGeneralize(t *testing.T) {
	base := func() []*Entry {
		return []*Entry{
			file("etc/machine-id", 33), file("etc/hostname", 5), file("etc/ssh/ssh_host_rsa_key", 1),
			file("etc/ssh/ssh_host_rsa_key.pub", 1), file("etc/ssh/sshd_config", 1),
			file("var/log/syslog", 9), file("var/log/apt/term.log", 9), {Path: "var/log/journal", Mode: fs.ModeDir | 0o755},
			file("etc/udev/rules.d/70-persistent-net.rules", 1), file("var/lib/systemd/random-seed", 512),
			{Path: "var/lib/dbus/machine-id", Mode: fs.ModeSymlink | 0o777, Target: "/etc/machine-id"},
			file("etc/passwd", 100),
		}
	}
	for _, tt := range []struct {
		name string
		keep []string
		want string
	}{
		{"all", nil, "[{/etc/hostname removed} {/etc/machine-id emptied} {/etc/ssh/ssh_host_rsa_key removed} {/etc/ssh/ssh_host_rsa_key.pub removed} {/etc/udev/rules.d/70-persistent-net.rules removed} {/var/lib/dbus/machine-id removed} {/var/lib/systemd/random-seed removed} {/var/log/apt/term.log removed} {/var/log/syslog removed}]"},
		{"keep", []string{"/var/log", "etc/hostname", "/etc/ssh/"}, "[{/etc/machine-id emptied} {/etc/udev/rules.d/70-persistent-net.rules removed} {/var/lib/dbus/machine-id removed} {/var/lib/systemd/random-seed removed}]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr := treeOf(t, base()...)
			if got := fmt.Sprint(Generalize(tr, tt.keep)); got != tt.want {
				t.Errorf("Generalize(keep %v) = %s, want %s", tt.keep, got, tt.want)
			}
			if err := tr.Finish(); err != nil {
				t.Fatal(err)
			}
			if e := tr.Get("etc/machine-id"); e == nil || e.Size != 0 || e.Data != "" || !e.Mode.IsRegular() {
				t.Errorf("after Generalize, /etc/machine-id = %+v, want an empty regular file", e)
			}
			if tr.Get("var/log/journal") == nil || tr.Get("etc/passwd") == nil || tr.Get("etc/ssh/sshd_config") == nil {
				t.Errorf("Generalize removed a directory or a file it must keep")
			}
		})
	}
	// A removed name that holds an inode hands it to its first link.
	tr := treeOf(t, file("etc/hostname", 5), &Entry{Path: "etc/zz", Link: "etc/hostname"})
	Generalize(tr, nil)
	if err := tr.Finish(); err != nil {
		t.Fatal(err)
	}
	if e := tr.Get("etc/zz"); e == nil || e.Link != "" || e.Data != "/src/etc/hostname" || e.Nlink != 1 {
		t.Errorf("after removing /etc/hostname, its link /etc/zz = %+v, want the inode with its data", e)
	}
}

func TestVersionLess(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"6.1.0-9-amd64", "6.1.0-10-amd64", true},
		{"6.1.0-10-amd64", "6.1.0-9-amd64", false},
		{"5.10.0-28-amd64", "6.1.0-1-amd64", true},
		{"6.1.0", "6.1.0-1", true},
		{"6.1.0-1", "6.1.0-1", false},
	} {
		if got := versionLess(tt.a, tt.b); got != tt.want {
			t.Errorf("versionLess(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestFindKernel(t *testing.T) {
	dir := func(p string) *Entry { return &Entry{Path: p, Mode: fs.ModeDir | 0o755} }
	for _, tt := range []struct {
		name    string
		entries []*Entry
		want    string // release, "" for none
		skipped string
	}{
		{"none", []*Entry{file("boot/config-6.1.0-9-amd64", 1)}, "", ""},
		{"no modules", []*Entry{file("boot/vmlinuz-6.1.0-9-amd64", 1)}, "", ""},
		{"one", []*Entry{file("boot/vmlinuz-6.1.0-9-amd64", 1), dir("lib/modules/6.1.0-9-amd64")}, "6.1.0-9-amd64", "[]"},
		{"merged usr", []*Entry{file("boot/vmlinuz-6.1.0-9-amd64", 1), {Path: "lib", Mode: fs.ModeSymlink | 0o777, Target: "usr/lib"}, dir("usr/lib/modules/6.1.0-9-amd64")}, "6.1.0-9-amd64", "[]"},
		{"highest", []*Entry{file("boot/vmlinuz-6.1.0-9-amd64", 1), file("boot/vmlinuz-6.1.0-10-amd64", 1), dir("lib/modules/6.1.0-9-amd64"), dir("lib/modules/6.1.0-10-amd64")}, "6.1.0-10-amd64", "[6.1.0-9-amd64]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, skipped, ok := FindKernel(treeOf(t, tt.entries...))
			if ok != (tt.want != "") || k.Release != tt.want || (ok && fmt.Sprint(skipped) != tt.skipped) {
				t.Errorf("FindKernel() = %+v, %v, %v, want release %q, skipped %s", k, skipped, ok, tt.want, tt.skipped)
			}
		})
	}
}

// script collects ext4Script's commands, one a line, pads as "pad N".
func script(tr *Tree, pads bool) (string, error) {
	var b strings.Builder
	err := ext4Script(tr, 100, true, func([]byte) (string, error) { return "/xattr", nil }, "/empty", pads, func(op ext4Op) error {
		if op.cmd == "" {
			fmt.Fprintf(&b, "pad %d\n", op.pad)
		} else {
			b.WriteString(op.cmd + "\n")
		}
		return nil
	})
	return b.String(), err
}

func TestExt4ScriptQuoting(t *testing.T) {
	tr := treeOf(t, &Entry{Path: `a "b"`, Mode: fs.ModeSetuid | 0o755, UID: 7, Size: 1, Data: "/x", dataMode: 0o100755},
		&Entry{Path: "dev/null", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, Major: 1, Minor: 3},
		&Entry{Path: "dev/zero", Link: "a \"b\"", Mode: 0o755})
	got, err := script(tr, false)
	if err != nil {
		t.Fatal(err)
	}
	want := `write "/x" "./a ""b"""
sif <12> links_count 2
sif <12> mode 0104755
sif <12> uid 7
sif <12> mtime @0
mkdir "./dev"
sif <13> mtime @0
cd "/dev"
mknod "null" c 1 3
sif <14> mode 020666
sif <14> mtime @0
ln <12> "./zero"
`
	if !strings.HasSuffix(got, want) {
		t.Errorf("ext4Script() =\n%s\nwant it to end with\n%s", got, want)
	}
	bad := treeOf(t, &Entry{Path: "new\nline", Mode: 0o644})
	if _, err := script(bad, false); err == nil || !strings.Contains(err.Error(), "newline") {
		t.Errorf("ext4Script(name with newline) = %v, want an error about the newline", err)
	}
}
