package boot

// The boot's decisions, pure: each takes what the init knows and returns
// what to do and why, in words for the console (the style of
// KexecDecision). decide_test.go tables them; Boot only gathers the
// inputs and carries the decisions out.

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/hnboot/hnboot/initramfs/cmdline"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/layout"
)

// Candidates are the images to try, in order: the configured one, then
// the previous image (DESIGN.md §3 step 8).
func Candidates(cfg cmdline.Config) []string {
	if cfg.Image == layout.Old {
		return []string{layout.Old}
	}
	return []string{cfg.Image, layout.Old}
}

// RotateDecision says whether this boot runs the rotation. A kexec'd boot
// does not: the previous kernel's init rotated (and counted the trial
// boot; twice would cost a trial two tries).
func RotateDecision(cfg cmdline.Config) (bool, string) {
	if cfg.Kexeced != "" {
		return false, fmt.Sprintf("kexec'd boot: rotation already done by the previous kernel's init (hn.kexeced=%s)", cfg.Kexeced)
	}
	return true, "rotating"
}

// ServerDecision picks the imaged server this boot talks to: hn.server=,
// else the one remembered from the last successful check-in. "" means
// no network at boot.
func ServerDecision(cfg cmdline.Config, remembered string) (server, why string) {
	switch {
	case cfg.NoCheckin:
		return "", "hn.checkin=off"
	case cfg.Kexeced != "":
		return "", "kexec'd boot: the previous kernel's init talked to imaged"
	case cfg.Server != "":
		return cfg.Server, "hn.server="
	}
	remembered = strings.TrimSpace(remembered)
	if remembered == "" {
		return "", "no hn.server= and no server remembered in " + layout.Server
	}
	if u, err := url.Parse(remembered); err != nil || u.Scheme != "http" || u.Host == "" {
		return "", fmt.Sprintf("%s holds %q, not an http URL", layout.Server, remembered)
	}
	return remembered, "remembered from the last check-in (" + layout.Server + ")"
}

// KexecDecision says whether to kexec into an image's kernel (DESIGN.md §3
// step 5). running is the running kernel's release, image the image
// kernel's ("" when unknown, with imageErr saying why).
func KexecDecision(cfg cmdline.Config, running, image string, imageErr error) (bool, string) {
	switch {
	case cfg.Kexeced != "":
		return false, fmt.Sprintf("already kexec'd once (hn.kexeced=%s)", cfg.Kexeced)
	case cfg.NoKexec:
		return false, "hn.nokexec is set"
	case imageErr != nil:
		return false, "image kernel: " + imageErr.Error()
	case image == "":
		return false, "image kernel release unknown"
	case image == running:
		return false, "the image's kernel " + image + " is running"
	}
	return true, fmt.Sprintf("the image ships kernel %s, running %s", image, running)
}

// FetchInput is what the fetch decision looks at, gathered after the
// boot's rotation.
type FetchInput struct {
	NoFetch bool // hn.fetch=off
	// Rotation is this boot's rotation; RotateErr its error.
	Rotation  rotate.Result
	RotateErr error
	Rotated   bool // false on a kexec'd boot
	// Assigned is what imaged says this MAC should run; AssignedErr why
	// the init does not know.
	Assigned    Assigned
	AssignedErr error
	// Current is hn-root.img's digest as known without hashing more than
	// the check-in would ("" unknown).
	Current string
	// Failed is the reason a digest is in the failure memory, "" if it is
	// not.
	Failed func(digest string) string
}

// Fetch is the decision: download the assigned image or not, and why.
type Fetch struct {
	Get bool
	Why string
	// Refused is set when the image is not fetched because this host
	// remembers it as failed (reported to imaged as a refused staging).
	Refused bool
}

// FetchDecision decides whether this boot downloads the assigned image
// into hn-root-new.img for the rotation to promote it. A boot that
// reverts, finishes an interrupted rotation or promotes a staged image
// does that and nothing more: the download waits for the next boot
// (DESIGN.md §3: a revert boot never also promotes).
func FetchDecision(in FetchInput) Fetch {
	a := in.Assigned.Image
	switch {
	case in.NoFetch:
		return Fetch{Why: "hn.fetch=off"}
	case !in.Rotated:
		return Fetch{Why: "kexec'd boot: the previous kernel's init fetched"}
	case in.AssignedErr != nil:
		return Fetch{Why: "no assignment from imaged: " + in.AssignedErr.Error()}
	case a.Digest == "":
		return Fetch{Why: "imaged assigns no image to this host"}
	case !digest.Valid(a.Digest):
		return Fetch{Why: fmt.Sprintf("imaged's digest %q is not sha256:<64 hex>", a.Digest)}
	case in.RotateErr != nil:
		return Fetch{Why: "the rotation failed: boot what is there first"}
	case in.Rotation.Action == rotate.Revert:
		return Fetch{Why: "this boot reverts; a revert wins over a download, which waits for the next boot"}
	case in.Rotation.Replayed:
		return Fetch{Why: "this boot finishes an interrupted rotation; the download waits for the next boot"}
	case in.Current == a.Digest:
		return Fetch{Why: fmt.Sprintf("%s already is the assigned image %s", layout.Current, a.Label())}
	case in.Rotation.Action == rotate.Promote:
		return Fetch{Why: fmt.Sprintf("this boot promotes %s; the assigned image %s waits for the next boot", layout.New, a.Label())}
	}
	if in.Failed != nil {
		if r := in.Failed(a.Digest); r != "" && !in.Assigned.Force {
			return Fetch{Refused: true, Why: fmt.Sprintf("the assigned image %s is remembered as failed on this host (%s, in %s); imaged stage --force overrides", a.Label(), r, layout.FailedDigests)}
		}
	}
	cur := in.Current
	if cur == "" {
		cur = "of unknown digest"
	}
	return Fetch{Get: true, Why: fmt.Sprintf("imaged assigns %s, %s is %s", a.Label(), layout.Current, cur)}
}

// CheckinDecision says whether to post the check-in after the network
// phase: not when the server did not answer at all (the budget is spent;
// trying again would double it).
func CheckinDecision(netErr, assignedErr error) (bool, string) {
	switch {
	case netErr != nil:
		return false, "network not configured: " + netErr.Error()
	case assignedErr != nil && isTimeout(assignedErr):
		return false, "imaged did not answer in time"
	}
	return true, "checking in"
}

// NetworkDecision says whether this boot loads the NIC drivers, which
// cost hundreds of milliseconds under emulation (e1000's probe alone was
// 682 ms): for the talk with imaged when a server is known, or for the
// boot NIC's MAC (the default hostname) when neither BOOTIF= nor the MAC
// remembered on hostpart from an earlier boot (layout.DefaultMAC) gives
// it. The drivers then load beside the rest of the boot.
func NetworkDecision(server, bootIF, rememberedMAC string) (load bool, why string) {
	switch {
	case server != "":
		return true, "NIC drivers load for the talk with " + server
	case bootIF != "":
		return false, "no NIC drivers: no server, and the boot NIC's MAC is BOOTIF="
	case rememberedMAC != "":
		return false, "no NIC drivers: no server, and the boot NIC's MAC is remembered in " + layout.DefaultMAC
	}
	return true, "NIC drivers load for the boot NIC's MAC (the default hostname): no BOOTIF= and none remembered in " + layout.DefaultMAC
}
