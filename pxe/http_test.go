package pxe

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/layout"
)

// testImage builds a root image of type fs ("ext4" or "squashfs") with
// /boot/vmlinuz and a versioned initramfs, and returns its ImageRef.
func testImage(t *testing.T, fs string) ImageRef {
	t.Helper()
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "boot"), 0o755)
	os.WriteFile(filepath.Join(tree, "boot", "vmlinuz"), []byte("KERNEL-"+fs), 0o644)
	os.WriteFile(filepath.Join(tree, "boot", "initramfs-6.1.0"), []byte("INITRAMFS-"+fs), 0o644)
	img := filepath.Join(t.TempDir(), "root."+fs)
	var cmd *exec.Cmd
	switch fs {
	case "ext4":
		cmd = exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img, "8M")
	case "squashfs":
		cmd = exec.Command("mksquashfs", tree, img, "-noappend", "-quiet")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s\n(install e2fsprogs and squashfs-tools: scripts/deps.sh)", cmd.Args, err, out)
	}
	b, _ := os.ReadFile(img)
	sum := sha256.Sum256(b)
	return ImageRef{Name: "root", Version: fs, Digest: "sha256:" + hex.EncodeToString(sum[:]), Path: img}
}

func testHandler(t *testing.T, allowUnknown bool, imgs ...ImageRef) (*HTTPHandler, *eventLog, *[]*checkin.Checkin) {
	return testHandlerMAC(t, allowUnknown, nil, nil, imgs...)
}

// testHandlerMAC is testHandler with the transport's MAC lookup and the
// check-in hook's error (both may be nil).
func testHandlerMAC(t *testing.T, allowUnknown bool, mac func(net.IP) net.HardwareAddr, hookErr error, imgs ...ImageRef) (*HTTPHandler, *eventLog, *[]*checkin.Checkin) {
	t.Helper()
	dir := NewStaticDirectory()
	for i, im := range imgs {
		dir.Add(HostBoot{MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, byte(i + 1)}, Hostname: "h" + im.Version, Image: im, Cmdline: "hn.revert=r1"})
	}
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "ipxe.efi"), []byte("EFI"), 0o644)
	fr, err := OpenFileRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fr.Close() })
	rec := &eventLog{}
	var checkins []*checkin.Checkin
	h := NewHTTPHandler(HTTPConfig{Base: "http://10.0.0.1:8080", Cmdline: "console=ttyS0", AllowUnknown: allowUnknown},
		dir, NewExtractor(t.TempDir()), fr, rec, func(c *checkin.Checkin) error { checkins = append(checkins, c); return hookErr },
		nil, slog.New(slog.DiscardHandler), mac)
	return h, rec, &checkins
}

func get(t *testing.T, h http.Handler, method, path string, hdr map[string]string, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestHTTPScript(t *testing.T) {
	im := ImageRef{Name: "web", Version: "1", Digest: "sha256:" + strings.Repeat("b", 64), Path: "/x"}
	h, rec, _ := testHandler(t, false, im)
	w := get(t, h, "GET", "/boot/52-54-00-00-00-01.ipxe", nil, "")
	if w.Code != 200 {
		t.Fatalf("GET script: %d %s", w.Code, w.Body)
	}
	// The whole script as served, with the server's --cmdline and the
	// host's own arguments.
	golden(t, "ipxe/http-script.ipxe", w.Body.Bytes())
	if got := w.Header().Get("Content-Type"); !strings.HasPrefix(got, "text/plain") {
		t.Errorf("Content-Type = %q, want text/plain", got)
	}
	if e := rec.find(KindHTTP, "GET /boot/52-54-00-00-00-01.ipxe 200"); e == nil || e.MAC.String() != "52:54:00:00:00:01" {
		t.Errorf("script fetch not recorded with its MAC: %+v", rec.ev)
	}
	if w := get(t, h, "GET", "/boot/52:54:00:00:00:99.ipxe", nil, ""); w.Code != 404 {
		t.Errorf("unknown MAC script: %d, want 404", w.Code)
	}
}

func TestHTTPBootFilesFromImage(t *testing.T) {
	for _, fs := range []string{"ext4", "squashfs"} {
		t.Run(fs, func(t *testing.T) {
			im := testImage(t, fs)
			h, _, _ := testHandler(t, false, im)
			for file, want := range map[string]string{"vmlinuz": "KERNEL-" + fs, "initramfs": "INITRAMFS-" + fs} {
				w := get(t, h, "GET", "/images/"+im.Digest+"/"+file, nil, "")
				if w.Code != 200 || w.Body.String() != want {
					t.Errorf("GET %s: %d %q, want 200 %q", file, w.Code, w.Body, want)
				}
			}
			// Cached: the image may go away, the extracted files stay.
			os.Remove(im.Path)
			if w := get(t, h, "GET", "/images/"+im.Digest+"/vmlinuz", nil, ""); w.Code != 200 {
				t.Errorf("cached GET: %d", w.Code)
			}
		})
	}
}

func TestHTTPBlob(t *testing.T) {
	im := testImage(t, "ext4")
	h, _, _ := testHandler(t, false, im)
	whole, _ := os.ReadFile(im.Path)
	w := get(t, h, "GET", "/blobs/"+im.Digest, nil, "")
	if w.Code != 200 || w.Body.Len() != len(whole) {
		t.Fatalf("GET blob: %d, %d bytes; want 200, %d", w.Code, w.Body.Len(), len(whole))
	}
	if got := w.Header().Get("ETag"); got != `"`+im.Digest+`"` {
		t.Errorf("ETag = %s, want the digest", got)
	}
	if got := w.Header().Get("Cache-Control"); !strings.Contains(got, "immutable") {
		t.Errorf("Cache-Control = %q, want immutable", got)
	}
	w = get(t, h, "GET", "/blobs/"+im.Digest, map[string]string{"Range": "bytes=1024-2047"}, "")
	if w.Code != http.StatusPartialContent || w.Body.String() != string(whole[1024:2048]) {
		t.Errorf("Range: %d, %d bytes; want 206 and bytes 1024-2047", w.Code, w.Body.Len())
	}
	w = get(t, h, "GET", "/blobs/"+im.Digest, map[string]string{"If-None-Match": `"` + im.Digest + `"`}, "")
	if w.Code != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", w.Code)
	}
	if w := get(t, h, "HEAD", "/blobs/"+im.Digest, nil, ""); w.Code != 200 {
		t.Errorf("HEAD: %d", w.Code)
	}
}

func TestHTTPRefusesTraversal(t *testing.T) {
	im := testImage(t, "ext4")
	h, _, _ := testHandler(t, true, im)
	for _, p := range []string{
		"/blobs/sha256:" + strings.Repeat("0", 64),
		"/blobs/..%2f..%2fetc%2fpasswd",
		"/blobs/sha256:../../etc/passwd",
		"/images/" + im.Digest + "/..%2f..%2fetc%2fpasswd",
		"/images/" + im.Digest + "/passwd",
		"/images/..%2f/vmlinuz",
		"/ipxe/..%2f..%2fetc%2fpasswd",
		"/ipxe/%2fetc%2fpasswd",
		"/boot/..%2f..%2fetc%2fpasswd.ipxe",
		"/boot/../../etc/passwd",
		"/etc/passwd",
	} {
		w := get(t, h, "GET", p, nil, "")
		if w.Code == 200 || strings.Contains(w.Body.String(), "root:") {
			t.Errorf("GET %s: %d %q, want refusal", p, w.Code, w.Body.String())
		}
	}
	if w := get(t, h, "GET", "/ipxe/ipxe.efi", nil, ""); w.Code != 200 || w.Body.String() != "EFI" {
		t.Errorf("GET /ipxe/ipxe.efi: %d %q", w.Code, w.Body)
	}
}

func TestHTTPCheckin(t *testing.T) {
	h, rec, checkins := testHandler(t, false)
	booted := "sha256:" + strings.Repeat("c", 64)
	body := `{"mac":"52-54-00-00-00-07","source":"init","booted":"` + booted + `","action":"promote","kernel":"6.1.0"}`
	w := get(t, h, "POST", "/checkin", map[string]string{"Content-Type": "application/json"}, body)
	if w.Code != http.StatusNoContent {
		t.Fatalf("POST /checkin: %d %s", w.Code, w.Body)
	}
	want := &checkin.Checkin{MAC: "52:54:00:00:00:07", Source: "init", Booted: booted, Action: "promote", Kernel: "6.1.0"}
	if len(*checkins) != 1 || !reflect.DeepEqual((*checkins)[0], want) {
		t.Errorf("hook got %+v, want [%+v]", *checkins, want)
	}
	e := rec.find(KindCheckin, "action=promote")
	if e == nil || e.MAC.String() != "52:54:00:00:00:07" || !strings.Contains(e.Detail, "booted=sha256:cccc") {
		t.Errorf("check-in event = %+v", e)
	}
	for _, tc := range []struct {
		name, body string
		code       int
		err        string // in the refusal event
	}{
		{"not JSON", "{", 400, "check-in: body:"},
		{"no MAC", `{"source":"init"}`, 400, "check-in: mac: missing"},
		{"bad digest", `{"mac":"52:54:00:00:00:07","booted":"sha256:cc"}`, 400, "check-in from 52:54:00:00:00:07: booted:"},
		{"hostile kernel", `{"mac":"52:54:00:00:00:07","kernel":"\u001b[2J"}`, 400, "kernel:"},
		{"too large", `{"mac":"52:54:00:00:00:07","notes":["` + strings.Repeat("x", checkin.MaxBytes) + `"]}`, 413, "body over"},
	} {
		if w := get(t, h, "POST", "/checkin", nil, tc.body); w.Code != tc.code {
			t.Errorf("POST /checkin %s: %d, want %d", tc.name, w.Code, tc.code)
		}
		if e := rec.find(KindCheckin, tc.err); e == nil || e.Detail != "refused" || !strings.Contains(e.Err, tc.err) {
			t.Errorf("POST /checkin %s: refusal event %+v, want one with an error containing %q", tc.name, e, tc.err)
		}
	}
	if len(*checkins) != 1 {
		t.Errorf("bad check-ins reached the hook: %d calls", len(*checkins))
	}
	if w := get(t, h, "GET", "/checkin", nil, ""); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET /checkin: %d, want 405", w.Code)
	}
}

// A body without a MAC is the client's by its address; a hook that cannot
// store the check-in answers 500, so the init logs it as refused.
func TestHTTPCheckinTransportMAC(t *testing.T) {
	arp := func(net.IP) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x09} }
	h, _, checkins := testHandlerMAC(t, false, arp, nil)
	if w := get(t, h, "POST", "/checkin", nil, `{"source":"init"}`); w.Code != http.StatusNoContent || len(*checkins) != 1 || (*checkins)[0].MAC != "52:54:00:00:00:09" {
		t.Errorf("POST /checkin without mac = %d, hook %+v; want 204 and the ARP MAC", w.Code, *checkins)
	}
	h, _, _ = testHandlerMAC(t, false, arp, errors.New("disk full"))
	if w := get(t, h, "POST", "/checkin", nil, `{"mac":"52:54:00:00:00:01"}`); w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), "disk full") {
		t.Errorf("POST /checkin with a failing hook = %d %q, want 500 with the reason", w.Code, w.Body)
	}
}

func TestHTTPBlobManifest(t *testing.T) {
	signed := testImage(t, "ext4")
	body := `{"format":"hnboot-manifest-1","name":"root"}` + "\n"
	os.WriteFile(signed.Path+".json", []byte(body), 0o644)
	chunks := "HNCHUNKS index bytes"
	os.WriteFile(signed.Path+".chunks", []byte(chunks), 0o644)
	pack := "zstd frames of the chunks"
	os.WriteFile(signed.Path+layout.PackSuffix, []byte(pack), 0o644)
	bare := testImage(t, "squashfs") // no manifest or chunk index beside it
	h, _, _ := testHandler(t, true, signed, bare)

	for _, c := range []struct {
		path  string
		code  int
		body  string
		ctype string
	}{
		{"/blobs/" + signed.Digest + ".json", 200, body, "application/json"},
		{"/blobs/" + signed.Digest, 200, "", "application/octet-stream"},
		{"/blobs/" + bare.Digest + ".json", 404, "", ""},
		{"/blobs/" + signed.Digest + ".chunks", 200, chunks, "application/octet-stream"},
		{"/blobs/" + bare.Digest + ".chunks", 404, "", ""},
		{"/blobs/" + signed.Digest + ".chunks.json", 404, "", ""},
		{"/blobs/" + signed.Digest + ".json.chunks", 404, "", ""},
		{"/blobs/sha256:..%2f..%2fetc%2fpasswd.chunks", 404, "", ""},
		{"/blobs/" + signed.Digest + ".zst", 200, pack, "application/octet-stream"},
		{"/blobs/" + bare.Digest + ".zst", 404, "IMAGE.zst", ""},
		{"/blobs/" + signed.Digest + ".zst.json", 404, "", ""},
		{"/blobs/" + signed.Digest + ".zst.chunks", 404, "", ""},
		{"/blobs/" + signed.Digest + ".chunks.zst", 404, "", ""},
		{"/blobs/sha256:..%2f..%2fetc%2fpasswd.zst", 404, "", ""},
		{"/blobs/sha256:" + strings.Repeat("0", 64) + ".json", 404, "", ""},
		{"/blobs/" + signed.Digest + ".json.json", 404, "", ""},
		{"/blobs/.json", 404, "", ""},
		{"/blobs/..%2fx.json", 404, "", ""},
		{"/blobs/sha256:..%2f..%2fetc%2fpasswd.json", 404, "", ""},
	} {
		w := get(t, h, "GET", c.path, nil, "")
		if w.Code != c.code {
			t.Errorf("GET %s = %d %q, want %d", c.path, w.Code, w.Body, c.code)
			continue
		}
		if strings.Contains(w.Body.String(), "root:") {
			t.Errorf("GET %s served /etc/passwd", c.path)
		}
		if c.code != 200 && c.body != "" && !strings.Contains(w.Body.String(), c.body) {
			t.Errorf("GET %s body = %q, want it to name %q", c.path, w.Body, c.body)
			continue
		}
		if c.code == 200 && c.body != "" && w.Body.String() != c.body {
			t.Errorf("GET %s body = %q, want %q", c.path, w.Body, c.body)
		}
		if got := w.Header().Get("Content-Type"); c.ctype != "" && got != c.ctype {
			t.Errorf("GET %s Content-Type = %q, want %q", c.path, got, c.ctype)
		}
	}
	// The pack is fetched in ranges.
	if w := get(t, h, "GET", "/blobs/"+signed.Digest+layout.PackSuffix, map[string]string{"Range": "bytes=5-10"}, ""); w.Code != http.StatusPartialContent || w.Body.String() != pack[5:11] {
		t.Errorf("GET the pack with Range bytes=5-10 = %d %q, want 206 %q", w.Code, w.Body, pack[5:11])
	}
	p := "/blobs/" + signed.Digest + ".json"
	w := get(t, h, "GET", p, nil, "")
	etag := w.Header().Get("ETag")
	if etag != `"`+signed.Digest+`.json"` {
		t.Errorf("GET %s ETag = %s, want %q", p, etag, `"`+signed.Digest+`.json"`)
	}
	if got := w.Header().Get("Cache-Control"); !strings.Contains(got, "immutable") {
		t.Errorf("GET %s Cache-Control = %q, want immutable", p, got)
	}
	if w := get(t, h, "GET", p, map[string]string{"If-None-Match": etag}, ""); w.Code != http.StatusNotModified {
		t.Errorf("GET %s If-None-Match = %d, want 304", p, w.Code)
	}
}

// Without a fleet, the directory answers what a MAC should run, in the
// fields of fleet.DesiredHost, so the init fetches its image in this mode
// too.
func TestHTTPStaticDesired(t *testing.T) {
	im := testImage(t, "ext4")
	h, _, _ := testHandler(t, false, im)
	w := get(t, h, "GET", "/api/hosts/52-54-00-00-00-01/desired", nil, "")
	var d StaticDesired
	if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &d) != nil {
		t.Fatalf("GET desired: %d %s", w.Code, w.Body)
	}
	fi, _ := os.Stat(im.Path)
	if d.MAC != "52:54:00:00:00:01" || d.Hostname != "hext4" || d.Image.Digest != im.Digest || d.Image.Name != "root" || d.Image.Size != fi.Size() || d.Image.Path != "" {
		t.Errorf("GET desired = %+v (%s)", d, w.Body)
	}
	for path, code := range map[string]int{"/api/hosts/52:54:00:00:00:99/desired": 404, "/api/hosts/nope/desired": 400} {
		if w := get(t, h, "GET", path, nil, ""); w.Code != code {
			t.Errorf("GET %s: %d %s, want %d", path, w.Code, w.Body, code)
		}
	}
}
