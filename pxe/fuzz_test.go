package pxe

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Seeds live in testdata/fuzz/<FuzzName>/; `go test` runs them as tests.
// FuzzDHCPReply's are hand-made packets (BIOS, UEFI, HTTP boot, iPXE, no
// architecture, malformed) and, as capture-*, the packets of real clients
// in testdata/captures (TestFuzzSeedsAreCaptures keeps them equal).

// FuzzDHCPReply: any packet bytes -> no panic, and proxy replies never
// hand out an address.
func FuzzDHCPReply(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 240))
	dir := NewStaticDirectory()
	dir.Add(HostBoot{MAC: knownMAC, Image: imgA})
	dir.SetDefault(HostBoot{Image: imgA})
	pool, _ := ParsePool("10.0.0.100-10.0.0.110", time.Hour)
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := dhcpv4.FromBytes(data)
		if err != nil {
			return
		}
		for _, allow := range []bool{false, true} {
			pc := &DHCPConfig{Mode: ModeProxy, ServerIP: serverIP, HTTPBase: "http://10.0.0.1:8080", AllowUnknown: allow}
			for _, r := range []func(*dhcpv4.DHCPv4, *DHCPConfig, Directory) (*dhcpv4.DHCPv4, string){Reply, ReplyBootServer} {
				resp, reason := r(req, pc, dir)
				if resp == nil && reason == "" {
					t.Fatal("silent without a reason")
				}
				if resp != nil && !resp.YourIPAddr.IsUnspecified() {
					t.Fatalf("proxy reply with yiaddr %v", resp.YourIPAddr)
				}
				if resp != nil {
					resp.ToBytes()
				}
			}
			fc := &DHCPConfig{Mode: ModeFull, ServerIP: serverIP, HTTPBase: "http://10.0.0.1:8080", AllowUnknown: allow, Pool: pool}
			if resp, _ := Reply(req, fc, dir); resp != nil {
				resp.ToBytes()
			}
			replyAddr(req, &net.UDPAddr{IP: net.IPv4bcast, Port: 68}, false)
		}
	})
}

// FuzzCleanTFTPPath: a cleaned name stays inside the root.
func FuzzCleanTFTPPath(f *testing.F) {
	for _, s := range []string{"undionly.kpxe", "/ipxe.efi", "../etc/passwd", "a/../../b", `..\x`, "a//b/./c", "...", "..%2f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		rel, err := CleanTFTPPath(name)
		if err != nil {
			return
		}
		if rel == "" || strings.HasPrefix(rel, "/") || strings.Contains(rel, "\\") || !filepath.IsLocal(rel) {
			t.Fatalf("CleanTFTPPath(%q) = %q: not a local path", name, rel)
		}
		for _, el := range strings.Split(rel, "/") {
			if el == ".." || el == "." || el == "" {
				t.Fatalf("CleanTFTPPath(%q) = %q: element %q", name, rel, el)
			}
		}
	})
}

// FuzzHTTPPath: no request path reaches a file outside the served
// directories, and nothing panics.
func FuzzHTTPPath(f *testing.F) {
	for _, s := range []string{"/boot/52:54:00:00:00:01.ipxe", "/ipxe/ipxe.efi", "/ipxe/..%2fsecret", "/blobs/sha256:" + strings.Repeat("a", 64),
		"/images/sha256:" + strings.Repeat("a", 64) + "/vmlinuz", "/boot/..%2f..%2fetc%2fpasswd.ipxe", "/ipxe/escape"} {
		f.Add("GET", s)
	}
	root := f.TempDir()
	os.WriteFile(filepath.Join(root, "ipxe.efi"), []byte("EFI"), 0o644)
	secretDir := f.TempDir()
	os.WriteFile(filepath.Join(secretDir, "secret"), []byte("TOPSECRET"), 0o644)
	os.Symlink(filepath.Join(secretDir, "secret"), filepath.Join(root, "escape"))
	fr, err := OpenFileRoot(root)
	if err != nil {
		f.Fatal(err)
	}
	dir := NewStaticDirectory()
	dir.Add(HostBoot{MAC: knownMAC, Image: ImageRef{Digest: imgA.Digest, Path: filepath.Join(secretDir, "nonexistent")}})
	h := NewHTTPHandler(HTTPConfig{Base: "http://10.0.0.1:8080", AllowUnknown: true}, dir, NewExtractor(f.TempDir()), fr, &eventLog{}, nil, nil, nil, nil)
	f.Fuzz(func(t *testing.T, method, path string) {
		if method != "GET" && method != "POST" && method != "HEAD" {
			return
		}
		u, err := url.ParseRequestURI(path)
		if err != nil || u.Host != "" {
			return
		}
		req := httptest.NewRequest(method, "http://x/", strings.NewReader("{}"))
		req.URL = u
		req.RequestURI = path
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if strings.Contains(w.Body.String(), "TOPSECRET") {
			t.Fatalf("%s %s served a file from outside the root", method, path)
		}
		if w.Code == http.StatusOK && strings.HasPrefix(u.Path, "/ipxe/") && w.Body.String() != "EFI" && method == "GET" {
			t.Fatalf("%s %s: 200 with %q", method, path, w.Body.String())
		}
	})
}
