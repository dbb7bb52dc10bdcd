package pxe

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// The packets of real clients in testdata/captures (how each was made:
// its README and testvm/capturedhcp) replayed through the decision, and
// the whole of every reply compared with testdata/golden/dhcp/replay.

// The lab the captures come from: its server address is in the clients'
// REQUESTs (option 54), so the replay serves as that server.
var (
	labServerIP = net.IPv4(10, 77, 0, 1).To4()
	labBase     = "http://10.77.0.1:8080"
	// Where a boot-server (4011) client would ask from: the captured
	// clients did not use 4011, so the replay there needs a source.
	labBootPeer = &net.UDPAddr{IP: net.IPv4(10, 77, 0, 60), Port: dhcpv4.ClientPort}
)

// captured is one capture file.
type captured struct {
	name      string // file name
	kind, typ string // from NAME.KIND.TYPE[-PORT].bin
	raw       []byte
}

// Order of a client's packets in time: firmware first, then what it
// chain-loaded; DISCOVER before REQUEST.
var (
	kindOrder = map[string]int{"firmware": 0, "httpclient": 1, "ipxe": 2, "undionly": 3}
	typeOrder = map[string]int{"discover": 0, "request": 1}
)

// loadCaptures returns the captures by scenario, each in the order the
// client sent them.
func loadCaptures(t *testing.T) map[string][]captured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "captures", "*.bin"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no captures in testdata/captures (%v): go run ./testvm/capturedhcp makes them", err)
	}
	out := map[string][]captured{}
	for _, f := range files {
		base := filepath.Base(f)
		parts := strings.Split(strings.TrimSuffix(base, ".bin"), ".")
		if len(parts) != 3 {
			t.Fatalf("%s: want NAME.KIND.TYPE.bin", f)
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[parts[0]] = append(out[parts[0]], captured{name: base, kind: parts[1], typ: parts[2], raw: raw})
	}
	for _, cs := range out {
		sort.Slice(cs, func(i, j int) bool {
			if kindOrder[cs[i].kind] != kindOrder[cs[j].kind] {
				return kindOrder[cs[i].kind] < kindOrder[cs[j].kind]
			}
			return typeOrder[cs[i].typ] < typeOrder[cs[j].typ]
		})
	}
	return out
}

// rewriteMAC puts mac in place of the capture's own MAC (chaddr) wherever
// those six bytes occur: chaddr and, for iPXE, option 61 (client
// identifier 01 + MAC). It returns how many places changed.
func rewriteMAC(raw []byte, mac net.HardwareAddr) ([]byte, int) {
	if len(raw) < 34 {
		return raw, 0
	}
	old := append([]byte(nil), raw[28:34]...)
	return bytes.ReplaceAll(raw, old, mac), bytes.Count(raw, old)
}

func places(n int) string {
	if n == 1 {
		return "1 place"
	}
	return fmt.Sprintf("%d places", n)
}

// replayClient is who the capture is made to be.
type replayClient struct {
	doc   string
	mac   net.HardwareAddr
	allow bool // --allow-unknown, with a default image
}

var replayClients = []replayClient{
	{"known host " + knownMAC.String() + " (web-1, image A)", knownMAC, false},
	{"unknown MAC " + unknownMAC.String() + " without --allow-unknown", unknownMAC, false},
	{"unknown MAC " + unknownMAC.String() + " with --allow-unknown and a default image", unknownMAC, true},
}

// replayConfig is a server as in the capture lab, with a fresh pool.
func replayConfig(t *testing.T, mode string, allow bool) (*DHCPConfig, *StaticDirectory) {
	t.Helper()
	dir := testDir()
	if allow {
		dir.SetDefault(HostBoot{Image: imgA})
	}
	cfg := &DHCPConfig{Mode: mode, ServerIP: labServerIP, HTTPBase: labBase, AllowUnknown: allow}
	if mode == ModeFull {
		p, err := ParsePool("10.77.0.100-10.77.0.150", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Pool, cfg.Netmask, cfg.Router, cfg.DNS, cfg.LeaseTime = p, net.CIDRMask(24, 32), []net.IP{labServerIP}, []net.IP{labServerIP}, time.Hour
	}
	return cfg, dir
}

// wantBootFile is what a client of this kind and architecture must be
// told to load, checked apart from the goldens so that an -update cannot
// bless a wrong boot file unnoticed.
func wantBootFile(req *dhcpv4.DHCPv4) string {
	if isIPXE(req) {
		return labBase + "/boot/" + req.ClientHWAddr.String() + ".ipxe"
	}
	if strings.HasPrefix(req.ClassIdentifier(), "HTTPClient") {
		return labBase + "/ipxe/" + FileEFI64
	}
	if a := req.ClientArch(); len(a) > 0 && a[0] == iana.INTEL_X86PC {
		return FileBIOS
	}
	return FileEFI64
}

func TestReplayCaptures(t *testing.T) {
	scenarios := loadCaptures(t)
	names := make([]string, 0, len(scenarios))
	for n := range scenarios {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, mode := range []string{ModeProxy, ModeFull} {
			t.Run(name+"/"+mode, func(t *testing.T) {
				var b strings.Builder
				fmt.Fprintf(&b, "# testdata/captures/%s.*, replayed in order through the %s-mode decision as server %v.\n", name, mode, labServerIP)
				fmt.Fprintf(&b, "# The capture's MAC is rewritten to the client's below (chaddr and option 61).\n")
				if mode == ModeProxy {
					fmt.Fprintf(&b, "# Each REQUEST is replayed on :4011 too, from %v: where a PXE client asks a proxyDHCP server.\n", labBootPeer)
				}
				for _, cl := range replayClients {
					fmt.Fprintf(&b, "\n## %s\n", cl.doc)
					cfg, dir := replayConfig(t, mode, cl.allow)
					for _, c := range scenarios[name] {
						raw, n := rewriteMAC(c.raw, cl.mac)
						req, err := dhcpv4.FromBytes(raw)
						if err != nil {
							t.Fatalf("%s: %v", c.name, err)
						}
						dumpRequest(&b, fmt.Sprintf("%s (its MAC replaced in %s) on :67", c.name, places(n)), req)
						resp, reason := Reply(req, cfg, dir)
						checkReply(t, c.name, req, resp, reason, cfg, cl)
						dumpReply(&b, resp, reason, replyAddr(req, &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}, false))
						if mode == ModeProxy && req.MessageType() == dhcpv4.MessageTypeRequest {
							fmt.Fprintf(&b, "> the same on :4011\n")
							resp, reason := ReplyBootServer(req, cfg, dir)
							checkReply(t, c.name+" on :4011", req, resp, reason, cfg, cl)
							dumpReply(&b, resp, reason, replyAddr(req, labBootPeer, true))
						}
					}
				}
				golden(t, "dhcp/replay/"+name+"."+mode+".txt", []byte(b.String()))
			})
		}
	}
}

// checkReply holds the rules no golden update may break.
func checkReply(t *testing.T, label string, req, resp *dhcpv4.DHCPv4, reason string, cfg *DHCPConfig, cl replayClient) {
	t.Helper()
	if resp == nil {
		if reason == "" {
			t.Errorf("%s: silent without a reason", label)
		}
		// A known client's DISCOVER is always answered, in both modes.
		if req.MessageType() == dhcpv4.MessageTypeDiscover && (cl.mac.String() == knownMAC.String() || cl.allow) {
			t.Errorf("%s: DISCOVER of a served client unanswered: %s", label, reason)
		}
		return
	}
	if cl.mac.String() == unknownMAC.String() && !cl.allow {
		t.Errorf("%s: answered an unknown MAC without --allow-unknown: %s", label, reason)
	}
	if resp.TransactionID != req.TransactionID || resp.ClientHWAddr.String() != req.ClientHWAddr.String() {
		t.Errorf("%s: reply xid/chaddr %v/%v, want the request's %v/%v", label, resp.TransactionID, resp.ClientHWAddr, req.TransactionID, req.ClientHWAddr)
	}
	if !resp.ServerIdentifier().Equal(cfg.ServerIP) {
		t.Errorf("%s: option 54 = %v, want %v", label, resp.ServerIdentifier(), cfg.ServerIP)
	}
	if cfg.Mode == ModeProxy && !resp.YourIPAddr.IsUnspecified() {
		t.Errorf("%s: proxyDHCP offered an address %v", label, resp.YourIPAddr)
	}
	if resp.MessageType() == dhcpv4.MessageTypeNak {
		return
	}
	if want := wantBootFile(req); resp.BootFileName != want || resp.BootFileNameOption() != want {
		t.Errorf("%s: boot file %q / option 67 %q, want %q", label, resp.BootFileName, resp.BootFileNameOption(), want)
	}
}

// The captures are FuzzDHCPReply's seeds too: testdata/fuzz holds each
// one as capture-NAME in the fuzzer's corpus format (-update writes them).
func TestFuzzSeedsAreCaptures(t *testing.T) {
	want := map[string]bool{}
	for _, cs := range loadCaptures(t) {
		for _, c := range cs {
			seed := "capture-" + strings.TrimSuffix(c.name, ".bin")
			want[seed] = true
			compareFile(t, filepath.Join("testdata", "fuzz", "FuzzDHCPReply", seed), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", c.raw))
		}
	}
	have, _ := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzDHCPReply", "capture-*"))
	for _, f := range have {
		if !want[filepath.Base(f)] {
			t.Errorf("%s: no such capture any more; delete the seed", f)
		}
	}
}
