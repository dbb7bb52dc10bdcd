package fleet

import "sync"

// changes wakes whoever watches the fleet (the dashboard's event
// stream) when something they show may have changed: a new snapshot
// (reload, admin action, rollout step, another server's change), a
// check-in, a boot event. A watcher gets a channel that is closed at the
// next change, so any number of watchers cost one close, and a slow one
// misses nothing but the count.
type changes struct {
	mu sync.Mutex
	ch chan struct{}
}

func (c *changes) wait() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

func (c *changes) notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch != nil {
		close(c.ch)
		c.ch = nil
	}
}

// Changed returns a channel closed at the fleet's next change.
func (f *Fleet) Changed() <-chan struct{} { return f.changes.wait() }

// MatchToken reports the name of the admin token tok, if it is one (the
// dashboard's token login).
func (f *Fleet) MatchToken(tok string) (string, bool) { return f.tokens.Load().match(tok) }

// ImagePackages is the package list of the image with digest d, for the
// dashboard's images page (Source "unknown" when it has none).
func (f *Fleet) ImagePackages(d string) ImagePackages { return f.imagePackages(f.snap.Load(), d) }

// AuditAction records an action that changes nothing in the fleet, such
// as a dashboard login, in the audit log.
func (f *Fleet) AuditAction(e AuditEntry) error { return f.audit(e) }
