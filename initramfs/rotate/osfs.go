package rotate

import (
	"path/filepath"

	"github.com/hnboot/hnboot/internal/durable"
)

// OSFS returns the real FS rooted at dir (the hostpart mount point):
// durable.Root, whose every mutating operation fsyncs what it changed and
// the directory holding it before returning. Errors are *os.PathError with
// the operation and the full path(s).
func OSFS(dir string) FS {
	return durable.Root(filepath.Clean(dir))
}
