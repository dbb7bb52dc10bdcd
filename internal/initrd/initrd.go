package initrd

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/kmodules"
	"github.com/hnboot/hnboot/internal/layout"
)

// DefaultModules are loaded at boot by every hnboot initramfs, in this
// order: buses and disk controllers, filesystems and block helpers, then
// network cards. Names the kernel builds in are skipped; names the kernel
// lacks are skipped with a warning. btrfs and xfs are included: with them
// the archive stays well under 8 MiB (measured with Debian 6.1).
var DefaultModules = []string{
	"virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "nvme",
	"loop", "ext4", "vfat", "nls_cp437", "nls_iso8859-1", "nls_utf8",
	"overlay", "squashfs", "btrfs", "xfs",
	"virtio_net", "e1000", "e1000e",
	// The kernel's SHA-256 for userspace (AF_ALG): the init verifies a
	// download with it where it is faster than Go's (internal/afalg).
	"algif_hash",
}

// ModulesListPath is where the archive lists the top-level modules the
// init loads at boot, one name per line, in order.
const ModulesListPath = "etc/hnboot-modules"

// Options says what goes into an initramfs.
type Options struct {
	Out        string    // the archive to write (a temporary file beside it until complete)
	Init       string    // the init binary, becomes /init
	Busybox    string    // a static busybox for /bin/busybox and /bin/sh; "" for none
	ModulesDir string    // a lib/modules/<release> tree; "" for no modules
	Modules    []string  // modules beyond DefaultModules
	Trust      []byte    // an ed25519 public key (mkimage keygen) for layout.TrustedKeyInitramfs; nil for none
	MTime      time.Time // time of every entry (SOURCE_DATE_EPOCH or the epoch)
	// Zstd is the zstd command (ZstdCommand) that compresses the archive
	// at level 19; "" compresses with the Go encoder, 13% bigger.
	Zstd string
	Log  *slog.Logger
}

// ZstdCommand is the zstd command on PATH, or "" when there is none (the
// archive is then compressed by the Go encoder).
func ZstdCommand() string {
	p, err := exec.LookPath("zstd")
	if err != nil {
		return ""
	}
	return p
}

// Result describes a written archive.
type Result struct {
	Path         string
	Compressed   int64 // size of the file
	Uncompressed int64 // size of the cpio stream
	Release      string
	Modules      int      // module files in the archive
	Top          []string // modules listed in /etc/hnboot-modules
	Builtin      []string // requested modules built into the kernel
	Missing      []string // default modules the kernel does not have
	Compressor   string   // "zstd -19" or "Go zstd"
}

type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Build writes the initramfs described by o to o.Out.
func Build(o Options) (res *Result, err error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Out == "" {
		return nil, errors.New("initramfs: no output file given (--out)")
	}
	initBin, err := readStatic(o.Init, "--init")
	if err != nil {
		return nil, err
	}
	var busybox []byte
	if o.Busybox != "" {
		if busybox, err = readStatic(o.Busybox, "--busybox"); err != nil {
			return nil, err
		}
	}

	var set *kmodules.Set
	var ix *kmodules.Index
	res = &Result{Path: o.Out}
	if o.ModulesDir != "" {
		log.Info("reading kernel modules", "dir", o.ModulesDir)
		if ix, err = kmodules.Open(o.ModulesDir, log); err != nil {
			return nil, err
		}
		optional := map[string]bool{}
		for _, m := range DefaultModules {
			optional[m] = true
		}
		names := append(append([]string(nil), DefaultModules...), o.Modules...)
		for _, m := range o.Modules {
			delete(optional, m)
		}
		if set, err = ix.Closure(names, optional); err != nil {
			return nil, err
		}
		for _, m := range set.Missing {
			log.Warn("default module not in this kernel, skipped", "module", m, "dir", o.ModulesDir)
		}
		res.Release, res.Builtin, res.Missing = ix.Release, set.Builtin, set.Missing
		for _, m := range set.Top {
			res.Top = append(res.Top, m.Name)
		}
		res.Modules = len(set.Modules)
	}

	var cpio bytes.Buffer
	a := NewArchive(&cpio, o.MTime)
	if err := writeContents(a, o, initBin, busybox, ix, set, res); err != nil {
		return nil, fmt.Errorf("initramfs %s: %w", o.Out, err)
	}
	if err := a.Close(); err != nil {
		return nil, fmt.Errorf("initramfs %s: %w", o.Out, err)
	}

	f, err := durable.Create(o.Out, 0o644)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	defer f.Cleanup()
	bw := bufio.NewWriterSize(f, 1<<20)
	cc := &counter{w: bw}
	if err := compress(cc, cpio.Bytes(), o.Zstd, res); err != nil {
		return nil, fmt.Errorf("initramfs %s: %w", o.Out, err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("initramfs: write %s: %w", o.Out, err)
	}
	if err := f.Commit(); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	res.Compressed, res.Uncompressed = cc.n, int64(cpio.Len())
	return res, nil
}

// compress writes the zstd frame of data to w. zstd rather than gzip:
// the archive is smaller, and the kernel (CONFIG_RD_ZSTD, Debian's
// default) unpacks it faster, which is boot time. The zstd command at
// level 19 makes it 13% smaller than the Go encoder's best (6.3 against
// 7.1 MB for Debian 6.1's modules); both run single-threaded, so the same
// input gives the same bytes (with the same zstd release).
func compress(w io.Writer, data []byte, zstdCmd string, res *Result) error {
	if zstdCmd != "" {
		res.Compressor = "zstd -19"
		cmd := exec.Command(zstdCmd, "-19", "-T1", "-q", "-c", "--no-progress")
		cmd.Stdin = bytes.NewReader(data)
		cmd.Stdout = w
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s -19: %w: %s", zstdCmd, err, bytes.TrimSpace(stderr.Bytes()))
		}
		return nil
	}
	res.Compressor = "Go zstd"
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	return nil
}

func writeContents(a *Archive, o Options, initBin, busybox []byte, ix *kmodules.Index, set *kmodules.Set, res *Result) error {
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "run", "newroot"} {
		if err := a.Dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := a.Dir("tmp", 0o1777); err != nil {
		return err
	}
	if err := a.File("init", 0o755, initBin); err != nil {
		return err
	}
	if busybox != nil {
		if err := a.File("bin/busybox", 0o755, busybox); err != nil {
			return err
		}
		if err := a.Symlink("bin/sh", "busybox"); err != nil {
			return err
		}
	}
	var list bytes.Buffer
	for _, n := range res.Top {
		fmt.Fprintln(&list, n)
	}
	if err := a.File(ModulesListPath, 0o644, list.Bytes()); err != nil {
		return err
	}
	if o.Trust != nil {
		if err := a.File(layout.TrustedKeyInitramfs, 0o644, o.Trust); err != nil {
			return err
		}
	}
	if set == nil {
		return nil
	}

	mdir := path.Join("lib/modules", ix.Release)
	if err := a.Dir(mdir, 0o755); err != nil {
		return err
	}
	var dep bytes.Buffer
	if err := set.WriteModulesDep(&dep); err != nil {
		return err
	}
	if err := a.File(path.Join(mdir, "modules.dep"), 0o644, dep.Bytes()); err != nil {
		return err
	}
	var alias bytes.Buffer
	if err := set.WriteModulesAlias(&alias); err != nil {
		return err
	}
	if err := a.File(path.Join(mdir, "modules.alias"), 0o644, alias.Bytes()); err != nil {
		return err
	}
	for _, name := range []string{"modules.builtin", "modules.order"} {
		b, err := os.ReadFile(filepath.Join(ix.Dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if name == "modules.order" {
			b = orderOf(b, set.Modules)
		}
		if err := a.File(path.Join(mdir, name), 0o644, b); err != nil {
			return err
		}
	}
	for _, m := range set.Modules {
		b, err := os.ReadFile(filepath.Join(ix.Dir, filepath.FromSlash(m.Path)))
		if err != nil {
			return err
		}
		if err := a.File(path.Join(mdir, m.ArchivePath()), 0o644, b); err != nil {
			return err
		}
	}
	return nil
}

// orderOf is the kernel's modules.order cut to the modules archived, by
// their archive paths: the kernel's lists all ~4,000 of a distribution
// kernel (160 KB, 23 KB compressed) and would name files the archive
// does not have.
func orderOf(order []byte, mods []*kmodules.Module) []byte {
	in := make(map[string]string, len(mods))
	for _, m := range mods {
		in[m.Path] = m.ArchivePath()
	}
	var out bytes.Buffer
	for _, line := range strings.Split(string(order), "\n") {
		if p, ok := in[strings.TrimSpace(line)]; ok {
			out.WriteString(p + "\n")
		}
	}
	return out.Bytes()
}

// readStatic reads the executable at p (given by flag) and checks it can
// run in an initramfs without a libc: a dynamically linked ELF is an error.
func readStatic(p, flag string) ([]byte, error) {
	if p == "" {
		return nil, fmt.Errorf("initramfs: %s: no file given", flag)
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %s: %w (give the path of the binary with %s PATH)", flag, err, flag)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("initramfs: %s %s: not a regular file", flag, p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %s: %w", flag, err)
	}
	ef, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		if strings.HasPrefix(string(b), "#!") {
			return b, nil // a script: the caller knows what it is doing
		}
		return nil, fmt.Errorf("initramfs: %s %s: not an ELF executable: %w", flag, p, err)
	}
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("initramfs: %s %s is dynamically linked; the initramfs has no libc: give a static binary (Go: CGO_ENABLED=0; busybox: the busybox-static package)", flag, p)
		}
	}
	return b, nil
}
