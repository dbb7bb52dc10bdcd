package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestWindow(t *testing.T) {
	for _, tt := range []struct{ need, want int64 }{
		{0, 0},
		{padMin - 1, padMin - 1}, // small: no window of its own
		{128, 128},
		{129, 136},       // steps of 8 from 128
		{1000, 1024},     // steps of 32 from 512
		{1025, 1088},     // steps of 64 from 1024
		{100000, 102400}, // steps of 4096 from 65536
	} {
		if got := window(tt.need); got != tt.want {
			t.Errorf("window(%d) = %d, want %d", tt.need, got, tt.want)
		}
	}
}

func TestParseFreeMap(t *testing.T) {
	dump := `Group 0: (Blocks 0-32767)
  Free blocks: 5691-32767
Group 1: (Blocks 32768-65535)
  Free blocks: 36909-65535
Group 2: (Blocks 65536-90111)
  Free blocks: 65536-65540, 65600, 65700-90111
`
	m, err := parseFreeMap(dump)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ block, want int64 }{
		{0, 0}, {5691, 0}, {5692, 1}, {32768, 27077}, {36909, 27077}, {36910, 27078},
		{65541, 27077 + 28627 + 5}, {65600, 27077 + 28627 + 5}, {65601, 27077 + 28627 + 6},
	} {
		if got := m.data(tt.block); got != tt.want {
			t.Errorf("data(%d) = %d, want %d", tt.block, got, tt.want)
		}
	}
	if got, want := m.anchor(), m.data(5888); got != want {
		t.Errorf("anchor() = %d, want %d (block 5888, the first MiB boundary after 5691)", got, want)
	}
	for _, bad := range []string{"", "  Free blocks: 9-3\n", "  Free blocks: 1-5, 4-8\n", "  Free blocks: x\n"} {
		if _, err := parseFreeMap(bad); err == nil {
			t.Errorf("parseFreeMap(%q) = nil error, want one", bad)
		}
	}
}

// layoutTrees writes a tree of 30 directories of 20 files (12–48 KiB)
// and a copy in which a file of an early directory grew by a block, which
// its directory's window has room for.
func layoutTrees(t *testing.T, dir string) (a, b string) {
	t.Helper()
	a, b = filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, root := range []string{a, b} {
		for d := 0; d < 30; d++ {
			dp := filepath.Join(root, "usr/lib", fmt.Sprintf("pkg%02d", d))
			if err := os.MkdirAll(dp, 0o755); err != nil {
				t.Fatal(err)
			}
			for f := 0; f < 20; f++ {
				n := 4096 * (3 + (d*7+f*3)%10)
				if root == b && d == 3 && f == 0 {
					n += 4000
				}
				body := []byte(strings.Repeat(fmt.Sprintf("%t %d %d ", root == b && d == 3, d, f), n/8+1)[:n])
				if err := os.WriteFile(filepath.Join(dp, fmt.Sprintf("f%02d", f)), body, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return a, b
}

// TestLayoutKeepsUnchangedFiles: in the plan, a change inside one
// directory's window moves no file of the others, where packing everything
// in walk order moves every file after it.
func TestLayoutKeepsUnchangedFiles(t *testing.T) {
	a, b := layoutTrees(t, t.TempDir())
	ta, err := ReadDir(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := ReadDir(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ta.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := tb.Finish(); err != nil {
		t.Fatal(err)
	}
	la, lb := newLayout(ta), newLayout(tb)
	if wa, wb := la.size["usr/lib/pkg03"], lb.size["usr/lib/pkg03"]; wa != wb || wa < padMin {
		t.Fatalf("the window of /usr/lib/pkg03 is %d blocks before and %d after the change, want the same, at least %d (the test's trees are wrong)", wa, wb, padMin)
	}
	packed := func(tr *Tree) map[string]int64 {
		pos, at := map[string]int64{}, int64(0)
		tr.Walk(func(e *Entry) error { pos[e.Path] = at; at += tr.ownBlocks(e); return nil })
		return pos
	}
	moved := func(pa, pb map[string]int64) (n, of int) {
		for p, e := range tb.entries {
			if !e.Mode.IsRegular() || strings.HasPrefix(p, "usr/lib/pkg03") {
				continue
			}
			of++
			if pa[p] != pb[p] {
				n++
			}
		}
		return n, of
	}
	if n, of := moved(la.positions(), lb.positions()); n != 0 {
		t.Errorf("layout: %d of %d unchanged files moved, want 0", n, of)
	}
	if n, of := moved(packed(ta), packed(tb)); n < of/2 {
		t.Errorf("packed: %d of %d unchanged files moved, want most (else this test shows nothing)", n, of)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var bmapRe = regexp.MustCompile(`(?m)^(\d+)$`)

// TestExt4Layout builds images of both trees and checks that the image
// follows the plan: every unchanged file starts at the same block in
// both; e2fsck finds both clean, every file reads back as its source, and
// a second build gives the same bytes.
func TestExt4Layout(t *testing.T) {
	tmp := t.TempDir()
	a, b := layoutTrees(t, tmp)
	imgs := map[string]string{}
	for name, from := range map[string]string{"a": a, "b": b} {
		img := filepath.Join(tmp, name+".img")
		if _, err := Build(context.Background(), Options{From: from, Out: img, Size: 64 << 20, Epoch: 1700000000, HasEpoch: true, Boot: BootOptions{Disabled: true}}); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("/sbin/e2fsck", "-fn", img).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn %s: %v\n%s", img, err, out)
		}
		imgs[name] = img
	}
	// Windows change nothing of the contents, nor reproducibility.
	again := filepath.Join(tmp, "again.img")
	if _, err := Build(context.Background(), Options{From: a, Out: again, Size: 64 << 20, Epoch: 1700000000, HasEpoch: true, Boot: BootOptions{Disabled: true}}); err != nil {
		t.Fatal(err)
	}
	if x, y := readFile(t, imgs["a"]), readFile(t, again); !bytes.Equal(x, y) {
		t.Errorf("two builds of the same tree differ")
	}
	for name, from := range map[string]string{"a": a, "b": b} {
		out := filepath.Join(tmp, "dump-"+name)
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		var dumps, files []string
		for d := 0; d < 30; d++ {
			for f := 0; f < 20; f++ {
				p := fmt.Sprintf("usr/lib/pkg%02d/f%02d", d, f)
				dumps, files = append(dumps, fmt.Sprintf("dump /%s %s/%d", p, out, len(files))), append(files, p)
			}
		}
		debugfsBatch(t, imgs[name], dumps, tmp)
		for i, p := range files {
			if x, y := readFile(t, filepath.Join(from, p)), readFile(t, fmt.Sprintf("%s/%d", out, i)); !bytes.Equal(x, y) {
				t.Errorf("image %s: /%s holds %d bytes that differ from the source's %d", name, p, len(y), len(x))
			}
		}
	}

	// A tight --size leaves no room for windows: packed, still whole.
	tight := filepath.Join(tmp, "tight.img")
	res, err := Build(context.Background(), Options{From: a, Out: tight, Size: 24 << 20, Epoch: 1700000000, HasEpoch: true, Boot: BootOptions{Disabled: true}})
	if err != nil {
		t.Fatalf("build with a tight size: %v", err)
	}
	if out, err := exec.Command("/sbin/e2fsck", "-fn", tight).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", tight, err, out)
	}
	t.Logf("tree of %d KiB in a %d KiB image", res.TreeBytes>>10, res.Size>>10)
	var cmds, paths []string
	for d := 0; d < 30; d++ {
		if d == 3 {
			continue
		}
		for f := 0; f < 20; f++ {
			p := fmt.Sprintf("/usr/lib/pkg%02d/f%02d", d, f)
			cmds, paths = append(cmds, "bmap "+p+" 0"), append(paths, p)
		}
	}
	ba, bb := debugfsBatch(t, imgs["a"], cmds, tmp), debugfsBatch(t, imgs["b"], cmds, tmp)
	moved := 0
	for i, p := range paths {
		xa, xb := strings.TrimSpace(ba[i]), strings.TrimSpace(bb[i])
		if _, err := strconv.Atoi(xa); err != nil || !bmapRe.MatchString(xa) {
			t.Fatalf("debugfs bmap %s: %q", p, xa)
		}
		if xa != xb {
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d of %d unchanged files start at another block in the image of the changed tree, want 0", moved, len(paths))
	}
}
