package agent

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/hostpart"
	"github.com/hnboot/hnboot/pxe/checkin"
	"github.com/hnboot/hnboot/supervisor"
)

// Slots are the digests of the four image files: the check-in schema's
// "images", shared with the init and the server.
type Slots = checkin.Slots

// StagingStatus is the agent's last or current staging.
type StagingStatus struct {
	Digest string `json:"digest"`
	Image  string `json:"image,omitempty"` // name version
	State  string `json:"state"`           // downloading, staged, failed, refused
	Done   int64  `json:"done,omitempty"`
	Total  int64  `json:"total,omitempty"`
	Reused int64  `json:"reused,omitempty"` // bytes kept from an interrupted download
	Error  string `json:"error,omitempty"`
}

// Report is the agent's check-in, POSTed to /api/checkin. Its first fields
// are fleet.Checkin's (and pxe/checkin.Report's, the same schema); the rest
// are the agent's own, ignored by a server that does not know them.
type Report struct {
	MAC           string `json:"mac"`
	Hostname      string `json:"hostname,omitempty"`
	Source        string `json:"source"` // "agent"
	Stage         string `json:"stage"`  // "agent"
	Booted        string `json:"booted,omitempty"`
	Trial         bool   `json:"trial,omitempty"`
	TriesLeft     int    `json:"tries_left,omitempty"`
	Kernel        string `json:"kernel,omitempty"`
	UptimeSeconds int64  `json:"uptime_seconds,omitempty"`
	RevertApplied string `json:"revert_applied,omitempty"`
	RevertID      string `json:"revert_id,omitempty"`
	Images        Slots  `json:"images"`

	FailedDigests []string  `json:"failed_digests,omitempty"`
	Failures      []Failure `json:"failures,omitempty"`
	Fingerprints  []string  `json:"ssh_host_key_fingerprints,omitempty"`
	PublicKeys    []string  `json:"ssh_host_keys,omitempty"` // authorized_keys format

	Staging      *StagingStatus             `json:"staging,omitempty"`
	Health       *Verdict                   `json:"health,omitempty"`
	Pending      []string                   `json:"pending,omitempty"`
	RebootPolicy string                     `json:"reboot_policy,omitempty"`
	Rebooting    string                     `json:"rebooting,omitempty"` // why, when this is the last report before a reboot
	LastBoot     *hostpart.Boot             `json:"last_boot,omitempty"`
	Services     []supervisor.ServiceStatus `json:"services,omitempty"`
	Notes        []string                   `json:"notes,omitempty"`
}

// System reads facts about the running system; Root is "/" outside tests.
type System struct {
	Root string
}

func (s System) path(p string) string { return filepath.Join(s.Root, p) }

// Kernel is the running kernel's release.
func (s System) Kernel() string {
	if b, err := os.ReadFile(s.path("/proc/sys/kernel/osrelease")); err == nil {
		return strings.TrimSpace(string(b))
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		return unix.ByteSliceToString(u.Release[:])
	}
	return ""
}

// Uptime is the seconds since boot.
func (s System) Uptime() int64 {
	b, err := os.ReadFile(s.path("/proc/uptime"))
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return int64(f)
}

// HostKeys reads /etc/ssh/*.pub: the public keys (authorized_keys format,
// comment dropped) and their SHA256 fingerprints.
func (s System) HostKeys() (keys, fps []string) {
	files, _ := filepath.Glob(s.path("/etc/ssh/*.pub"))
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pk, _, _, _, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			continue
		}
		keys = append(keys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))))
		fps = append(fps, ssh.FingerprintSHA256(pk))
	}
	return keys, fps
}
