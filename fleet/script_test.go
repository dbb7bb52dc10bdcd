package fleet

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/pxe"
)

// The iPXE script is written by pxe.Script from what the fleet answers
// (Lookup); this golden pins the whole script each host of the example
// fleet gets, so a change to groups, channels, rollouts or reverts that
// alters a boot shows up as a diff of testdata/golden/scripts.txt.
var update = flag.Bool("update", false, "rewrite testdata/golden from the current output (review the diff before committing)")

func TestScriptsFromExampleFleet(t *testing.T) {
	e := newEnv(t, false)
	var b strings.Builder
	b.WriteString("# The iPXE script of each host of testdata/example (TestScriptsFromExampleFleet), --cmdline console=ttyS0.\n")
	script := func(doc, mac string) {
		hb, known := e.f.Lookup(mustMAC(mac))
		fmt.Fprintf(&b, "\n## %s: %s, known=%v\n", doc, mac, known)
		if !known && hb.Image.Digest == "" {
			b.WriteString("(no script: unknown MAC and no default image)\n")
			return
		}
		b.WriteString(pxe.Script(pxe.ScriptInput{Base: "http://10.0.0.1:8080", Host: hb, Cmdline: "console=ttyS0"}))
	}
	for _, h := range []struct{ doc, mac string }{
		{"web-01 (group web, channel stable)", "52:54:00:00:00:01"},
		{"web-02", "52:54:00:00:00:02"},
		{"web-03", "52:54:00:00:00:03"},
		{"web-04 (named by the canary rollout, at 0 %)", "52:54:00:00:00:04"},
		{"db-01 (its own image base@1.3 over the group's)", "52:54:00:00:00:10"},
		{"a MAC not in the fleet", "52:54:00:00:00:99"},
	} {
		script(h.doc, h.mac)
	}
	// A fleet revert pins the host to the old image it reported and puts
	// hn.revert=ID on its next boot; the ID is new each time, so the
	// golden names it <revert-id>.
	if code, body := e.call(t, "POST", "/api/checkin", "", json.RawMessage(`{"mac":"52:54:00:00:00:10","booted":"`+d13+`","images":{"current":"`+d13+`","old":"`+d12+`"}}`)); code != 200 {
		t.Fatalf("POST /api/checkin = %d %s", code, body)
	}
	code, body := e.call(t, "POST", "/api/revert", aliceToken, map[string]string{"host": "db-01"})
	var res []RevertResult
	if err := json.Unmarshal(body, &res); code != 200 || err != nil || len(res) != 1 {
		t.Fatalf("POST /api/revert = %d %s", code, body)
	}
	before := b.Len()
	script("db-01 after a check-in (old image base@1.2) and a fleet revert", "52:54:00:00:00:10")
	got := b.String()[:before] + strings.ReplaceAll(b.String()[before:], res[0].ID, "<revert-id>")

	path := filepath.Join("testdata", "golden", "scripts.txt")
	if *update {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./fleet -run %s -update writes it)", err, t.Name())
	}
	if !bytes.Equal([]byte(got), want) {
		t.Errorf("scripts differ from %s; if meant, go test ./fleet -run %s -update and review the diff.\ngot:\n%s", path, t.Name(), got)
	}
}
