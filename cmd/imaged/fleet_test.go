package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/checkin"
)

const testToken = "ops-0123456789abcdef"

func fleetServer(t *testing.T) (url, tokenFile string, f *fleet.Fleet) {
	t.Helper()
	dir := t.TempDir()
	src := "../../fleet/testdata/example"
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644)
	}
	tokenFile = filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("ops "+testToken+"\n"), 0o600)
	f, err = fleet.New(fleet.Options{Dir: dir, DB: "sqlite://" + filepath.Join(t.TempDir(), "fleet.db"), TokenFile: tokenFile, PollInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(func() { srv.Close(); f.Close() })
	return srv.URL, tokenFile, f
}

func TestFleetCLI(t *testing.T) {
	url, tok, f := fleetServer(t)
	const d12 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	const d13 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	c, err := checkin.Parse(strings.NewReader(`{"mac":"52:54:00:00:00:10","booted":"` + d13 + `","trial":true,"tries_left":2,"images":{"current":"` + d13 + `","old":"` + d12 + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Checkin(c); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want []string // substrings of the output, or of the error with "error: "
	}{
		{[]string{"status"}, []string{"error: imaged: fleet: GET /api/status: 401 Unauthorized: missing or wrong bearer token"}},
		{[]string{"status", "--token-file", tok}, []string{"HOST", "db-01   52:54:00:00:00:10  db     base@1.3  base@1.3  trial (2 tries left)", "web-02", "never-seen"}},
		{[]string{"assign", "--host", "web-01", "base@1.3", "--token-file", tok}, []string{"host web-01: assigned base@1.3"}},
		{[]string{"assign", "web", "base@1.2", "--token-file", tok}, []string{"group web: assigned base@1.2"}},
		{[]string{"assign", "--token-file", tok, "52:54:00:00:00:02", "base@1.3"}, []string{"host 52:54:00:00:00:02: assigned base@1.3"}},
		{[]string{"assign", "web-02", "--clear", "--token-file", tok}, []string{"host web-02: override cleared"}},
		{[]string{"assign", "nope", "base@1.3", "--token-file", tok}, []string{`unknown host or group "nope"`}},
		{[]string{"assign", "--host", "web-01", "base@7", "--token-file", tok}, []string{`error: imaged: fleet: POST /api/assign: 400 Bad Request: unknown image "base@7"`}},
		{[]string{"revert", "db-01", "--token-file", tok}, []string{"db-01  52:54:00:00:00:10  r", "base@1.2", "hn.revert=ID"}},
		{[]string{"revert", "--all", "db-01", "--token-file", tok}, []string{"error: ", "--all is every host"}},
		{[]string{"rollout", "--name", "c", "--image", "base@1.3", "--group", "web", "--percent", "50", "--token-file", tok}, []string{"rollout c: base@1.3 at 50%"}},
		{[]string{"rollout", "--token-file", tok}, []string{"ROLLOUT", "c ", "50%", "api", "canary-1.3"}},
		{[]string{"why", "db-01", "--token-file", tok}, []string{"db-01 (52:54:00:00:00:10, group db): state revert-pending", "should run base@1.2"}},
		{[]string{"known-hosts", "--token-file", tok}, []string{"# ssh_known_hosts from hnboot check-ins"}},
		{[]string{"audit", "--token-file", tok}, []string{"ops", "assign", "revert", "rollout"}},
		{[]string{"audit", "--action", "revert", "--host", "52:54:00:00:00:10", "--actor", "ops", "--since", "1h", "--token-file", tok}, []string{"ops  revert  db-01 52:54:00:00:00:10  revert r"}},
		{[]string{"audit", "--host", "web-01", "--token-file", tok}, []string{"ops  assign  host web-01  image base@1.3\n"}},
		{[]string{"audit", "--since", "yesterday", "--token-file", tok}, []string{`400 Bad Request: since: "yesterday": want RFC 3339`}},
		{[]string{"revert", "--all", "--token-file", tok}, []string{"web-01  52:54:00:00:00:01", "web-04  52:54:00:00:00:04", "db-01   52:54:00:00:00:10"}},
		{[]string{"bogus", "--token-file", tok}, []string{`error: imaged fleet: unknown command "bogus"`}},
	} {
		args := append([]string{"fleet", c.args[0], "--server", url}, c.args[1:]...)
		got, stderr, code := imaged(args...)
		if code != 0 {
			got = "error: " + stderr
		}
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("imaged %s = %q, want it to contain %q", strings.Join(c.args, " "), got, w)
			}
		}
	}
	out, stderr, code := imaged("fleet", "status", "--json", "--server", url, "--token-file", tok)
	if code != 0 {
		t.Fatal(stderr)
	}
	var st fleet.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Hosts) != 5 {
		t.Errorf("imaged fleet status --json = %v, %d hosts, want JSON with 5 hosts", err, len(st.Hosts))
	}
}

// Without --db the database is SQLite at --observed, where an older
// imaged kept its JSON-lines store: that store is imported and renamed
// aside.
func TestServeDBDefaultImportsOldStore(t *testing.T) {
	dir := t.TempDir()
	src := "../../fleet/testdata/example"
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644)
	}
	observed := filepath.Join(t.TempDir(), "lib", "fleet.db")
	os.MkdirAll(filepath.Dir(observed), 0o755)
	old, err := os.ReadFile("../../fleet/testdata/oldstore/fleet.db")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(observed, old, 0o600)
	f := &serveFlags{state: dir, observed: observed, mode: "off", keepBoots: 10}
	cfg, cleanup, _, _, err := serveConfig(f, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	fl := cfg.Directory.(*fleet.Fleet)
	if st := fl.Status(); st.Database.Backend != "sqlite" || st.Database.Where != observed || len(fl.Audit(0)) != 6 {
		t.Errorf("database %+v with %d audit entries, want SQLite at %s with the old store's 6", st.Database, len(fl.Audit(0)), observed)
	}
	if _, err := os.Stat(observed + fleet.OldStoreSuffix); err != nil {
		t.Errorf("old store not renamed aside: %v", err)
	}
}

func TestStagingText(t *testing.T) {
	for _, c := range []struct {
		s    checkin.Staging
		want string
	}{
		{checkin.Staging{Image: "web 2", State: "staged", Mode: "delta", Local: 900 << 20, Fetched: 30 << 20, Chunks: 1000, LocalChunks: 950, FetchedChunks: 50, TookMS: 4200},
			"web 2 staged by delta: 900 MiB (950 of 1000 chunks) from the host's images, 30 MiB (50 chunks) fetched, in 4.2s"},
		{checkin.Staging{Image: "web 2", State: "staged", Mode: "full", Fetched: 1 << 30, Fallback: "the manifest names no chunk index"},
			"web 2 staged, downloaded whole: 1.0 GiB (not by delta: the manifest names no chunk index)"},
		{checkin.Staging{State: "failed", Mode: "delta", Reused: 1 << 20, Error: "connection reset"},
			"- failed by delta: 0 B (0 of 0 chunks) from the host's images, 0 B (0 chunks) fetched, 1.0 MiB resumed: connection reset"},
	} {
		if got := stagingText(&c.s); got != c.want {
			t.Errorf("stagingText(%+v) = %q, want %q", c.s, got, c.want)
		}
	}
}
