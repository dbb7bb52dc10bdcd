// Package checkin is the report a host sends to imaged: the init once per
// boot (POST /checkin on the boot server) and the agent at start and
// periodically (POST /api/checkin). One type serves both senders and the
// server, and the validation the server applies lives with it: check-ins
// arrive from the network and are not trusted.
//
// The init imports this package, so it depends on the standard library and
// golang.org/x/crypto/ssh (already in the init for host keys) only. The
// shapes the agent reports from its own and other packages are defined
// here, once, and those packages name them (hostpart.Boot,
// supervisor.ServiceStatus, agent.Failure, agent.Verdict and
// agent.Observation are aliases), so the init does not pull them in and
// the schema has no second copy to drift.
package checkin

import "time"

// Sources of a check-in.
const (
	SourceInit  = "init"  // once per boot, before switch_root
	SourceAgent = "agent" // imaged agent on the running system
)

// Checkin is one check-in, as JSON. Unknown fields are ignored, so either
// side can grow; field names never change, so an old init or agent still
// checks in.
//
//	{
//	  "mac": "52:54:00:12:34:56",           required (or the boot server's transport MAC, see ParseFor)
//	  "hostname": "web-07",
//	  "source": "init",                     "init" (once per boot) or "agent"; empty means init
//	  "booted": "sha256:<hex>",             digest of the image running now, when known
//	  "action": "promote",                  the init's rotation: boot, promote, revert, reject
//	  "trial": true, "tries_left": 2,
//	  "kernel": "6.1.0-18-amd64",
//	  "uptime_seconds": 12,
//	  "revert_applied": "r20260102T120103-3fa2c1",  the hn.revert ID this boot applied, if any
//	  "images": {"current": "sha256:…", "old": "sha256:…", "new": "", "broken": ""},
//	  "failed_digests": ["sha256:…"],       digests this host refuses to stage again
//	  "ssh_host_keys": ["ssh-ed25519 AAAA…"],  public keys (authorized_keys format)
//	  "ssh_host_key_fingerprints": ["SHA256:…"],  ignored on receipt: computed from the keys
//	  "notes": ["…"],                       rotation notes (init), agent notes
//
//	  the init's:
//	  "booted_image": {"file": "hn-root.img", "size": 1073741824, "head": "sha256:…", "source": "cache"},
//
//	  the agent's:
//	  "failures": [{"digest": "sha256:…", "time": "2026-01-02T12:01:03Z", "reason": "reverted (found as hn-root-broken.img)"}],
//	  "staging": {"digest": "sha256:…", "image": "web 42", "state": "downloading", "done": 1048576, "total": 33554432},
//	  "health": {"state": "pending", "reason": "…", "last": [{"check": "unit sshd.service", "ok": true, "detail": "active"}]},
//	  "pending": ["…"],                     what waits for a reboot
//	  "reboot_policy": "window Sat,Sun 02:00-04:00",
//	  "rebooting": "…",                     why, in the last check-in before the agent reboots
//	  "last_boot": {"n": 0, "time": "…", "image": "hn-root.img", "action": "boot", "warnings": 0, "errors": 0, "summary": "…"},
//	  "services": [{"name": "node-exporter", "state": "running", "pid": 312, "starts": 1, "restarts": 0}],
//	  "facts": {"cpu": …, "memory_bytes": …, "disks": […], "nics": […], "firmware": …, "system": …}  see Facts
//	}
//
// Digests are "sha256:" and 64 lowercase hex digits, or empty. Parse says
// what else is refused; Tidy makes a sender's own free text fit.
type Checkin struct {
	MAC           string   `json:"mac"`
	Hostname      string   `json:"hostname,omitempty"`
	Source        string   `json:"source"`
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
	Notes         []string `json:"notes,omitempty"`

	// BootedImage says how the init obtained Booted.
	BootedImage Image `json:"booted_image,omitzero"`

	Failures     []Failure `json:"failures,omitempty"`
	Staging      *Staging  `json:"staging,omitempty"`
	Health       *Health   `json:"health,omitempty"`
	Pending      []string  `json:"pending,omitempty"`
	RebootPolicy string    `json:"reboot_policy,omitempty"`
	Rebooting    string    `json:"rebooting,omitempty"`
	LastBoot     *Boot     `json:"last_boot,omitempty"`
	Services     []Service `json:"services,omitempty"`
	// Facts are the host's hardware (facts.go), from the agent.
	Facts *Facts `json:"facts,omitempty"`
}

// Slots are the digests of the image files on hostpart, where known.
type Slots struct {
	Current string `json:"current,omitempty"`
	Old     string `json:"old,omitempty"`
	New     string `json:"new,omitempty"`
	Broken  string `json:"broken,omitempty"`
}

// Image describes the image file the init is booting.
//
// The init never hashes a big image during boot (it would hold the boot
// for tens of seconds under a slow CPU). Booted comes from its cache in
// hostpart/.hnboot/digests (keyed by inode, size and mtime: images are
// immutable and rotation renames keep the inode), from the manifest beside
// the image, or from hashing the file when it is at most HashLimit bytes;
// otherwise it is empty and the agent reports it later. Head is always
// there: cheap, and enough to tell images apart (the superblock holds the
// filesystem UUID).
type Image struct {
	File   string `json:"file"`
	Size   int64  `json:"size"`
	Head   string `json:"head"`   // sha256:<hex> of the first MiB
	Source string `json:"source"` // of Booted: "cache", "manifest", "computed" or "none"
}

// HashLimit is the largest image the init hashes during boot.
const HashLimit = 256 << 20

// Failure is an image the host will not stage again, and why
// (agent.Failure).
type Failure struct {
	Digest string    `json:"digest"`
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"`
}

// Staging is the agent's last or current staging.
type Staging struct {
	Digest string `json:"digest"`
	Image  string `json:"image,omitempty"` // name version
	State  string `json:"state"`           // downloading, staged, failed, refused
	Done   int64  `json:"done,omitempty"`
	Total  int64  `json:"total,omitempty"`
	Reused int64  `json:"reused,omitempty"` // bytes kept from an interrupted download
	Error  string `json:"error,omitempty"`
	// How the image came (when staged or failed): "delta" (chunks of the
	// images on hostpart, the rest fetched) or "full"; for a delta the
	// bytes and chunks copied locally and fetched, and the staging's
	// time. Fallback says why a delta was not used.
	Mode          string `json:"mode,omitempty"`
	Local         int64  `json:"local,omitempty"`
	Fetched       int64  `json:"fetched,omitempty"`
	Chunks        int64  `json:"chunks,omitempty"`
	LocalChunks   int64  `json:"local_chunks,omitempty"`
	FetchedChunks int64  `json:"fetched_chunks,omitempty"`
	TookMS        int64  `json:"took_ms,omitempty"`
	Fallback      string `json:"fallback,omitempty"`
}

// Health is the agent's verdict on a boot so far (agent.Verdict).
type Health struct {
	State  string        `json:"state"` // pending, passed, failed
	Reason string        `json:"reason,omitempty"`
	Last   []Observation `json:"last,omitempty"`
}

// Observation is one health check's result in one round
// (agent.Observation).
type Observation struct {
	Check  string `json:"check"` // "unit sshd.service", "command db-ping", "system"
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Boot is the summary of one init log in hostpart/.hnboot/boots
// (hostpart.Boot, which parses it).
type Boot struct {
	N         int       `json:"n"` // 0 is the last boot
	Time      time.Time `json:"time"`
	Image     string    `json:"image,omitempty"`  // the file switched to, or "rescue"
	Action    string    `json:"action,omitempty"` // boot, promote, revert, reject
	Trial     bool      `json:"trial,omitempty"`
	TriesLeft int       `json:"tries_left,omitempty"`
	Warnings  int       `json:"warnings"`
	Errors    int       `json:"errors"`
	Problems  []string  `json:"problems,omitempty"` // the first warning and error messages
	Summary   string    `json:"summary"`            // one line
}

// Service is one local service the agent supervises
// (supervisor.ServiceStatus).
type Service struct {
	Name      string    `json:"name"`
	State     string    `json:"state"`
	PID       int       `json:"pid,omitempty"`
	Starts    int       `json:"starts"`
	Restarts  int       `json:"restarts"`
	LastStart time.Time `json:"last_start,omitzero"`
	LastExit  string    `json:"last_exit,omitempty"` // "exit status 1", "signal: killed", "start: ..."
	ExitTime  time.Time `json:"exit_time,omitzero"`
	NextStart time.Time `json:"next_start,omitzero"` // in back-off
	LogFile   string    `json:"log_file,omitempty"`
}
