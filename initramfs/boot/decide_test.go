package boot

import (
	"encoding/json"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/hostconfig"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/pxe"
)

func cfg(line string) cmdline.Config {
	c, _ := cmdline.Parse(line)
	return c
}

func TestCandidates(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"", []string{layout.Current, layout.Old}},
		{"hn.image=x.img", []string{"x.img", layout.Old}},
		{"hn.image=" + layout.Old, []string{layout.Old}},
	} {
		if got := Candidates(cfg(tc.line)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Candidates(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

func TestRotateDecision(t *testing.T) {
	for _, tc := range []struct {
		line string
		want bool
		why  string
	}{
		{"", true, "rotating"},
		{"hn.kexeced=hn-root.img", false, "rotation already done by the previous kernel's init"},
	} {
		got, why := RotateDecision(cfg(tc.line))
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("RotateDecision(%q) = %v, %q; want %v, ~%q", tc.line, got, why, tc.want, tc.why)
		}
	}
}

func TestServerDecision(t *testing.T) {
	for _, tc := range []struct {
		line, remembered string
		want, why        string
	}{
		{"", "", "", "no hn.server= and no server remembered"},
		{"hn.server=http://a:8080", "http://b:8080", "http://a:8080", "hn.server="},
		{"", "http://b:8080\n", "http://b:8080", "remembered from the last check-in"},
		{"", "ftp://b", "", "not an http URL"},
		{"hn.server=http://a:8080 hn.checkin=off", "", "", "hn.checkin=off"},
		{"hn.server=http://a:8080 hn.kexeced", "", "", "kexec'd boot"},
	} {
		got, why := ServerDecision(cfg(tc.line), tc.remembered)
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("ServerDecision(%q, %q) = %q, %q; want %q, ~%q", tc.line, tc.remembered, got, why, tc.want, tc.why)
		}
	}
}

func TestNetworkDecision(t *testing.T) {
	for _, tc := range []struct {
		server, bootIF, remembered string
		want                       bool
		why                        string
	}{
		{"", "", "", true, "for the boot NIC's MAC"},
		{"", "", "52:54:00:12:34:56", false, "remembered in .hnboot/default-mac"},
		{"", "52:54:00:12:34:56", "", false, "BOOTIF="},
		{"http://a:8080", "52:54:00:12:34:56", "52:54:00:12:34:56", true, "talk with http://a:8080"},
		{"http://a:8080", "", "", true, "talk with"},
	} {
		got, why := NetworkDecision(tc.server, tc.bootIF, tc.remembered)
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("NetworkDecision(%q, %q, %q) = %v, %q; want %v, ~%q", tc.server, tc.bootIF, tc.remembered, got, why, tc.want, tc.why)
		}
	}
}

func TestKexecDecision(t *testing.T) {
	for _, tc := range []struct {
		line, running, image string
		imageErr             error
		want                 bool
		why                  string
	}{
		{"", "6.1.0-55", "6.1.0-57", nil, true, "ships kernel 6.1.0-57, running 6.1.0-55"},
		{"", "6.1.0-55", "6.1.0-55", nil, false, "is running"},
		{"hn.kexeced=hn-root.img", "6.1.0-55", "6.1.0-57", nil, false, "already kexec'd once"},
		{"hn.nokexec", "6.1.0-55", "6.1.0-57", nil, false, "hn.nokexec"},
		{"", "6.1.0-55", "", errors.New("image has no /boot/vmlinuz"), false, "no /boot/vmlinuz"},
		{"", "6.1.0-55", "", nil, false, "unknown"},
	} {
		got, why := KexecDecision(cfg(tc.line), tc.running, tc.image, tc.imageErr)
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("KexecDecision(%q, %s, %s, %v) = %v, %q; want %v, ~%q", tc.line, tc.running, tc.image, tc.imageErr, got, why, tc.want, tc.why)
		}
	}
}

func TestFetchDecision(t *testing.T) {
	dA, dB := digestOf(imgA), digestOf(imgB)
	assigned := Assigned{Image: AssignedImage{Name: "B", Version: "2", Digest: dB}}
	base := func(f func(*FetchInput)) FetchInput {
		in := FetchInput{Rotated: true, Assigned: assigned, Current: dA, Rotation: rotate.Result{Action: rotate.Boot}}
		if f != nil {
			f(&in)
		}
		return in
	}
	failedB := func(d string) string {
		if d == dB {
			return "reverted"
		}
		return ""
	}
	for _, tc := range []struct {
		name    string
		in      FetchInput
		get     bool
		refused bool
		why     string
	}{
		{"assigned differs", base(nil), true, false, "imaged assigns B 2"},
		{"current unknown", base(func(in *FetchInput) { in.Current = "" }), true, false, "of unknown digest"},
		{"up to date", base(func(in *FetchInput) { in.Current = dB }), false, false, "already is the assigned image"},
		{"hn.fetch=off", base(func(in *FetchInput) { in.NoFetch = true }), false, false, "hn.fetch=off"},
		{"kexec'd", base(func(in *FetchInput) { in.Rotated = false }), false, false, "kexec'd boot"},
		{"no answer", base(func(in *FetchInput) { in.AssignedErr = errors.New("timeout") }), false, false, "no assignment from imaged: timeout"},
		{"no image assigned", base(func(in *FetchInput) { in.Assigned.Image = AssignedImage{} }), false, false, "assigns no image"},
		{"bad digest", base(func(in *FetchInput) { in.Assigned.Image.Digest = "sha256:xyz" }), false, false, "not sha256:<64 hex>"},
		{"rotation failed", base(func(in *FetchInput) { in.RotateErr = errors.New("EIO") }), false, false, "rotation failed"},
		{"revert wins", base(func(in *FetchInput) { in.Rotation.Action = rotate.Revert }), false, false, "a revert wins over a download"},
		{"replayed", base(func(in *FetchInput) { in.Rotation.Replayed = true }), false, false, "interrupted rotation"},
		{"promoting another", base(func(in *FetchInput) { in.Rotation.Action = rotate.Promote }), false, false, "waits for the next boot"},
		{"promoted the assigned", base(func(in *FetchInput) { in.Rotation.Action = rotate.Promote; in.Current = dB }), false, false, "already is"},
		{"rejected a staged one", base(func(in *FetchInput) { in.Rotation.Action = rotate.Reject }), true, false, "imaged assigns"},
		{"failed before", base(func(in *FetchInput) { in.Failed = failedB }), false, true, "remembered as failed on this host (reverted"},
		{"failed before, forced", base(func(in *FetchInput) { in.Failed = failedB; in.Assigned.Force = true }), true, false, "imaged assigns"},
	} {
		got := FetchDecision(tc.in)
		if got.Get != tc.get || got.Refused != tc.refused || !strings.Contains(got.Why, tc.why) {
			t.Errorf("%s: FetchDecision = %+v; want get %v, refused %v, why ~%q", tc.name, got, tc.get, tc.refused, tc.why)
		}
	}
}

func TestCheckinDecision(t *testing.T) {
	timeout := &net.OpError{Op: "read", Err: timeoutErr{}}
	for _, tc := range []struct {
		net, assigned error
		want          bool
	}{
		{nil, nil, true},
		{nil, ErrUnknownHost, true},
		{errors.New("no DHCP offer"), nil, false},
		{nil, timeout, false},
	} {
		if got, why := CheckinDecision(tc.net, tc.assigned); got != tc.want {
			t.Errorf("CheckinDecision(%v, %v) = %v (%s), want %v", tc.net, tc.assigned, got, why, tc.want)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// The init reads imaged's answer without importing the fleet package:
// both must mean the same JSON.
func TestAssignedMatchesDesiredHost(t *testing.T) {
	d := fleet.DesiredHost{
		MAC: fakeMAC, Config: hostconfig.Config{Hostname: "web-07"}, Source: "assigned to host by alice", Revert: "r1", Force: true,
		Image:         fleet.DesiredImage{ImageRef: pxe.ImageRef{Name: "web", Version: "2", Digest: digestOf(imgB)}, Size: 17825792},
		FailedDigests: []string{digestOf(imgA)},
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var a Assigned
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	want := Assigned{MAC: fakeMAC, Hostname: "web-07", Source: d.Source, Revert: "r1", Force: true,
		Image:         AssignedImage{Name: "web", Version: "2", Digest: digestOf(imgB), Size: 17825792},
		FailedDigests: []string{digestOf(imgA)}}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("fleet.DesiredHost %s decodes as %+v, want %+v", b, a, want)
	}

	// A server without a fleet answers with what its directory knows.
	var sd pxe.StaticDesired
	sd.MAC, sd.Hostname, sd.Source = fakeMAC, "web-07", "imaged serve --host/--image"
	sd.Image.ImageRef, sd.Image.Size = pxe.ImageRef{Name: "web", Version: "2", Digest: digestOf(imgB)}, 17825792
	if b, err = json.Marshal(sd); err != nil {
		t.Fatal(err)
	}
	a = Assigned{}
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	want = Assigned{MAC: fakeMAC, Hostname: "web-07", Source: sd.Source, Image: AssignedImage{Name: "web", Version: "2", Digest: digestOf(imgB), Size: 17825792}}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("pxe.StaticDesired %s decodes as %+v, want %+v", b, a, want)
	}
}
