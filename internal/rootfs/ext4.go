package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// debugfsQuote quotes s for debugfs's command parser: inside double
// quotes, a double quote is written twice.
func debugfsQuote(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func base(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// ext4Op is one step of filling an empty ext4 filesystem: a debugfs
// command, or (cmd == "") a pad: allocate until the data written so far
// reaches pad data blocks of the layout (see layout.go).
type ext4Op struct {
	cmd    string
	ino    uint32 // a write or mknod: the inode number debugfs must report
	entry  bool   // the command creates an entry of the tree (for progress)
	blocks int64  // the data blocks the command is expected to allocate
	pad    int64
	sync   bool // a pad where the session asks debugfs where it is
}

// The inodes of an empty filesystem mkfs.ext4 made: the root, lost+found,
// and the first one debugfs hands out (it hands them out in order).
const (
	rootIno      = 2
	lostFoundIno = 11
	firstFreeIno = 12
	padName      = "/lost+found/.hnboot-pad"
)

// ext4Script emits the debugfs commands that fill an empty ext4
// filesystem with t: entries in walk order (so a hard link's inode always
// exists before the link), then the metadata debugfs does not set by
// itself. debugfs creates inodes owned by 0:0 with all times set to
// E2FSPROGS_FAKE_TIME (epoch), directories 0755, symlinks 0777, regular
// files with the mode of the local file, device nodes and FIFOs 0000;
// only what differs is set, by inode number (debugfs numbers new inodes
// in order, and the numbers of writes are checked against what it
// reports), which spares a directory lookup per command. xattrFile
// returns a local file holding an attribute value; empty is an empty
// local file. With pads, the first inode is a padding file in lost+found
// that takes the space the layout leaves free (removed at the end, which
// the caller does), and pads are emitted at the end of every window.
func ext4Script(t *Tree, epoch int64, hasEpoch bool, xattrFile func(v []byte) (string, error), empty string, pads bool, emit func(ext4Op) error) error {
	next := uint32(firstFreeIno)
	if pads {
		if err := emit(ext4Op{cmd: "write " + debugfsQuote(empty) + " " + debugfsQuote(padName), ino: next}); err != nil {
			return err
		}
		next++
	}
	inos := map[string]uint32{"": rootIno}
	cwd := ""
	cmd := func(format string, args ...any) error { return emit(ext4Op{cmd: fmt.Sprintf(format, args...)}) }
	var blocks int64 // of the entry being written
	entry := func(ino uint32, format string, args ...any) error {
		return emit(ext4Op{cmd: fmt.Sprintf(format, args...), ino: ino, entry: true, blocks: blocks})
	}
	one := func(e *Entry) error {
		if strings.ContainsAny(e.Path, "\n\r") || strings.ContainsAny(e.Target, "\n\r") {
			return fmt.Errorf("/%s: a name or link target with a newline cannot be put in an ext4 image by debugfs; rename it, or use --fs squashfs", e.Path)
		}
		name := ""
		if e.Path != "" {
			if dir := parent(e.Path); dir != cwd {
				if err := cmd("cd %s", debugfsQuote("/"+dir)); err != nil {
					return err
				}
				cwd = dir
			}
			name = "./" + base(e.Path)
		}
		q := debugfsQuote(name)
		blocks = t.ownBlocks(e)
		var defMode uint32
		var ino uint32
		var err error
		newIno := func() uint32 { next++; return next - 1 }
		switch {
		case e.Path == "":
			defMode, ino = 0o040755, rootIno
		case e.Link != "":
			return entry(0, "ln <%d> %s", inos[e.Link], q)
		case e.Mode.IsDir():
			if e.Path == "lost+found" {
				defMode, ino = 0o040700, lostFoundIno // made by mkfs
				break
			}
			ino = newIno()
			err = entry(0, "mkdir %s", q)
			defMode = 0o040755
		case e.Mode.IsRegular():
			src, dm := e.Data, e.dataMode
			if src == "" {
				src, dm = empty, 0o100600
			}
			ino = newIno()
			err = entry(ino, "write %s %s", debugfsQuote(src), q)
			defMode = dm
			if err == nil && e.Nlink > 1 {
				err = cmd("sif <%d> links_count %d", ino, e.Nlink)
			}
		case e.Mode&fs.ModeSymlink != 0:
			ino = newIno()
			err = entry(0, "symlink %s %s", q, debugfsQuote(e.Target))
			defMode = 0o120777
		// mknod takes the name as it is: no "./" prefix.
		case e.Mode&fs.ModeCharDevice != 0:
			ino = newIno()
			err = entry(ino, "mknod %s c %d %d", debugfsQuote(base(e.Path)), e.Major, e.Minor)
		case e.Mode&fs.ModeDevice != 0:
			ino = newIno()
			err = entry(ino, "mknod %s b %d %d", debugfsQuote(base(e.Path)), e.Major, e.Minor)
		case e.Mode&fs.ModeNamedPipe != 0:
			ino = newIno()
			err = entry(ino, "mknod %s p", debugfsQuote(base(e.Path)))
		default:
			return fmt.Errorf("/%s: a %s cannot be put in an ext4 image", e.Path, e.Type())
		}
		if err != nil {
			return err
		}
		inos[e.Path] = ino
		if m := e.UnixMode(); m != defMode {
			if err := cmd("sif <%d> mode 0%o", ino, m); err != nil {
				return err
			}
		}
		if e.UID != 0 {
			if err := cmd("sif <%d> uid %d", ino, e.UID); err != nil {
				return err
			}
		}
		if e.GID != 0 {
			if err := cmd("sif <%d> gid %d", ino, e.GID); err != nil {
				return err
			}
		}
		if !hasEpoch || e.MTime != epoch {
			if err := cmd("sif <%d> mtime @%d", ino, max(e.MTime, 0)); err != nil {
				return err
			}
		}
		for _, x := range e.Xattrs {
			f, err := xattrFile(x.Value)
			if err != nil {
				return err
			}
			if err := cmd("ea_set -f %s <%d> %s", debugfsQuote(f), ino, debugfsQuote(x.Name)); err != nil {
				return err
			}
		}
		return nil
	}
	if !pads {
		return t.Walk(one)
	}
	// The same walk, with a pad at the end of every window.
	l := newLayout(t)
	pad := func(at, window int64) error { return emit(ext4Op{pad: at, sync: window >= syncMin}) }
	var dir func(p string, start int64) error
	dir = func(p string, start int64) error {
		if err := one(t.entries[p]); err != nil {
			return err
		}
		at := start + t.ownBlocks(t.entries[p])
		for _, s := range l.segments(p) {
			if s.dir {
				if err := dir(s.paths[0], at); err != nil {
					return err
				}
			} else {
				for _, c := range s.paths {
					if err := one(t.entries[c]); err != nil {
						return err
					}
				}
			}
			at += s.size
			if s.size >= padMin && !s.dir {
				if err := pad(at, s.size); err != nil {
					return err
				}
			}
		}
		if l.size[p] >= padMin && p != "" {
			return pad(start+l.size[p], l.size[p])
		}
		return nil
	}
	if t.children == nil {
		if err := t.Finish(); err != nil {
			return err
		}
	}
	if err := pad(0, syncMin); err != nil { // the anchor: see writeExt4
		return err
	}
	return dir("", 0)
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

// freeMap is the free space of an empty filesystem, as dumpe2fs lists it:
// sorted ranges of free blocks. Data block n of the layout is the n-th
// free block.
type freeMap []struct{ first, last int64 }

var freeRe = regexp.MustCompile(`(?m)^  Free blocks: (.*)$`)

func parseFreeMap(dump string) (freeMap, error) {
	var m freeMap
	for _, l := range freeRe.FindAllStringSubmatch(dump, -1) {
		for _, r := range strings.Split(l[1], ",") {
			if r = strings.TrimSpace(r); r == "" {
				continue
			}
			a, b, ok := strings.Cut(r, "-")
			if !ok {
				b = a
			}
			first, err1 := strconv.ParseInt(a, 10, 64)
			last, err2 := strconv.ParseInt(b, 10, 64)
			if err1 != nil || err2 != nil || last < first || (len(m) > 0 && first <= m[len(m)-1].last) {
				return nil, fmt.Errorf("dumpe2fs: free blocks %q", r)
			}
			m = append(m, struct{ first, last int64 }{first, last})
		}
	}
	if len(m) == 0 {
		return nil, errors.New("dumpe2fs: no free blocks listed")
	}
	return m, nil
}

// data is the data block number of physical block b: how many free
// blocks lie before it.
func (m freeMap) data(b int64) int64 {
	var n int64
	for _, r := range m {
		if b <= r.first {
			break
		}
		n += min(b, r.last+1) - r.first
	}
	return n
}

// total is the number of free blocks.
func (m freeMap) total() int64 { return m.data(m[len(m)-1].last + 1) }

// anchor is where the layout's data block 0 is: the first free block
// rounded up to a MiB, so that a few more or fewer blocks of inode table
// (another inode count, another group count) do not move every file.
func (m freeMap) anchor() int64 {
	p := (m[0].first + 255) / 256 * 256
	return m.data(p)
}

// writeExt4 makes an ext4 image of t at img: mkfs.ext4 of an empty
// filesystem, then one debugfs session that creates every entry. The
// commands are streamed to debugfs as they are made. At each pad the
// padding file takes the blocks up to the layout's position (fallocate
// allocates only free blocks, so a wrong guess costs layout, never
// data): where debugfs stands is estimated from the entries sent since
// the last sync pad, where the session asked debugfs for its first free
// block (allocation is first-fit from the start of the filesystem, so that
// is where the next data goes). Syncing only at large windows keeps the
// round trips, which wait for debugfs, to a few dozen.
// debugfs runs with -n: it does not verify the checksums of the metadata
// it reads back (it wrote them itself a moment ago), which halves its
// work; it still writes every checksum.
func writeExt4(ctx context.Context, t *Tree, img, stage string, o *Options, uuid, seed string, size int64, progress func(done, total int64)) error {
	mkfs, err := Tool("mkfs.ext4")
	if err != nil {
		return err
	}
	debugfs, err := Tool("debugfs")
	if err != nil {
		return err
	}
	dumpe2fs, err := Tool("dumpe2fs")
	if err != nil {
		return err
	}
	stdbuf, err := Tool("stdbuf")
	if err != nil {
		return fmt.Errorf("%w (it is part of coreutils)", err)
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
	dump, err := exec.CommandContext(ctx, dumpe2fs, img).Output()
	if err != nil {
		return fmt.Errorf("dumpe2fs %s: %w", img, err)
	}
	free, err := parseFreeMap(string(dump))
	if err != nil {
		return fmt.Errorf("%s: %w", img, err)
	}
	// Windows cost slack; a tree that leaves too little room for it is
	// packed without.
	base := free.anchor()
	planned := newLayout(t).size[""]
	pads := base+planned <= free.total()*9/10

	// stdbuf: debugfs answers each query on its own line, not when its
	// stdio buffer fills.
	cmd = exec.CommandContext(ctx, stdbuf, "-oL", debugfs, "-n", "-w", "-f", "-", img)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("debugfs: %w", err)
	}
	// The reader: answers to queries go to replies; "Allocated inode"
	// lines are checked against the numbers the script relies on.
	replies := make(chan string, 1)
	var (
		mu       sync.Mutex
		want     []uint32
		inoErr   error
		done     int64
		total    = int64(t.Len())
		readDone = make(chan struct{})
	)
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			l := sc.Text()
			switch {
			case strings.HasPrefix(l, "debugfs: "):
				c := l[len("debugfs: "):]
				if strings.HasPrefix(c, "write ") || strings.HasPrefix(c, "mkdir ") || strings.HasPrefix(c, "symlink ") || strings.HasPrefix(c, "mknod ") || strings.HasPrefix(c, "ln ") {
					done++
					if progress != nil && done%256 == 0 {
						progress(done, total)
					}
				}
			case strings.HasPrefix(l, "Allocated inode: "):
				n, _ := strconv.ParseUint(strings.TrimPrefix(l, "Allocated inode: "), 10, 32)
				mu.Lock()
				if len(want) > 0 {
					if uint32(n) != want[0] && inoErr == nil {
						inoErr = fmt.Errorf("debugfs allocated inode %d where %d was expected: the metadata set by inode number would be wrong", n, want[0])
					}
					want = want[1:]
				}
				mu.Unlock()
			case strings.HasPrefix(l, "Free blocks found: "), strings.HasPrefix(l, "No free blocks found"):
				replies <- l
			}
		}
		io.Copy(io.Discard, out)
		close(replies)
	}()
	w := bufio.NewWriterSize(stdin, 256<<10)
	var (
		padBlocks int64 // the padding file's length, in blocks
		at        int64 // where debugfs allocates next, in data blocks: estimated, or asked at a sync pad
	)
	send := func(op ext4Op) error {
		if op.cmd != "" {
			if op.ino != 0 {
				mu.Lock()
				want = append(want, op.ino)
				mu.Unlock()
			}
			at += op.blocks
			w.WriteString(op.cmd)
			return w.WriteByte('\n')
		}
		if op.sync {
			// A round trip: debugfs runs what it was sent, then answers.
			w.WriteString("ffb 1 0\n")
			if err := w.Flush(); err != nil {
				return err
			}
			r, ok := <-replies
			if !ok {
				return errors.New("debugfs ended early")
			}
			fields := strings.Fields(strings.TrimPrefix(r, "Free blocks found: "))
			if len(fields) == 0 || strings.HasPrefix(r, "No free") {
				return nil // full: the write that needs the space reports it
			}
			p, err := strconv.ParseInt(fields[0], 10, 64)
			if err != nil {
				return fmt.Errorf("debugfs ffb: %q", r)
			}
			at = free.data(p)
		}
		// Padding never takes the room the rest of the tree needs.
		if k := base + op.pad - at; k > 0 && at+k+(planned-op.pad)+free.total()/50 <= free.total() {
			fmt.Fprintf(w, "fallocate %s %d %d\n", debugfsQuote(padName), padBlocks, padBlocks+k-1)
			padBlocks += k
			at += k
		}
		return nil
	}
	werr := ext4Script(t, o.Epoch, o.HasEpoch, xattrFile, empty, pads, send)
	if werr == nil && pads {
		// The padding goes: its blocks become free space of the image.
		w.WriteString("rm " + debugfsQuote(padName) + "\n")
	}
	if werr == nil {
		werr = w.Flush()
	}
	stdin.Close()
	<-readDone
	err = cmd.Wait()
	if werr != nil {
		return fmt.Errorf("debugfs %s: %w", img, werr)
	}
	if err != nil {
		return fmt.Errorf("debugfs -n -w -f - %s: %w: %s", img, err, strings.TrimSpace(stderr.String()))
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
	// A failed command is the likelier cause of a numbering surprise, so
	// it is reported first.
	if inoErr != nil {
		return fmt.Errorf("debugfs %s: %w", img, inoErr)
	}
	if progress != nil {
		progress(total, total)
	}
	return nil
}
