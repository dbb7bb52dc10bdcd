package rootfs

import (
	"hash/fnv"
	"io/fs"
	"math/bits"
)

// The ext4 layout: where file data lands, in blocks counted over the free
// space of the empty filesystem ("data blocks": the inode tables, journal
// and backup superblocks mkfs placed are skipped). Files are allocated in
// walk order (sorted paths, parents first), so a build of the same tree
// puts everything at the same place. For a build of a changed tree to keep
// unchanged files where they were, every directory, every large file and
// every run of small files large enough to matter gets a window: its size
// rounded up to a size class (multiples of 1/16 to 1/32 of it). A window
// keeps its size while its contents change by less than a class step, so
// a file that grows or is added moves the files after it inside its own
// window only; a window that does change class moves what follows inside
// its parent's window, and so on up. The space left in windows stays free
// space of the filesystem.
const (
	// padMin is the smallest window, in blocks: smaller units share
	// their parent's, so small directories cost no slack.
	padMin = 128
	// classBits: a window is need rounded up to a multiple of
	// 2^(⌊log2 need⌋-classBits) blocks, at most 1/16 more than need.
	classBits = 4
	// runFiles: a run of small files in a directory ends after a file
	// whose path hashes to 0 mod runFiles (so about every runFiles
	// files), a boundary that adding or changing other files does not move.
	runFiles = 32
	// syncMin: at the end of windows this large (8 MiB), the writer asks
	// debugfs where it stands instead of estimating (see writeExt4).
	syncMin = 2048
)

// window is the space a unit needing need blocks takes in the layout.
func window(need int64) int64 {
	if need < padMin {
		return need
	}
	step := int64(1) << max(bits.Len64(uint64(need))-1-classBits, 0)
	return (need + step - 1) / step * step
}

// runEnds says whether a run of small files ends after the file at p.
func runEnds(p string) bool {
	h := fnv.New32a()
	h.Write([]byte(p))
	return h.Sum32()%runFiles == 0
}

// dirent is the space a directory entry named name takes (ext4_dir_entry_2).
func dirent(name string) int64 { return (8 + int64(len(name)) + 3) &^ 3 }

// ownBlocks estimates the blocks debugfs allocates for e itself: data of
// a regular file (holes not subtracted), a slow symlink's target, an
// xattr block when the attributes do not fit in the inode, a directory's
// entry blocks.
func (t *Tree) ownBlocks(e *Entry) int64 {
	var n int64
	switch {
	case e.Link != "":
		return 0
	case e.Mode.IsRegular():
		n = (e.Size + blockSize - 1) / blockSize
	case e.Mode&fs.ModeSymlink != 0 && len(e.Target) >= 60:
		n = 1
	case e.Mode.IsDir():
		size := int64(24) // "." and ".."
		for _, c := range t.children[e.Path] {
			size += dirent(base(c))
		}
		n = (size + blockSize - 13) / (blockSize - 12) // 12: checksum tail
	}
	var xs int64
	for _, x := range e.Xattrs {
		xs += 16 + (int64(len(x.Name))+3)&^3 + (int64(len(x.Value))+3)&^3
	}
	if xs > 96 { // what a 256-byte inode has room for
		n++
	}
	return n
}

// segment is a unit of a directory's children the layout gives a window:
// one subdirectory, one large file, or a run of small files.
type segment struct {
	paths []string
	dir   bool
	size  int64 // blocks the segment takes: its window
}

// layout holds the windows of a tree's directories.
type layout struct {
	t    *Tree
	size map[string]int64 // directory path -> its window, in blocks
}

func newLayout(t *Tree) *layout {
	l := &layout{t: t, size: map[string]int64{}}
	l.dirSize("")
	return l
}

// dirSize is the window of directory p: its own blocks and its segments'.
func (l *layout) dirSize(p string) int64 {
	need := l.t.ownBlocks(l.t.entries[p])
	for _, s := range l.segments(p) {
		need += s.size
	}
	w := window(need)
	l.size[p] = w
	return w
}

// segments splits p's children into segments, in walk order.
func (l *layout) segments(p string) []segment {
	var segs []segment
	var run segment
	flush := func() {
		if len(run.paths) > 0 {
			run.size = window(run.size)
			segs = append(segs, run)
		}
		run = segment{}
	}
	for _, c := range l.t.children[p] {
		e := l.t.entries[c]
		switch n := l.t.ownBlocks(e); {
		case e.Mode.IsDir():
			flush()
			w, ok := l.size[c]
			if !ok {
				w = l.dirSize(c)
			}
			segs = append(segs, segment{paths: []string{c}, dir: true, size: w})
		case n >= padMin:
			flush()
			segs = append(segs, segment{paths: []string{c}, size: window(n)})
		default:
			run.paths = append(run.paths, c)
			run.size += n
			if runEnds(c) {
				flush()
			}
		}
	}
	flush()
	return segs
}

// positions returns where the layout puts the data of each entry that has
// some: data blocks from the start of the root's window.
func (l *layout) positions() map[string]int64 {
	pos := map[string]int64{}
	var dir func(p string, start int64)
	dir = func(p string, start int64) {
		pos[p] = start
		at := start + l.t.ownBlocks(l.t.entries[p])
		for _, s := range l.segments(p) {
			if s.dir {
				dir(s.paths[0], at)
			} else {
				f := at
				for _, c := range s.paths {
					pos[c] = f
					f += l.t.ownBlocks(l.t.entries[c])
				}
			}
			at += s.size
		}
	}
	dir("", 0)
	return pos
}
