package fleet

import (
	"fmt"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

// Observed is a host's last check-in as the server keeps it: what the host
// sent (checkin.Checkin, whose doc shows the JSON), parsed and validated at
// the HTTP edge, and when it arrived. In JSON the check-in's fields and
// "time" stand side by side, as they always have in the store.
type Observed struct {
	checkin.Checkin
	Time time.Time `json:"time"` // set by the server on receipt
}

// running is the digest of the image the host runs: its current slot,
// else what it booted (an old init that knew no slots).
func running(c *checkin.Checkin) string {
	if c.Images.Current != "" {
		return c.Images.Current
	}
	return c.Booted
}

// summary is a check-in in plain words, for `why`.
func summary(c *checkin.Checkin, name func(digest string) string) string {
	var b strings.Builder
	b.WriteString("from the " + c.Source)
	if c.Booted != "" {
		fmt.Fprintf(&b, ": booted %s", name(c.Booted))
	}
	if c.Action != "" {
		fmt.Fprintf(&b, ", action %s", c.Action)
	}
	if c.Trial {
		fmt.Fprintf(&b, ", on trial (%d tries left)", c.TriesLeft)
	}
	if c.RevertApplied != "" {
		fmt.Fprintf(&b, ", applied revert %s", c.RevertApplied)
	}
	if c.Kernel != "" {
		fmt.Fprintf(&b, ", kernel %s", c.Kernel)
	}
	return b.String()
}
