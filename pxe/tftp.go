package pxe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pin/tftp/v3"
)

// MaxTFTPName bounds a requested file name.
const MaxTFTPName = 255

// CleanTFTPPath turns a requested TFTP file name into a path relative to
// the TFTP root, or refuses it. A leading "/" means the root (as with
// tftpd-hpa -s); "..", backslashes, NUL and control characters are
// refused, never rewritten. Symlinks that leave the root are stopped by
// os.Root when the file is opened.
func CleanTFTPPath(name string) (string, error) {
	if name == "" || len(name) > MaxTFTPName {
		return "", fmt.Errorf("bad file name length %d", len(name))
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return "", fmt.Errorf("bad character %q in file name", r)
		}
	}
	rel := strings.TrimLeft(name, "/")
	if rel == "" {
		return "", errors.New("empty file name")
	}
	for _, el := range strings.Split(rel, "/") {
		if el == ".." {
			return "", errors.New("path traversal (..) refused")
		}
	}
	clean := strings.Trim(pathClean(rel), "/")
	if clean == "" || clean == "." {
		return "", errors.New("empty file name")
	}
	return clean, nil
}

func pathClean(p string) string {
	var out []string
	for _, el := range strings.Split(p, "/") {
		if el == "" || el == "." {
			continue
		}
		out = append(out, el)
	}
	return strings.Join(out, "/")
}

// FileRoot serves read-only files from one directory (the TFTP root, also
// used by HTTP for /ipxe/), caching small files in memory.
type FileRoot struct {
	root *os.Root
	dir  string

	mu    sync.Mutex
	cache map[string]*cachedFile
}

type cachedFile struct {
	data []byte
	mod  time.Time
	size int64
}

// maxCached is the largest file kept in memory (iPXE binaries are < 2 MiB).
const maxCached = 16 << 20

// OpenFileRoot opens dir for serving.
func OpenFileRoot(dir string) (*FileRoot, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open file root %s: %w", dir, err)
	}
	return &FileRoot{root: r, dir: dir, cache: map[string]*cachedFile{}}, nil
}

// Dir is the root directory.
func (fr *FileRoot) Dir() string { return fr.dir }

// Close releases the root.
func (fr *FileRoot) Close() error { return fr.root.Close() }

// Open returns a seekable reader for the cleaned relative name (see
// CleanTFTPPath), its size and modification time. Only regular files are
// served.
func (fr *FileRoot) Open(name string) (io.ReadSeeker, int64, time.Time, error) {
	rel, err := CleanTFTPPath(name)
	if err != nil {
		return nil, 0, time.Time{}, fmt.Errorf("%s: %w", name, err)
	}
	f, err := fr.root.Open(rel)
	if err != nil {
		return nil, 0, time.Time{}, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, time.Time{}, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, time.Time{}, fmt.Errorf("%s: not a regular file: %w", rel, fs.ErrNotExist)
	}
	if st.Size() > maxCached {
		return f, st.Size(), st.ModTime(), nil // caller closes via io.Closer
	}
	fr.mu.Lock()
	c := fr.cache[rel]
	fr.mu.Unlock()
	if c == nil || !c.mod.Equal(st.ModTime()) || c.size != st.Size() {
		data, err := io.ReadAll(f)
		if err != nil {
			f.Close()
			return nil, 0, time.Time{}, fmt.Errorf("read %s: %w", rel, err)
		}
		c = &cachedFile{data: data, mod: st.ModTime(), size: int64(len(data))}
		fr.mu.Lock()
		fr.cache[rel] = c
		fr.mu.Unlock()
	}
	f.Close()
	return bytes.NewReader(c.data), c.size, c.mod, nil
}

// TFTPConfig shapes the TFTP server.
type TFTPConfig struct {
	MaxTransfers int           // concurrent transfers; more are refused with an error packet (default 256)
	BlockSize    int           // largest blksize granted (default 1468; clients ask)
	Timeout      time.Duration // per-packet retransmit timeout (default 2 s)
	Retries      int           // default 5
}

// TFTPServer is the read-only first-stage server.
type TFTPServer struct {
	files *FileRoot
	cfg   TFTPConfig
	rec   Recorder
	log   *slog.Logger
	mac   func(net.IP) net.HardwareAddr
	sem   chan struct{}
	srv   *tftp.Server
}

// NewTFTPServer serves files from fr. mac maps a client address to its MAC
// for the ledger (nil: unknown).
func NewTFTPServer(fr *FileRoot, cfg TFTPConfig, rec Recorder, log *slog.Logger, mac func(net.IP) net.HardwareAddr) *TFTPServer {
	if cfg.MaxTransfers <= 0 {
		cfg.MaxTransfers = 256
	}
	if cfg.BlockSize <= 0 {
		cfg.BlockSize = 1468
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if mac == nil {
		mac = func(net.IP) net.HardwareAddr { return nil }
	}
	if log == nil {
		log = slog.Default()
	}
	if rec == nil {
		rec = Recorders(nil)
	}
	t := &TFTPServer{files: fr, cfg: cfg, rec: rec, log: log, mac: mac, sem: make(chan struct{}, cfg.MaxTransfers)}
	t.srv = tftp.NewServer(t.read, nil)
	t.srv.SetBlockSize(cfg.BlockSize)
	t.srv.SetTimeout(cfg.Timeout)
	if cfg.Retries > 0 {
		t.srv.SetRetries(cfg.Retries)
	}
	t.srv.SetHook(tftpHook{t})
	return t
}

// ErrBusy is sent to clients over the transfer cap.
var ErrBusy = errors.New("server busy, too many transfers; retry")

func (t *TFTPServer) read(name string, rf io.ReaderFrom) error {
	select {
	case t.sem <- struct{}{}:
	default:
		return ErrBusy
	}
	defer func() { <-t.sem }()
	r, size, _, err := t.files.Open(name)
	if err != nil {
		var peer net.UDPAddr
		if ot, ok := rf.(tftp.OutgoingTransfer); ok {
			peer = ot.RemoteAddr()
		}
		t.rec.Record(Event{Time: time.Now(), MAC: t.mac(peer.IP), Kind: KindTFTP, Detail: "RRQ " + name + " from " + peer.IP.String(), Err: err.Error()})
		return errors.New("file not found") // no server paths to the client
	}
	if c, ok := r.(io.Closer); ok {
		defer c.Close()
	}
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ot.SetSize(size)
	}
	_, err = rf.ReadFrom(r)
	return err
}

// Serve serves on conn until Shutdown.
func (t *TFTPServer) Serve(conn net.PacketConn) error { return t.srv.Serve(conn) }

// Shutdown stops the server and waits for transfers.
func (t *TFTPServer) Shutdown() { t.srv.Shutdown() }

type tftpHook struct{ t *TFTPServer }

func (h tftpHook) OnSuccess(st tftp.TransferStats) {
	h.t.rec.Record(Event{Time: time.Now(), MAC: h.t.mac(st.RemoteAddr), Kind: KindTFTP,
		Detail: fmt.Sprintf("sent %s to %v in %v (%d datagrams, opts %v)", st.Filename, st.RemoteAddr, st.Duration.Round(time.Millisecond), st.DatagramsSent, st.Opts)})
}

func (h tftpHook) OnFailure(st tftp.TransferStats, err error) {
	ev := Event{Time: time.Now(), MAC: h.t.mac(st.RemoteAddr), Kind: KindTFTP}
	if IsSizeProbe(st, err) {
		// UEFI firmware asks for tsize, then aborts with error 8 and
		// fetches again: normal, not a failure.
		ev.Detail = fmt.Sprintf("size probe for %s from %v (tsize, then abort): normal for UEFI", st.Filename, st.RemoteAddr)
	} else {
		ev.Detail = fmt.Sprintf("transfer of %q to %v failed after %v", st.Filename, st.RemoteAddr, st.Duration.Round(time.Millisecond))
		ev.Err = err.Error()
	}
	h.t.rec.Record(ev)
}

// IsSizeProbe reports whether a failed transfer is UEFI's size probe: the
// client aborted with error 8 (option negotiation) or right after the
// option acknowledgement, having asked for tsize.
func IsSizeProbe(st tftp.TransferStats, err error) bool {
	if err == nil {
		return false
	}
	_, tsize := st.Opts["tsize"]
	msg := err.Error()
	return tsize && (strings.Contains(msg, "code=8") || (strings.Contains(msg, "block 0") && strings.Contains(msg, "code=0")))
}
