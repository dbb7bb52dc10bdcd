// Package checkin is the JSON a booting host posts to imaged (POST
// /checkin). Its field names are those of fleet.Checkin, which stores it;
// this copy has no dependencies so the init (initramfs/checkin.go) stays
// small. Unknown fields are ignored on both sides.
package checkin

// Report is one check-in.
type Report struct {
	MAC       string `json:"mac"` // required: the NIC the host booted from
	Hostname  string `json:"hostname,omitempty"`
	Source    string `json:"source"`           // "init" (once per boot) or "agent"
	Booted    string `json:"booted,omitempty"` // sha256:<hex> of the image booting now, when known (see Image)
	Action    string `json:"action,omitempty"` // rotation outcome: boot, promote, revert, ...
	Trial     bool   `json:"trial,omitempty"`
	TriesLeft int    `json:"tries_left,omitempty"`
	Kernel    string `json:"kernel,omitempty"` // uname -r
	Uptime    int64  `json:"uptime_seconds,omitempty"`
	// RevertApplied is the hn.revert=ID this boot applied, if any.
	RevertApplied string `json:"revert_applied,omitempty"`
	Images        Slots  `json:"images"`
	// SSHHostKeys are public keys in authorized_keys format.
	SSHHostKeys []string `json:"ssh_host_keys,omitempty"`
	// Fingerprints are their SHA256 fingerprints.
	Fingerprints []string `json:"ssh_host_key_fingerprints,omitempty"`

	// BootedImage says how Booted was obtained; extra to fleet.Checkin.
	BootedImage Image    `json:"booted_image"`
	Notes       []string `json:"notes,omitempty"`
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
// for tens of seconds under a slow CPU). Digest comes from its cache in
// hostpart/.hnboot/digests, keyed by inode, size and mtime (images are
// immutable and rotation renames keep the inode), or from hashing the file
// when it is at most HashLimit bytes; otherwise it is empty and the agent
// reports it later. Head is always there: cheap, and enough to tell images
// apart (the superblock holds the filesystem UUID).
type Image struct {
	File   string `json:"file"`
	Size   int64  `json:"size"`
	Head   string `json:"head"`   // sha256:<hex> of the first MiB
	Source string `json:"source"` // of Booted: "cache", "manifest", "computed" or "none"
}

// HashLimit is the largest image the init hashes during boot.
const HashLimit = 256 << 20
