package fleet

import (
	"encoding/json"
	"fmt"
	"github.com/hnboot/hnboot/pxe/checkin"
	"strings"
	"time"

	"github.com/hnboot/hnboot/pxe"
	"golang.org/x/crypto/ssh"
)

// Checkin is what a host reports, as JSON, to POST /api/checkin (or to the
// boot server's /checkin, which calls (*Fleet).Checkin). The init sends it
// once per boot (source "init"); the agent at start and periodically
// (source "agent"). Unknown fields are ignored, so either side can grow.
//
//	{
//	  "mac": "52:54:00:12:34:56",          required
//	  "hostname": "web-07",
//	  "source": "init",                     "init" (one per boot) or "agent"
//	  "booted": "sha256:<hex>",             digest of the image running now
//	  "action": "promote",                  what the init did: boot, promote, revert, trial-revert, fallback, rescue
//	  "trial": true, "tries_left": 2,
//	  "kernel": "6.1.0-18-amd64",
//	  "uptime_seconds": 12,
//	  "revert_applied": "r20260102T120103-3fa2c1",  the hn.revert ID this boot applied, if any
//	  "images": {"current": "sha256:…", "old": "sha256:…", "new": "", "broken": ""},
//	  "failed_digests": ["sha256:…"],       digests this host refuses to stage again
//	  "ssh_host_keys": ["ssh-ed25519 AAAA… root@web-07"],  public keys (authorized_keys format)
//	  "ssh_host_key_fingerprints": ["SHA256:…"]  optional; computed from the keys when absent
//	}
//
// Digests are "sha256:" and 64 lowercase hex digits, or empty.
type Checkin struct {
	MAC           string   `json:"mac"`
	Hostname      string   `json:"hostname,omitempty"`
	Source        string   `json:"source,omitempty"`
	Booted        string   `json:"booted,omitempty"`
	Action        string   `json:"action,omitempty"`
	Trial         bool     `json:"trial,omitempty"`
	TriesLeft     int      `json:"tries_left,omitempty"`
	Kernel        string   `json:"kernel,omitempty"`
	UptimeSeconds int64    `json:"uptime_seconds,omitempty"`
	RevertApplied string   `json:"revert_applied,omitempty"`
	Images        Slots    `json:"images"`
	FailedDigests []string `json:"failed_digests,omitempty"`
	SSHHostKeys   []string `json:"ssh_host_keys,omitempty"`
	Fingerprints  []string `json:"ssh_host_key_fingerprints,omitempty"`

	Time time.Time `json:"time"` // set by the server on receipt
}

// Slots are the digests of the four image files on the host's hostpart,
// as every check-in sender encodes them.
type Slots = checkin.Slots

const maxCheckinBytes = 256 << 10

// ParseCheckin decodes and validates a check-in body. The MAC comes back in
// canonical form and fingerprints are computed from the keys.
func ParseCheckin(body []byte) (*Checkin, error) {
	if len(body) > maxCheckinBytes {
		return nil, fmt.Errorf("checkin: body of %d bytes is over the %d limit", len(body), maxCheckinBytes)
	}
	var c Checkin
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("checkin: %w", err)
	}
	mac, err := pxe.ParseMAC(c.MAC)
	if err != nil {
		return nil, fmt.Errorf("checkin: bad or missing mac %q", c.MAC)
	}
	c.MAC = mac.String()
	for _, d := range []struct{ name, v string }{
		{"booted", c.Booted}, {"images.current", c.Images.Current}, {"images.old", c.Images.Old},
		{"images.new", c.Images.New}, {"images.broken", c.Images.Broken},
	} {
		if d.v != "" && !ValidDigest(d.v) {
			return nil, fmt.Errorf("checkin %s: %s %q is not sha256:<64 hex>", c.MAC, d.name, d.v)
		}
	}
	for _, d := range c.FailedDigests {
		if !ValidDigest(d) {
			return nil, fmt.Errorf("checkin %s: failed_digests: %q is not sha256:<64 hex>", c.MAC, d)
		}
	}
	if c.Source == "" {
		c.Source = "init"
	}
	if c.Source != "init" && c.Source != "agent" {
		return nil, fmt.Errorf("checkin %s: source %q: want init or agent", c.MAC, c.Source)
	}
	if len(c.SSHHostKeys) > 0 {
		var fps []string
		for i, k := range c.SSHHostKeys {
			pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
			if err != nil {
				return nil, fmt.Errorf("checkin %s: ssh_host_keys[%d]: %v", c.MAC, i, err)
			}
			c.SSHHostKeys[i] = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
			fps = append(fps, ssh.FingerprintSHA256(pk))
		}
		c.Fingerprints = fps
	}
	return &c, nil
}

// Summary is the check-in in plain words, for `why`.
func (c *Checkin) Summary(name func(digest string) string) string {
	var b strings.Builder
	b.WriteString("from the " + c.Source)
	if c.Booted != "" {
		fmt.Fprintf(&b, ": booted %s", name(c.Booted))
	}
	if c.Action != "" {
		fmt.Fprintf(&b, ", action %s", c.Action)
	}
	if c.Trial {
		fmt.Fprintf(&b, ", on trial (%d tries left)", c.TriesLeft)
	}
	if c.RevertApplied != "" {
		fmt.Fprintf(&b, ", applied revert %s", c.RevertApplied)
	}
	if c.Kernel != "" {
		fmt.Fprintf(&b, ", kernel %s", c.Kernel)
	}
	return b.String()
}
