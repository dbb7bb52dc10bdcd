package fleet

import (
	"container/list"
	"net"
	"sync"
	"time"
)

// Boot is one boot of one MAC as the server saw it: the events from the
// DHCP exchange that started it to the init's check-in.
type Boot struct {
	MAC     string        `json:"mac"`
	Start   time.Time     `json:"start"`
	Events  []LedgerEvent `json:"events"`
	Dropped int           `json:"dropped,omitempty"` // events beyond the per-boot cap
	Checkin *Observed     `json:"checkin,omitempty"` // the init's check-in, when it came
}

// LedgerEvent is an Event as kept in the ledger and sent by the API.
type LedgerEvent struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail,omitempty"`
	Err    string    `json:"err,omitempty"`
}

// Done reports whether the init checked in for this boot.
func (b *Boot) Done() bool { return b.Checkin != nil }

const (
	// BootWindow: a DHCP event more than this after the start of the
	// current boot record starts a new one.
	BootWindow       = 10 * time.Minute
	maxEventsPerBoot = 64
	maxBootsPerMAC   = 10
	maxLedgerMACs    = 10000
)

// Ledger links events into boots, per MAC, in memory. It is bounded: the
// last maxBootsPerMAC boots of the maxLedgerMACs most recently seen MACs
// (spoofed MACs cannot grow it). Completed boots are persisted by Fleet.
type Ledger struct {
	mu     sync.Mutex
	byMAC  map[string]*list.Element // → *macBoots
	lru    *list.List               // front = most recent
	counts map[string]uint64        // events by kind
}

type macBoots struct {
	mac   string
	boots []*Boot // oldest first
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger {
	return &Ledger{byMAC: map[string]*list.Element{}, lru: list.New(), counts: map[string]uint64{}}
}

func (l *Ledger) entry(mac string) *macBoots {
	if e := l.byMAC[mac]; e != nil {
		l.lru.MoveToFront(e)
		return e.Value.(*macBoots)
	}
	mb := &macBoots{mac: mac}
	l.byMAC[mac] = l.lru.PushFront(mb)
	for l.lru.Len() > maxLedgerMACs {
		old := l.lru.Back()
		l.lru.Remove(old)
		delete(l.byMAC, old.Value.(*macBoots).mac)
	}
	return mb
}

// startsBoot is the linking rule: a DHCP answer or refusal opens a new boot
// record unless the open one is recent and not yet checked in.
func startsBoot(cur *Boot, ev LedgerEvent) bool {
	if ev.Kind != "dhcp" && ev.Kind != "dhcp-ignored" {
		return cur == nil
	}
	return cur == nil || cur.Done() || ev.Time.Sub(cur.Start) > BootWindow
}

// Add records ev for mac.
func (l *Ledger) Add(mac net.HardwareAddr, ev LedgerEvent) {
	l.add(mac.String(), ev, nil)
}

// add links ev; ci, if not nil, is the check-in that closes the boot.
// It returns a copy of the boot record ev went into and, when ev opened a
// new record, a copy of the previous one if it ended without a check-in.
func (l *Ledger) add(mac string, ev LedgerEvent, ci *Observed) (Boot, *Boot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts[ev.Kind]++
	mb := l.entry(mac)
	var cur *Boot
	if n := len(mb.boots); n > 0 {
		cur = mb.boots[n-1]
	}
	var prev *Boot
	if startsBoot(cur, ev) {
		if cur != nil && !cur.Done() {
			p := cur.clone()
			prev = &p
		}
		cur = &Boot{MAC: mac, Start: ev.Time}
		mb.boots = append(mb.boots, cur)
		if len(mb.boots) > maxBootsPerMAC {
			mb.boots = append(mb.boots[:0:0], mb.boots[len(mb.boots)-maxBootsPerMAC:]...)
		}
	}
	if len(cur.Events) < maxEventsPerBoot {
		cur.Events = append(cur.Events, ev)
	} else {
		cur.Dropped++
	}
	if ci != nil {
		c := *ci
		cur.Checkin = &c
	}
	return cur.clone(), prev
}

func (b *Boot) clone() Boot {
	c := *b
	c.Events = append([]LedgerEvent(nil), b.Events...)
	return c
}

// Boots returns copies of the last boots of mac, oldest first.
func (l *Ledger) Boots(mac string) []Boot {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.byMAC[mac]
	if e == nil {
		return nil
	}
	var out []Boot
	for _, b := range e.Value.(*macBoots).boots {
		out = append(out, b.clone())
	}
	return out
}

// seed puts persisted boots back after a restart (oldest first).
func (l *Ledger) seed(mac string, boots []Boot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	mb := l.entry(mac)
	for i := range boots {
		b := boots[i]
		mb.boots = append(mb.boots, &b)
	}
	if len(mb.boots) > maxBootsPerMAC {
		mb.boots = mb.boots[len(mb.boots)-maxBootsPerMAC:]
	}
}

// Counts returns the number of events seen per kind since start.
func (l *Ledger) Counts() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]uint64, len(l.counts))
	for k, v := range l.counts {
		out[k] = v
	}
	return out
}
