package agent

import (
	"fmt"

	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/stage"
)

// DesiredImage is the image the server wants the host to run.
type DesiredImage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Digest  string `json:"digest"`
	Size    int64  `json:"size,omitempty"`
	URL     string `json:"url,omitempty"` // absolute or relative to the server; default /blobs/<digest>
}

// Label is "name version" or the short digest.
func (d DesiredImage) Label() string {
	if d.Name != "" {
		return d.Name + " " + d.Version
	}
	return digest.Short(d.Digest)
}

// Desired is the server's answer to GET /api/hosts/{mac}/desired (the
// fleet package's DesiredHost, plus the optional force and failed_digests).
type Desired struct {
	MAC      string       `json:"mac"`
	Hostname string       `json:"hostname"`
	Image    DesiredImage `json:"image"`
	Revert   string       `json:"revert,omitempty"` // a revert ID not yet applied
	// Force stages Image even if this host remembers it as failed.
	Force bool `json:"force,omitempty"`
	// FailedDigests are digests the server knows failed on this host.
	FailedDigests []string `json:"failed_digests,omitempty"`
}

// Observed is the part of the host's state Plan looks at.
type Observed struct {
	Current, Old, New string // digests of the slots
	Trial             bool
	RevertPending     bool // system-revert present
}

// Decision is what one round of the agent should do.
type Decision struct {
	Revert   string // write system-revert for this revert ID
	NoOld    string // revert ID that cannot apply (no old image): acknowledge it
	Stage    bool   // download Desired.Image
	Unstage  bool   // remove hn-root-new.img: the server wants the current image
	Refused  string // why Desired.Image is not staged
	Pending  []string
	Reboot   bool // a reboot would apply something
	Uptodate bool
}

// Plan decides, from what the host has and what the server wants, what to
// do. applied tells whether a revert ID was already applied (or written).
func Plan(obs Observed, des Desired, failed stage.Failed, applied func(id string) bool) Decision {
	var d Decision
	if des.Revert != "" && !applied(des.Revert) {
		if obs.Old == "" {
			d.NoOld = des.Revert
			d.Pending = append(d.Pending, fmt.Sprintf("server asked for revert %s, but there is no hn-root-old.img to revert to", des.Revert))
		} else {
			d.Revert = des.Revert
			d.Reboot = true
			d.Pending = append(d.Pending, fmt.Sprintf("reboot pending: revert %s to hn-root-old.img (%s)", des.Revert, digest.Short(obs.Old)))
			return d
		}
	}
	if obs.RevertPending {
		d.Reboot = true
		d.Pending = append(d.Pending, fmt.Sprintf("reboot pending: system-revert present, the next boot reverts to hn-root-old.img (%s)", digest.Short(obs.Old)))
		return d
	}
	want := des.Image.Digest
	switch {
	case want == "":
		if obs.New != "" {
			d.Reboot = true
			d.Pending = append(d.Pending, fmt.Sprintf("reboot pending: hn-root-new.img (%s) staged", digest.Short(obs.New)))
		}
		return d
	case want == obs.Current:
		d.Uptodate = true
		if obs.New != "" {
			d.Unstage = true
		}
		return d
	case want == obs.New:
		d.Reboot = true
		d.Pending = append(d.Pending, fmt.Sprintf("reboot pending: hn-root-new.img (%s) staged", des.Image.Label()))
		return d
	}
	if fl, bad := failed[want]; bad && !des.Force {
		d.Refused = fmt.Sprintf("refusing to stage %s (%s): it failed on this host before (%s); the server must send force, or run imaged stage --force", des.Image.Label(), digest.Short(want), fl.Reason)
		return d
	}
	if obs.Trial {
		d.Pending = append(d.Pending, fmt.Sprintf("waiting for the trial of the current image to end before staging %s", des.Image.Label()))
		return d
	}
	d.Stage = true
	return d
}
