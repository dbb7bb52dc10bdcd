package fleet

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/readme"
	"github.com/hnboot/hnboot/pxe"
)

// readmeBlock is the README example starting with first.
func readmeBlock(t *testing.T, first string) string {
	t.Helper()
	md, err := readme.Read()
	if err != nil {
		t.Fatal(err)
	}
	b, err := readme.Block(md, first)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readmeFleet writes the README's fleet directory and tokens file.
func readmeFleet(t *testing.T) (dir, tokens string) {
	t.Helper()
	dir, tokens = t.TempDir(), filepath.Join(t.TempDir(), "tokens")
	writeFile(t, filepath.Join(dir, "fleet.yaml"), readmeBlock(t, "# /etc/hnboot/fleet/fleet.yaml"))
	writeFile(t, tokens, readmeBlock(t, "# /etc/hnboot/tokens"))
	return dir, tokens
}

// The README's reference examples load with the real loaders and mean
// what the README says they mean.
func TestReadmeExamples(t *testing.T) {
	dir, tokens := readmeFleet(t)
	d, err := Load(dir)
	if err != nil {
		t.Fatalf("Load(README's fleet.yaml) = %v", err)
	}
	for _, c := range []struct{ host, want string }{
		{"web-07", "web@1"}, // group web → channel stable
		{"db-01", "web@2"},  // host channel canary over group image
	} {
		if got := d.HostImage(d.FindHost(c.host)).Ref(); got != c.want {
			t.Errorf("HostImage(%s) = %s, want %s", c.host, got, c.want)
		}
	}
	if got, want := d.Image("web@1").Path, filepath.Join(dir, "images/web-1.img"); got != want {
		t.Errorf("README's relative image path = %s, want %s", got, want)
	}
	if nw := d.EffectiveNetwork(d.FindHost("web-07")); len(nw.Addresses) != 1 || nw.Addresses[0] != "192.0.2.17/24" || len(nw.Gateway) != 1 || nw.Gateway[0] != "192.0.2.1" || len(nw.DNS) != 2 {
		t.Errorf("EffectiveNetwork(web-07) = %+v, want the host's ip and the group's gateway and dns", nw)
	}
	var members []string
	for _, h := range rolloutMembers(d, *d.Rollouts[0]) {
		members = append(members, h.Hostname)
	}
	if got := strings.Join(members, ","); got != "web-08" {
		t.Errorf("members of rollout web-2 at 0%% = %s, want web-08", got)
	}

	ts, err := readTokens(tokens)
	if err != nil {
		t.Fatalf("readTokens(README's tokens) = %v", err)
	}
	if got := strings.Join(ts.names, ","); got != "alice,ci" {
		t.Errorf("README's token names = %s, want alice,ci", got)
	}
}

// The README's HTTP table is the server's: every documented endpoint
// exists with the documented auth, and every endpoint registered in
// fleet and pxe is documented.
func TestReadmeHTTPTable(t *testing.T) {
	md, err := readme.Read()
	if err != nil {
		t.Fatal(err)
	}
	rows, err := readme.Table(md, "| method | path | auth |")
	if err != nil {
		t.Fatal(err)
	}
	dir, tokens := readmeFleet(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f, err := New(Options{Dir: dir, StatePath: filepath.Join(t.TempDir(), "fleet.db"), TokenFile: tokens, PollInterval: -1, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := pxe.NewHTTPHandler(pxe.HTTPConfig{Base: "http://imaged:8080"}, f, pxe.NewExtractor(t.TempDir()), nil, f, f.Checkin, f.Handler(), log, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()

	token := strings.Fields(readmeBlock(t, "# /etc/hnboot/tokens"))[4] // "# /etc/hnboot/tokens alice TOKEN"
	fill := strings.NewReplacer("{mac}", "52:54:00:12:34:56", "{host}", "web-07", "{digest}", f.Desired().Image("web@1").Digest,
		"{file}", "ipxe.efi", "=N", "=1")
	type route struct{ method, path string }
	var documented []route
	for _, r := range rows {
		method, p, auth := r[0], strings.Trim(r[1], "`"), r[2]
		documented = append(documented, route{method, strings.SplitN(p, "?", 2)[0]})
		t.Run(method+" "+p, func(t *testing.T) {
			do := func(tok string) (int, string) {
				var body io.Reader
				if method == "POST" {
					body = strings.NewReader("{}")
				}
				req, _ := http.NewRequest(method, srv.URL+fill.Replace(p), body)
				if tok != "" {
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			code, body := do(token)
			if code == http.StatusMethodNotAllowed || strings.Contains(body, "404 page not found") || strings.Contains(body, "no such endpoint") {
				t.Errorf("%s %s with a token = %d %q: no such endpoint, but the README documents it", method, p, code, body)
			}
			code, body = do("")
			if got, want := code == http.StatusUnauthorized, auth != "open"; got != want {
				t.Errorf("%s %s without a token = %d %q; the README says auth %q", method, p, code, body, auth)
			}
		})
	}

	registered := regexp.MustCompile(`HandleFunc\("([A-Z]+) (/[^"]*)"`)
	var files []string
	for _, g := range []string{"*.go", "../pxe/*.go"} {
		m, _ := filepath.Glob(g)
		files = append(files, m...)
	}
	seen := 0
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range registered.FindAllStringSubmatch(string(b), -1) {
			seen++
			pattern := regexp.MustCompile(`\{[a-z]+\}`).ReplaceAllString(m[2], "*")
			found := false
			for _, d := range documented {
				ok, _ := path.Match(pattern, d.path)
				found = found || (ok && d.method == m[1])
			}
			if !found {
				t.Errorf("%s registers %s %s, which the README's HTTP table does not document", file, m[1], m[2])
			}
		}
	}
	if seen == 0 {
		t.Errorf("found no routes registered in fleet and pxe: the pattern no longer finds them")
	}
}
