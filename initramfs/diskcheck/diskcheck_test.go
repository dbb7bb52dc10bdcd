package diskcheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
	"github.com/hnboot/hnboot/internal/layout"
)

const (
	mib       = 1 << 20
	diskSize  = 96 * mib
	espStart  = 2048             // sectors
	espEnd    = espStart + 81919 // 40 MiB: big enough for FAT32
	hostStart = espEnd + 1
	hostEnd   = diskSize/512 - 34 - 1 // leave room for the backup GPT
)

// testDisk describes a test disk.
type testDisk struct {
	mbr     bool            // MBR instead of GPT
	noTable bool            // no partition table at all
	espName string          // GPT name of partition 1
	espType gpt.Type        // default EFI System
	fsType  filesystem.Type // FAT flavour; -1: leave partition 1 unformatted
	label   string          // FAT label
	files   map[string]string
}

const noFS filesystem.Type = -1

var goodGrub = map[string]string{
	"/grub/grub.cfg":        "menuentry \"hn\" {\n  loopback loop ($root)/hn-root.img\n  linux (loop)/boot/vmlinuz real_root=/hn-root.img\n}\n",
	"/EFI/BOOT/BOOTX64.EFI": "MZ fake grub",
}

func with(m map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(out, kv[i])
		} else {
			out[kv[i]] = kv[i+1]
		}
	}
	return out
}

func makeDisk(t *testing.T, l testDisk) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	d, err := diskfs.Create(path, diskSize, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if l.noTable {
		return path
	}
	if l.mbr {
		err = d.Partition(&mbr.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, Partitions: []*mbr.Partition{
			{Index: 1, Type: mbr.Fat32LBA, Start: espStart, Size: espEnd - espStart + 1},
			{Index: 2, Type: mbr.Linux, Start: hostStart, Size: hostEnd - hostStart + 1},
		}})
	} else {
		typ := l.espType
		if typ == "" {
			typ = gpt.EFISystemPartition
		}
		err = d.Partition(&gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, Partitions: []*gpt.Partition{
			{Index: 1, Start: espStart, End: espEnd, Type: typ, Name: l.espName},
			{Index: 2, Start: hostStart, End: hostEnd, Type: gpt.LinuxFilesystem, Name: "hostpart"},
		}})
	}
	if err != nil {
		t.Fatal(err)
	}
	if l.fsType == noFS {
		return path
	}
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: l.fsType, VolumeLabel: l.label})
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(l.files))
	for name := range l.files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := fs.Mkdir(filepath.Dir(name)); err != nil {
			t.Fatal(err)
		}
		f, err := fs.OpenFile(name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write([]byte(l.files[name])); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return path
}

func codes(r Report) []string {
	var cs []string
	for _, p := range r.Problems {
		cs = append(cs, p.Code)
	}
	return cs
}

func TestCheck(t *testing.T) {
	good := testDisk{espName: "EFI-BOOT", fsType: filesystem.TypeFat32, label: "EFI-BOOT", files: goodGrub}
	mod := func(f func(*testDisk)) testDisk { l := good; f(&l); return l }
	tests := []struct {
		name     string
		l        testDisk
		hostpart int
		want     []string
		wantESP  int
	}{
		{"good", good, 2, nil, 1},
		{"good fat16", mod(func(l *testDisk) { l.fsType = filesystem.TypeFat16 }), 2, nil, 1},
		{"config in EFI/BOOT", mod(func(l *testDisk) {
			l.files = with(goodGrub, "/grub/grub.cfg", "", "/EFI/BOOT/grub.cfg", "loopback loop /hn-root.img")
		}), 2, nil, 1},
		{"found by FAT label only", mod(func(l *testDisk) { l.espName = "ESP" }), 2, nil, 1},
		{"no EFI-BOOT", mod(func(l *testDisk) { l.espName = "boot"; l.label = "OTHER" }), 2, []string{CodeNoESP}, 0},
		{"EFI-BOOT not FAT", mod(func(l *testDisk) { l.fsType = noFS }), 2, []string{CodeESPNotFAT}, 1},
		{"no grub.cfg", mod(func(l *testDisk) { l.files = with(goodGrub, "/grub/grub.cfg", "") }), 2, []string{CodeNoGrubCfg}, 1},
		{"grub.cfg without image", mod(func(l *testDisk) {
			l.files = with(goodGrub, "/grub/grub.cfg", "loopback loop /hn-root.img.part\nlinux /boot/vmlinuz\n")
		}), 2, []string{CodeGrubNoImage}, 1},
		{"no BOOTX64.EFI", mod(func(l *testDisk) { l.files = with(goodGrub, "/EFI/BOOT/BOOTX64.EFI", "") }), 2, []string{CodeNoEFILoader}, 1},
		{"wrong FAT label", mod(func(l *testDisk) { l.label = "BOOT" }), 2, []string{CodeESPLabel}, 1},
		{"wrong partition type", mod(func(l *testDisk) { l.espType = gpt.LinuxFilesystem }), 2, []string{CodeESPType}, 1},
		{"hostpart not in table", good, 5, []string{CodeNoHostpart}, 1},
		{"MBR disk", mod(func(l *testDisk) { l.mbr = true }), 2, []string{CodeMBR}, 1},
		{"no partition table", testDisk{noTable: true}, 0, []string{CodeNoTable, CodeNoESP}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := makeDisk(t, tt.l)
			r := CheckImage(path, tt.hostpart, layout.Current)
			if got := codes(r); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("CheckImage(%s).Problems = %q, want codes %q\n%s", tt.name, got, tt.want, r)
			}
			if r.ESP != tt.wantESP {
				t.Errorf("CheckImage(%s).ESP = %d, want %d", tt.name, r.ESP, tt.wantESP)
			}
			if fatal(r) {
				t.Errorf("CheckImage(%s).Fatal() = true, want false: disk problems are never fatal here", tt.name)
			}
			for _, p := range r.Problems {
				if !strings.Contains(p.Msg, path) {
					t.Errorf("CheckImage(%s) message %q does not name the disk %s", tt.name, p.Msg, path)
				}
			}
			if len(tt.want) == 0 && !strings.HasSuffix(r.String(), ": ok") {
				t.Errorf("CheckImage(%s).String() = %q, want it to end in ': ok'", tt.name, r)
			}
		})
	}
}

// The end-to-end test greps the console for these words.
func TestMissingESPMessage(t *testing.T) {
	r := CheckImage(makeDisk(t, testDisk{espName: "boot", fsType: filesystem.TypeFat32, label: "X"}), 2, layout.Current)
	s := r.String()
	if !strings.Contains(s, "EFI-BOOT") || !strings.Contains(s, "missing") {
		t.Errorf("CheckImage(no EFI-BOOT).String() = %q, want it to contain EFI-BOOT and missing", s)
	}
}

func TestCheckImageName(t *testing.T) {
	path := makeDisk(t, testDisk{espName: "EFI-BOOT", fsType: filesystem.TypeFat32, label: "EFI-BOOT", files: goodGrub})
	if r := CheckImage(path, 2, "other.img"); !has(r, CodeGrubNoImage) || !strings.Contains(r.String(), "other.img") {
		t.Errorf("CheckImage(other.img) = %q, want %s naming other.img", r, CodeGrubNoImage)
	}
}

func TestCheckUnreadable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	r := CheckImage(missing, 2, layout.Current)
	if !has(r, CodeUnreadable) || !strings.Contains(r.String(), missing) {
		t.Errorf("CheckImage(missing) = %q, want %s naming %s", r, CodeUnreadable, missing)
	}
}

func TestMentions(t *testing.T) {
	tests := []struct {
		cfg  string
		want bool
	}{
		{"loopback loop ($root)/hn-root.img", true},
		{"real_root=/hn-root.img ro", true},
		{`"hn-root.img"`, true},
		{"hn-root.img", true},
		{"/hn-root.img.part", false},
		{"/old-hn-root.img", false},
		{"/hn-root-new.img", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := mentions(tt.cfg, "hn-root.img"); got != tt.want {
			t.Errorf("mentions(%q, hn-root.img) = %v, want %v", tt.cfg, got, tt.want)
		}
	}
}

func TestPartitionDevice(t *testing.T) {
	tests := map[string]string{"/dev/vda": "/dev/vda2", "/dev/nvme0n1": "/dev/nvme0n1p2", "/dev/mmcblk0": "/dev/mmcblk0p2", "/dev/loop0": "/dev/loop0p2"}
	for disk, want := range tests {
		if got := PartitionDevice(disk, 2); got != want {
			t.Errorf("PartitionDevice(%q, 2) = %q, want %q", disk, got, want)
		}
	}
}

// Real loader partitions are made by mkfs.vfat and filled by grub-install
// (or mtools), not by go-diskfs; check that those read back too.
func TestCheckMkfsVfatESP(t *testing.T) {
	for _, tool := range []string{"mkfs.vfat", "mmd", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
	dir := t.TempDir()
	esp := filepath.Join(dir, "esp.img")
	cfg := filepath.Join(dir, "grub.cfg")
	efi := filepath.Join(dir, "BOOTX64.EFI")
	os.WriteFile(cfg, []byte(goodGrub["/grub/grub.cfg"]), 0o644)
	os.WriteFile(efi, []byte("MZ"), 0o644)
	size := int64(espEnd-espStart+1) * 512
	for _, cmd := range [][]string{
		{"mkfs.vfat", "-C", "-F", "32", "-n", "EFI-BOOT", esp, strconv.FormatInt(size/1024, 10)},
		{"mmd", "-i", esp, "::/grub", "::/EFI", "::/EFI/BOOT"},
		{"mcopy", "-i", esp, cfg, "::/grub/grub.cfg"},
		{"mcopy", "-i", esp, efi, "::/EFI/BOOT/BOOTX64.EFI"},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	path := makeDisk(t, testDisk{espName: "EFI-BOOT", fsType: noFS})
	d, err := diskfs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := os.Open(esp)
	defer src.Close()
	if _, err := d.WritePartitionContents(1, src); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if r := CheckImage(path, 2, layout.Current); len(r.Problems) != 0 || r.ESP != 1 {
		t.Errorf("CheckImage(mkfs.vfat ESP) = %q (ESP %d), want ok with ESP 1", r, r.ESP)
	}
}

// fatal reports whether any problem in r is fatal.
func fatal(r Report) bool {
	for _, p := range r.Problems {
		if p.Fatal {
			return true
		}
	}
	return false
}

// has reports whether r has a problem with code.
func has(r Report, code string) bool {
	for _, p := range r.Problems {
		if p.Code == code {
			return true
		}
	}
	return false
}
