package pxe

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pin/tftp/v3"
)

func TestCleanTFTPPath(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"undionly.kpxe", "undionly.kpxe", ""},
		{"/ipxe.efi", "ipxe.efi", ""},
		{"efi//./ipxe.efi", "efi/ipxe.efi", ""},
		{"../etc/passwd", "", "traversal"},
		{"a/../../b", "", "traversal"},
		{"/../x", "", "traversal"},
		{"..", "", "traversal"},
		{`..\..\boot.ini`, "", "bad character"},
		{"a\x00b", "", "bad character"},
		{"a\nb", "", "bad character"},
		{"", "", "length"},
		{"/", "", "empty"},
		{strings.Repeat("a", 300), "", "length"},
	} {
		got, err := CleanTFTPPath(tc.in)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("CleanTFTPPath(%q) = %q, %v; want %q, error containing %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}

type eventLog struct {
	mu sync.Mutex
	ev []Event
}

func (l *eventLog) Record(e Event) { l.mu.Lock(); l.ev = append(l.ev, e); l.mu.Unlock() }
func (l *eventLog) find(kind, sub string) *Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.ev {
		if l.ev[i].Kind == kind && strings.Contains(l.ev[i].Detail+" "+l.ev[i].Err, sub) {
			return &l.ev[i]
		}
	}
	return nil
}

// tftpFixture serves a root with a file, a subdirectory, and symlinks in
// and out of the root, on a loopback port.
func tftpFixture(t *testing.T, cfg TFTPConfig) (addr string, body []byte, rec *eventLog, srv *TFTPServer) {
	t.Helper()
	root := t.TempDir()
	body = bytes.Repeat([]byte("0123456789abcdef"), 10000) // 160000 bytes: many blocks
	os.WriteFile(filepath.Join(root, "undionly.kpxe"), body, 0o644)
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("secret"), 0o644)
	os.Symlink(secret, filepath.Join(root, "escape"))
	os.Symlink("undionly.kpxe", filepath.Join(root, "inside"))
	os.Mkdir(filepath.Join(root, "dir"), 0o755)
	fr, err := OpenFileRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	rec = &eventLog{}
	srv = NewTFTPServer(fr, cfg, rec, slog.Default(), nil)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(conn)
	t.Cleanup(func() { srv.Shutdown(); fr.Close() })
	return conn.LocalAddr().String(), body, rec, srv
}

func tftpGet(addr, name string, blksize int, tsize bool) ([]byte, int64, error) {
	c, err := tftp.NewClient(addr)
	if err != nil {
		return nil, 0, err
	}
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	if tsize {
		c.RequestTSize(true)
	}
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, 0, err
	}
	size, _ := wt.(tftp.IncomingTransfer).Size()
	var buf bytes.Buffer
	_, err = wt.WriteTo(&buf)
	return buf.Bytes(), size, err
}

func TestTFTPServe(t *testing.T) {
	addr, body, rec, _ := tftpFixture(t, TFTPConfig{})
	for _, bs := range []int{0, 1468, 8192} {
		got, size, err := tftpGet(addr, "undionly.kpxe", bs, true)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("blksize %d: got %d bytes, %v; want %d bytes", bs, len(got), err, len(body))
		}
		if size != int64(len(body)) {
			t.Errorf("blksize %d: tsize = %d, want %d", bs, size, len(body))
		}
	}
	if got, _, err := tftpGet(addr, "/inside", 0, false); err != nil || !bytes.Equal(got, body) {
		t.Errorf("symlink inside the root: %d bytes, %v; want the file", len(got), err)
	}
	if rec.find(KindTFTP, "sent undionly.kpxe") == nil {
		t.Errorf("no tftp success event: %+v", rec.ev)
	}
}

func TestTFTPRefusesTraversal(t *testing.T) {
	addr, _, rec, _ := tftpFixture(t, TFTPConfig{})
	for _, name := range []string{"../secret", "escape", "/etc/passwd", "dir", "dir/../../x", "nonexistent"} {
		got, _, err := tftpGet(addr, name, 0, false)
		if err == nil {
			t.Errorf("RRQ %q served %d bytes (%q), want an error", name, len(got), got)
			continue
		}
		if strings.Contains(err.Error(), "/") {
			t.Errorf("RRQ %q: error %q reveals a server path", name, err)
		}
	}
	if rec.find(KindTFTP, "escape") == nil {
		t.Errorf("refused RRQ not recorded: %+v", rec.ev)
	}
}

func TestTFTPTransferCap(t *testing.T) {
	addr, _, _, srv := tftpFixture(t, TFTPConfig{MaxTransfers: 1})
	srv.sem <- struct{}{} // one transfer in flight
	_, _, err := tftpGet(addr, "undionly.kpxe", 0, false)
	<-srv.sem
	if err == nil || !strings.Contains(err.Error(), "busy") {
		t.Errorf("over the cap: err = %v, want busy", err)
	}
}

func TestIsSizeProbe(t *testing.T) {
	st := tftp.TransferStats{Filename: "ipxe.efi"}
	if IsSizeProbe(st, io.EOF) {
		t.Error("a failure without tsize counted as a size probe")
	}
	// Stats with the tsize option as the server sees it.
	opts := map[string]string{"tsize": "0", "blksize": "1468"}
	st = statsWithOpts(opts)
	if !IsSizeProbe(st, errString("sending block 0: code=8, error: User aborted the transfer")) {
		t.Error("EDK2's abort (error 8 after OACK) not seen as a size probe")
	}
	if IsSizeProbe(st, errString("sending block 12: code=0, error: timeout")) {
		t.Error("a mid-transfer failure counted as a size probe")
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func statsWithOpts(o map[string]string) tftp.TransferStats {
	return tftp.TransferStats{Filename: "ipxe.efi", Opts: o}
}
