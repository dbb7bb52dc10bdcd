package checkin

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/digest"
	"golang.org/x/crypto/ssh"
)

var (
	dA = "sha256:" + strings.Repeat("a", 64)
	dB = "sha256:" + strings.Repeat("b", 64)
)

// testKey is the key in testdata/old-*.json (seed 0, 1, ..., 31).
func testKey(t *testing.T) (key, fp string) {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	pk, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed).Public())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))), ssh.FingerprintSHA256(pk)
}

func parseString(s string) (*Checkin, error) { return Parse(strings.NewReader(s)) }

// field is the field an error from Parse names, or "" for nil.
func errField(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Parse error %v (%T) is not a *checkin.Error", err, err)
	}
	return e.Field
}

// The bodies in testdata were marshalled by the code this package
// replaced: pxe/checkin.Report as the init filled it, agent.Report as the
// agent did. They still parse, and every field they carried survives a
// round trip through Checkin, except the agent's "stage" (never set, so
// always "") and the fingerprints (recomputed, here the same).
func TestParseOldBodies(t *testing.T) {
	key, fp := testKey(t)
	t0 := time.Date(2026, 1, 2, 12, 1, 3, 0, time.UTC)
	for _, tc := range []struct {
		file string
		want *Checkin
	}{
		{"old-init.json", &Checkin{
			MAC: "52:54:00:12:34:56", Hostname: "hn-525400123456", Source: SourceInit, Booted: dB, Action: "promote",
			Trial: true, TriesLeft: 2, Kernel: "6.1.0-18-amd64", UptimeSeconds: 3, Images: Slots{Current: dB, Old: dA},
			SSHHostKeys: []string{key}, Fingerprints: []string{fp}, Notes: []string{"promoted hn-root-new.img"},
			BootedImage: Image{File: "hn-root.img", Size: 32 << 20, Head: dB, Source: "computed"},
		}},
		{"old-agent.json", &Checkin{
			MAC: "52:54:00:12:34:56", Hostname: "web-07", Source: SourceAgent, Booted: dB, Trial: true, TriesLeft: 2,
			Kernel: "6.1.0-18-amd64", UptimeSeconds: 40, Images: Slots{Current: dB, Old: dA},
			FailedDigests: []string{dA}, SSHHostKeys: []string{key}, Fingerprints: []string{fp}, Notes: []string{"a note"},
			Failures: []Failure{{Digest: dA, Time: t0, Reason: "reverted (found as hn-root-broken.img)"}},
			Staging:  &Staging{Digest: dB, Image: "web 42", State: "staged", Done: 100, Total: 100},
			Health:   &Health{State: "pending", Reason: "settling", Last: []Observation{{Check: "unit sshd.service", OK: true, Detail: "active"}}},
			Pending:  []string{"trial boot: confirm after health checks"}, RebootPolicy: "window Sat,Sun 02:00-04:00",
			LastBoot: &Boot{Time: t0, Image: "hn-root.img", Action: "promote", Trial: true, TriesLeft: 2, Summary: "promote hn-root-new.img"},
			Services: []Service{{Name: "node-exporter", State: "running", PID: 312, Starts: 1, LastStart: t0}},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("Parse(%s) = %v, want nil", tc.file, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse(%s) =\n%+v\nwant\n%+v", tc.file, got, tc.want)
			}
			again, _ := json.Marshal(got)
			var sent, kept map[string]any
			json.Unmarshal(body, &sent)
			json.Unmarshal(again, &kept)
			delete(sent, "stage")
			if !reflect.DeepEqual(kept, sent) {
				t.Errorf("round trip of %s:\n got %s\nwant %s", tc.file, again, body)
			}
		})
	}
}

func TestParseCanonical(t *testing.T) {
	key, fp := testKey(t)
	for _, tc := range []struct {
		name, body string
		want       Checkin
	}{
		{"minimal", `{"mac":"52:54:00:00:00:01"}`, Checkin{MAC: "52:54:00:00:00:01", Source: SourceInit}},
		{"upper-case MAC with dashes", `{"mac":"52-54-00-AB-CD-EF","source":"agent"}`, Checkin{MAC: "52:54:00:ab:cd:ef", Source: SourceAgent}},
		{"key with comment, wrong fingerprint", `{"mac":"52:54:00:00:00:01","ssh_host_keys":["` + key + ` root@web-07"],"ssh_host_key_fingerprints":["SHA256:forged"]}`,
			Checkin{MAC: "52:54:00:00:00:01", Source: SourceInit, SSHHostKeys: []string{key}, Fingerprints: []string{fp}}},
		{"fingerprints without keys", `{"mac":"52:54:00:00:00:01","ssh_host_key_fingerprints":["SHA256:x"]}`, Checkin{MAC: "52:54:00:00:00:01", Source: SourceInit}},
		{"unknown fields", `{"mac":"52:54:00:00:00:01","stage":"agent","revert_id":"","future":{"x":1}}`, Checkin{MAC: "52:54:00:00:00:01", Source: SourceInit}},
		{"unknown action, multi-line note", `{"mac":"52:54:00:00:00:01","action":"Action(7)","notes":["line 1\n\tline 2"]}`,
			Checkin{MAC: "52:54:00:00:00:01", Source: SourceInit, Action: "Action(7)", Notes: []string{"line 1\n\tline 2"}}},
		{"unicode text", `{"mac":"52:54:00:00:00:01","rebooting":"Größe — 更新 ✓ �"}`, Checkin{MAC: "52:54:00:00:00:01", Source: SourceInit, Rebooting: "Größe — 更新 ✓ �"}},
	} {
		got, err := parseString(tc.body)
		if err != nil {
			t.Errorf("Parse(%s) = %v, want nil", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(*got, tc.want) {
			t.Errorf("Parse(%s) = %+v, want %+v", tc.name, *got, tc.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	key, _ := testKey(t)
	const mac = `"mac":"52:54:00:00:00:01"`
	long := func(n int) string { return strings.Repeat("x", n) }
	many := func(n int, item string) string { return strings.TrimSuffix(strings.Repeat(item+",", n), ",") }
	for _, tc := range []struct {
		name, body, field string
	}{
		{"not JSON", `mac=1`, "body"},
		{"a string", `"refuse"`, "body"},
		{"trailing garbage", `{` + mac + `} {}`, "body"},
		{"oversize", `{` + mac + `,"notes":["` + long(MaxBytes) + `"]}`, "body"},
		{"no mac", `{"booted":"` + dA + `"}`, "mac"},
		{"bad mac", `{"mac":"52:54:00:00:00"}`, "mac"},
		{"EUI-64 mac", `{"mac":"02:00:5e:10:00:00:00:01"}`, "mac"},
		{"mac not a string", `{"mac":5}`, "mac"},
		{"source", `{` + mac + `,"source":"cron"}`, "source"},
		{"hostname with space", `{` + mac + `,"hostname":"web 07"}`, "hostname"},
		{"hostname injecting known_hosts", `{` + mac + `,"hostname":"web-07,evil\nssh-rsa AAAA"}`, "hostname"},
		{"hostname too long", `{` + mac + `,"hostname":"` + long(254) + `"}`, "hostname"},
		{"booted upper-case hex", `{` + mac + `,"booted":"sha256:` + strings.Repeat("A", 64) + `"}`, "booted"},
		{"images.old short", `{` + mac + `,"images":{"old":"sha256:xyz"}}`, "images.old"},
		{"images.broken md5", `{` + mac + `,"images":{"broken":"md5:` + strings.Repeat("a", 32) + `"}}`, "images.broken"},
		{"booted_image.head", `{` + mac + `,"booted_image":{"head":"sha256:"}}`, "booted_image.head"},
		{"booted_image.size", `{` + mac + `,"booted_image":{"size":-1}}`, "booted_image.size"},
		{"failed digest empty", `{` + mac + `,"failed_digests":["` + dA + `",""]}`, "failed_digests[1]"},
		{"too many failed digests", `{` + mac + `,"failed_digests":[` + many(maxDigests+1, `"`+dA+`"`) + `]}`, "failed_digests"},
		{"failure digest", `{` + mac + `,"failures":[{"digest":"x"}]}`, "failures[0].digest"},
		{"staging digest", `{` + mac + `,"staging":{"digest":"sha256:1"}}`, "staging.digest"},
		{"staging done", `{` + mac + `,"staging":{"done":-5}}`, "staging.done"},
		{"staging fetched negative", `{` + mac + `,"staging":{"fetched":-1}}`, "staging.fetched"},
		{"staging local chunks negative", `{` + mac + `,"staging":{"local_chunks":-3}}`, "staging.local_chunks"},
		{"staging mode with newline", `{` + mac + `,"staging":{"mode":"delta\nfake"}}`, "staging.mode"},
		{"staging fallback with escape", `{` + mac + `,"staging":{"fallback":"\u001b[2J"}}`, "staging.fallback"},
		{"tries_left negative", `{` + mac + `,"tries_left":-1}`, "tries_left"},
		{"tries_left huge", `{` + mac + `,"tries_left":99999999}`, "tries_left"},
		{"tries_left a string", `{` + mac + `,"tries_left":"3"}`, "tries_left"},
		{"uptime negative", `{` + mac + `,"uptime_seconds":-1}`, "uptime_seconds"},
		{"action with space", `{` + mac + `,"action":"pro mote"}`, "action"},
		{"revert ID with newline", `{` + mac + `,"revert_applied":"r1\nr2"}`, "revert_applied"},
		{"revert ID too long", `{` + mac + `,"revert_applied":"` + long(maxWord+1) + `"}`, "revert_applied"},
		{"kernel with escape", `{` + mac + `,"kernel":"6.1\u001b[2J"}`, "kernel"},
		{"kernel with newline", `{` + mac + `,"kernel":"6.1\nfake log line"}`, "kernel"},
		{"kernel too long", `{` + mac + `,"kernel":"` + long(maxLine+1) + `"}`, "kernel"},
		{"note clearing the screen", `{` + mac + `,"notes":["ok","\u001b[2J\u001b[H"]}`, "notes[1]"},
		{"note reversing text", `{` + mac + `,"notes":["gnp.\u202etxt"]}`, "notes[0]"},
		{"note with NUL", `{` + mac + `,"notes":["a\u0000b"]}`, "notes[0]"},
		{"note with line separator", `{` + mac + `,"notes":["a\u2028b"]}`, "notes[0]"},
		{"note too long", `{` + mac + `,"notes":["` + long(maxText+1) + `"]}`, "notes[0]"},
		{"too many notes", `{` + mac + `,"notes":[` + many(maxList+1, `"n"`) + `]}`, "notes"},
		{"pending with CR", `{` + mac + `,"pending":["a\rb"]}`, "pending[0]"},
		{"reboot policy multi-line", `{` + mac + `,"reboot_policy":"never\nimmediate"}`, "reboot_policy"},
		{"health state", `{` + mac + `,"health":{"state":"all good"}}`, "health.state"},
		{"health detail with bell", `{` + mac + `,"health":{"state":"failed","last":[{"check":"c","detail":"\u0007"}]}}`, "health.last[0].detail"},
		{"service name with newline", `{` + mac + `,"services":[{"name":"a\nb","state":"running"}]}`, "services[0].name"},
		{"service state", `{` + mac + `,"services":[{"name":"a","state":"running\t"}]}`, "services[0].state"},
		{"too many problems", `{` + mac + `,"last_boot":{"problems":[` + many(maxProblems+1, `"p"`) + `]}}`, "last_boot.problems"},
		{"bad key", `{` + mac + `,"ssh_host_keys":["ssh-ed25519 nope"]}`, "ssh_host_keys[0]"},
		{"key with options", `{` + mac + `,"ssh_host_keys":["` + key + `","command=\"/bin/sh\" ` + key + `"]}`, "ssh_host_keys[1]"},
		{"two keys in one", `{` + mac + `,"ssh_host_keys":["` + key + `\n` + key + `"]}`, "ssh_host_keys[0]"},
		{"garbage line before a key", `{` + mac + `,"ssh_host_keys":["garbage\n` + key + `"]}`, "ssh_host_keys[0]"},
		{"too many keys", `{` + mac + `,"ssh_host_keys":[` + many(maxKeys+1, `"`+key+`"`) + `]}`, "ssh_host_keys"},
		{"facts: disk model with escape", `{` + mac + `,"facts":{"disks":[{"name":"sda","model":"\u001b[2J","size_bytes":1}]}}`, "facts.disks[0].model"},
		{"facts: disk name with slash space", `{` + mac + `,"facts":{"disks":[{"name":"sd a","size_bytes":1}]}}`, "facts.disks[0].name"},
		{"facts: negative disk size", `{` + mac + `,"facts":{"disks":[{"name":"sda","size_bytes":-1}]}}`, "facts.disks[0].size_bytes"},
		{"facts: NIC MAC", `{` + mac + `,"facts":{"nics":[{"name":"eno1","mac":"nope","link":true}]}}`, "facts.nics[0].mac"},
		{"facts: LLDP system name with newline", `{` + mac + `,"facts":{"nics":[{"name":"eno1","link":true,"lldp":{"system_name":"leaf\nfake log"}}]}}`, "facts.nics[0].lldp.system_name"},
		{"facts: LLDP VLAN", `{` + mac + `,"facts":{"nics":[{"name":"eno1","link":true,"lldp":{"vlan":5000}}]}}`, "facts.nics[0].lldp"},
		{"facts: too many NICs", `{` + mac + `,"facts":{"nics":[` + many(maxNICs+1, `{"name":"e","link":true}`) + `]}}`, "facts.nics"},
		{"facts: cpu count", `{` + mac + `,"facts":{"cpu":{"count":-2}}}`, "facts.cpu.count"},
	} {
		c, err := parseString(tc.body)
		if got := errField(t, err); got != tc.field {
			t.Errorf("Parse(%s) = %v, %v; want an error naming %s", tc.name, c, err, tc.field)
		}
	}
}

// Error messages name the host and the field, and quote only a short,
// escaped piece of what was sent.
func TestErrorMessage(t *testing.T) {
	_, err := parseString(`{"mac":"52:54:00:00:00:01","kernel":"\u001b[2J` + strings.Repeat("k", 200) + `"}`)
	const want = `check-in from 52:54:00:00:00:01: kernel: "\x1b[2J`
	if err == nil || !strings.HasPrefix(err.Error(), want) || strings.ContainsRune(err.Error(), 0x1b) || len(err.Error()) > 200 {
		t.Errorf("Parse(hostile kernel) error = %q, want it to start with %q, escaped and short", err, want)
	}
	_, err = parseString(`{"booted":"x"}`)
	if got, want := err.Error(), "check-in: mac: missing"; got != want {
		t.Errorf("Parse(no mac) error = %q, want %q", got, want)
	}
	_, err = parseString(`{"mac":"52:54:00:00:00:01","notes":["` + strings.Repeat("x", MaxBytes) + `"]}`)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("Parse(oversize) = %v, want ErrTooLarge", err)
	}
}

func TestParseForTransportMAC(t *testing.T) {
	transport := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x02}
	for _, tc := range []struct {
		body      string
		transport net.HardwareAddr
		want      string // MAC, or "error"
	}{
		{`{"booted":"` + dA + `"}`, transport, "52:54:00:00:00:02"},
		{`{}`, transport, "52:54:00:00:00:02"},
		{`{"mac":"52:54:00:00:00:01"}`, transport, "52:54:00:00:00:01"}, // the host knows its NIC
		{`{"mac":"nonsense"}`, transport, "error"},                      // a bad MAC is not papered over
		{`{}`, nil, "error"},
	} {
		c, err := ParseFor(strings.NewReader(tc.body), tc.transport)
		got := "error"
		if err == nil {
			got = c.MAC
		}
		if got != tc.want {
			t.Errorf("ParseFor(%s, %v) = %s (%v), want %s", tc.body, tc.transport, got, err, tc.want)
		}
	}
}

func TestTidyText(t *testing.T) {
	for _, tc := range []struct {
		in        string
		multiline bool
		max       int
		want      string
	}{
		{"plain", false, 10, "plain"},
		{"a\nb\tc", false, 10, "a b c"},
		{"a\r\nb\tc", true, 10, "a\nb\tc"},
		{"\x1b[2J", true, 10, "\uFFFD[2J"},
		{"a\u202eb", false, 10, "a\uFFFDb"},
		{"0123456789abc", false, 10, "0123456…"},
		{"ééééé", false, 8, "éé…"}, // cut on a rune boundary
	} {
		if got := tidyText(tc.in, tc.multiline, tc.max); got != tc.want {
			t.Errorf("tidyText(%q, %v, %d) = %q, want %q", tc.in, tc.multiline, tc.max, got, tc.want)
		}
		if got := tidyText(tc.in, tc.multiline, tc.max); checkText(got, tc.multiline, tc.max) != nil {
			t.Errorf("tidyText(%q) = %q, which checkText refuses: %v", tc.in, got, checkText(got, tc.multiline, tc.max))
		}
	}
}

// A sender's own odd text, tidied, passes Parse.
func TestTidyPasses(t *testing.T) {
	proxyPage := "<html>\r\n<title>502 Bad Gateway</title>\x1b" + strings.Repeat("<p>gateway</p>\r\n", 500)
	c := &Checkin{
		MAC: "52:54:00:00:00:01", Source: SourceAgent, Kernel: "6.1\n",
		Notes:    append(make([]string, maxList+5), "cannot ask the server for the desired state: GET /api: 502: "+proxyPage),
		Staging:  &Staging{State: "failed", Error: proxyPage},
		Health:   &Health{State: "failed", Reason: proxyPage, Last: []Observation{{Check: "command db\tping", Detail: proxyPage}}},
		LastBoot: &Boot{Problems: make([]string, 40), Summary: proxyPage},
		Services: []Service{{Name: "svc", State: "backoff", LastExit: proxyPage}},
	}
	if _, err := Parse(bytes.NewReader(mustMarshal(t, c))); err == nil {
		t.Fatalf("Parse(untidy) = nil, want an error (the test checks nothing otherwise)")
	}
	c.Tidy()
	if _, err := Parse(bytes.NewReader(mustMarshal(t, c))); err != nil {
		t.Errorf("Parse(tidied) = %v, want nil", err)
	}
	if len(c.Notes) != maxList || len(c.LastBoot.Problems) != maxProblems {
		t.Errorf("tidied lists: %d notes, %d problems; want %d, %d", len(c.Notes), len(c.LastBoot.Problems), maxList, maxProblems)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestValidDigest(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{dA, true},
		{"sha256:" + strings.Repeat("0123456789abcdef", 4), true},
		{"", false},
		{"sha256:", false},
		{"sha256:" + strings.Repeat("a", 63), false},
		{"sha256:" + strings.Repeat("a", 65), false},
		{"sha256:" + strings.Repeat("A", 64), false},
		{"sha256:" + strings.Repeat("g", 64), false},
		{"SHA256:" + strings.Repeat("a", 64), false},
		{"sha512:" + strings.Repeat("a", 64), false},
	} {
		if got := digest.Valid(tc.in); got != tc.want {
			t.Errorf("digest.Valid(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
