package rotate

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readFiles returns every regular file under dir, name -> content.
func readFiles(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestOSFSPromoteAndRevert(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{layout.Current: "A", layout.New: "B", layout.Old: "C", part: "P", "data/keep": "K"})
	fsys := OSFS(dir)

	res, err := Run(fsys, Options{Log: func(s string) { t.Log(s) }})
	if err != nil || res.Action != Promote || !res.Trial || res.TriesLeft != 2 {
		t.Fatalf("Run(promote) = %s, %v; want promote, trial, 2 left", fmtResult(res), err)
	}
	want := map[string]string{layout.Current: "B", layout.Old: "A", layout.Trial: "2\n", part: "P", "data/keep": "K"}
	if got := readFiles(t, dir); !maps.Equal(got, want) {
		t.Fatalf("after promote: %s, want %s", fmtState(got), fmtState(want))
	}

	writeFiles(t, dir, map[string]string{layout.RevertTrigger: ""})
	res, err = Run(fsys, Options{RevertID: "fleet-7"})
	if err != nil || res.Action != Revert || res.Trial {
		t.Fatalf("Run(revert) = %s, %v; want revert, no trial", fmtResult(res), err)
	}
	want = map[string]string{layout.Current: "A", layout.Broken: "B", layout.Reverts: "fleet-7\n", part: "P", "data/keep": "K"}
	if got := readFiles(t, dir); !maps.Equal(got, want) {
		t.Fatalf("after revert: %s, want %s", fmtState(got), fmtState(want))
	}
}

// TestOSFSCrash cuts the power after every operation of a promotion and a
// revert on a real directory, then boots again.
func TestOSFSCrash(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start map[string]string
		opt   Options
		want  map[string]string
	}{
		{"promote", map[string]string{layout.Current: "A", layout.New: "B", layout.Old: "C"}, Options{},
			map[string]string{layout.Current: "B", layout.Old: "A", layout.Trial: "2\n"}},
		{"revert", map[string]string{layout.Current: "A", layout.Old: "C", layout.Broken: "D", layout.Trial: "0\n", layout.New: "B"}, Options{RevertID: "x"},
			map[string]string{layout.Current: "C", layout.Broken: "A", layout.New: "B", layout.Reverts: "x\n"}},
		{"promote with manifests",
			map[string]string{layout.Current: "A", "hn-root.img.json": "m:A", layout.New: "B", "hn-root-new.img.json": "m:B", layout.Old: "C", "hn-root-old.img.json": "m:C"}, Options{},
			map[string]string{layout.Current: "B", "hn-root.img.json": "m:B", layout.Old: "A", "hn-root-old.img.json": "m:A", layout.Trial: "2\n"}},
		{"repair genkernel's half mv",
			map[string]string{layout.Old: "A", layout.New: "B", "hn-root-new.img.json": "m:B", "hn-root.img.json": "m:A"}, Options{},
			map[string]string{layout.Current: "B", "hn-root.img.json": "m:B", layout.Old: "A", layout.Trial: "2\n"}},
	} {
		dry := t.TempDir()
		writeFiles(t, dry, tc.start)
		cnt := &countFS{FS: OSFS(dry)}
		if _, err := Run(cnt, tc.opt); err != nil {
			t.Fatalf("%s: Run = %v", tc.name, err)
		}
		if got := readFiles(t, dry); !maps.Equal(got, tc.want) {
			t.Fatalf("%s: Run left %s, want %s", tc.name, fmtState(got), fmtState(tc.want))
		}
		for k := range cnt.ops {
			dir := t.TempDir()
			writeFiles(t, dir, tc.start)
			cuts := 0
			_, err := Run(CrashAfter(OSFS(dir), k, func() { cuts++ }), tc.opt)
			if !errors.Is(err, ErrPowerCut) || cuts != 1 {
				t.Fatalf("%s cut after %d: Run = %v with %d cuts, want ErrPowerCut and 1", tc.name, k, err, cuts)
			}
			if got := readFiles(t, dir); got[layout.Current] == "" && tc.start[layout.Current] != "" {
				t.Fatalf("%s cut after %d: no %s: %s", tc.name, k, layout.Current, fmtState(got))
			}
			if _, err := Run(OSFS(dir), tc.opt); err != nil {
				t.Fatalf("%s cut after %d: recovery Run = %v", tc.name, k, err)
			}
			if got := readFiles(t, dir); !maps.Equal(got, tc.want) {
				t.Fatalf("%s cut after %d: recovery left %s, want %s", tc.name, k, fmtState(got), fmtState(tc.want))
			}
		}
		t.Logf("%s: %d crash points on OSFS", tc.name, cnt.ops)
	}
}

func TestOSFSOps(t *testing.T) {
	dir := t.TempDir()
	fsys := OSFS(dir)
	if err := fsys.WriteFile(layout.Journal, []byte("promote\n")); err != nil {
		t.Fatalf("WriteFile(%s) = %v (must create .hnboot/)", layout.Journal, err)
	}
	if b, err := fsys.ReadFile(layout.Journal); err != nil || string(b) != "promote\n" {
		t.Errorf("ReadFile(%s) = %q, %v", layout.Journal, b, err)
	}
	if ok, err := fsys.Exists(layout.Journal + ".tmp"); ok || err != nil {
		t.Errorf("Exists(tmp) = %v, %v; want false, nil", ok, err)
	}
	if err := fsys.Remove("missing"); err != nil {
		t.Errorf("Remove(missing) = %v, want nil", err)
	}
	if err := fsys.Remove(".nodir/missing"); err != nil {
		t.Errorf("Remove(.nodir/missing) = %v, want nil", err)
	}
	if _, err := fsys.ReadFile("missing"); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), filepath.Join(dir, "missing")) {
		t.Errorf("ReadFile(missing) = %v, want ErrNotExist naming the path", err)
	}
	writeFiles(t, dir, map[string]string{"a": "1", "b": "2"})
	if err := fsys.Link("a", "b"); !errors.Is(err, fs.ErrExist) || !strings.HasPrefix(err.Error(), "link ") {
		t.Errorf("Link(a, existing b) = %v, want ErrExist starting with the op", err)
	}
	if err := fsys.Link("a", "c"); err != nil {
		t.Fatalf("Link(a, c) = %v", err)
	}
	for _, c := range []struct {
		a, b string
		want bool
	}{{"a", "c", true}, {"a", "b", false}, {"a", "missing", false}} {
		if got, err := fsys.SameFile(c.a, c.b); got != c.want || err != nil {
			t.Errorf("SameFile(%s, %s) = %v, %v; want %v", c.a, c.b, got, err, c.want)
		}
	}
	if err := fsys.Rename("c", "b"); err != nil {
		t.Fatalf("Rename(c, b) = %v", err)
	}
	if got, _ := fsys.SameFile("a", "b"); !got {
		t.Errorf("after Rename(c, b): SameFile(a, b) = false, want true")
	}
	if _, err := fsys.Exists("../escape"); err == nil {
		t.Errorf("Exists(../escape) = nil error, want one")
	}
}

// BenchmarkRotate times one promotion (Run on a staged image) for a 100 MiB
// image and a 20 GiB sparse one: rotation is links and renames, so the time
// does not depend on the size. The directory is put back outside the timer.
func BenchmarkRotate(b *testing.B) {
	for _, bc := range []struct {
		name   string
		size   int64
		sparse bool
	}{{"100MiB", 100 << 20, false}, {"20GiB-sparse", 20 << 30, true}} {
		b.Run(bc.name, func(b *testing.B) {
			dir := b.TempDir()
			for _, name := range []string{layout.Current, layout.New} {
				f, err := os.Create(filepath.Join(dir, name))
				if err != nil {
					b.Fatal(err)
				}
				if bc.sparse {
					err = f.Truncate(bc.size)
				} else {
					_, err = f.Write(make([]byte, bc.size))
				}
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			fsys := OSFS(dir)
			for i := 0; i < b.N; i++ {
				res, err := Run(fsys, Options{})
				if err != nil || res.Action != Promote {
					b.Fatalf("Run = %s, %v; want promote", fmtResult(res), err)
				}
				b.StopTimer()
				// Put it back: current -> new, old -> current.
				for _, step := range [][2]string{{layout.Current, layout.New}, {layout.Old, layout.Current}} {
					if err := os.Rename(filepath.Join(dir, step[0]), filepath.Join(dir, step[1])); err != nil {
						b.Fatal(err)
					}
				}
				if err := os.Remove(filepath.Join(dir, layout.Trial)); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			st, err := os.Stat(filepath.Join(dir, layout.Current))
			if err != nil || st.Size() != bc.size {
				b.Fatalf("%s after the runs: %v, %v; want size %d", layout.Current, st, err, bc.size)
			}
		})
	}
}

// TestOSFSConcurrentWriteFile: on a running host the agent and `imaged
// status` may write the same file at once; neither may fail.
func TestOSFSConcurrentWriteFile(t *testing.T) {
	fsys := OSFS(t.TempDir())
	errc := make(chan error, 2)
	for w := 0; w < 2; w++ {
		go func(w int) {
			for i := 0; i < 200; i++ {
				if err := fsys.WriteFile(".hnboot/digests", []byte{byte(w), byte(i)}); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}(w)
	}
	for w := 0; w < 2; w++ {
		if err := <-errc; err != nil {
			t.Errorf("concurrent WriteFile = %v, want nil", err)
		}
	}
	if b, err := fsys.ReadFile(".hnboot/digests"); err != nil || len(b) != 2 {
		t.Errorf("ReadFile after concurrent writes = %v, %v; want one writer's 2 bytes", b, err)
	}
}
