package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// debugfsQuote quotes s for debugfs's command parser: inside double
// quotes, a double quote is written twice.
func debugfsQuote(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func base(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// ext4Script is the debugfs batch that fills an empty ext4 filesystem
// with t: entries in walk order (so a hard link's inode always exists
// before the link), then the metadata debugfs does not set by itself.
// debugfs creates inodes owned by 0:0 with all times set to
// E2FSPROGS_FAKE_TIME (epoch), directories 0755, symlinks 0777, regular
// files with the mode of the local file, device nodes and FIFOs 0000;
// only what differs is set. xattrFile returns a local file holding an
// attribute value; empty is an empty local file, emptyMode its mode.
// It returns the script and the number of commands.
func ext4Script(t *Tree, epoch int64, hasEpoch bool, xattrFile func(v []byte) (string, error), empty string) ([]byte, int, error) {
	var b bytes.Buffer
	n := 0
	cmd := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
		n++
	}
	cwd := ""
	err := t.Walk(func(e *Entry) error {
		if strings.ContainsAny(e.Path, "\n\r") || strings.ContainsAny(e.Target, "\n\r") {
			return fmt.Errorf("/%s: a name or link target with a newline cannot be put in an ext4 image by debugfs; rename it, or use --fs squashfs", e.Path)
		}
		name := "/"
		if e.Path != "" {
			if dir := parent(e.Path); dir != cwd {
				cmd("cd %s", debugfsQuote("/"+dir))
				cwd = dir
			}
			name = "./" + base(e.Path)
		}
		q := debugfsQuote(name)
		var defMode uint32
		switch {
		case e.Path == "":
			defMode = 0o040755
		case e.Link != "":
			cmd("ln %s %s", debugfsQuote("/"+e.Link), q)
			return nil
		case e.Mode.IsDir():
			if e.Path == "lost+found" {
				defMode = 0o040700 // made by mkfs
				break
			}
			cmd("mkdir %s", q)
			defMode = 0o040755
		case e.Mode.IsRegular():
			src, dm := e.Data, e.dataMode
			if src == "" {
				src, dm = empty, 0o100600
			}
			cmd("write %s %s", debugfsQuote(src), q)
			defMode = dm
			if e.Nlink > 1 {
				cmd("sif %s links_count %d", q, e.Nlink)
			}
		case e.Mode&fs.ModeSymlink != 0:
			cmd("symlink %s %s", q, debugfsQuote(e.Target))
			defMode = 0o120777
		// mknod takes the name as it is: no "./" prefix.
		case e.Mode&fs.ModeCharDevice != 0:
			cmd("mknod %s c %d %d", debugfsQuote(base(e.Path)), e.Major, e.Minor)
		case e.Mode&fs.ModeDevice != 0:
			cmd("mknod %s b %d %d", debugfsQuote(base(e.Path)), e.Major, e.Minor)
		case e.Mode&fs.ModeNamedPipe != 0:
			cmd("mknod %s p", debugfsQuote(base(e.Path)))
		default:
			return fmt.Errorf("/%s: a %s cannot be put in an ext4 image", e.Path, e.Type())
		}
		if m := e.UnixMode(); m != defMode {
			cmd("sif %s mode 0%o", q, m)
		}
		if e.UID != 0 {
			cmd("sif %s uid %d", q, e.UID)
		}
		if e.GID != 0 {
			cmd("sif %s gid %d", q, e.GID)
		}
		if !hasEpoch || e.MTime != epoch {
			cmd("sif %s mtime @%d", q, max(e.MTime, 0))
		}
		for _, x := range e.Xattrs {
			f, err := xattrFile(x.Value)
			if err != nil {
				return err
			}
			cmd("ea_set -f %s %s %s", debugfsQuote(f), q, debugfsQuote(x.Name))
		}
		return nil
	})
	return b.Bytes(), n, err
}

// mkfsArgs are the mkfs.ext4 arguments for an empty image of size bytes
// for entries inodes; uuid and seed make it reproducible when not "".
func mkfsArgs(label string, size int64, entries int, uuid, seed string) []string {
	args := []string{"-q", "-F", "-t", "ext4", "-b", strconv.Itoa(blockSize), "-m", "0", "-L", label}
	// The default of one inode per 16 KiB can be too few for trees of
	// many small files.
	if need := int64(entries)*5/4 + 256; need > size/16384 {
		args = append(args, "-N", strconv.FormatInt(need, 10))
	}
	if uuid != "" {
		args = append(args, "-U", uuid, "-E", "hash_seed="+seed)
	}
	return args
}

// writeExt4 makes an ext4 image of t at img: mkfs.ext4 of an empty
// filesystem, then one debugfs batch that creates every entry.
func writeExt4(ctx context.Context, t *Tree, img, stage string, o *Options, uuid, seed string, size int64, progress func(done, total int64)) error {
	mkfs, err := Tool("mkfs.ext4")
	if err != nil {
		return err
	}
	debugfs, err := Tool("debugfs")
	if err != nil {
		return err
	}
	env := os.Environ()
	if o.HasEpoch {
		env = append(env, "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(o.Epoch, 10))
	}
	empty := filepath.Join(stage, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		return err
	}
	nx := 0
	xattrFile := func(v []byte) (string, error) {
		nx++
		p := filepath.Join(stage, fmt.Sprintf("xattr-%d", nx))
		return p, os.WriteFile(p, v, 0o600)
	}
	script, ncmd, err := ext4Script(t, o.Epoch, o.HasEpoch, xattrFile, empty)
	if err != nil {
		return err
	}
	cmdFile := filepath.Join(stage, "debugfs.cmds")
	if err := os.WriteFile(cmdFile, script, 0o600); err != nil {
		return err
	}

	f, err := os.OpenFile(img, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size %s: %w", img, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	args := append(mkfsArgs(o.Label, size, t.Len(), uuid, seed), img)
	cmd := exec.CommandContext(ctx, mkfs, args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}

	cmd = exec.CommandContext(ctx, debugfs, "-w", "-f", cmdFile, img)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("debugfs: %w", err)
	}
	// debugfs echoes each command as "debugfs: CMD": count them.
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var done int64
	for sc.Scan() {
		if bytes.HasPrefix(sc.Bytes(), []byte("debugfs: ")) {
			done++
			if progress != nil && done%256 == 0 {
				progress(done, int64(ncmd))
			}
		}
	}
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("debugfs -w -f %s %s: %w: %s", cmdFile, img, err, strings.TrimSpace(stderr.String()))
	}
	if progress != nil {
		progress(int64(ncmd), int64(ncmd))
	}
	// debugfs reports failed commands on stderr and still exits 0.
	var errs []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "debugfs ") {
			errs = append(errs, l)
		}
	}
	if len(errs) > 0 {
		hint := ""
		if s := strings.Join(errs, "\n"); strings.Contains(s, "No free space") || strings.Contains(s, "Could not allocate") || strings.Contains(s, "No space") || strings.Contains(s, "ould not allocate") {
			hint = fmt.Sprintf(" (the tree needs about %d MiB plus metadata: give a larger --size, or omit --size)", t.ContentBytes()/mib+1)
		}
		if len(errs) > 10 {
			errs = append(errs[:10], fmt.Sprintf("... and %d more", len(errs)-10))
		}
		return fmt.Errorf("debugfs could not write %s%s:\n  %s", img, hint, strings.Join(errs, "\n  "))
	}
	return nil
}
