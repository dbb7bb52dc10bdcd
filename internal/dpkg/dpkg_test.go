package dpkg

import (
	"reflect"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/manifest"
)

func TestInstalled(t *testing.T) {
	status := `Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 .
 the system.

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2026b-0+deb12u1

Package: oldconf
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: half
Status: install reinstreq half-installed
Version: 2

Package: noarch
Status: install ok installed
Version: 3
`
	got, err := Installed(strings.NewReader(status))
	want := []manifest.Package{{Name: "libc6", Version: "2.36-9+deb12u10", Arch: "amd64"}, {Name: "tzdata", Version: "2026b-0+deb12u1", Arch: "all"}, {Name: "noarch", Version: "3", Arch: "all"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Installed = %v, %v; want %v", got, err, want)
	}
	if _, err := Installed(strings.NewReader("Package: x\nnot a field\n")); err == nil {
		t.Error("Installed(garbage) = nil error")
	}
}
