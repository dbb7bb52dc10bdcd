package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/fleet/dashboard"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/rootfs"
)

// plainHTTPGuard(peer, tls, allow) = status: credentials cross the
// network in clear only from loopback, over TLS, or when allowed.
func TestPlainHTTPGuard(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	for _, c := range []struct {
		remote string
		tls    bool
		allow  bool
		want   int
	}{
		{"127.0.0.1:5000", false, false, 200},
		{"[::1]:5000", false, false, 200},
		{"10.0.0.7:5000", false, false, 403},
		{"10.0.0.7:5000", false, true, 200},
		{"10.0.0.7:5000", true, false, 200},
		{"[fe80::1]:5000", false, false, 403},
	} {
		r := httptest.NewRequest("GET", "/api/status", nil)
		r.RemoteAddr = c.remote
		if c.tls {
			r.TLS = &tls.ConnectionState{}
		}
		w := httptest.NewRecorder()
		plainHTTPGuard(ok, c.allow).ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("guard(%s, tls=%v, allow=%v) = %d, want %d", c.remote, c.tls, c.allow, w.Code, c.want)
		}
	}
}

// TestServeAdminListener: imaged serve puts the admin API on --admin,
// with a self-signed certificate kept across restarts and its
// fingerprint logged; the boot listener answers admin paths with 404;
// imaged fleet checks the pinned fingerprint.
func TestServeAdminListener(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "fleet")
	if err := os.CopyFS(state, os.DirFS("../../fleet/testdata/example")); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("ops "+testToken+"\n"), 0o600)
	start := func() (boot, admin, fp string, stop func()) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "serve", "--server-ip", "127.0.0.1", "--dhcp-mode", "off", "--tftp", "off",
			"--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--tls-self-signed", "--tokens", tokens,
			"--state", state, "--observed", filepath.Join(dir, "lib", "fleet.db"), "--cache", filepath.Join(dir, "cache"),
			"--images", filepath.Join(dir, "images"))
		os.MkdirAll(filepath.Join(dir, "lib"), 0o755)
		cmd.Env = append(os.Environ(), "IMAGED_TEST_MAIN=1")
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stop = func() { cmd.Process.Kill(); cmd.Wait() }
		reAdmin := regexp.MustCompile(`admin: serving .* url=(\S+) fingerprint=(sha256:[0-9a-f]{64})`)
		reBoot := regexp.MustCompile(`msg=serving .* http=(\S+)`)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			a, b := reAdmin.FindStringSubmatch(out.String()), reBoot.FindStringSubmatch(out.String())
			if a != nil && b != nil {
				return "http://" + b[1], a[1], a[2], stop
			}
			if time.Now().After(deadline) {
				stop()
				t.Fatalf("imaged serve did not log both listeners within 20 s\n%s", out.String())
			}
		}
	}
	boot, admin, fp, stop := start()
	if !strings.HasPrefix(admin, "https://127.0.0.1:") {
		t.Errorf("admin url %q, want https on loopback", admin)
	}
	resp, err := http.Get(boot + "/api/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET boot /api/status = %d, want 404 (the admin API is not on the boot listener)", resp.StatusCode)
	}
	out, stderr, code := imaged("fleet", "status", "--server", admin, "--fingerprint", fp, "--token-file", tokens)
	if code != 0 || !strings.Contains(out, "web-01") {
		t.Errorf("imaged fleet status --fingerprint (right) = %d %q %q, want the hosts", code, out, stderr)
	}
	wrong := "sha256:" + strings.Repeat("0", 64)
	if _, stderr, code := imaged("fleet", "status", "--server", admin, "--fingerprint", wrong, "--token-file", tokens); code == 0 || !strings.Contains(stderr, "not the pinned") {
		t.Errorf("imaged fleet status --fingerprint (wrong) = %d %q, want refused: not the pinned certificate", code, stderr)
	}
	if _, stderr, code := imaged("fleet", "status", "--server", admin, "--token-file", tokens); code == 0 || !strings.Contains(stderr, "give --fingerprint") {
		t.Errorf("imaged fleet status without --ca or --fingerprint = %d %q, want a certificate error", code, stderr)
	}
	if _, stderr, code := imaged("fleet", "status", "--server", admin, "--ca", filepath.Join(dir, "lib", "admin.crt"), "--token-file", tokens); code != 0 {
		t.Errorf("imaged fleet status --ca admin.crt = %d %q, want it to work", code, stderr)
	}
	// A publish streams the image through the TLS listener.
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("hello\n"), 0o644)
	img := filepath.Join(dir, "web.img")
	if _, err := rootfs.Build(context.Background(), rootfs.Options{From: src, Out: img, Size: 8 << 20, Boot: rootfs.BootOptions{Disabled: true}}); err != nil {
		t.Fatal(err)
	}
	m, _ := manifest.New(img, manifest.Fields{Name: "web", Version: "7", FS: "ext4", BuildTime: time.Unix(1700000000, 0)})
	m.WriteFile(img + ".json")
	if out, stderr, code := imaged("fleet", "publish", "--server", admin, "--fingerprint", fp, "--token-file", tokens, img); code != 0 {
		t.Errorf("imaged fleet publish over TLS = %d %q %q", code, out, stderr)
	}
	if out, _, _ := imaged("fleet", "images", "--server", admin, "--fingerprint", fp, "--token-file", tokens); !strings.Contains(out, "web@7") {
		t.Errorf("imaged fleet images after the publish: %q, want web@7", out)
	}
	stop()
	_, _, fp2, stop2 := start()
	defer stop2()
	if fp2 != fp {
		t.Errorf("fingerprint after a restart = %s, want the kept %s", fp2, fp)
	}
}

// imaged passwd makes a users-file line that the dashboard accepts.
func TestPasswd(t *testing.T) {
	var o, e bytes.Buffer
	if code := run([]string{"passwd", "alice", "operator"}, strings.NewReader("s3cret pass\n"), &o, &e); code != 0 {
		t.Fatalf("imaged passwd = %d: %s", code, e.String())
	}
	p := filepath.Join(t.TempDir(), "users")
	os.WriteFile(p, o.Bytes(), 0o600)
	us, err := dashboard.ReadUsers(p)
	if err != nil || us["alice"].Role != dashboard.RoleOperator {
		t.Fatalf("ReadUsers(imaged passwd's line %q) = %v, %v; want alice, operator", o.String(), us, err)
	}
	if code := run([]string{"passwd", "alice", "admin"}, strings.NewReader("x\n"), &o, &e); code != 2 {
		t.Errorf("imaged passwd alice admin = %d, want 2 (no such role)", code)
	}
}
