package main

import (
	"reflect"
	"strings"
	"testing"
)

const testAliases = `alias pci:v00001AF4d00001041sv*sd*bc*sc*i* virtio_pci
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000001v* virtio_net
alias pci:v00008086d00002922sv*sd*bc01sc06i01* ahci
alias fs-ext4 ext4
`

// testDeps is modules.dep as mkimage writes it: the full closure, the
// module to load last before this one first.
const testDeps = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko
kernel/fs/nls/nls_iso8859-1.ko.xz:
`

func TestDriversFor(t *testing.T) {
	tab := parseAliases(strings.NewReader(testAliases))
	deps := parseModulesDep(strings.NewReader(testDeps))
	for _, tc := range []struct {
		name    string
		aliases []string
		loaded  []string
		net     bool
		want    []string
	}{
		{"pci virtio", []string{"pci:v00001AF4d00001042sv00001AF4sd00001100bc01sc00i00"}, nil, false, []string{"virtio_pci"}},
		{"virtio disk, not the NIC", []string{"virtio:d00000002v00001AF4", "virtio:d00000001v00001AF4"}, []string{"virtio_pci"}, false, []string{"virtio_blk"}},
		{"virtio NIC only", []string{"virtio:d00000002v00001AF4", "virtio:d00000001v00001AF4"}, []string{"virtio_pci"}, true, []string{"virtio_net"}},
		{"already loaded", []string{"virtio:d00000002v00001AF4"}, []string{"virtio_blk"}, false, []string{}},
		{"q35 ahci", []string{"pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"}, nil, false, []string{"ahci"}},
		{"unknown device", []string{"pci:v0000DEADd0000BEEFsv0sd0bc0sc0i0"}, nil, false, []string{}},
	} {
		loaded := map[string]bool{}
		for _, m := range tc.loaded {
			loaded[m] = true
		}
		got := driversFor(tc.aliases, tab, deps, loaded, tc.net)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: driversFor(%v, net=%v) = %v, want %v", tc.name, tc.aliases, tc.net, got, tc.want)
		}
	}
}

func TestLoadOrder(t *testing.T) {
	deps := parseModulesDep(strings.NewReader(testDeps))
	for _, tc := range []struct {
		name   string
		loaded []string
		want   []string
	}{
		{"virtio_net", nil, []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"}},
		{"virtio_net", []string{"virtio", "virtio_ring"}, []string{"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"}},
		{"virtio_ring", nil, []string{"kernel/drivers/virtio/virtio_ring.ko"}},
		{"nls_iso8859-1", nil, []string{"kernel/fs/nls/nls_iso8859-1.ko.xz"}},
		{"btrfs", nil, nil},
	} {
		loaded := map[string]bool{}
		for _, m := range tc.loaded {
			loaded[m] = true
		}
		if got := deps.loadOrder(tc.name, loaded); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("loadOrder(%q, loaded %v) = %v, want %v", tc.name, tc.loaded, got, tc.want)
		}
	}
}

func TestCheapest(t *testing.T) {
	cost := map[string]int64{"ahci": 1_500_000, "virtio_blk": 40_000, "nvme": 40_000, "virtio_scsi": 900_000}
	for _, tc := range []struct {
		cands []string
		want  string
	}{
		{[]string{"ahci", "virtio_blk"}, "virtio_blk"},
		{[]string{"virtio_scsi", "ahci"}, "virtio_scsi"},
		{[]string{"virtio_blk", "nvme"}, "nvme"}, // a tie: by name
		{[]string{"ahci"}, "ahci"},
		{nil, ""},
	} {
		if got := cheapest(tc.cands, func(n string) int64 { return cost[n] }); got != tc.want {
			t.Errorf("cheapest(%v) = %q, want %q", tc.cands, got, tc.want)
		}
	}
}

func TestBuses(t *testing.T) {
	tab := parseAliases(strings.NewReader(testAliases + "alias acpi*:PNP0A03:* pcie\nalias scsi:t-0x00* sd_mod\n"))
	want := []string{"acpi", "pci", "scsi", "virtio"} // fs-ext4 has no bus
	if got := tab.buses(); !reflect.DeepEqual(got, want) {
		t.Errorf("buses() = %v, want %v", got, want)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/fs/ext4/ext4.ko":               "ext4",
		"kernel/fs/nls/nls_iso8859-1.ko.xz":    "nls_iso8859_1",
		"kernel/drivers/net/virtio_net.ko.zst": "virtio_net",
		"kernel/lib/crc16.ko.gz":               "crc16",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFSModule(t *testing.T) {
	for in, want := range map[string]string{"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "btrfs": "btrfs", "xfs": "xfs", "squashfs": "squashfs", "vfat": "vfat"} {
		if got := fsModule(in); got != want {
			t.Errorf("fsModule(%q) = %q, want %q", in, got, want)
		}
	}
}
