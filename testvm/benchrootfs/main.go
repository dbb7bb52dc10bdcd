// Command benchrootfs times `mkimage rootfs` (ext4 and squashfs) against
// the reference tools on the same tree, `mkfs.ext4 -d` and `mksquashfs`,
// and prints a markdown table: median wall time of several rounds (the
// tools alternate within a round, so load on the machine hits them alike)
// and image size. mkimage's time includes what the references do not do:
// generalizing, reproducible metadata, fsync and the sha256 manifest.
//
//	go run ./testvm/benchrootfs            # a synthetic ~250 MiB tree
//	go run ./testvm/benchrootfs DIR        # a tree of your own, e.g. debootstrap output
package main

import (
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/rootfs"
	"github.com/hnboot/hnboot/testvm"
)

func main() {
	rounds := flag.Int("rounds", 3, "rounds; the table shows the median")
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
	times := make([][]time.Duration, len(tools))
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
	fmt.Println("| fs | tool | time | image | time vs reference | size vs reference |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: |")
	med := func(d []time.Duration) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	for i := 0; i < len(tools); i += 2 {
		m, r := med(times[i]), med(times[i+1])
		fmt.Printf("| %s | %s | %.2f s | %.1f MiB | %.2f× | %.2f× |\n", tools[i].fs, tools[i].name, m.Seconds(), float64(sizes[i])/(1<<20), m.Seconds()/r.Seconds(), float64(sizes[i])/float64(sizes[i+1]))
		fmt.Printf("| %s | %s | %.2f s | %.1f MiB | 1.00× | 1.00× |\n", tools[i+1].fs, tools[i+1].name, r.Seconds(), float64(sizes[i+1])/(1<<20))
	}
	fmt.Println("\nmkimage includes generalizing, reproducible metadata (SOURCE_DATE_EPOCH), fsync and the sha256 manifest; ext4 sizes are allocated bytes of equally long images.")
	return nil
}
