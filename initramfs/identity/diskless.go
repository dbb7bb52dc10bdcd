package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/hnboot/hnboot/internal/layout"
)

// Diskless undoes in root what Apply sets up for hostpart, for a host
// that runs its image from RAM: /data0 and an empty /hostpart are
// removed (on the overlay, whiteouts over the image's), and fstab no
// longer mounts /hostpart, which a systemd image would otherwise wait
// for until its device timeout. A /hostpart the image fills itself is
// left, and said so in the error.
func Diskless(root string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("diskless root: %w", err)
	}
	defer r.Close()
	var errs []error
	if err := r.Remove(rel(layout.DataLink)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", layout.DataLink, err))
	}
	if err := r.Remove(rel(layout.HostpartMount)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s (the image has files in it?): %w", layout.HostpartMount, err))
	}
	b, err := r.ReadFile(rel(layout.FstabFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		errs = append(errs, fmt.Errorf("read %s: %w", layout.FstabFile, err))
	default:
		if err := r.WriteFile(rel(layout.FstabFile), []byte(FstabWithout(string(b), layout.HostpartMount)), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("write %s: %w", layout.FstabFile, err))
		}
	}
	return errors.Join(errs...)
}

// FstabWithout is fstab without the lines that mount dir.
func FstabWithout(fstab, dir string) string {
	var out []string
	for _, l := range strings.SplitAfter(fstab, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && !strings.HasPrefix(f[0], "#") && path.Clean(f[1]) == dir {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "")
}
