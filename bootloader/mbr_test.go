package bootloader

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"
)

// fakeBootImg looks like GRUB 2.06's boot.img where PatchBootSector looks.
func fakeBootImg() []byte {
	b := bytes.Repeat([]byte{0xcc}, SectorSize)
	binary.LittleEndian.PutUint64(b[mbrKernelSector:], 1)
	b[mbrBootDrive] = 0xff
	b[mbrDriveCheck], b[mbrDriveCheck+1] = 0xeb, 0x05
	b[510], b[511] = 0x55, 0xaa
	return b
}

func protectiveMBR() []byte {
	m := make([]byte, SectorSize)
	copy(m[mbrNTMagic:], []byte{0x12, 0x34, 0x56, 0x78})
	e := m[0x1be:]
	e[4] = 0xee // GPT protective
	binary.LittleEndian.PutUint32(e[8:], 1)
	binary.LittleEndian.PutUint32(e[12:], 0xffffffff)
	m[510], m[511] = 0x55, 0xaa
	return m
}

func TestPatchBootSector(t *testing.T) {
	boot, mbr := fakeBootImg(), protectiveMBR()
	bootCopy, mbrCopy := append([]byte(nil), boot...), append([]byte(nil), mbr...)
	got, err := PatchBootSector(boot, mbr, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(boot, bootCopy) || !bytes.Equal(mbr, mbrCopy) {
		t.Errorf("PatchBootSector modified its arguments")
	}
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"kernel sector (0x5c)", BootSectorCore(got), uint64(2048)},
		{"boot drive (0x64)", got[mbrBootDrive], byte(0xff)},
		{"drive check (0x66)", [2]byte(got[mbrDriveCheck : mbrDriveCheck+2]), [2]byte{0x90, 0x90}},
		{"code before 0x5c", string(got[:mbrKernelSector]), string(boot[:mbrKernelSector])},
		{"code 0x68..0x1b8", string(got[mbrDriveCheck+2 : mbrNTMagic]), string(boot[mbrDriveCheck+2 : mbrNTMagic])},
		{"signature and partition table", string(got[mbrNTMagic:]), string(mbr[mbrNTMagic:])},
	} {
		if c.got != c.want {
			t.Errorf("PatchBootSector(boot.img, pmbr, 2048) %s = %v, want %v", c.what, c.got, c.want)
		}
	}
}

func TestPatchBootSectorErrors(t *testing.T) {
	notGrub := fakeBootImg()
	notGrub[mbrDriveCheck] = 0x00
	for _, tt := range []struct {
		name      string
		boot, mbr []byte
		lba       uint64
		want      string
	}{
		{"short boot.img", make([]byte, 100), protectiveMBR(), 2048, "boot.img is 100 bytes"},
		{"short mbr", fakeBootImg(), make([]byte, 10), 2048, "MBR is 10 bytes"},
		{"no signature", make([]byte, SectorSize), protectiveMBR(), 2048, "0x55aa"},
		{"not grub", notGrub, protectiveMBR(), 2048, "not GRUB 2"},
		{"sector 0", fakeBootImg(), protectiveMBR(), 0, "sector 0"},
	} {
		_, err := PatchBootSector(tt.boot, tt.mbr, tt.lba)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("PatchBootSector(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
	}
}

// fakeCore has diskboot.img's default block list (start 2, length 0,
// segment 0x820) and n bytes in all.
func fakeCore(n int) []byte {
	c := bytes.Repeat([]byte{0xaa}, n)
	clear(c[blocklistFirst-blocklistSize : SectorSize])
	binary.LittleEndian.PutUint64(c[blocklistFirst:], 2)
	binary.LittleEndian.PutUint16(c[blocklistFirst+10:], coreFirstSegment)
	return c
}

func TestPatchCore(t *testing.T) {
	for _, tt := range []struct {
		size     int
		lba      uint64
		wantLen  uint16
		wantSize int
	}{
		{size: 174469, lba: 2048, wantLen: 340, wantSize: 341 * SectorSize},
		{size: 2 * SectorSize, lba: 34, wantLen: 1, wantSize: 2 * SectorSize},
		{size: SectorSize + 1, lba: 1 << 33, wantLen: 1, wantSize: 2 * SectorSize},
	} {
		in := fakeCore(tt.size)
		got, err := PatchCore(in, tt.lba)
		if err != nil {
			t.Fatalf("PatchCore(%d bytes, %d) = %v", tt.size, tt.lba, err)
		}
		start, n, seg := CoreBlocklist(got)
		if start != tt.lba+1 || n != tt.wantLen || seg != coreFirstSegment || len(got) != tt.wantSize {
			t.Errorf("PatchCore(%d bytes, %d) = block list (%d, %d, %#x), %d bytes; want (%d, %d, 0x820), %d bytes",
				tt.size, tt.lba, start, n, seg, len(got), tt.lba+1, tt.wantLen, tt.wantSize)
		}
		if term := got[blocklistFirst-blocklistSize : blocklistFirst]; !bytes.Equal(term, make([]byte, blocklistSize)) {
			t.Errorf("PatchCore(%d bytes): the second block list entry = %x, want zeros (end of list)", tt.size, term)
		}
		if !bytes.Equal(got[SectorSize:tt.size], in[SectorSize:]) {
			t.Errorf("PatchCore(%d bytes) changed the core after its first sector", tt.size)
		}
	}
}

func TestPatchCoreErrors(t *testing.T) {
	wrongSeg := fakeCore(4 * SectorSize)
	binary.LittleEndian.PutUint16(wrongSeg[blocklistFirst+10:], 0x1234)
	for _, tt := range []struct {
		name string
		core []byte
		want string
	}{
		{"one sector", fakeCore(SectorSize), "too small"},
		{"not diskboot", wrongSeg, "segment 0x1234"},
		{"too large", fakeCore(0x10001*SectorSize + 1), "more than one block list"},
	} {
		_, err := PatchCore(tt.core, 2048)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("PatchCore(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
	}
}

// TestGrubImages builds both GRUB images with Debian's GRUB and checks the
// real boot.img and core.img patch as the fakes do.
func TestGrubImages(t *testing.T) {
	efi, err := EFIImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(efi) < 64 || string(efi[:2]) != "MZ" || string(efi[binary.LittleEndian.Uint32(efi[0x3c:]):][:4]) != "PE\x00\x00" {
		t.Errorf("EFIImage() is not a PE/COFF binary (%d bytes)", len(efi))
	}
	boot, core, err := BIOSImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(core) > 1<<20-SectorSize {
		t.Errorf("BIOSImages() core.img is %d bytes, want it to fit a 1 MiB BIOS boot partition", len(core))
	}
	if _, err := PatchBootSector(boot, protectiveMBR(), 2048); err != nil {
		t.Errorf("PatchBootSector(Debian's boot.img) = %v", err)
	}
	if _, err := PatchCore(core, 2048); err != nil {
		t.Errorf("PatchCore(grub-mkimage -O i386-pc) = %v", err)
	}
}

func TestParseBoot(t *testing.T) {
	for _, tt := range []struct {
		in         string
		want       Boot
		uefi, bios bool
		err        bool
	}{
		{"uefi", BootUEFI, true, false, false},
		{"BIOS", BootBIOS, false, true, false},
		{"both", BootBoth, true, true, false},
		{"none", BootNone, false, false, false},
		{"efi", "", false, false, true},
	} {
		got, err := ParseBoot(tt.in)
		if (err != nil) != tt.err || got != tt.want || got.UEFI() != tt.uefi || got.BIOS() != tt.bios {
			t.Errorf("ParseBoot(%q) = %q (uefi %v bios %v), %v; want %q (uefi %v bios %v), error %v", tt.in, got, got.UEFI(), got.BIOS(), err, tt.want, tt.uefi, tt.bios, tt.err)
		}
	}
}
