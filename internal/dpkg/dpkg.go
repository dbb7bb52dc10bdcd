// Package dpkg reads a Debian tree's package database: the installed
// packages of var/lib/dpkg/status (RFC 822-style stanzas).
package dpkg

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/hnboot/hnboot/internal/manifest"
)

// StatusFile is where dpkg keeps its database, relative to the root.
const StatusFile = "var/lib/dpkg/status"

// Installed reads a status file and returns the packages whose status is
// "install ok installed" (not removed ones whose configuration stays,
// nor half-installed ones). The architecture defaults to "all" when a
// stanza has none.
func Installed(r io.Reader) ([]manifest.Package, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20) // long Description and Conffiles fields
	var out []manifest.Package
	var cur manifest.Package
	status := ""
	line := 0
	flush := func() {
		if cur.Name != "" && status == "install ok installed" {
			if cur.Arch == "" {
				cur.Arch = "all"
			}
			out = append(out, cur)
		}
		cur, status = manifest.Package{}, ""
	}
	for sc.Scan() {
		line++
		l := sc.Text()
		if strings.TrimSpace(l) == "" {
			flush()
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue // a continuation line
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("dpkg status line %d: %q is not a Field: value line", line, l)
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			cur.Name = v
		case "Version":
			cur.Version = v
		case "Architecture":
			cur.Arch = v
		case "Status":
			status = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dpkg status: %w", err)
	}
	flush()
	return out, nil
}
