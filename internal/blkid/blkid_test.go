package blkid

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mkimg creates a sparse file of size bytes and runs a mkfs-like command
// on it; the image path replaces "IMG" in args. Missing tools skip the test
// so a bare CI image still runs the rest (scripts/deps.sh installs them).
func mkimg(t *testing.T, size int64, tool string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed: %v", tool, err)
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	if size > 0 {
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, size); err != nil {
			t.Fatal(err)
		}
	}
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "IMG", img)
	}
	if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
	}
	return img
}

func probeFile(t *testing.T, path string) (Info, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Probe(f)
}

const testUUID = "0b7c3f6e-2a1d-4c5e-9f80-1234567890ab"

func TestProbeRealFilesystems(t *testing.T) {
	const M = 1 << 20
	tests := []struct {
		name string
		size int64
		tool string
		args []string
		want Info
	}{
		{"ext4", 8 * M, "mkfs.ext4", []string{"-q", "-F", "-L", "hostpart", "-U", testUUID, "IMG"},
			Info{Type: "ext4", Label: "hostpart", UUID: testUUID, Size: 8 * M}},
		{"ext4 64bit 1k blocks", 8 * M, "mkfs.ext4", []string{"-q", "-F", "-b", "1024", "-O", "64bit", "-L", "x", "-U", testUUID, "IMG"},
			Info{Type: "ext4", Label: "x", UUID: testUUID, Size: 8 * M}},
		{"ext3", 8 * M, "mkfs.ext3", []string{"-q", "-F", "-L", "old", "-U", testUUID, "IMG"},
			Info{Type: "ext3", Label: "old", UUID: testUUID, Size: 8 * M}},
		{"ext2", 4 * M, "mkfs.ext2", []string{"-q", "-F", "-U", testUUID, "IMG"},
			Info{Type: "ext2", UUID: testUUID, Size: 4 * M}},
		{"fat12", 2 * M, "mkfs.vfat", []string{"-n", "EFI-BOOT", "-i", "1234ABCD", "IMG"},
			Info{Type: "vfat", Label: "EFI-BOOT", UUID: "1234-ABCD", Size: 2 * M}},
		{"fat16", 20 * M, "mkfs.vfat", []string{"-F", "16", "-n", "EFI-BOOT", "-i", "deadbeef", "IMG"},
			Info{Type: "vfat", Label: "EFI-BOOT", UUID: "DEAD-BEEF", Size: 20 * M}},
		{"fat32", 64 * M, "mkfs.vfat", []string{"-F", "32", "-n", "EFI-BOOT", "-i", "00C0FFEE", "IMG"},
			Info{Type: "vfat", Label: "EFI-BOOT", UUID: "00C0-FFEE", Size: 64 * M}},
		{"fat32 no label", 64 * M, "mkfs.vfat", []string{"-F", "32", "-i", "00C0FFEE", "IMG"},
			Info{Type: "vfat", UUID: "00C0-FFEE", Size: 64 * M}},
		{"btrfs", 128 * M, "mkfs.btrfs", []string{"-q", "-f", "-L", "hostpart", "-U", testUUID, "IMG"},
			Info{Type: "btrfs", Label: "hostpart", UUID: testUUID, Size: 128 * M}},
		{"xfs", 320 * M, "mkfs.xfs", []string{"-q", "-f", "-L", "hostpart", "-m", "uuid=" + testUUID, "IMG"},
			Info{Type: "xfs", Label: "hostpart", UUID: testUUID, Size: 320 * M}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := mkimg(t, tt.size, tt.tool, tt.args...)
			got, err := probeFile(t, img)
			if err != nil {
				t.Fatalf("Probe(%s) error = %v, want nil", tt.name, err)
			}
			if got != tt.want {
				t.Errorf("Probe(%s) = %+v, want %+v", tt.name, got, tt.want)
			}
		})
	}
}

func TestProbeSquashfsAndImageSize(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), bytes.Repeat([]byte("hnboot "), 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	img := mkimg(t, 0, "mksquashfs", src, "IMG", "-noappend", "-quiet", "-no-progress")
	info, err := probeFile(t, img)
	if err != nil || info.Type != "squashfs" {
		t.Fatalf("Probe(squashfs) = %+v, %v, want type squashfs", info, err)
	}
	st, _ := os.Stat(img)
	// mksquashfs pads the file to 4 KiB; bytes_used is the unpadded size.
	if info.Size <= 0 || info.Size > st.Size() || st.Size()-info.Size >= 4096 {
		t.Errorf("Probe(squashfs).Size = %d, want within 4 KiB below file size %d", info.Size, st.Size())
	}

	b, _ := os.ReadFile(img)
	typ, need, err := ImageSize(bytes.NewReader(b))
	if typ != "squashfs" || need != info.Size || err != nil {
		t.Errorf("ImageSize(squashfs) = %q, %d, %v, want squashfs, %d, nil", typ, need, err, info.Size)
	}
	// A truncated image still names its full size, which is how callers
	// detect the truncation.
	typ, need, err = ImageSize(bytes.NewReader(b[:len(b)/2]))
	if typ != "squashfs" || need != info.Size || err != nil {
		t.Errorf("ImageSize(half squashfs) = %q, %d, %v, want squashfs, %d, nil", typ, need, err, info.Size)
	}
}

// TestCheckImageFile: content problems wrap ErrNotImage, a file that
// cannot be read does not (the init must not replace an image on a guess).
func TestCheckImageFile(t *testing.T) {
	img := mkimg(t, 6<<20, "mkfs.ext4", "-q", "-F", "IMG")
	b, _ := os.ReadFile(img)
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		body    []byte // nil: no file
		want    string // in the error; "" for nil
		content bool   // a content error: wraps ErrNotImage
	}{
		{"complete", b, "", false},
		{"truncated", b[:3<<20], "is truncated", true},
		{"zeros", make([]byte, 1<<20), "is not a root filesystem image", true},
		{"empty", []byte{}, "is not a root filesystem image", true},
		{"missing", nil, "no such file", false},
	} {
		p := filepath.Join(dir, tc.name)
		if tc.body != nil {
			if err := os.WriteFile(p, tc.body, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		err := CheckImageFile(p)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) || errors.Is(err, ErrNotImage) != tc.content {
			t.Errorf("CheckImageFile(%s) = %v, want %q (ErrNotImage %v)", tc.name, err, tc.want, tc.content)
		}
	}
}

func TestImageSizeExt4(t *testing.T) {
	img := mkimg(t, 6<<20, "mkfs.ext4", "-q", "-F", "IMG")
	b, _ := os.ReadFile(img)
	typ, need, err := ImageSize(bytes.NewReader(b[:3<<20]))
	if typ != "ext4" || need != 6<<20 || err != nil {
		t.Errorf("ImageSize(truncated ext4) = %q, %d, %v, want ext4, %d, nil", typ, need, err, 6<<20)
	}
	if _, _, err := ImageSize(bytes.NewReader(make([]byte, 1<<20))); !errors.Is(err, ErrUnknown) {
		t.Errorf("ImageSize(zeros) error = %v, want ErrUnknown", err)
	}
}

func TestProbeUnknown(t *testing.T) {
	gptLike := make([]byte, 1<<20)
	gptLike[510], gptLike[511] = 0x55, 0xAA // a protective MBR is not a FAT boot sector
	for name, b := range map[string][]byte{
		"empty": nil, "short": []byte("hsq"), "zeros": make([]byte, 128<<10), "mbr": gptLike,
	} {
		if info, err := Probe(bytes.NewReader(b)); !errors.Is(err, ErrUnknown) {
			t.Errorf("Probe(%s) = %+v, %v, want ErrUnknown", name, info, err)
		}
	}
}

// The label in the root directory is what fatlabel and Windows change; it
// wins over the boot sector copy, as in blkid.
func TestProbeFATRootDirLabelWins(t *testing.T) {
	img := mkimg(t, 64<<20, "mkfs.vfat", "-F", "32", "-n", "EFI-BOOT", "IMG")
	b, _ := os.ReadFile(img)
	copy(b[71:82], "STALE      ")
	info, err := Probe(bytes.NewReader(b))
	if err != nil || info.Label != "EFI-BOOT" {
		t.Errorf("Probe(fat32 with stale boot sector label) = %+v, %v, want label EFI-BOOT", info, err)
	}
}

// fakeSys builds a sysfs-like tree: /sys/devices/... directories with
// dev, size, uevent and partition files, and /sys/class/block symlinks
// into them, plus a dev dir whose "devices" are regular files.
type fakeSys struct {
	t                *testing.T
	root, class, dev string
}

func newFakeSys(t *testing.T) *fakeSys {
	root := t.TempDir()
	fs := &fakeSys{t: t, root: root, class: filepath.Join(root, "sys/class/block"), dev: filepath.Join(root, "dev")}
	for _, d := range []string{fs.class, fs.dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return fs
}

// add creates a device; devPath is relative to /sys/devices, e.g.
// "pci/block/vda/vda2". image is copied to dev/<name> (nil: no dev node).
func (fs *fakeSys) add(devPath, partname string, partno int, image []byte, holders ...string) {
	t := fs.t
	name := filepath.Base(devPath)
	dir := filepath.Join(fs.root, "sys/devices", devPath)
	write := func(file, content string) {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "dev"), "253:0\n")
	write(filepath.Join(dir, "size"), "2048\n")
	uevent := "MAJOR=253\nMINOR=0\nDEVNAME=" + name + "\n"
	if partno > 0 {
		write(filepath.Join(dir, "partition"), string(rune('0'+partno))+"\n")
		uevent += "DEVTYPE=partition\nPARTN=" + string(rune('0'+partno)) + "\n"
		if partname != "" {
			uevent += "PARTNAME=" + partname + "\n"
		}
	} else {
		uevent += "DEVTYPE=disk\n"
	}
	write(filepath.Join(dir, "uevent"), uevent)
	if err := os.MkdirAll(filepath.Join(dir, "holders"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, h := range holders {
		if err := os.Symlink("../../"+h, filepath.Join(dir, "holders", h)); err != nil {
			t.Fatal(err)
		}
	}
	rel, _ := filepath.Rel(fs.class, dir)
	if err := os.Symlink(rel, filepath.Join(fs.class, name)); err != nil {
		t.Fatal(err)
	}
	if image != nil {
		write(filepath.Join(fs.dev, name), string(image))
	}
}

func readImg(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFindAndParent(t *testing.T) {
	ext := readImg(t, mkimg(t, 4<<20, "mkfs.ext4", "-q", "-F", "-L", "hostpart", "-U", testUUID, "IMG"))
	fat := readImg(t, mkimg(t, 2<<20, "mkfs.vfat", "-n", "EFI-BOOT", "-i", "1234ABCD", "IMG"))
	other := readImg(t, mkimg(t, 4<<20, "mkfs.ext4", "-q", "-F", "-L", "scratch", "IMG"))

	fs := newFakeSys(t)
	fs.add("pci/virtio1/block/vda", "", 0, make([]byte, 4096))
	fs.add("pci/virtio1/block/vda/vda1", "EFI-BOOT", 1, fat)
	fs.add("pci/virtio1/block/vda/vda2", "hostpart", 2, ext)
	fs.add("pci/nvme/nvme0/nvme0n1", "", 0, make([]byte, 4096))
	fs.add("pci/nvme/nvme0/nvme0n1/nvme0n1p3", "data", 3, other)
	fs.add("virtual/block/sr0", "", 0, nil) // no medium: cannot be opened
	// An md member carrying a copy of the same filesystem must not count.
	fs.add("pci/ata/block/sdb", "", 0, make([]byte, 4096))
	fs.add("pci/ata/block/sdb/sdb1", "", 1, ext, "md0")
	// ram disks are skipped outright.
	fs.add("virtual/block/ram0", "", 0, ext)

	tests := []struct {
		spec, wantDev string
		wantType      string
	}{
		{"LABEL=hostpart", "vda2", "ext4"},
		{"UUID=" + strings.ToUpper(testUUID), "vda2", "ext4"},
		{"LABEL=EFI-BOOT", "vda1", "vfat"},
		{"UUID=1234-abcd", "vda1", "vfat"},
		{"PARTLABEL=hostpart", "vda2", "ext4"},
		{"PARTLABEL=data", "nvme0n1p3", "ext4"},
		{"/dev/vda2", "vda2", "ext4"},
		{"/dev/vda", "vda", ""}, // explicit device without a filesystem: found, type unknown
	}
	for _, tt := range tests {
		dev, info, err := Find(tt.spec, fs.class, fs.dev)
		if err != nil || dev != filepath.Join(fs.dev, tt.wantDev) || info.Type != tt.wantType {
			t.Errorf("Find(%q) = %q, %+v, %v, want %q, type %q, nil", tt.spec, dev, info, err, filepath.Join(fs.dev, tt.wantDev), tt.wantType)
		}
	}

	for _, spec := range []string{"LABEL=nope", "PARTLABEL=nope", "UUID=0000-0000"} {
		_, _, err := Find(spec, fs.class, fs.dev)
		if err == nil {
			t.Errorf("Find(%q) error = nil, want not found", spec)
			continue
		}
		msg := err.Error()
		for _, want := range []string{spec, `vda1 (vfat, "EFI-BOOT", partname "EFI-BOOT")`, `vda2 (ext4, "hostpart"`, "sr0 (unreadable", "sdb1 (ext4", "in use by md/dm"} {
			if !strings.Contains(msg, want) {
				t.Errorf("Find(%q) error = %q, want it to contain %q", spec, msg, want)
			}
		}
		if strings.Contains(msg, "ram0") {
			t.Errorf("Find(%q) error = %q, want ram0 not listed", spec, msg)
		}
	}
	for _, spec := range []string{"hostpart", "LABEL=", "PARTUUID=x"} {
		if _, _, err := Find(spec, fs.class, fs.dev); err == nil {
			t.Errorf("Find(%q) error = nil, want bad spec", spec)
		}
	}
	if _, _, err := Find("/dev/missing", fs.class, fs.dev); err == nil {
		t.Errorf("Find(/dev/missing) error = nil, want open error")
	}

	parents := []struct {
		name, disk string
		partno     int
	}{
		{"vda2", "vda", 2}, {"/dev/vda1", "vda", 1}, {"nvme0n1p3", "nvme0n1", 3}, {"vda", "vda", 0},
	}
	for _, tt := range parents {
		disk, partno, err := Parent(tt.name, fs.class)
		if disk != tt.disk || partno != tt.partno || err != nil {
			t.Errorf("Parent(%q) = %q, %d, %v, want %q, %d, nil", tt.name, disk, partno, err, tt.disk, tt.partno)
		}
	}
	if _, _, err := Parent("nope", fs.class); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Parent(nope) error = %v, want one naming nope", err)
	}
}

func TestFindDuplicate(t *testing.T) {
	ext := readImg(t, mkimg(t, 4<<20, "mkfs.ext4", "-q", "-F", "-L", "hostpart", "IMG"))
	fs := newFakeSys(t)
	fs.add("pci/block/vda/vda2", "", 2, ext)
	fs.add("usb/block/sdc/sdc1", "", 1, ext)
	_, _, err := Find("LABEL=hostpart", fs.class, fs.dev)
	if err == nil || !strings.Contains(err.Error(), "vda2") || !strings.Contains(err.Error(), "sdc1") {
		t.Errorf("Find(duplicate LABEL=hostpart) error = %v, want one naming vda2 and sdc1", err)
	}
}

func TestFindEmptySys(t *testing.T) {
	fs := newFakeSys(t)
	_, _, err := Find("LABEL=hostpart", fs.class, fs.dev)
	if err == nil || !strings.Contains(err.Error(), "seen: none") {
		t.Errorf("Find(empty sysfs) error = %v, want 'seen: none'", err)
	}
}
