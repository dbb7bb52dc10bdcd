package stage

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
)

// The failure memory is layout.FailedDigests on hostpart: one line per
// digest that was reverted or rejected, "sha256:<hex> <RFC 3339 time>
// <reason>". The agent adds the images it finds reverted or rejected, the
// init a download that did not match its digest. An operator may edit
// it; `imaged stage --force` bypasses it.

// Failure is one remembered digest, as the check-in reports it.
type Failure = checkin.Failure

// Failed is the set of digests this host refuses to stage again.
type Failed map[string]Failure

// LoadFailed reads the failure memory; a missing file is empty. Lines that
// do not start with a digest are errors naming the file and line.
func LoadFailed(dir string) (Failed, error) {
	f := Failed{}
	b, err := os.ReadFile(filepath.Join(dir, layout.FailedDigests))
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.SplitN(line, " ", 3)
		if !digest.Valid(parts[0]) {
			return f, fmt.Errorf("%s:%d: %q does not start with sha256:<64 hex>; fix or delete the line", filepath.Join(dir, layout.FailedDigests), n, line)
		}
		fl := Failure{Digest: parts[0]}
		if len(parts) > 1 {
			fl.Time, _ = time.Parse(time.RFC3339, parts[1])
		}
		if len(parts) > 2 {
			fl.Reason = parts[2]
		}
		f[fl.Digest] = fl
	}
	return f, nil
}

// Digests lists the remembered digests, sorted.
func (f Failed) Digests() []string {
	out := make([]string, 0, len(f))
	for d := range f {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// Add records digest (keeping the first reason) and saves the file.
// It reports whether the digest is new.
func (f Failed) Add(dir string, fl Failure) (bool, error) {
	if _, ok := f[fl.Digest]; ok || !digest.Valid(fl.Digest) {
		return false, nil
	}
	f[fl.Digest] = fl
	return true, f.save(dir)
}

// Remove forgets digest (a forced image that then passed its health
// checks) and saves the file.
func (f Failed) Remove(dir, digest string) (bool, error) {
	if _, ok := f[digest]; !ok {
		return false, nil
	}
	delete(f, digest)
	return true, f.save(dir)
}

func (f Failed) save(dir string) error {
	var b strings.Builder
	b.WriteString("# digests this host will not stage again (imaged stage --force overrides); written by imaged agent and the init\n")
	for _, d := range f.Digests() {
		fl := f[d]
		reason := strings.Join(strings.Fields(fl.Reason), " ")
		fmt.Fprintf(&b, "%s %s %s\n", d, fl.Time.UTC().Format(time.RFC3339), reason)
	}
	return durable.Root(dir).WriteFile(layout.FailedDigests, []byte(b.String()))
}
