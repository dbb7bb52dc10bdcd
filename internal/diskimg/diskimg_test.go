package diskimg

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/bootloader"
	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/rootfs"
)

func TestLayout(t *testing.T) {
	for _, tt := range []struct {
		size, efi      int64
		wantHostOff    int64
		wantHostSize   int64
		wantErrContain string
	}{
		{size: 512 * mib, efi: 128 * mib, wantHostOff: 129 * mib, wantHostSize: 382 * mib},
		{size: 3 << 40, efi: 128 * mib, wantHostOff: 129 * mib, wantHostSize: 3<<40 - 130*mib},
		{size: 512 * mib, efi: 64 * mib, wantErrContain: "64 MiB"},
		{size: 512*mib + 1, efi: 128 * mib, wantErrContain: "multiple of 512"},
		{size: 130 * mib, efi: 128 * mib, wantErrContain: "no room"},
		{size: 512 * mib, efi: 16 * mib, wantErrContain: "too small"},
	} {
		parts, err := LayoutBoot(tt.size, tt.efi, false)
		if tt.wantErrContain != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErrContain) {
				t.Errorf("LayoutBoot(%d, %d, false) = %v, want error containing %q", tt.size, tt.efi, err, tt.wantErrContain)
			}
			continue
		}
		if err != nil {
			t.Errorf("LayoutBoot(%d, %d, false) = %v", tt.size, tt.efi, err)
			continue
		}
		if parts[0].Offset != mib || parts[0].Size != tt.efi {
			t.Errorf("LayoutBoot(%d, %d, false)[0] = %+v, want offset 1 MiB, size %d", tt.size, tt.efi, parts[0], tt.efi)
		}
		if parts[1].Offset != tt.wantHostOff || parts[1].Size != tt.wantHostSize {
			t.Errorf("LayoutBoot(%d, %d, false)[1] = %+v, want offset %d size %d", tt.size, tt.efi, parts[1], tt.wantHostOff, tt.wantHostSize)
		}
	}
}

// images makes small root images: a current one and an old one.
func images(t *testing.T, dir string) (root, old string) {
	t.Helper()
	src := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(src, "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "boot/vmlinuz"), bytes.Repeat([]byte("k"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	root, old = filepath.Join(dir, "root.img"), filepath.Join(dir, "old.img")
	for i, out := range []string{root, old} {
		if _, err := rootfs.Build(context.Background(), rootfs.Options{Dir: src, Out: out, Epoch: int64(i), HasEpoch: true}); err != nil {
			t.Fatal(err)
		}
	}
	return root, old
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestBuild runs with and without SOURCE_DATE_EPOCH: the reproducible path
// passes mkfs.ext4 more options, and once dropped the partition offset.
func TestBuild(t *testing.T) {
	for _, repro := range []bool{false, true} {
		t.Run(fmt.Sprintf("reproducible=%v", repro), func(t *testing.T) { testBuild(t, repro) })
	}
}

func testBuild(t *testing.T, repro bool) {
	dir := t.TempDir()
	root, old := images(t, dir)
	out := filepath.Join(dir, "disk.raw")
	cfg := bootloader.GrubConfig(bootloader.Options{})
	res, err := Build(context.Background(), Options{Out: out, Size: 512 * mib, Root: root, Old: old, GrubConfig: cfg, Epoch: 1700000000, HasEpoch: repro})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out + ".staging"); err == nil {
		t.Errorf("Build left %s.staging behind", out)
	}
	if tmps := temporaries(t, out); len(tmps) > 0 {
		t.Errorf("Build left %v behind", tmps)
	}

	// GPT, read back with go-diskfs.
	d, err := diskfs.Open(out, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	table, ok := pt.(*gpt.Table)
	if !ok {
		t.Fatalf("partition table is %T, want GPT", pt)
	}
	want := []struct {
		name string
		typ  gpt.Type
	}{{layout.ESPLabel, gpt.EFISystemPartition}, {layout.HostpartLabel, gpt.LinuxFilesystem}}
	var got []*gpt.Partition
	for _, p := range table.Partitions {
		if p.Type != gpt.Unused {
			got = append(got, p)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("GPT has %d partitions, want %d", len(got), len(want))
	}
	for i, w := range want {
		p := got[i]
		if p.Name != w.name || !strings.EqualFold(string(p.Type), string(w.typ)) {
			t.Errorf("partition %d = %q %s, want %q %s", i+1, p.Name, p.Type, w.name, w.typ)
		}
		if int64(p.Start)*512 != res.Partitions[i].Offset || int64(p.End-p.Start+1)*512 != res.Partitions[i].Size {
			t.Errorf("partition %d sectors %d-%d, want offset %d size %d", i+1, p.Start, p.End, res.Partitions[i].Offset, res.Partitions[i].Size)
		}
	}
	if res.Partitions[0].Size != DefaultEFISize {
		t.Errorf("EFI-BOOT size = %d, want %d", res.Partitions[0].Size, DefaultEFISize)
	}

	// The GRUB configuration on the FAT partition.
	fs, err := d.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	if l := strings.TrimSpace(fs.Label()); l != layout.ESPLabel {
		t.Errorf("FAT label = %q, want %q", l, layout.ESPLabel)
	}
	if o := run(t, "/sbin/sgdisk", "-v", out); !strings.Contains(o, "No problems found") {
		t.Errorf("sgdisk -v %s = %s, want no problems", out, o)
	}

	// fsck.vfat cannot take an offset: check a copy of the partition.
	esp := filepath.Join(dir, "esp.img")
	copyRange(t, out, esp, res.Partitions[0].Offset, res.Partitions[0].Size)
	run(t, "/sbin/fsck.vfat", "-n", esp)
	// go-diskfs v1.9.4 reads FAT files back padded to the cluster: read
	// them with mtools.
	for _, p := range GrubConfigPaths {
		if b := run(t, "mtype", "-i", esp, "::"+p); b != cfg {
			t.Errorf("EFI-BOOT %s = %q, want the generated config", p, b)
		}
	}

	// e2fsprogs take "file?offset=N".
	host := out + "?offset=" + strconv.FormatInt(res.Partitions[1].Offset, 10)
	run(t, "/sbin/e2fsck", "-fn", host)
	ls := run(t, "/sbin/debugfs", "-R", "ls -l /", host)
	for _, name := range []string{"hn-root.img", "hn-root-old.img", "data", ".hnboot"} {
		if !strings.Contains(ls, " "+name+"\n") {
			t.Errorf("debugfs ls / on hostpart = %s, want %s", ls, name)
		}
	}
	if strings.Contains(ls, "hn-root-new.img") {
		t.Errorf("hostpart has hn-root-new.img, want none (no --new)")
	}
	if l := run(t, "/sbin/e2label", host); strings.TrimSpace(l) != layout.HostpartLabel {
		t.Errorf("e2label hostpart = %q, want %q", l, layout.HostpartLabel)
	}
	dumped := filepath.Join(dir, "dumped.img")
	run(t, "/sbin/debugfs", "-R", "dump /hn-root.img "+dumped, host)
	a, _ := os.ReadFile(root)
	b, _ := os.ReadFile(dumped)
	if !bytes.Equal(a, b) {
		t.Errorf("hn-root.img on hostpart differs from %s", root)
	}
}

func copyRange(t *testing.T, src, dst string, off, size int64) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, io.NewSectionReader(in, off, size)); err != nil {
		t.Fatal(err)
	}
}

func TestBuild3T(t *testing.T) {
	if testing.Short() {
		t.Skip("3T disk in -short mode")
	}
	dir := t.TempDir()
	root, _ := images(t, dir)
	out := filepath.Join(dir, "disk.raw")
	start := time.Now()
	res, err := Build(context.Background(), Options{Out: out, Size: 3 << 40, Root: root, GrubConfig: bootloader.GrubConfig(bootloader.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	var st unix.Stat_t
	if err := unix.Stat(out, &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("3T disk: %v, %d MiB allocated", took, st.Blocks*512/mib)
	if took > time.Minute {
		t.Errorf("Build(3T) took %v, want under a minute", took)
	}
	if st.Blocks*512 > 512*mib {
		t.Errorf("Build(3T) allocated %d MiB, want a sparse file under 512 MiB", st.Blocks*512/mib)
	}
	if res.Partitions[1].Size < 3<<40-200*mib {
		t.Errorf("hostpart size = %d, want nearly 3 TiB", res.Partitions[1].Size)
	}
	if o := run(t, "/sbin/sgdisk", "-v", out); !strings.Contains(o, "No problems found") {
		t.Errorf("sgdisk -v %s = %s, want no problems", out, o)
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	root, _ := images(t, dir)
	notImage := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notImage, []byte("not a filesystem\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(root)
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "half.img")
	if err := os.WriteFile(truncated, full[:len(full)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	// An image beside the manifest of another build.
	stale := filepath.Join(dir, "stale.img")
	if err := os.WriteFile(stale, full, 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(stale+".json", []byte(`{"format":"hnboot-manifest-1","sha256":"`+strings.Repeat("0", 64)+`","size":`+strconv.Itoa(len(full))+`}`), 0o644)
	garbled := filepath.Join(dir, "garbled.img")
	os.WriteFile(garbled, full, 0o644)
	os.WriteFile(garbled+".json", []byte("{not json"), 0o644)
	for _, tt := range []struct {
		name string
		o    Options
		want string
	}{
		{"no root", Options{Size: 512 * mib}, "--root"},
		{"missing root", Options{Size: 512 * mib, Root: filepath.Join(dir, "nope.img")}, "--root"},
		{"missing old", Options{Size: 512 * mib, Root: root, Old: filepath.Join(dir, "nope.img")}, "--old"},
		{"root not an image", Options{Size: 512 * mib, Root: notImage}, "not a root filesystem image"},
		{"truncated new", Options{Size: 512 * mib, Root: root, New: truncated}, "truncated"},
		{"too small", Options{Size: 160 * mib, Root: root}, "--size"},
		{"stale manifest", Options{Size: 512 * mib, Root: root, New: stale}, "--new: " + stale + " does not match its manifest " + stale + ".json"},
		{"garbled manifest", Options{Size: 512 * mib, Root: garbled}, garbled + ".json: not an hnboot manifest"},
		{"btrfs", Options{Size: 512 * mib, Root: root, HostpartFS: "btrfs"}, "--hostpart-fs"},
		{"64M esp", Options{Size: 512 * mib, Root: root, EFISize: 64 * mib}, "--efi-size"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.Out = filepath.Join(dir, tt.name+".raw")
			_, err := Build(context.Background(), tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
			for _, p := range []string{tt.o.Out, tt.o.Out + ".staging"} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("Build(%s) left %s behind", tt.name, p)
				}
			}
			if tmps := temporaries(t, tt.o.Out); len(tmps) > 0 {
				t.Errorf("Build(%s) left %v behind", tt.name, tmps)
			}
		})
	}
}

func TestLayoutBoot(t *testing.T) {
	for _, tt := range []struct {
		bios bool
		want []Partition
	}{
		{false, []Partition{{layout.ESPLabel, mib, 128 * mib}, {layout.HostpartLabel, 129 * mib, 382 * mib}}},
		{true, []Partition{{layout.ESPLabel, 2 * mib, 128 * mib}, {layout.HostpartLabel, 130 * mib, 381 * mib}, {layout.BIOSBootLabel, mib, mib}}},
	} {
		got, err := LayoutBoot(512*mib, 128*mib, tt.bios)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("LayoutBoot(512M, 128M, %v) = %v, %v; want %v", tt.bios, got, err, tt.want)
		}
	}
}

// TestBuildGrub installs Debian's GRUB for UEFI and BIOS and checks the
// result as a firmware and fsck would see it.
func TestBuildGrub(t *testing.T) {
	dir := t.TempDir()
	root, _ := images(t, dir)
	ctx := context.Background()
	efi, err := bootloader.EFIImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bootImg, core, err := bootloader.BIOSImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "disk.raw")
	res, err := Build(ctx, Options{Out: out, Size: 512 * mib, Root: root,
		GrubConfig: bootloader.GrubConfig(bootloader.Options{}),
		EFIBinary:  efi, BIOSBootImg: bootImg, BIOSCore: core, Epoch: 1700000000, HasEpoch: true})
	if err != nil {
		t.Fatal(err)
	}
	if o := run(t, "/sbin/sgdisk", "-v", out); !strings.Contains(o, "No problems found") {
		t.Errorf("sgdisk -v %s = %s, want no problems", out, o)
	}
	info := run(t, "/sbin/sgdisk", "-i", "3", out)
	for _, w := range []string{"21686148-6449-6E6F-744E-656564454649", "First sector: 2048 ", "Partition name: 'BIOS-BOOT'"} {
		if !strings.Contains(info, w) {
			t.Errorf("sgdisk -i 3 = %s, want %q", info, w)
		}
	}
	if info := run(t, "/sbin/sgdisk", "-i", "1", out); !strings.Contains(info, "First sector: 4096 ") {
		t.Errorf("sgdisk -i 1 = %s, want EFI-BOOT at sector 4096", info)
	}

	disk, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	mbr := disk[:512]
	if got := bootloader.BootSectorCore(mbr); got != 2048 {
		t.Errorf("MBR points GRUB at core.img sector %d, want 2048", got)
	}
	if pt := mbr[0x1be:0x1ce]; pt[4] != 0xee {
		t.Errorf("MBR partition 1 type = %#x, want 0xee (GPT protective) kept", pt[4])
	}
	if string(mbr[510:]) != "\x55\xaa" {
		t.Errorf("MBR signature = %x, want 55aa", mbr[510:])
	}
	start, n, seg := bootloader.CoreBlocklist(disk[res.Partitions[2].Offset:])
	if wantN := (len(core)+511)/512 - 1; start != 2049 || int(n) != wantN || seg != 0x820 {
		t.Errorf("core.img block list = (%d, %d, %#x), want (2049, %d, 0x820)", start, n, seg, wantN)
	}
	if !bytes.Equal(disk[res.Partitions[2].Offset+512:res.Partitions[2].Offset+int64(len(core))], core[512:]) {
		t.Errorf("BIOS-BOOT does not hold core.img after its first sector")
	}

	esp := filepath.Join(dir, "esp.img")
	copyRange(t, out, esp, res.Partitions[0].Offset, res.Partitions[0].Size)
	run(t, "/sbin/fsck.vfat", "-n", esp)
	got := filepath.Join(dir, "BOOTX64.EFI")
	run(t, "mcopy", "-i", esp, "::"+bootloader.EFIBinaryPath, got)
	if b, _ := os.ReadFile(got); !bytes.Equal(b, efi) {
		t.Errorf("EFI-BOOT %s (%d bytes) differs from GRUB's EFI image (%d bytes)", bootloader.EFIBinaryPath, len(b), len(efi))
	}
	run(t, "/sbin/e2fsck", "-fn", out+"?offset="+strconv.FormatInt(res.Partitions[1].Offset, 10))
}

// A manifest beside --root/--new/--old goes onto hostpart beside its image.
func TestBuildManifests(t *testing.T) {
	dir := t.TempDir()
	root, newImg := images(t, dir)
	full, err := os.ReadFile(root)
	if err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain.img") // no manifest
	if err := os.WriteFile(plain, full, 0o644); err != nil {
		t.Fatal(err)
	}
	var rootHex string
	for _, img := range []string{root, newImg} {
		m, err := manifest.New(img, manifest.Fields{Name: "t", Version: filepath.Base(img), FS: "ext4"})
		if err != nil {
			t.Fatal(err)
		}
		if img == root { // as mkimage rootfs: its chunk index beside it
			if _, m.Chunks, err = chunkindex.WriteFile(img); err != nil {
				t.Fatal(err)
			}
			rootHex = m.SHA256
		}
		if err := m.WriteFile(layout.ManifestFor(img)); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "disk.raw")
	res, err := Build(context.Background(), Options{Out: out, Size: 512 * mib, Root: root, New: newImg, Old: plain})
	if err != nil {
		t.Fatal(err)
	}
	host := out + "?offset=" + strconv.FormatInt(res.Partitions[1].Offset, 10)
	ls := run(t, "/sbin/debugfs", "-R", "ls -l /", host)
	for _, c := range []struct {
		name, from string // from "": must be absent
	}{
		{"hn-root.img.json", root + ".json"},
		{"hn-root-new.img.json", newImg + ".json"},
		{"hn-root-old.img.json", ""},
		{layout.ChunksDir + "/" + rootHex + layout.ChunksSuffix, root + layout.ChunksSuffix}, // for the first delta update
	} {
		if d, base := filepath.Split(c.name); d == "" {
			if got, want := strings.Contains(ls, " "+c.name+"\n"), c.from != ""; got != want {
				t.Errorf("debugfs ls / has %s = %v, want %v:\n%s", c.name, got, want, ls)
			}
		} else if l := run(t, "/sbin/debugfs", "-R", "ls -l /"+d, host); !strings.Contains(l, " "+base+"\n") {
			t.Errorf("debugfs ls /%s lacks %s:\n%s", d, base, l)
		}
		if c.from == "" {
			continue
		}
		dumped := filepath.Join(dir, "dumped-"+filepath.Base(c.name))
		run(t, "/sbin/debugfs", "-R", "dump /"+c.name+" "+dumped, host)
		a, _ := os.ReadFile(c.from)
		b, _ := os.ReadFile(dumped)
		if !bytes.Equal(a, b) {
			t.Errorf("hostpart %s = %q, want the bytes of %s", c.name, b, c.from)
		}
	}
}

// temporaries lists what Build's atomic writer (durable's temporary file,
// .NAME<random> beside out) left behind.
func temporaries(t *testing.T, out string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
