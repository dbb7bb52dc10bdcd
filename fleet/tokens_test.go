package fleet

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadTokens(t *testing.T) {
	for _, c := range []struct {
		name, file string
		want       string // names, or "error: " and a substring
	}{
		{"name and token", "alice 0123456789abcdef\n", "alice"},
		{"bare token is admin", "0123456789abcdef\n", "admin"},
		{"comments, blanks, spaces", "# tokens\n\n  ci\t0123456789abcdef  \nbob 0123456789abcdefXYZ\n", "ci,bob"},
		{"short token", "# x\nalice 0123456789abcde\n", "error: fleet: tokens:2: token of alice is shorter than 16 characters: make one with openssl rand -hex 16"},
		{"three fields", "alice 0123456789abcdef # note\n", "error: fleet: tokens:1: want NAME TOKEN or TOKEN (a # comment takes a line of its own)"},
		{"only comments", "# none yet\n", "error: fleet: tokens: no tokens"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "tokens")
			writeFile(t, p, c.file)
			ts, err := readTokens(p)
			got := ""
			if err != nil {
				got = "error: " + strings.ReplaceAll(err.Error(), dir+"/", "")
			} else {
				got = strings.Join(ts.names, ",")
			}
			if !strings.Contains(got, c.want) {
				t.Errorf("readTokens(%q) = %q, want %q", c.file, got, c.want)
			}
		})
	}
}

// A server started without --tokens refuses every admin call; the reply
// says why instead of blaming the client's token.
func TestAdminWithoutTokens(t *testing.T) {
	dir := copyExample(t)
	f, err := New(Options{Dir: dir, DB: "sqlite://" + filepath.Join(t.TempDir(), "fleet.db"), PollInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/api/revert", strings.NewReader(`{"host":"web-01"}`))
	req.Header.Set("Authorization", "Bearer 0123456789abcdef")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if want := "this server has no admin tokens: start imaged serve with --tokens FILE"; resp.StatusCode != 401 || !strings.Contains(string(b), want) {
		t.Errorf("POST /api/revert without a token file = %d %s, want 401 and %q", resp.StatusCode, b, want)
	}
}
