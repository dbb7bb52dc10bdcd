package testvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/fleet"
)

// labAPI calls imaged's HTTP API inside the lab's namespace (curl): method,
// path, bearer token ("" for none) and JSON body ("" for none). It returns
// the status code and the body.
func (l *lab) labAPI(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	args := []string{"-sS", "--max-time", "20", "-X", method, "-w", "\n%{http_code}"}
	if token != "" {
		args = append(args, "-H", "Authorization: Bearer "+token)
	}
	if body != "" {
		args = append(args, "-H", "Content-Type: application/json", "--data", body)
	}
	// The admin API is on the admin listener; what hosts fetch (iPXE
	// scripts, kernels, blobs) on the boot HTTP.
	addr := labAdmin
	if !strings.HasPrefix(path, "/api/") && !strings.HasPrefix(path, "/metrics") {
		addr = labHTTP
	}
	args = append(args, "http://"+addr+path)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := l.ns.Command(ctx, "curl", args...).Output()
	if err != nil {
		t.Fatalf("curl %s %s: %v\n%s", method, path, err, out)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	code, err := strconv.Atoi(s[i+1:])
	if err != nil {
		t.Fatalf("curl %s %s: no status code in %q", method, path, s)
	}
	return code, s[:max(i, 0)]
}

// TestPXEFleetRevert is the big red button for a host that boots by PXE.
// The host runs A (boot 0: its init checks in and caches A's digest); the
// fleet assigns B, which is staged on the host's disk as "imaged stage"
// does; boot 1 promotes B and runs it with A as old, and the init reports
// both. An admin reverts the host through the API (without a valid token:
// 401); the server pins the host to A and its next iPXE script carries
// hn.revert=ID; boot 2's init reverts (B broken, A current), records the
// ID and reports it applied; the server then stops sending hn.revert, and
// GET /api/hosts/{mac}/why and `imaged fleet why` tell the story.
func TestPXEFleetRevert(t *testing.T) {
	f := fixture(t)
	imgs := pxeImages(t)
	dA, dB := fileDigest(t, imgs["PA"]), fileDigest(t, imgs["PB"])
	mac := "52:54:00:77:00:20"
	const token = "fleet-revert-admin-token-0123456789"

	state := t.TempDir()
	desired := filepath.Join(state, "fleet")
	if err := os.Mkdir(desired, 0o755); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`images:
  - {name: A, version: "1", digest: %s, path: %s}
  - {name: B, version: "2", digest: %s, path: %s}
hosts:
  - mac: %s
    hostname: pxe-revert
    image: A@1
`, dA, imgs["PA"], dB, imgs["PB"], mac)
	tokens := filepath.Join(state, "tokens")
	if err := os.WriteFile(filepath.Join(desired, "fleet.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokens, []byte("e2e "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	l := newLab(t, 1)
	l.serve(t, "--dhcp-mode", "full", "--pool", labNet+".100-"+labNet+".150",
		"--state", desired, "--observed", filepath.Join(state, "fleet.db"), "--tokens", tokens)
	d := pxeDisk(t, imgs["PA"])
	start := time.Now()
	pxeBoot := func(image string) string {
		t.Helper()
		vm := l.start(t, pxeHost{tap: "tap0", mac: mac, disk: d})
		con := expectBooted(t, vm, image)
		if err := vm.Wait(60 * time.Second); err != nil {
			t.Fatal(err)
		}
		vm.Kill()
		return con
	}

	// Boot 0: A.
	con := pxeBoot("PA")
	wantConsole(t, con, "HNTEST hostname=pxe-revert", "checked in")
	l.waitLog(t, 30*time.Second, `kind=checkin `, macRe(mac), `booted=`+regexp.QuoteMeta(dA))

	// B is assigned and staged; boot 1 promotes it, A becomes old.
	if code, body := l.labAPI(t, "POST", "/api/assign", token, `{"host":"pxe-revert","image":"B@2"}`); code != 200 {
		t.Fatalf("POST /api/assign: %d %s", code, body)
	}
	err := stageNew(d, imgs["PB"])
	if err != nil {
		t.Fatal(err)
	}
	con = pxeBoot("PB")
	wantConsole(t, con, "action=promote", "checked in")
	if strings.Contains(con, "hn.revert=") {
		t.Errorf("boot 1 had hn.revert= before any revert\n%s", tail(con, 40))
	}
	l.waitLog(t, 30*time.Second, `kind=checkin `, macRe(mac), `booted=`+regexp.QuoteMeta(dB))
	l.waitLog(t, 10*time.Second, `kind=http `, macRe(mac), `GET /images/`+regexp.QuoteMeta(dB)+`/vmlinuz 200`)
	code, body := l.labAPI(t, "GET", "/api/status", token, "")
	var st fleet.Status
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || len(st.Hosts) != 1 || st.Hosts[0].LastCheckin == nil {
		t.Fatalf("GET /api/status: %d %s", code, body)
	}
	if got := st.Hosts[0].LastCheckin.Images.Old; got != dA {
		t.Fatalf("after boot 1 the host reports old image %q, want A %s", got, dA)
	}

	// The red button: refused without a valid token, then pressed.
	for _, tok := range []string{"", "wrong-token-0123456789"} {
		if code, body := l.labAPI(t, "POST", "/api/revert", tok, `{"host":"pxe-revert"}`); code != 401 {
			t.Errorf("POST /api/revert with token %q: %d %s, want 401", tok, code, body)
		}
	}
	code, body = l.labAPI(t, "POST", "/api/revert", token, `{"host":"pxe-revert"}`)
	var res []fleet.RevertResult
	if code != 200 || json.Unmarshal([]byte(body), &res) != nil || len(res) != 1 || res[0].ID == "" {
		t.Fatalf("POST /api/revert: %d %s", code, body)
	}
	id := res[0].ID
	t.Logf("revert %s: %s", id, body)
	if res[0].MAC != mac || res[0].PinnedTo != "A@1" {
		t.Errorf("revert result %+v, want MAC %s pinned to A@1 (the host's old image)", res[0], mac)
	}
	// The script the host's next PXE boot gets: A, with hn.revert=ID.
	code, script := l.labAPI(t, "GET", "/boot/"+mac+".ipxe", "", "")
	if code != 200 || !strings.Contains(script, "hn.revert="+id) || !strings.Contains(script, "/images/"+dA+"/") {
		t.Fatalf("iPXE script after the revert (%d) lacks hn.revert=%s or image A %s:\n%s", code, id, dA, script)
	}

	code, body = l.labAPI(t, "GET", "/api/hosts/"+mac+"/why", token, "")
	var why fleet.WhyReport
	if code != 200 || json.Unmarshal([]byte(body), &why) != nil {
		t.Fatalf("GET /api/hosts/%s/why: %d %s", mac, code, body)
	}
	if why.RevertPending == nil || why.RevertPending.ID != id || !strings.Contains(why.Text, "hn.revert="+id) {
		t.Errorf("why before the revert boot does not show revert %s pending:\n%s", id, why.Text)
	}

	// Boot 2: the kernel gets hn.revert=ID, the init reverts, A runs.
	con = pxeBoot("PA")
	wantConsole(t, con, "hn.revert="+id, "recording hn.revert="+id+" as applied", "action=revert", "checked in")
	line := l.waitLog(t, 30*time.Second, `kind=checkin `, macRe(mac), `revert_applied=`+regexp.QuoteMeta(id))
	if !strings.Contains(line, "booted="+dA) {
		t.Errorf("the revert boot's check-in does not report A booted:\n%s", line)
	}
	l.waitLog(t, 10*time.Second, `kind=http `, macRe(mac), `GET /images/`+regexp.QuoteMeta(dA)+`/vmlinuz 200`)

	// The server stops sending hn.revert once the host reported it.
	code, script = l.labAPI(t, "GET", "/boot/"+mac+".ipxe", "", "")
	if code != 200 || strings.Contains(script, "hn.revert") || !strings.Contains(script, "/images/"+dA+"/") {
		t.Errorf("iPXE script after the revert was applied (%d) still has hn.revert or is not A's:\n%s", code, script)
	}
	code, body = l.labAPI(t, "GET", "/api/hosts/"+mac+"/why", token, "")
	why = fleet.WhyReport{}
	if code != 200 || json.Unmarshal([]byte(body), &why) != nil {
		t.Fatalf("GET /api/hosts/%s/why: %d %s", mac, code, body)
	}
	if why.RevertPending != nil || !strings.Contains(why.Text, "applied revert "+id) || why.Current.Digest != dA {
		t.Errorf("why after the revert: pending %v, current %s, text:\n%s", why.RevertPending, why.Current.Digest, why.Text)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := l.ns.Command(ctx, f.Imaged, "fleet", "why", "--server", "http://"+labAdmin, "--token-file", tokens, mac).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "applied revert "+id) {
		t.Errorf("imaged fleet why %s: %v\n%s", mac, err, out)
	}
	t.Logf("imaged fleet why %s:\n%s", mac, out)

	// On the disk: A current, B broken, the ID recorded.
	err = WithHostpart(d, func(dir string) error {
		for name, want := range map[string]string{"hn-root.img": dA, "hn-root-broken.img": dB} {
			if got := fileDigest(t, filepath.Join(dir, name)); got != want {
				t.Errorf("%s is %s, want %s", name, got, want)
			}
		}
		b, err := os.ReadFile(filepath.Join(dir, ".hnboot", "reverts"))
		if err != nil || !strings.Contains(string(b), id) {
			t.Errorf(".hnboot/reverts = %q (%v), want it to hold %s", b, err, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("three PXE boots, revert and checks in %v", time.Since(start).Round(time.Second))
}
