// Command benchrootfs times `mkimage rootfs` (ext4 and squashfs) against
// the reference tools on the same tree, `mkfs.ext4 -d` and `mksquashfs`,
// and prints a markdown table: median wall time of several rounds (the
// tools alternate within a round, so load on the machine hits them alike),
// CPU time (user + system, children included) and image size. mkimage's
// time includes what the references do not do: generalizing, reproducible
// metadata, fsync and the sha256 manifest.
// A second table measures layout reuse: images of the tree and of an
// updated copy (ten packages' files rewritten, one package added, see
// updateTree), and the share of the new image's non-zero 4 KiB blocks found
// at the same offset, or anywhere, in the old one, and of the bytes of its
// content-defined chunks (what delta updates fetch by) found in the old one.
//
//	go run ./testvm/benchrootfs            # a synthetic ~250 MiB tree
//	go run ./testvm/benchrootfs DIR        # a tree of your own, e.g. debootstrap output
package main

import (
	"flag"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/rootfs"
	"github.com/hnboot/hnboot/testvm"
)

func main() {
	rounds := flag.Int("rounds", 3, "rounds of timing (0: only the layout reuse table); the table shows the median")
	flag.Parse()
	if err := run(flag.Arg(0), *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "benchrootfs:", err)
		os.Exit(1)
	}
}

// synthTree writes a deterministic tree like a root filesystem: 20,000
// small files (half text, half random bytes) in 400 directories, symlinks,
// and four 25 MiB files, half random, half zeros.
func synthTree(dir string) error {
	r := rand.New(rand.NewSource(1))
	sizes := []int{100, 500, 1500, 4000, 9000, 20000}
	for d := 0; d < 400; d++ {
		dp := filepath.Join(dir, "usr/lib", fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(dp, 0o755); err != nil {
			return err
		}
		for f := 0; f < 50; f++ {
			n := sizes[r.Intn(len(sizes))]
			b := make([]byte, n)
			if f%3 == 0 {
				r.Read(b)
			} else {
				line := fmt.Sprintf("line %d %d of a text file in a root tree\n", d, f)
				for i := range b {
					b[i] = line[i%len(line)]
				}
			}
			name := filepath.Join(dp, fmt.Sprintf("f%03d.so", f))
			if err := os.WriteFile(name, b, 0o644); err != nil {
				return err
			}
			if f%10 == 0 {
				if err := os.Symlink(filepath.Base(name), filepath.Join(dp, fmt.Sprintf("l%03d", f))); err != nil {
					return err
				}
			}
		}
	}
	big := filepath.Join(dir, "var/big")
	if err := os.MkdirAll(big, 0o755); err != nil {
		return err
	}
	for i := 0; i < 4; i++ {
		f, err := os.Create(filepath.Join(big, fmt.Sprintf("blob%d", i)))
		if err != nil {
			return err
		}
		chunk := make([]byte, 512<<10)
		zero := make([]byte, 512<<10)
		for k := 0; k < 25; k++ {
			r.Read(chunk)
			f.Write(chunk)
			f.Write(zero)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

type tool struct {
	name, fs string
	cmd      func(out string) *exec.Cmd
}

func run(tree string, rounds int) error {
	tmp, err := os.MkdirTemp("", "benchrootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	desc := tree
	if tree == "" {
		tree = filepath.Join(tmp, "tree")
		if err := synthTree(tree); err != nil {
			return err
		}
		desc = "synthetic: 20,000 small files in 400 dirs, 2,000 symlinks, 4 × 25 MiB half-sparse"
	}
	root, err := testvm.ModuleRoot()
	if err != nil {
		return err
	}
	mkimage := filepath.Join(tmp, "mkimage")
	build := exec.Command("go", "build", "-o", mkimage, "./cmd/mkimage")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/mkimage: %v: %s", err, out)
	}
	mkfs, err := rootfs.Tool("mkfs.ext4")
	if err != nil {
		return err
	}
	mksquashfs, err := rootfs.Tool("mksquashfs")
	if err != nil {
		return fmt.Errorf("%w (apt-get install squashfs-tools)", err)
	}
	// The reference ext4 gets the size mkimage chose, so sizes compare
	// the filesystems, not the sizing rule.
	probe := filepath.Join(tmp, "probe.img")
	out, err := exec.Command(mkimage, "rootfs", "--from", tree, "--out", probe, "--no-boot-files").CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkimage rootfs: %v: %s", err, out)
	}
	st, err := os.Stat(probe)
	if err != nil {
		return err
	}
	ext4Size := st.Size()
	os.Remove(probe)
	os.Remove(probe + ".json")

	epoch := "SOURCE_DATE_EPOCH=1700000000"
	tools := []tool{
		{"mkimage rootfs", "ext4", func(o string) *exec.Cmd {
			c := exec.Command(mkimage, "rootfs", "--from", tree, "--out", o, "--no-boot-files")
			c.Env = append(os.Environ(), epoch)
			return c
		}},
		{"mkfs.ext4 -d", "ext4", func(o string) *exec.Cmd {
			// mkfs.ext4 wants the file to exist at its size.
			return exec.Command("sh", "-c", fmt.Sprintf("truncate -s %d %q && %s -q -F -t ext4 -b 4096 -m 0 -L hn-root -d %q %q", ext4Size, o, mkfs, tree, o))
		}},
		{"mkimage rootfs", "squashfs", func(o string) *exec.Cmd {
			c := exec.Command(mkimage, "rootfs", "--from", tree, "--out", o, "--fs", "squashfs", "--no-boot-files")
			c.Env = append(os.Environ(), epoch)
			return c
		}},
		{"mksquashfs", "squashfs", func(o string) *exec.Cmd {
			return exec.Command(mksquashfs, tree, o, "-noappend", "-quiet", "-no-progress")
		}},
	}
	if rounds == 0 {
		return layoutReuse(tmp, tree, mkimage, mkfs, ext4Size)
	}
	times := make([][]time.Duration, len(tools))
	cpus := make([][]time.Duration, len(tools))
	sizes := make([]int64, len(tools))
	// Warm the page cache so the first tool does not pay for everyone.
	exec.Command("sh", "-c", fmt.Sprintf("tar -C %q -cf - . > /dev/null", tree)).Run()
	for r := 0; r < rounds; r++ {
		for i, t := range tools {
			o := filepath.Join(tmp, fmt.Sprintf("out-%d.img", i))
			os.Remove(o)
			c := t.cmd(o)
			start := time.Now()
			if out, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("%s: %v: %s", t.name, err, out)
			}
			times[i] = append(times[i], time.Since(start))
			// CPU time (user + system, the tool's children included):
			// what the build costs, less hostage to other load than wall time.
			cpus[i] = append(cpus[i], c.ProcessState.UserTime()+c.ProcessState.SystemTime())
			st, err := os.Stat(o)
			if err != nil {
				return err
			}
			sizes[i] = st.Size()
			if t.fs == "ext4" {
				// Allocated bytes: both ext4 images have the same length.
				if du, err := exec.Command("du", "-B1", o).Output(); err == nil {
					if n, err := strconv.ParseInt(strings.Fields(string(du))[0], 10, 64); err == nil {
						sizes[i] = n
					}
				}
			}
			os.Remove(o)
			os.Remove(o + ".json")
		}
	}
	treeSize, _ := exec.Command("du", "-sh", tree).Output()
	fmt.Printf("Root image build, tree %s (%s), median of %d rounds, %s\n\n", strings.Fields(string(treeSize))[0], desc, rounds, time.Now().Format("2006-01-02"))
	fmt.Println("| fs | tool | time | CPU | image | time vs reference | CPU vs reference | size vs reference |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	med := func(d []time.Duration) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	for i := 0; i < len(tools); i += 2 {
		m, r := med(times[i]), med(times[i+1])
		mc, rc := med(cpus[i]), med(cpus[i+1])
		fmt.Printf("| %s | %s | %.2f s | %.2f s | %.1f MiB | %.2f× | %.2f× | %.2f× |\n", tools[i].fs, tools[i].name, m.Seconds(), mc.Seconds(), float64(sizes[i])/(1<<20), m.Seconds()/r.Seconds(), mc.Seconds()/rc.Seconds(), float64(sizes[i])/float64(sizes[i+1]))
		fmt.Printf("| %s | %s | %.2f s | %.2f s | %.1f MiB | 1.00× | 1.00× | 1.00× |\n", tools[i+1].fs, tools[i+1].name, r.Seconds(), rc.Seconds(), float64(sizes[i+1])/(1<<20))
	}
	fmt.Println("\nmkimage includes generalizing, reproducible metadata (SOURCE_DATE_EPOCH), fsync and the sha256 manifest; ext4 sizes are allocated bytes of equally long images.")
	return layoutReuse(tmp, tree, mkimage, mkfs, ext4Size)
}

// packages lists the regular files of the tree's packages: the dpkg file
// lists when the tree has them (a Debian root), else each directory of
// files (the synthetic tree). Sorted by package name.
func packages(tree string) (map[string][]string, error) {
	pkgs := map[string][]string{}
	lists, _ := filepath.Glob(filepath.Join(tree, "var/lib/dpkg/info/*.list"))
	for _, l := range lists {
		b, err := os.ReadFile(l)
		if err != nil {
			return nil, err
		}
		name := strings.TrimSuffix(filepath.Base(l), ".list")
		for _, p := range strings.Split(string(b), "\n") {
			if p == "" || strings.HasPrefix(p, "/etc/") {
				continue // conffiles are left to the admin
			}
			if st, err := os.Lstat(filepath.Join(tree, p)); err == nil && st.Mode().IsRegular() && st.Size() > 0 {
				pkgs[name] = append(pkgs[name], p)
			}
		}
	}
	if len(pkgs) > 0 {
		return pkgs, nil
	}
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		pkgs[filepath.Dir(rel)] = append(pkgs[filepath.Dir(rel)], "/"+rel)
		return nil
	})
	return pkgs, err
}

// updateTree copies tree to dst and applies an update like a point
// release: ten packages (every len/10-th by name) get new contents for all
// their files (2 % longer, different bytes: a rebuilt binary shares little
// with the old one), and one package is added (1 MiB in /usr/bin, 40 files
// of 1–64 KiB in /usr/share/newpkg).
func updateTree(tree, dst string) (string, error) {
	if out, err := exec.Command("cp", "-a", tree, dst).CombinedOutput(); err != nil {
		return "", fmt.Errorf("cp -a: %v: %s", err, out)
	}
	pkgs, err := packages(dst)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(pkgs))
	for n := range pkgs {
		names = append(names, n)
	}
	sort.Strings(names)
	r := rand.New(rand.NewSource(2))
	var changed []string
	files := 0
	for i := len(names) / 20; i < len(names) && len(changed) < 10; i += max(len(names)/10, 1) {
		n := names[i]
		changed = append(changed, n)
		for _, p := range pkgs[n] {
			full := filepath.Join(dst, p)
			st, err := os.Stat(full)
			if err != nil {
				return "", err
			}
			b := make([]byte, st.Size()+st.Size()/50)
			r.Read(b)
			if err := os.WriteFile(full, b, st.Mode().Perm()); err != nil {
				return "", err
			}
			os.Chtimes(full, st.ModTime(), st.ModTime())
			files++
		}
	}
	add := filepath.Join(dst, "usr/share/newpkg")
	if err := os.MkdirAll(add, 0o755); err != nil {
		return "", err
	}
	for i := 0; i < 40; i++ {
		b := make([]byte, 1024+r.Intn(63<<10))
		r.Read(b)
		if err := os.WriteFile(filepath.Join(add, fmt.Sprintf("file%02d", i)), b, 0o644); err != nil {
			return "", err
		}
	}
	b := make([]byte, 1<<20)
	r.Read(b)
	if err := os.MkdirAll(filepath.Join(dst, "usr/bin"), 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dst, "usr/bin/newpkg"), b, 0o755); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d packages' %d files rewritten (%s), one package of 41 files added", len(changed), files, strings.Join(changed, ", ")), nil
}

// layoutReuse builds images of tree and of its updated copy with mkimage
// and with mkfs.ext4 -d and prints how much of each new image the old one
// holds.
func layoutReuse(tmp, tree, mkimage, mkfs string, ext4Size int64) error {
	upd := filepath.Join(tmp, "updated")
	what, err := updateTree(tree, upd)
	if err != nil {
		return fmt.Errorf("update tree: %w", err)
	}
	defer os.RemoveAll(upd)
	build := map[string]func(from, out string) *exec.Cmd{
		"mkimage rootfs": func(from, out string) *exec.Cmd {
			c := exec.Command(mkimage, "rootfs", "--from", from, "--out", out, "--no-boot-files", "--size", strconv.FormatInt(ext4Size, 10))
			c.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
			return c
		},
		"mkfs.ext4 -d": func(from, out string) *exec.Cmd {
			return exec.Command("sh", "-c", fmt.Sprintf("truncate -s %d %q && E2FSPROGS_FAKE_TIME=1700000000 %s -q -F -t ext4 -b 4096 -m 0 -L hn-root -U 6f1bd8a4-3c54-4d3e-9a52-0c1d0e6a7b10 -E hash_seed=0d3c3a0e-5a43-4f5b-8a43-1b4c3e1a9f21 -d %q %q", ext4Size, out, mkfs, from, out))
		},
	}
	fmt.Printf("\nLayout reuse (ext4, same size): tree vs an update of it: %s\n\n", what)
	fmt.Println("| tool | new image's non-zero 4 KiB blocks | at the same offset in the old image | anywhere in the old image | bytes of non-zero chunks (internal/chunkindex) found in the old image |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: |")
	for _, name := range []string{"mkimage rootfs", "mkfs.ext4 -d"} {
		a, b := filepath.Join(tmp, "reuse-a.img"), filepath.Join(tmp, "reuse-b.img")
		for _, x := range [][2]string{{tree, a}, {upd, b}} {
			if out, err := build[name](x[0], x[1]).CombinedOutput(); err != nil {
				return fmt.Errorf("%s: %v: %s", name, err, out)
			}
		}
		r, err := rootfs.BlockReuse(a, b)
		if err != nil {
			return err
		}
		cdc, err := chunkReuse(a, b)
		if err != nil {
			return err
		}
		fmt.Printf("| %s | %d | %.1f %% | %.1f %% | %.1f %% |\n", name, r.Blocks, 100*r.SameShare(), 100*r.AnywhereShare(), 100*cdc)
		for _, p := range []string{a, b} {
			os.Remove(p)
			os.Remove(p + ".json")
			os.Remove(p + ".packages.json")
		}
	}
	return nil
}

// chunkReuse is the share of the bytes of newImg's content-defined chunks
// (the delta updates' chunks, all-zero ones left out) whose digest is
// among oldImg's chunks: what a delta does not fetch.
func chunkReuse(oldImg, newImg string) (float64, error) {
	oi, err := chunkindex.BuildFile(oldImg)
	if err != nil {
		return 0, err
	}
	ni, err := chunkindex.BuildFile(newImg)
	if err != nil {
		return 0, err
	}
	old := map[[32]byte]bool{}
	for _, c := range oi.Chunks {
		old[c.Sum] = true
	}
	var found, total int64
	for _, c := range ni.Chunks {
		if z, ok := chunkindex.ZeroSum(c.Length); ok && z == c.Sum {
			continue
		}
		total += int64(c.Length)
		if old[c.Sum] {
			found += int64(c.Length)
		}
	}
	if total == 0 {
		return 1, nil
	}
	return float64(found) / float64(total), nil
}
