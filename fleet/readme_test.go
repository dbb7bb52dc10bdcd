package fleet

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/hostconfig"
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
	// What the README shows web-07 and osd-01 get.
	h := d.FindHost("web-07")
	c, problems := d.HostConfig(h, d.HostImage(h))
	if len(problems) > 0 {
		t.Fatalf("HostConfig(web-07) problems %q", problems)
	}
	main := hostconfig.Networkd(c.Network)
	unit := main[len(main)-1].Content
	unit = unit[strings.Index(unit, "\n")+1:] // hnboot's comment line
	if want := dropFirstLine(readmeBlock(t, "# /etc/systemd/network/10-hnboot.network on web-07")); unit != want {
		t.Errorf("web-07's 10-hnboot.network =\n%s\nthe README says\n%s", unit, want)
	}
	if len(c.Files) != 1 || c.Files[0].Content != dropFirstLine(readmeBlock(t, "# /etc/puppetlabs/puppet/puppet.conf on web-07")) {
		t.Errorf("web-07's files = %+v, want the README's puppet.conf", c.Files)
	}
	h = d.FindHost("osd-01")
	c, problems = d.HostConfig(h, d.HostImage(h))
	n := c.Network
	if len(problems) > 0 || n.Bond == nil || n.Bond.BondName() != "bond0" || n.Bond.Mode != "802.3ad" || n.VLAN == nil || n.VLAN.ID != 120 || n.MTU != 9000 ||
		strings.Join(n.Addresses, " ") != "10.20.0.11/24" || strings.Join(n.Gateway, " ") != "10.20.0.1" ||
		len(c.Files) != 1 || c.Files[0].Mode != "0640" || c.Files[0].Owner != "root:ceph" || c.Files[0].Content != "osd id = 1\npublic addr = 10.20.0.11\n" {
		t.Errorf("HostConfig(osd-01) = %+v, %q; want what the README says", c, problems)
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

func dropFirstLine(s string) string { return s[strings.Index(s, "\n")+1:] }

// The README's tables of network: keys, files: keys and template fields
// are the loader's and TemplateData's, no more and no less.
func TestReadmeHostConfigTables(t *testing.T) {
	md, err := readme.Read()
	if err != nil {
		t.Fatal(err)
	}
	fieldNames := func(t reflect.Type, prefix string) []string {
		var out []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			switch {
			case f.Type.Kind() == reflect.Struct:
				for j := 0; j < f.Type.NumField(); j++ {
					out = append(out, prefix+f.Name+"."+f.Type.Field(j).Name)
				}
			case f.Name == "Identity":
				out = append(out, ".Identity.KEY")
			default:
				out = append(out, prefix+f.Name)
			}
		}
		return out
	}
	for _, c := range []struct {
		header string
		want   []string
	}{
		{"| `network` key |", networkKeys},
		{"| `files` key |", fileKeys},
		{"| template field |", fieldNames(reflect.TypeOf(TemplateData{}), ".")},
	} {
		rows, err := readme.Table(md, c.header)
		if err != nil {
			t.Fatal(err)
		}
		var documented []string
		for _, r := range rows {
			for _, k := range strings.Split(r[0], ",") {
				documented = append(documented, strings.Trim(strings.TrimSpace(k), "`"))
			}
			// "`addresses` ... `address` and the older `ip` are the same key"
			for _, alias := range []string{"`address`", "`ip`"} {
				if strings.Contains(r[1], alias+" and") || strings.Contains(r[1], "older "+alias) {
					documented = append(documented, strings.Trim(alias, "`"))
				}
			}
		}
		sort.Strings(documented)
		want := append([]string(nil), c.want...)
		sort.Strings(want)
		if strings.Join(documented, " ") != strings.Join(want, " ") {
			t.Errorf("README table %s documents %q, the code has %q", c.header, documented, want)
		}
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
	f, err := New(Options{Dir: dir, DB: "sqlite://" + filepath.Join(t.TempDir(), "fleet.db"), TokenFile: tokens, PollInterval: -1, Logger: log})
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

// The README's worked rollout loads beside its fleet directory and means
// what the README says: web-08 first, alone, and a window in Berlin time.
func TestReadmeRollout(t *testing.T) {
	dir, _ := readmeFleet(t)
	writeFile(t, filepath.Join(dir, "rollout-web-2.yaml"), readmeBlock(t, "# /etc/hnboot/fleet/rollout-web-2.yaml"))
	d, err := Load(dir)
	if err != nil {
		t.Fatalf("Load(README's fleet and rollout) = %v", err)
	}
	var r *Rollout
	for _, x := range d.Rollouts {
		if x.Name == "web-2-waves" {
			r = x
		}
	}
	if r == nil || !r.IsAuto() {
		t.Fatalf("README's rollout web-2-waves not loaded as a rollout with waves: %+v", d.Rollouts)
	}
	spec, err := d.rolloutSpec(r, d.Image(r.Image).Digest)
	if err != nil {
		t.Fatal(err)
	}
	plan := spec.Plan(d.rolloutTarget(r))
	if w, ok := plan[d.FindHost("web-08").MAC.String()]; !ok || w != 0 || len(spec.Waves) != 4 || spec.MaxRebooting != 5 || !spec.Revert {
		t.Errorf("README's rollout: plan %v, spec %+v; want web-08 in wave 1 of 4", plan, spec)
	}
	if got := spec.Window.String(); got != "Sun,Sat 01:00-05:00 Europe/Berlin" {
		t.Errorf("window %q", got)
	}
}
