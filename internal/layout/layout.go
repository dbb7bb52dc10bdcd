// Package layout is the on-disk contract of an hnboot host (DESIGN.md §2):
// the names of the files on hostpart, the partition and filesystem labels,
// and where things are mounted in the running system. It is the one place
// these names are defined; the init, mkimage, imaged and the tests import
// it. It has no dependencies, so the init stays small and nothing it
// imports can run back up into the host tools.
package layout

import "strings"

// Image slots on hostpart. Names are relative to the hostpart root.
const (
	Current = "hn-root.img"        // the current root image; always present and complete
	New     = "hn-root-new.img"    // staged; promoted at the next boot if it verifies
	Old     = "hn-root-old.img"    // current before the last promotion
	Broken  = "hn-root-broken.img" // current before the last revert
)

// Suffixes appended to an image file's name.
const (
	ManifestSuffix = ".json"     // IMAGE.json: the manifest that follows its image
	PartSuffix     = ".part"     // a download in progress; never booted, never promoted
	RejectedSuffix = ".rejected" // a staged image that failed verification
	ChunksSuffix   = ".chunks"   // IMAGE.chunks: its chunk index (package chunkindex), for delta updates
	PackSuffix     = ".zst"      // IMAGE.zst: its chunks as zstd frames (package chunkpack), located by a version 2 IMAGE.chunks
	BrokenSuffix   = ".broken"   // an image a network recovery replaced; kept aside, never booted
)

// Files derived from the slots.
const (
	Rejected = New + RejectedSuffix // hn-root-new.img.rejected
	NewPart  = New + PartSuffix     // hn-root-new.img.part: the staging download
)

// Network recovery (the init, when no local image boots): the assigned
// image is downloaded as Recover, then installed as Current, and the
// images that did not boot are kept aside as CurrentBroken and OldBroken
// for the operator (each with its manifest, NAME.broken.json).
const (
	Recover       = "hn-root-recover.img"  // the downloaded replacement; never booted under this name
	RecoverPart   = Recover + PartSuffix   // its download in progress
	CurrentBroken = Current + BrokenSuffix // hn-root.img.broken
	OldBroken     = Old + BrokenSuffix     // hn-root-old.img.broken
)

// Triggers on hostpart.
const (
	RevertTrigger = "system-revert" // revert at the next boot; may hold a revert ID
	Trial         = "hn-root.trial" // tries left for the current image; removing it confirms
)

// DataDir is persistent host data on hostpart, /data0 in the running system.
const DataDir = "data"

// StateDir is the init's and the agent's directory on hostpart; the files
// below live in it.
const StateDir = ".hnboot"

// Files in StateDir, relative to the hostpart root.
const (
	Journal       = StateDir + "/journal"        // rotation intent record
	Reverts       = StateDir + "/reverts"        // hn.revert IDs already applied, one per line
	Digests       = StateDir + "/digests"        // digest cache of image files (package digestcache)
	FailedDigests = StateDir + "/failed-digests" // digests this host refuses to stage again
	IdentityDir   = StateDir + "/identity"       // machine-id and SSH host keys, generated once
	HostConf      = StateDir + "/host.conf"      // hand-written host configuration (key = value), the layer under HostCache
	HostCache     = StateDir + "/host.json"      // the host configuration imaged sent last (hostconfig JSON)
	TrustedKey    = StateDir + "/trusted.pub"    // a key staged images must be signed with
	BootsDir      = StateDir + "/boots"          // init logs of the last boots, boot.N.log
	ImagesDir     = StateDir + "/images"         // <hex>.json: name and version of staged digests
	Staging       = StateDir + "/staging"        // which digest and source NewPart holds
	StageLock     = StateDir + "/stage.lock"     // held while a staging runs
	AgentState    = StateDir + "/agent.json"     // the agent's memory across restarts
	Server        = StateDir + "/server"         // the imaged URL of the last successful check-in
	RandomSeed    = StateDir + "/random-seed"    // entropy credited to the kernel at the next boot
	DefaultMAC    = StateDir + "/default-mac"    // the boot NIC's MAC, for the default hostname without loading NIC drivers
	ChunksDir     = StateDir + "/chunks"         // <hex>.chunks: the chunk index of each image on hostpart staged by delta
)

// Labels of the disk's partitions and filesystems.
const (
	HostpartLabel = "hostpart"  // filesystem label (and GPT name) of the host partition
	ESPLabel      = "EFI-BOOT"  // GPT name and FAT label of the EFI system partition
	BIOSBootLabel = "BIOS-BOOT" // GPT name of GRUB's BIOS boot partition (type EF02)
)

// HostpartSpec is the default block device spec of hostpart (hn.hostpart=).
const HostpartSpec = "LABEL=" + HostpartLabel

// Where things are in the running system.
const (
	HostpartMount = "/hostpart"    // hostpart, moved into the new root by the init
	LoaderMount   = "/boot/loader" // EFI-BOOT (fstab, noauto)
	DataLink      = "/data0"       // symlink to HostpartMount/DataDir
)

// Files the init writes into the new root at every boot from the host's
// configuration (package hostconfig renders them, initramfs/identity
// writes them). The fleet's files: entries may not replace them.
const (
	NetworkdDir    = "/etc/systemd/network"                          // networkd files, named NetworkdPrefix*
	NetworkdPrefix = "10-hnboot"                                     // .network, .netdev and .link files hnboot owns
	NetworkdMain   = NetworkdDir + "/" + NetworkdPrefix + ".network" // the link that carries the addresses
	IfupdownFile   = "/etc/network/interfaces.d/hnboot"              // the same for ifupdown images without networkd
	NetworkEnv     = "/etc/hnboot/network.env"                       // the network as shell variables
	IdentityEnv    = "/etc/hnboot/identity.env"                      // the fleet's identity: values as shell variables
	StorageIDFile  = "/etc/hnboot/storage-id"                        // identity value storage_id alone (host.conf's storage_id)
	CMIDFile       = "/etc/hnboot/cm-id"                             // identity value cm_id alone (host.conf's cm_id)
	HostnameFile   = "/etc/hostname"
	MachineIDFile  = "/etc/machine-id"
	SSHHostKeyGlob = "/etc/ssh/ssh_host_*" // generated on the host, never from the server
	FstabFile      = "/etc/fstab"          // hnboot's block for /boot/loader and /hostpart
)

// TrustedKeyInitramfs is the key built into the initramfs
// (mkimage initramfs --trust), relative to the initramfs root.
const TrustedKeyInitramfs = "etc/hnboot/trusted.pub"

// Slot names, as the agent, the server and `imaged status` call the files.
const (
	SlotCurrent = "current"
	SlotOld     = "old"
	SlotNew     = "new"
	SlotBroken  = "broken"
)

// Slots maps each slot to its file on hostpart, in display order.
var Slots = []struct{ Slot, File string }{
	{SlotCurrent, Current},
	{SlotOld, Old},
	{SlotNew, New},
	{SlotBroken, Broken},
}

// ManifestFor is the manifest of an image: IMAGE.json.
func ManifestFor(image string) string { return image + ManifestSuffix }

// IsImageSlot reports whether name is one of the four slot files.
func IsImageSlot(name string) bool {
	for _, s := range Slots {
		if s.File == name {
			return true
		}
	}
	return false
}

// ImageMeta is the file in ImagesDir for a "sha256:<hex>" digest.
func ImageMeta(digest string) string {
	return ImagesDir + "/" + strings.TrimPrefix(digest, "sha256:") + ".json"
}
