package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// capability is a security.capability value granting cap_net_raw (what
// Debian's ping carries).
var capability = []byte{1, 0, 0, 2, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

const sparseSize = 64 << 20

// everyKindTar writes a tarball holding every kind of entry a root image
// must keep, as a non-root user could never create on disk.
func everyKindTar(t *testing.T, p string) {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	mt := time.Unix(1600000000, 0)
	long := strings.Repeat("n", 255)
	add := func(h *tar.Header, body []byte) {
		t.Helper()
		if h.ModTime.IsZero() {
			h.ModTime = mt
		}
		h.Format = tar.FormatPAX
		if body != nil {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar %s: %v", h.Name, err)
		}
		if body != nil {
			if _, err := tw.Write(body); err != nil {
				t.Fatal(err)
			}
		}
	}
	sparse := make([]byte, sparseSize)
	copy(sparse, "start")
	copy(sparse[len(sparse)-3:], "end")
	add(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "./bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "./bin/ping", Typeflag: tar.TypeReg, Mode: 0o755, PAXRecords: map[string]string{"SCHILY.xattr.security.capability": string(capability)}}, []byte("ping"))
	add(&tar.Header{Name: "./bin/su", Typeflag: tar.TypeReg, Mode: 0o4755}, []byte("su"))
	add(&tar.Header{Name: "./bin/wall", Typeflag: tar.TypeReg, Mode: 0o2755, Gid: 5}, []byte("wall"))
	add(&tar.Header{Name: "./bin/sh", Typeflag: tar.TypeSymlink, Linkname: "dash", Mode: 0o777}, nil)
	add(&tar.Header{Name: "./bin/dash", Typeflag: tar.TypeReg, Mode: 0o755}, []byte("dash"))
	add(&tar.Header{Name: "./bin/sh2", Typeflag: tar.TypeLink, Linkname: "./bin/dash"}, nil)
	// A hard link whose name sorts before the name holding the data.
	add(&tar.Header{Name: "./a-link", Typeflag: tar.TypeLink, Linkname: "./bin/dash"}, nil)
	add(&tar.Header{Name: "./dev/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "./dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}, nil)
	add(&tar.Header{Name: "./dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660, Gid: 6, Devmajor: 8, Devminor: 0}, nil)
	add(&tar.Header{Name: "./dev/initctl", Typeflag: tar.TypeFifo, Mode: 0o600}, nil)
	add(&tar.Header{Name: "./home/user/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1234, Gid: 5678}, nil)
	add(&tar.Header{Name: "./home/user/file with \"quotes\" and spaces", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 1234, Gid: 5678, PAXRecords: map[string]string{"SCHILY.xattr.user.note": "hello"}}, []byte("x"))
	add(&tar.Header{Name: "./home/user/" + long, Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1234, Gid: 5678}, []byte("long"))
	add(&tar.Header{Name: "./home/user/-dash", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 70000, Gid: 70001}, []byte("big ids"))
	add(&tar.Header{Name: "./tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
	add(&tar.Header{Name: "./var/lib/sparse", Typeflag: tar.TypeReg, Mode: 0o644}, sparse)
	add(&tar.Header{Name: "./var/lib/empty", Typeflag: tar.TypeReg, Mode: 0o644}, []byte{})
	add(&tar.Header{Name: "./usr/share/longlink", Typeflag: tar.TypeSymlink, Linkname: strings.Repeat("long/", 30) + "target"}, nil)
	add(&tar.Header{Name: "./etc/machine-id", Typeflag: tar.TypeReg, Mode: 0o444}, []byte("0123456789abcdef0123456789abcdef\n"))
	add(&tar.Header{Name: "./etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("builder\n"))
	add(&tar.Header{Name: "./etc/ssh/ssh_host_ed25519_key", Typeflag: tar.TypeReg, Mode: 0o600}, []byte("secret"))
	add(&tar.Header{Name: "./etc/ssh/sshd_config", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("Port 22\n"))
	add(&tar.Header{Name: "./var/log/apt/history.log", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("log"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// listing renders a tree one line per entry, in walk order: what an image
// of it must show. Hard links show as "link to" the first name.
func listing(t *testing.T, tr *Tree) []string {
	t.Helper()
	var out []string
	err := tr.Walk(func(e *Entry) error {
		if e.Link != "" {
			out = append(out, fmt.Sprintf("/%s hardlink to /%s", e.Path, e.Link))
			return nil
		}
		l := fmt.Sprintf("/%s %s %04o %d:%d", e.Path, e.Type(), e.UnixMode()&0o7777, e.UID, e.GID)
		switch {
		case e.Mode.IsRegular():
			l += fmt.Sprintf(" size=%d links=%d", e.Size, e.Nlink)
		case e.Mode&fs.ModeSymlink != 0:
			l += " -> " + e.Target
		case e.Mode&fs.ModeDevice != 0:
			l += fmt.Sprintf(" dev=%d,%d", e.Major, e.Minor)
		}
		for _, x := range e.Xattrs {
			l += fmt.Sprintf(" xattr:%s=%x", x.Name, x.Value)
		}
		out = append(out, l)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// debugfsBatch runs debugfs read-only on img with cmds and returns each
// command's output.
func debugfsBatch(t *testing.T, img string, cmds []string, dir string) []string {
	t.Helper()
	cmd := exec.Command("/sbin/debugfs", "-f", "-", img)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs %s: %v", img, err)
	}
	parts := strings.Split(string(out), "debugfs: ")
	if len(parts) != len(cmds)+1 {
		t.Fatalf("debugfs %s: %d outputs for %d commands", img, len(parts)-1, len(cmds))
	}
	res := make([]string, len(cmds))
	for i, p := range parts[1:] {
		_, body, _ := strings.Cut(p, "\n")
		res[i] = body
	}
	return res
}

var (
	lsLine   = regexp.MustCompile(`^/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/$`)
	linksRe  = regexp.MustCompile(`Links: (\d+)`)
	devRe    = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	fastRe   = regexp.MustCompile(`Fast link dest: "(.*)"`)
	eaNameRe = regexp.MustCompile(`(?m)^  (\S+) \(\d+\)`)
)

// ext4Tree reads an ext4 image back into a Tree with debugfs only.
func ext4Tree(t *testing.T, img string) *Tree {
	t.Helper()
	tmp := t.TempDir()
	tr := NewTree()
	type ent struct {
		e   *Entry
		ino string
	}
	var all []ent
	dirs := []string{""}
	for len(dirs) > 0 {
		var cmds []string
		for _, d := range dirs {
			cmds = append(cmds, "ls -p "+debugfsQuote("/"+d))
		}
		outs := debugfsBatch(t, img, cmds, tmp)
		var next []string
		for i, d := range dirs {
			for _, l := range strings.Split(outs[i], "\n") {
				m := lsLine.FindStringSubmatch(l)
				if m == nil || m[5] == "." || m[5] == ".." || (d == "" && m[5] == "lost+found") {
					continue
				}
				mode, _ := strconv.ParseUint(m[2], 8, 32)
				uid, _ := strconv.Atoi(m[3])
				gid, _ := strconv.Atoi(m[4])
				size, _ := strconv.ParseInt(m[6], 10, 64)
				p := strings.TrimPrefix(d+"/"+m[5], "/")
				e := &Entry{Path: p, Mode: goMode(uint32(mode)), UID: uid, GID: gid, Size: size}
				if !e.Mode.IsRegular() {
					e.Size = 0
				}
				all = append(all, ent{e, m[1]})
				if e.Mode.IsDir() {
					next = append(next, p)
				}
			}
		}
		dirs = next
	}
	var cmds []string
	for i, a := range all {
		q := debugfsQuote("/" + a.e.Path)
		cmds = append(cmds, "stat "+q, "ea_list "+q, fmt.Sprintf("dump %s %s", q, debugfsQuote(fmt.Sprintf("data-%d", i))))
	}
	outs := debugfsBatch(t, img, cmds, tmp)
	var xcmds []string
	type xref struct {
		e    *Entry
		name string
		file string
	}
	var xrefs []xref
	first := map[string]string{}
	for i, a := range all {
		st, ea := outs[3*i], outs[3*i+1]
		if m := linksRe.FindStringSubmatch(st); m != nil && a.e.Mode.IsRegular() {
			a.e.Nlink, _ = strconv.Atoi(m[1])
		}
		if m := devRe.FindStringSubmatch(st); m != nil {
			maj, _ := strconv.Atoi(m[1])
			min, _ := strconv.Atoi(m[2])
			a.e.Major, a.e.Minor = uint32(maj), uint32(min)
		}
		if a.e.Mode&fs.ModeSymlink != 0 {
			if m := fastRe.FindStringSubmatch(st); m != nil {
				a.e.Target = m[1]
			} else {
				b, err := os.ReadFile(filepath.Join(tmp, fmt.Sprintf("data-%d", i)))
				if err != nil {
					t.Fatal(err)
				}
				a.e.Target = string(b)
			}
		}
		for _, m := range eaNameRe.FindAllStringSubmatch(ea, -1) {
			f := fmt.Sprintf("xattr-%d", len(xrefs))
			xrefs = append(xrefs, xref{a.e, m[1], f})
			xcmds = append(xcmds, fmt.Sprintf("ea_get -f %s %s %s", f, debugfsQuote("/"+a.e.Path), m[1]))
		}
		if a.e.Mode.IsRegular() {
			if p, ok := first[a.ino]; ok {
				*a.e = Entry{Path: a.e.Path, Link: p, Mode: a.e.Mode}
			} else {
				first[a.ino] = a.e.Path
			}
		}
		tr.Add(a.e)
	}
	if len(xcmds) > 0 {
		debugfsBatch(t, img, xcmds, tmp)
		for _, x := range xrefs {
			v, err := os.ReadFile(filepath.Join(tmp, x.file))
			if err != nil {
				t.Fatalf("ea_get %s %s: %v", x.e.Path, x.name, err)
			}
			x.e.Xattrs = append(x.e.Xattrs, Xattr{x.name, v})
		}
	}
	// The root's own metadata.
	st := debugfsBatch(t, img, []string{"ls -p /"}, tmp)[0]
	for _, l := range strings.Split(st, "\n") {
		if m := lsLine.FindStringSubmatch(l); m != nil && m[5] == "." {
			mode, _ := strconv.ParseUint(m[2], 8, 32)
			uid, _ := strconv.Atoi(m[3])
			gid, _ := strconv.Atoi(m[4])
			*tr.Get("") = Entry{Mode: goMode(uint32(mode)), UID: uid, GID: gid}
		}
	}
	if err := tr.Finish(); err != nil {
		t.Fatal(err)
	}
	return tr
}

func goMode(m uint32) fs.FileMode {
	fm := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= fs.ModeSticky
	}
	switch m & 0o170000 {
	case 0o040000:
		fm |= fs.ModeDir
	case 0o120000:
		fm |= fs.ModeSymlink
	case 0o020000:
		fm |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		fm |= fs.ModeDevice
	case 0o010000:
		fm |= fs.ModeNamedPipe
	case 0o140000:
		fm |= fs.ModeSocket
	}
	return fm
}

// squashfsTree reads a squashfs image back with sqfs2tar.
func squashfsTree(t *testing.T, img string) *Tree {
	t.Helper()
	tool, err := Tool("sqfs2tar")
	if err != nil {
		t.Fatalf("%v (apt-get install squashfs-tools-ng)", err)
	}
	tarball := filepath.Join(t.TempDir(), "back.tar")
	out, err := exec.Command("sh", "-c", fmt.Sprintf("%s %q > %q", tool, img, tarball)).CombinedOutput()
	if err != nil {
		t.Fatalf("sqfs2tar %s: %v: %s", img, err, out)
	}
	tr, err := ReadTar(tarball, filepath.Join(t.TempDir(), "stage"), func(p, m string) { t.Errorf("sqfs2tar output: %s: %s", p, m) })
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func diffLines(a, b []string) []string {
	var d []string
	in := func(s []string) map[string]bool {
		m := map[string]bool{}
		for _, l := range s {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	for _, l := range a {
		if !mb[l] {
			d = append(d, "- "+l)
		}
	}
	for _, l := range b {
		if !ma[l] {
			d = append(d, "+ "+l)
		}
	}
	return d
}

// TestFaithful builds ext4 and squashfs images of a tarball holding every
// kind of entry, reads each image back with the filesystem's own tools
// (debugfs; sqfs2tar) and compares the listing with the source's.
func TestFaithful(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "every.tar")
	everyKindTar(t, src)
	want, err := ReadTar(src, filepath.Join(tmp, "stage"), func(p, m string) { t.Errorf("%s: %s", p, m) })
	if err != nil {
		t.Fatal(err)
	}
	changes := Generalize(want, nil)
	if got := fmt.Sprint(changes); got != "[{/etc/hostname removed} {/etc/machine-id emptied} {/etc/ssh/ssh_host_ed25519_key removed} {/var/log/apt/history.log removed}]" {
		t.Errorf("Generalize(every.tar) = %s", got)
	}
	wantList := listing(t, want)
	kinds := map[string]int{}
	want.Walk(func(e *Entry) error { kinds[e.Type()]++; return nil })

	report := []string{fmt.Sprintf("faithfulness report (%s tarball, built as uid %d): %d entries: %v", filepath.Base(src), os.Getuid(), len(wantList), kinds)}
	for _, fsType := range []string{Ext4, Squashfs} {
		t.Run(fsType, func(t *testing.T) {
			img := filepath.Join(tmp, "img."+fsType)
			res, err := Build(context.Background(), Options{From: src, Out: img, FS: fsType, Epoch: 1700000000, HasEpoch: true})
			if err != nil {
				t.Fatal(err)
			}
			var got *Tree
			check := ""
			if fsType == Ext4 {
				out, err := exec.Command("/sbin/e2fsck", "-fn", img).CombinedOutput()
				if err != nil {
					t.Errorf("e2fsck -fn %s: %v\n%s", img, err, out)
				}
				check = "e2fsck -fn clean"
				got = ext4Tree(t, img)
				st := debugfsBatch(t, img, []string{"stat /var/lib/sparse"}, tmp)[0]
				m := regexp.MustCompile(`Blockcount: (\d+)`).FindStringSubmatch(st)
				if m == nil || m[1] == "" {
					t.Fatalf("debugfs stat /var/lib/sparse: no Blockcount in\n%s", st)
				}
				if n, _ := strconv.Atoi(m[1]); n > 64 {
					t.Errorf("/var/lib/sparse takes %d sectors in the image, want a sparse file (at most 64)", n)
				}
				check += ", sparse file 64 MiB in " + m[1] + " sectors"
			} else {
				got = squashfsTree(t, img)
				out, err := exec.Command("unsquashfs", "-lln", img).CombinedOutput()
				if err != nil {
					t.Errorf("unsquashfs -lln %s: %v\n%s", img, err, out)
				}
				if res.Size > 1<<20 {
					t.Errorf("squashfs image is %d bytes, want under 1 MiB (the 64 MiB sparse file must not take space)", res.Size)
				}
				check = fmt.Sprintf("unsquashfs -lln lists %d entries, image %d bytes with a 64 MiB sparse file", strings.Count(string(out), "\n")-1, res.Size)
			}
			gotList := listing(t, got)
			if d := diffLines(wantList, gotList); len(d) > 0 {
				t.Errorf("image %s differs from the source (- source, + image):\n%s", fsType, strings.Join(d, "\n"))
				report = append(report, fmt.Sprintf("  %s: %d DIFFERENCES", fsType, len(d)))
				return
			}
			report = append(report, fmt.Sprintf("  %-8s: %d/%d entries identical (type, mode incl. setuid/setgid/sticky, uid:gid, size, link count, hard links, symlink targets, device numbers, xattrs incl. security.capability); %s", fsType, len(gotList), len(wantList), check))
		})
	}
	sort.Strings(report[1:])
	t.Log("\n" + strings.Join(report, "\n"))
	if testing.Verbose() {
		t.Log("source listing:\n  " + strings.Join(wantList, "\n  "))
	}
}
