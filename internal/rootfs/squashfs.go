package rootfs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// DefaultCompressor is the squashfs compressor: what mksquashfs uses by
// default, and what every kernel and GRUB read.
const DefaultCompressor = "gzip"

// tarName is the archive name of a tree path: "./" for the root, "./etc/"
// for a directory.
func tarName(e *Entry) string {
	if e.Path == "" {
		return "./"
	}
	if e.Mode.IsDir() {
		return "./" + e.Path + "/"
	}
	return "./" + e.Path
}

// WriteTar writes t as a PAX tarball in walk order: numeric owners, no
// user or group names, xattrs as SCHILY.xattr records, hard links as
// links to the first name. counted is called with the content bytes
// written so far.
func WriteTar(w io.Writer, t *Tree, counted func(n int64)) error {
	tw := tar.NewWriter(w)
	var total int64
	buf := make([]byte, 1<<20)
	err := t.Walk(func(e *Entry) error {
		h := &tar.Header{
			Name:    tarName(e),
			Mode:    int64(e.UnixMode() & 0o7777),
			Uid:     e.UID,
			Gid:     e.GID,
			ModTime: time.Unix(max(e.MTime, 0), 0),
			Format:  tar.FormatPAX,
		}
		switch {
		case e.Link != "":
			h.Typeflag, h.Linkname = tar.TypeLink, "./"+e.Link
			h.Mode = int64(t.Get(e.Link).UnixMode() & 0o7777)
		case e.Mode.IsDir():
			h.Typeflag = tar.TypeDir
		case e.Mode.IsRegular():
			h.Typeflag, h.Size = tar.TypeReg, e.Size
		case e.Mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.Target
		case e.Mode&fs.ModeCharDevice != 0:
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, int64(e.Major), int64(e.Minor)
		case e.Mode&fs.ModeDevice != 0:
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeBlock, int64(e.Major), int64(e.Minor)
		case e.Mode&fs.ModeNamedPipe != 0:
			h.Typeflag = tar.TypeFifo
		default:
			return fmt.Errorf("/%s: a %s cannot be put in an image", e.Path, e.Type())
		}
		if len(e.Xattrs) > 0 && e.Link == "" {
			h.PAXRecords = map[string]string{}
			for _, x := range e.Xattrs {
				h.PAXRecords["SCHILY.xattr."+x.Name] = string(x.Value)
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("tar /%s: %w", e.Path, err)
		}
		if h.Typeflag != tar.TypeReg || e.Size == 0 {
			return nil
		}
		f, err := os.Open(e.Data)
		if err != nil {
			return err
		}
		n, err := io.CopyBuffer(tw, io.LimitReader(f, e.Size), buf)
		f.Close()
		if err != nil {
			return fmt.Errorf("tar /%s from %s: %w", e.Path, e.Data, err)
		}
		if n != e.Size {
			return fmt.Errorf("tar /%s: %s changed while reading (%d bytes, had %d)", e.Path, e.Data, n, e.Size)
		}
		total += n
		if counted != nil {
			counted(total)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// writeSquashfs makes a squashfs image of t at img with squashfs-tools-ng's
// tar2sqfs, fed a tarball of t through a pipe.
func writeSquashfs(ctx context.Context, t *Tree, img string, o *Options, progress func(done, total int64)) error {
	tool, err := Tool("tar2sqfs")
	if err != nil {
		return fmt.Errorf("%w (apt-get install squashfs-tools-ng)", err)
	}
	comp := o.Compressor
	if comp == "" {
		comp = DefaultCompressor
	}
	mtime := int64(0)
	if o.HasEpoch {
		mtime = o.Epoch
	}
	args := []string{"-q", "-f", "-c", comp, "-j", strconv.Itoa(runtime.NumCPU()),
		"-d", fmt.Sprintf("uid=0,gid=0,mode=0755,mtime=%d", mtime), img}
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = os.Environ()
	if o.HasEpoch {
		cmd.Env = append(cmd.Env, "SOURCE_DATE_EPOCH="+strconv.FormatInt(o.Epoch, 10))
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("tar2sqfs: %w", err)
	}
	total := t.ContentBytes()
	bw := bufio.NewWriterSize(stdin, 1<<20)
	werr := WriteTar(bw, t, func(n int64) {
		if progress != nil {
			progress(n, total)
		}
	})
	if werr == nil {
		werr = bw.Flush()
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("tar2sqfs %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	if werr != nil {
		return werr
	}
	if progress != nil {
		progress(total, total)
	}
	return nil
}
