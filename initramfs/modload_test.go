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

func TestDriversFor(t *testing.T) {
	tab := parseAliases(strings.NewReader(testAliases))
	for _, tc := range []struct {
		name    string
		aliases []string
		loaded  []string
		want    []string
	}{
		{"pci virtio", []string{"pci:v00001AF4d00001042sv00001AF4sd00001100bc01sc00i00"}, nil, []string{"virtio_pci"}},
		{"virtio disk and NIC", []string{"virtio:d00000002v00001AF4", "virtio:d00000001v00001AF4"}, []string{"virtio_pci"}, []string{"virtio_blk", "virtio_net"}},
		{"already loaded", []string{"virtio:d00000002v00001AF4"}, []string{"virtio_blk"}, []string{}},
		{"q35 ahci", []string{"pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"}, nil, []string{"ahci"}},
		{"unknown device", []string{"pci:v0000DEADd0000BEEFsv0sd0bc0sc0i0"}, nil, []string{}},
	} {
		loaded := map[string]bool{}
		for _, m := range tc.loaded {
			loaded[m] = true
		}
		got := driversFor(tc.aliases, tab, loaded)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: driversFor(%v) = %v, want %v", tc.name, tc.aliases, got, tc.want)
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
