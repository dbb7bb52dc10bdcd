// Package hostpart finds and reads the hostpart of a running hnboot host
// (DESIGN.md §2): the four image slots and their digests, the trial and
// revert triggers, downloads in progress and the init's logs of past boots.
// It only reads, except for its digest cache in .hnboot/.
package hostpart

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hnboot/hnboot/internal/blkid"
	"github.com/hnboot/hnboot/internal/layout"
)

// Locator says where to look for hostpart. The zero value looks at the
// real system.
type Locator struct {
	Dir           string // --hostpart DIR: use this directory, no questions asked beyond "is it a directory"
	MountInfo     string // default /proc/self/mountinfo
	SysClassBlock string // default /sys/class/block
	DevDir        string // default /dev
}

// Locate returns the hostpart directory: l.Dir when set, else /hostpart if
// it is a mount point. Otherwise the error says what was looked for, and
// whether a partition labelled hostpart exists but is not mounted.
func (l Locator) Locate() (string, error) {
	if l.Dir != "" {
		st, err := os.Stat(l.Dir)
		if err != nil {
			return "", fmt.Errorf("hostpart: --hostpart %s: %w", l.Dir, err)
		}
		if !st.IsDir() {
			return "", fmt.Errorf("hostpart: --hostpart %s is not a directory", l.Dir)
		}
		return l.Dir, nil
	}
	mi := l.MountInfo
	if mi == "" {
		mi = "/proc/self/mountinfo"
	}
	mounted, err := isMountPoint(mi, layout.HostpartMount)
	if err != nil {
		return "", fmt.Errorf("hostpart: %w", err)
	}
	if mounted {
		return layout.HostpartMount, nil
	}
	sys, dev := l.SysClassBlock, l.DevDir
	if sys == "" {
		sys = "/sys/class/block"
	}
	if dev == "" {
		dev = "/dev"
	}
	if d, _, ferr := blkid.Find(layout.HostpartSpec, sys, dev); ferr == nil {
		return "", fmt.Errorf("hostpart: %s has %s but is not mounted on %s: mount it there (mount %s %s), or pass --hostpart DIR", d, layout.HostpartSpec, layout.HostpartMount, d, layout.HostpartMount)
	} else {
		return "", fmt.Errorf("no hostpart on this machine: %s is not a mount point (per %s) and %v. This command runs on an hnboot host; pass --hostpart DIR to use a directory", layout.HostpartMount, mi, ferr)
	}
}

// isMountPoint reports whether dir is a mount point in a mountinfo file.
func isMountPoint(mountinfo, dir string) (bool, error) {
	f, err := os.Open(mountinfo)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ...
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && unescape(fields[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var n int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &n); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
