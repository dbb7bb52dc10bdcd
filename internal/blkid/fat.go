package blkid

import (
	"fmt"
	"io"
	"strings"
)

// probeFAT recognises FAT12/16/32 by a plausible BIOS parameter block, since
// FAT has no magic number of its own. The label is taken, like blkid does,
// from the root directory's volume-label entry when there is one (that is
// what fatlabel and Windows change), else from the boot sector's BS_VolLab.
func probeFAT(r io.ReaderAt) (Info, bool, error) {
	bs, ok, err := readAt(r, 0, 512)
	if !ok || err != nil {
		return Info{}, false, err
	}
	if bs[510] != 0x55 || bs[511] != 0xAA || (bs[0] != 0xEB && bs[0] != 0xE9) {
		return Info{}, false, nil
	}
	bps := int64(le.Uint16(bs[11:]))
	spc := int64(bs[13])
	reserved := int64(le.Uint16(bs[14:]))
	nfats := int64(bs[16])
	rootEntries := int64(le.Uint16(bs[17:]))
	total := int64(le.Uint16(bs[19:]))
	media := bs[21]
	fatSize := int64(le.Uint16(bs[22:]))
	if total == 0 {
		total = int64(le.Uint32(bs[32:]))
	}
	if (bps != 512 && bps != 1024 && bps != 2048 && bps != 4096) ||
		spc == 0 || spc&(spc-1) != 0 || reserved == 0 || nfats == 0 || nfats > 4 ||
		(media != 0xF0 && media < 0xF8) || total == 0 {
		return Info{}, false, nil
	}

	fat32 := fatSize == 0
	extSig, idOff, labelOff := 38, 39, 43
	rootCluster := int64(0)
	if fat32 {
		fatSize = int64(le.Uint32(bs[36:]))
		rootCluster = int64(le.Uint32(bs[44:]))
		extSig, idOff, labelOff = 66, 67, 71
		if fatSize == 0 || rootCluster < 2 {
			return Info{}, false, nil
		}
	}

	info := Info{Type: "vfat", Size: total * bps}
	// 0x29 carries serial and label; 0x28 only the serial.
	if bs[extSig] == 0x29 || bs[extSig] == 0x28 {
		id := le.Uint32(bs[idOff:])
		info.UUID = fmt.Sprintf("%04X-%04X", id>>16, id&0xFFFF)
	}
	if bs[extSig] == 0x29 {
		info.Label = fatLabel(bs[labelOff : labelOff+11])
	}

	firstData := (reserved + nfats*fatSize) * bps
	var rootLabel string
	var found bool
	if fat32 {
		rootLabel, found, err = fat32RootLabel(r, reserved*bps, firstData, spc*bps, rootCluster)
	} else {
		rootLabel, found, _, err = dirLabel(r, firstData, rootEntries*32)
	}
	if err != nil {
		return Info{}, false, fmt.Errorf("vfat root directory: %w", err)
	}
	if found {
		info.Label = rootLabel
	}
	return info, true, nil
}

func fatLabel(b []byte) string {
	s := strings.TrimRight(string(b), " \x00")
	if s == "NO NAME" {
		return ""
	}
	return s
}

// dirLabel scans one run of directory entries for the volume label.
// end is true when the end-of-directory marker was seen, so callers stop
// following the cluster chain.
func dirLabel(r io.ReaderAt, off, size int64) (label string, found, end bool, err error) {
	if size <= 0 || size > 1<<20 {
		return "", false, true, nil
	}
	b, ok, err := readAt(r, off, int(size))
	if !ok || err != nil {
		return "", false, true, err
	}
	for i := 0; i+32 <= len(b); i += 32 {
		e := b[i : i+32]
		switch {
		case e[0] == 0:
			return "", false, true, nil
		case e[0] == 0xE5: // deleted
		case e[11] == 0x0F: // long-file-name fragment
		case e[11]&0x08 != 0:
			name := append([]byte(nil), e[:11]...)
			if name[0] == 0x05 { // escaped 0xE5
				name[0] = 0xE5
			}
			return fatLabel(name), true, true, nil
		}
	}
	return "", false, false, nil
}

// fat32RootLabel follows the root directory's cluster chain (bounded, as
// a corrupt FAT could loop) looking for the volume-label entry.
func fat32RootLabel(r io.ReaderAt, fatOff, firstData, clusterSize, cluster int64) (string, bool, error) {
	for i := 0; i < 64 && cluster >= 2 && cluster < 0x0FFFFFF7; i++ {
		label, found, end, err := dirLabel(r, firstData+(cluster-2)*clusterSize, clusterSize)
		if err != nil || end {
			return label, found, err
		}
		next, ok, err := readAt(r, fatOff+cluster*4, 4)
		if !ok || err != nil {
			return "", false, err
		}
		cluster = int64(le.Uint32(next) & 0x0FFFFFFF)
	}
	return "", false, nil
}
