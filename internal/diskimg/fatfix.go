package diskimg

import (
	"encoding/binary"
	"fmt"
	"os"
)

// fixFAT32 repairs two flaws of go-diskfs v1.9.4's FAT32 writer that make
// fsck.vfat -n fail: the ".." entry of a directory in the root points at
// the root's cluster instead of 0, as the FAT specification wants, and the
// FSInfo free-cluster count is left unknown. off is the partition's byte
// offset in the disk image at p.
func fixFAT32(p string, off int64) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, off); err != nil {
		return fmt.Errorf("read FAT32 boot sector: %w", err)
	}
	if bs[510] != 0x55 || bs[511] != 0xaa {
		return fmt.Errorf("no FAT32 boot sector at offset %d", off)
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:13]))
	spc := int64(bs[13])
	reserved := int64(binary.LittleEndian.Uint16(bs[14:16]))
	nfats := int64(bs[16])
	totalSectors := int64(binary.LittleEndian.Uint32(bs[32:36]))
	fatSize := int64(binary.LittleEndian.Uint32(bs[36:40]))
	rootCluster := binary.LittleEndian.Uint32(bs[44:48])
	fsinfo := int64(binary.LittleEndian.Uint16(bs[48:50]))
	if bps == 0 || spc == 0 || fatSize == 0 {
		return fmt.Errorf("FAT32 boot sector at offset %d: bad geometry", off)
	}
	dataStart := off + (reserved+nfats*fatSize)*bps
	clusterSize := spc * bps
	clusterOff := func(c uint32) int64 { return dataStart + int64(c-2)*clusterSize }

	// ".." of each directory in the root (first root cluster: hnboot's
	// root holds a handful of entries).
	root := make([]byte, clusterSize)
	if _, err := f.ReadAt(root, clusterOff(rootCluster)); err != nil {
		return fmt.Errorf("read FAT32 root directory: %w", err)
	}
	for i := 0; i+32 <= len(root); i += 32 {
		e := root[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xe5 || e[11] == 0x0f || e[11]&0x10 == 0 || e[0] == '.' {
			continue
		}
		c := uint32(binary.LittleEndian.Uint16(e[20:22]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:28]))
		if c < 2 {
			continue
		}
		dd := make([]byte, 32)
		at := clusterOff(c) + 32
		if _, err := f.ReadAt(dd, at); err != nil {
			return fmt.Errorf("read FAT32 directory: %w", err)
		}
		if string(dd[0:11]) != "..         " {
			continue
		}
		if uint32(binary.LittleEndian.Uint16(dd[20:22]))<<16|uint32(binary.LittleEndian.Uint16(dd[26:28])) != rootCluster {
			continue
		}
		binary.LittleEndian.PutUint16(dd[20:22], 0)
		binary.LittleEndian.PutUint16(dd[26:28], 0)
		if _, err := f.WriteAt(dd, at); err != nil {
			return fmt.Errorf("write FAT32 directory: %w", err)
		}
	}

	// Free cluster count and next free cluster in FSInfo.
	clusters := (totalSectors - reserved - nfats*fatSize) / spc
	fat := make([]byte, fatSize*bps)
	if _, err := f.ReadAt(fat, off+reserved*bps); err != nil {
		return fmt.Errorf("read FAT: %w", err)
	}
	var free, next uint32
	for c := int64(2); c < clusters+2 && c*4+4 <= int64(len(fat)); c++ {
		if binary.LittleEndian.Uint32(fat[c*4:])&0x0fffffff == 0 {
			if next == 0 {
				next = uint32(c)
			}
			free++
		}
	}
	if fsinfo == 0 || fsinfo == 0xffff {
		return f.Sync()
	}
	fi := make([]byte, 512)
	if _, err := f.ReadAt(fi, off+fsinfo*bps); err != nil {
		return fmt.Errorf("read FSInfo: %w", err)
	}
	if string(fi[0:4]) != "RRaA" || string(fi[484:488]) != "rrAa" {
		return fmt.Errorf("FSInfo sector at %d: bad signature", fsinfo)
	}
	binary.LittleEndian.PutUint32(fi[488:492], free)
	binary.LittleEndian.PutUint32(fi[492:496], next)
	if _, err := f.WriteAt(fi, off+fsinfo*bps); err != nil {
		return fmt.Errorf("write FSInfo: %w", err)
	}
	return f.Sync()
}
