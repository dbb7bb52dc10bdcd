package dashboard

import (
	"net"
	"sync"
	"time"
)

// Login guessing limits: after LoginFailures failed logins from one
// client address within LoginWindow, that address's logins are refused
// (429 with Retry-After) until its oldest failure leaves the window. A
// password check costs the server a bcrypt; this bounds a guesser to a
// few tries a minute whatever it can send. By address, not by user: a
// limit by user would let anyone lock an operator out.
const (
	LoginFailures = 10
	LoginWindow   = 5 * time.Minute
	// loginClients bounds the addresses remembered; beyond it, those
	// whose failures all left the window are forgotten first.
	loginClients = 10000
)

// throttle counts failed logins by client address. Pure bookkeeping over
// the times it is given, so it is table-tested without waiting.
type throttle struct {
	mu     sync.Mutex
	max    int
	window time.Duration
	fails  map[string][]time.Time // oldest first, at most max, all within window of the last call
}

func newThrottle(max int, window time.Duration) *throttle {
	return &throttle{max: max, window: window, fails: map[string][]time.Time{}}
}

// wait is how long client must wait before its next login is looked at;
// 0 means now.
func (t *throttle) wait(client string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.live(client, now)
	if len(f) < t.max {
		return 0
	}
	return f[0].Add(t.window).Sub(now)
}

// failed records a failed login of client at now.
func (t *throttle) failed(client string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := append(t.live(client, now), now)
	if len(f) > t.max {
		f = f[len(f)-t.max:]
	}
	if _, known := t.fails[client]; !known && len(t.fails) >= loginClients {
		for c := range t.fails {
			if len(t.live(c, now)) == 0 {
				delete(t.fails, c)
			}
		}
		if len(t.fails) >= loginClients {
			return // a flood of addresses: each is still slowed by bcrypt
		}
	}
	t.fails[client] = f
}

// succeeded forgets client's failures.
func (t *throttle) succeeded(client string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.fails, client)
}

// live drops client's failures older than the window; the caller holds mu.
func (t *throttle) live(client string, now time.Time) []time.Time {
	f := t.fails[client]
	i := 0
	for i < len(f) && now.Sub(f[i]) >= t.window {
		i++
	}
	if i == len(f) {
		delete(t.fails, client)
		return nil
	}
	f = f[i:]
	t.fails[client] = f
	return f
}

// clientAddr is the address a login is counted against: the peer's IP
// (the port changes with every connection).
func clientAddr(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}
