package blkid

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Device is one block device as seen in sysfs, with what probing found.
type Device struct {
	Name      string // entry name in /sys/class/block, e.g. vda2
	Dev       string // path under devDir, from DEVNAME= in uevent
	PartName  string // GPT partition name (PARTNAME= in uevent)
	Info      Info
	ProbeErr  error // why it could not be identified (unreadable, unknown fs)
	HasHolder bool  // something (md, dm) is stacked on it
}

// String is the short form used in "not found" messages.
func (d Device) String() string {
	var attrs []string
	switch {
	case d.Info.Type != "":
		attrs = append(attrs, d.Info.Type)
		if d.Info.Label != "" {
			attrs = append(attrs, strconv.Quote(d.Info.Label))
		}
	case d.ProbeErr != nil && !errors.Is(d.ProbeErr, ErrUnknown):
		attrs = append(attrs, "unreadable")
	default:
		attrs = append(attrs, "no filesystem")
	}
	if d.PartName != "" {
		attrs = append(attrs, "partname "+strconv.Quote(d.PartName))
	}
	if d.HasHolder {
		attrs = append(attrs, "in use by md/dm")
	}
	return d.Name + " (" + strings.Join(attrs, ", ") + ")"
}

// Scan lists the block devices under sysClassBlock and probes each through
// devDir. Devices that cannot be opened are listed with ProbeErr set rather
// than failing the scan: an empty CD drive must not hide the disk we want.
func Scan(sysClassBlock, devDir string) ([]Device, error) {
	ents, err := os.ReadDir(sysClassBlock)
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	var devs []Device
	for _, e := range ents {
		name := e.Name()
		// RAM disks and zram never hold hostpart, and probing a few dozen
		// of them only slows the boot.
		if strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "zram") {
			continue
		}
		d := Device{Name: name}
		dir := filepath.Join(sysClassBlock, name)
		uevent := readUevent(filepath.Join(dir, "uevent"))
		devName := uevent["DEVNAME"]
		if devName == "" {
			devName = strings.ReplaceAll(name, "!", "/") // sysfs spells cciss/c0d0 as cciss!c0d0
		}
		d.Dev = filepath.Join(devDir, devName)
		d.PartName = uevent["PARTNAME"]
		if holders, err := os.ReadDir(filepath.Join(dir, "holders")); err == nil && len(holders) > 0 {
			d.HasHolder = true
		}
		if size, err := os.ReadFile(filepath.Join(dir, "size")); err == nil && strings.TrimSpace(string(size)) == "0" {
			d.ProbeErr = fmt.Errorf("%s: empty device", d.Dev) // unattached loop, CD drive without a disc
		} else {
			d.Info, d.ProbeErr = probePath(d.Dev)
		}
		devs = append(devs, d)
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].Name < devs[j].Name })
	return devs, nil
}

func probePath(path string) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("probe: %w", err)
	}
	defer f.Close()
	info, err := Probe(f)
	if err != nil {
		return Info{}, fmt.Errorf("probe %s: %w", path, err)
	}
	return info, nil
}

// readUevent parses a sysfs uevent file (KEY=value lines); a missing file
// gives an empty map, since fake or old sysfs trees may lack it.
func readUevent(path string) map[string]string {
	m := map[string]string{}
	b, err := os.ReadFile(path)
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// Match reports whether d is what spec (LABEL=, UUID=, PARTLABEL=) names.
// UUIDs compare case-insensitively, as FAT serials are printed in upper case.
func (d Device) Match(spec string) bool {
	key, val, _ := strings.Cut(spec, "=")
	switch key {
	case "LABEL":
		return d.Info.Type != "" && d.Info.Label == val
	case "UUID":
		return d.Info.Type != "" && strings.EqualFold(d.Info.UUID, val)
	case "PARTLABEL":
		return d.PartName == val
	}
	return false
}

// Find returns the device path spec names and what is on it. spec is
// LABEL=x, UUID=x, PARTLABEL=x, or a /dev/... path (which is opened under
// devDir and probed; an unknown filesystem there is not an error, Info.Type
// is then empty). Devices with something stacked on them (md members, dm
// backing devices) are skipped, because the filesystem belongs to the
// stacked device. Two matches are an error: booting a stray USB stick
// labelled hostpart and rotating images on it would be worse than stopping.
func Find(spec, sysClassBlock, devDir string) (string, Info, error) {
	if rest, ok := strings.CutPrefix(spec, "/dev/"); ok {
		dev := filepath.Join(devDir, rest)
		info, err := probePath(dev)
		if err != nil && !errors.Is(err, ErrUnknown) {
			return "", Info{}, fmt.Errorf("find %s: %w", spec, err)
		}
		return dev, info, nil
	}
	key, val, _ := strings.Cut(spec, "=")
	if (key != "LABEL" && key != "UUID" && key != "PARTLABEL") || val == "" {
		return "", Info{}, fmt.Errorf("find %q: want LABEL=, UUID=, PARTLABEL= or /dev/...", spec)
	}
	devs, err := Scan(sysClassBlock, devDir)
	if err != nil {
		return "", Info{}, fmt.Errorf("find %s: %w", spec, err)
	}
	var matches []Device
	for _, d := range devs {
		if !d.HasHolder && d.Match(spec) {
			matches = append(matches, d)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0].Dev, matches[0].Info, nil
	case 0:
		seen := make([]string, len(devs))
		for i, d := range devs {
			seen[i] = d.String()
		}
		if len(seen) == 0 {
			seen = []string{"none"}
		}
		return "", Info{}, fmt.Errorf("no block device with %s; block devices seen: %s", spec, strings.Join(seen, ", "))
	default:
		names := make([]string, len(matches))
		for i, d := range matches {
			names[i] = d.Dev
		}
		return "", Info{}, fmt.Errorf("%d block devices match %s: %s; remove or relabel all but one", len(matches), spec, strings.Join(names, ", "))
	}
}

// Parent returns the whole disk holding partition name (vda2 → vda, 2;
// nvme0n1p3 → nvme0n1, 3). It uses sysfs rather than name patterns: the
// class entry is a symlink into /sys/devices where a partition's directory
// sits inside its disk's and has a "partition" file. A whole disk is its
// own parent, with partno 0.
func Parent(name, sysClassBlock string) (disk string, partno int, err error) {
	name = strings.ReplaceAll(strings.TrimPrefix(name, "/dev/"), "/", "!")
	entry := filepath.Join(sysClassBlock, name)
	real, err := filepath.EvalSymlinks(entry)
	if err != nil {
		return "", 0, fmt.Errorf("parent of %s: %w", name, err)
	}
	b, err := os.ReadFile(filepath.Join(real, "partition"))
	if errors.Is(err, fs.ErrNotExist) {
		return strings.ReplaceAll(name, "!", "/"), 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("parent of %s: %w", name, err)
	}
	partno, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || partno < 1 {
		return "", 0, fmt.Errorf("parent of %s: bad partition number %q in %s", name, strings.TrimSpace(string(b)), filepath.Join(real, "partition"))
	}
	parent := filepath.Dir(real)
	if _, err := os.Stat(filepath.Join(parent, "dev")); err != nil {
		// Every block device directory in sysfs has a dev file; without one
		// the parent is not a disk and our idea of the layout is wrong.
		return "", 0, fmt.Errorf("parent of %s: %s is not a block device directory: %w", name, parent, err)
	}
	disk = filepath.Base(parent)
	if devName := readUevent(filepath.Join(parent, "uevent"))["DEVNAME"]; devName != "" {
		disk = devName
	}
	return strings.ReplaceAll(disk, "!", "/"), partno, nil
}
