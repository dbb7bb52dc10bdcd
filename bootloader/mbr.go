package bootloader

import (
	"encoding/binary"
	"fmt"
)

// Offsets in GRUB's i386-pc boot.img and diskboot.img (grub-core/boot/i386/pc
// boot.S and diskboot.S, include/grub/i386/pc/boot.h), as grub-bios-setup
// (util/setup.c) patches them.
const (
	SectorSize = 512

	mbrKernelSector = 0x5c  // u64 LBA of core.img's first sector (diskboot.img)
	mbrBootDrive    = 0x64  // u8: 0xff = use the drive the BIOS booted from (DL)
	mbrDriveCheck   = 0x66  // 2 bytes: "jmp 3f" that skips the DL sanity check; NOPed for hard disks
	mbrNTMagic      = 0x1b8 // disk signature, then the partition table, up to 0x1fe
	mbrPartEnd      = 0x1fe // 0x55 0xaa follow

	// The first block list of diskboot.img sits at the end of its sector;
	// earlier entries follow downwards, a zero length ends the list.
	blocklistSize    = 12 // u64 start, u16 length, u16 segment
	blocklistFirst   = SectorSize - blocklistSize
	coreFirstSegment = 0x820 // GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20: where the rest of core.img goes
	maxBlocklistLen  = 0xffff
)

// PatchBootSector returns GRUB's boot.img made ready to be the MBR of a
// disk whose current first sector is mbr (a GPT protective MBR): the disk
// signature, the partition table and the 0x55aa signature are kept from
// mbr, the sector of core.img is set to coreLBA, the boot drive is "the
// one the BIOS booted" and the floppy check is disabled, as grub-bios-setup
// does for a hard disk. Neither argument is modified.
func PatchBootSector(bootImg, mbr []byte, coreLBA uint64) ([]byte, error) {
	if len(bootImg) != SectorSize {
		return nil, fmt.Errorf("boot.img is %d bytes, want %d", len(bootImg), SectorSize)
	}
	if len(mbr) != SectorSize {
		return nil, fmt.Errorf("MBR is %d bytes, want %d", len(mbr), SectorSize)
	}
	if bootImg[510] != 0x55 || bootImg[511] != 0xaa {
		return nil, fmt.Errorf("boot.img has no 0x55aa signature: not GRUB's i386-pc boot.img")
	}
	if bootImg[mbrDriveCheck] != 0xeb && bootImg[mbrDriveCheck] != 0x90 {
		return nil, fmt.Errorf("boot.img byte %#x is %#x, want a jmp (0xeb): not GRUB 2's i386-pc boot.img", mbrDriveCheck, bootImg[mbrDriveCheck])
	}
	if coreLBA == 0 {
		return nil, fmt.Errorf("core.img cannot start at sector 0 (the MBR)")
	}
	out := append([]byte(nil), bootImg...)
	binary.LittleEndian.PutUint64(out[mbrKernelSector:], coreLBA)
	out[mbrBootDrive] = 0xff
	out[mbrDriveCheck], out[mbrDriveCheck+1] = 0x90, 0x90
	copy(out[mbrNTMagic:mbrPartEnd], mbr[mbrNTMagic:mbrPartEnd])
	out[510], out[511] = 0x55, 0xaa
	return out, nil
}

// PatchCore returns core.img (diskboot.img followed by the rest of GRUB's
// i386-pc core) padded to whole sectors, with diskboot.img's block list
// pointing at the sectors after coreLBA: core.img is written contiguously
// from coreLBA, as grub-bios-setup embeds it in a BIOS boot partition. The
// argument is not modified.
func PatchCore(core []byte, coreLBA uint64) ([]byte, error) {
	if len(core) <= SectorSize {
		return nil, fmt.Errorf("core.img is %d bytes: too small to be GRUB's i386-pc core", len(core))
	}
	n := (len(core) + SectorSize - 1) / SectorSize
	out := make([]byte, n*SectorSize)
	copy(out, core)
	first := out[blocklistFirst:SectorSize]
	if seg := binary.LittleEndian.Uint16(first[10:]); seg != coreFirstSegment {
		return nil, fmt.Errorf("core.img's first block list has segment %#x, want %#x: not made by grub-mkimage -O i386-pc", seg, coreFirstSegment)
	}
	rest := n - 1
	if rest > maxBlocklistLen {
		return nil, fmt.Errorf("core.img has %d sectors, more than one block list holds", n)
	}
	binary.LittleEndian.PutUint64(first[0:], coreLBA+1)
	binary.LittleEndian.PutUint16(first[8:], uint16(rest))
	// The entry below ends the list.
	clear(out[blocklistFirst-blocklistSize : blocklistFirst])
	return out, nil
}

// CoreBlocklist reads the first block list of a patched core.img: the start
// sector and length of the rest of the core, and the segment it loads at.
func CoreBlocklist(core []byte) (start uint64, length, segment uint16) {
	b := core[blocklistFirst:SectorSize]
	return binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint16(b[8:]), binary.LittleEndian.Uint16(b[10:])
}

// BootSectorCore returns the core.img sector a boot.img points at.
func BootSectorCore(mbr []byte) uint64 {
	return binary.LittleEndian.Uint64(mbr[mbrKernelSector:])
}
