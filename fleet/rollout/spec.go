// Package rollout is the state machine of a rollout that runs itself:
// hosts move to a new image in waves (explicit canaries first, then
// shares or counts of the target), each wave's gate (enough hosts booted
// the image and confirmed their trial, held for a soak time) starts the
// next, at most so many hosts are between assignment and confirmation at
// once, moves happen inside maintenance windows, and failures over a
// threshold halt it (and, if it says so, revert the hosts it moved).
//
// It is pure: Step takes the rollout's declaration (Spec), its state, what
// each host last reported (Signal) and the time, and returns the new state
// and the transitions with their causes (Event). Package fleet keeps the
// state in the fleet database, feeds the signals from check-ins, applies
// the assignments and reverts, and audits every event.
package rollout

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Defaults of a Spec's zero fields.
const (
	DefaultDeadline        = time.Hour
	DefaultOnlineWithin    = 10 * time.Minute
	DefaultOfflineDeadline = time.Hour
)

// Offline policies: what a wave does with a host that is offline (no
// check-in within OnlineWithin) when it is its turn.
const (
	OfflineWait = "wait" // keep it pending until it is online again (never counted as a success)
	OfflineSkip = "skip" // skip it once it stayed offline OfflineDeadline after its wave started
)

// Spec is a rollout as declared, with hosts named by MAC.
type Spec struct {
	Name   string
	Digest string // the image's digest
	Waves  []Wave
	// Gate is the gate of every wave that has none of its own: by
	// default every host of the wave confirmed, no soak.
	Gate Gate
	// MaxRebooting bounds the hosts between assignment and confirmation
	// (staging, rebooting, on trial) at once; 0: no bound.
	MaxRebooting int
	Window       *Window // moves only inside it; nil: any time
	// Threshold is how many failed hosts in one wave halt the rollout
	// (a count, or a share of the wave rounded up, at least 1); zero: 1.
	Threshold Amount
	Revert    bool // on a halt, revert the hosts the rollout moved
	Offline   string
	// OfflineDeadline is how long after its wave started an offline host
	// is waited for before it is skipped (policy skip).
	OfflineDeadline time.Duration
	// OnlineWithin: a host whose last check-in is older is offline.
	OnlineWithin time.Duration
	// Deadline is how long a moved host has to boot the image and
	// confirm it; past it, it has failed.
	Deadline time.Duration
}

// Wave is one step of a rollout. Hosts are explicit hosts (canaries);
// Percent brings the rollout to that share of the target (cumulative,
// rounded up); Count adds that many hosts.
type Wave struct {
	Hosts   []string // MACs
	Percent int
	Count   int
	Gate    *Gate // nil: the Spec's
}

// Gate decides when a wave is good enough for the next one to start.
type Gate struct {
	Confirmed Amount        // hosts of the wave that confirmed the image; zero: all
	Soak      time.Duration // how long the gate must hold
}

// Amount is a number of hosts or a share of them.
type Amount struct {
	N       int
	Percent int
}

// ParseAmount reads "3" or "25%".
func ParseAmount(s string) (Amount, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 || n > 100 {
			return Amount{}, fmt.Errorf("%q: want a share 0%%..100%%", s)
		}
		return Amount{Percent: n}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return Amount{}, fmt.Errorf("%q: want a number of hosts or a share like 25%%", s)
	}
	return Amount{N: n}, nil
}

func (a Amount) String() string {
	if a.Percent > 0 || a.N == 0 {
		return strconv.Itoa(a.Percent) + "%"
	}
	return strconv.Itoa(a.N)
}

// IsZero reports an unset amount.
func (a Amount) IsZero() bool { return a.N == 0 && a.Percent == 0 }

// Of is the amount of total hosts: N (at most total), or the share
// rounded up.
func (a Amount) Of(total int) int {
	if a.Percent > 0 {
		return (total*a.Percent + 99) / 100
	}
	return min(a.N, total)
}

func (s *Spec) gate(w int) Gate {
	if w < len(s.Waves) && s.Waves[w].Gate != nil {
		return *s.Waves[w].Gate
	}
	return s.Gate
}

func (s *Spec) deadline() time.Duration {
	if s.Deadline > 0 {
		return s.Deadline
	}
	return DefaultDeadline
}

func (s *Spec) onlineWithin() time.Duration {
	if s.OnlineWithin > 0 {
		return s.OnlineWithin
	}
	return DefaultOnlineWithin
}

func (s *Spec) offlineDeadline() time.Duration {
	if s.OfflineDeadline > 0 {
		return s.OfflineDeadline
	}
	return DefaultOfflineDeadline
}

// threshold is how many failures in a wave of n hosts halt the rollout.
func (s *Spec) threshold(n int) int {
	if s.Threshold.IsZero() {
		return 1
	}
	return max(1, s.Threshold.Of(n))
}

// Plan puts each host of the target (MACs, in the rollout's stable order)
// into a wave: a wave's explicit hosts first, then the rest in order by
// the waves' shares and counts. Hosts that no wave reaches are not in the
// result: the rollout does not cover them. Explicit hosts need not be in
// target.
func (s *Spec) Plan(target []string) map[string]int {
	out := map[string]int{}
	for w, wv := range s.Waves {
		for _, m := range wv.Hosts {
			if _, ok := out[m]; !ok {
				out[m] = w
			}
		}
	}
	var rest []string
	for _, m := range target {
		if _, ok := out[m]; !ok {
			rest = append(rest, m)
		}
	}
	cum := 0
	for w, wv := range s.Waves {
		end := cum
		switch {
		case wv.Percent > 0:
			end = max(cum, (len(rest)*wv.Percent+99)/100)
		case wv.Count > 0:
			end = cum + wv.Count
		}
		end = min(end, len(rest))
		for _, m := range rest[cum:end] {
			out[m] = w
		}
		cum = end
	}
	return out
}

// Check reports what is wrong with a Spec, for the loaders.
func (s *Spec) Check() error {
	if len(s.Waves) == 0 {
		return fmt.Errorf("no waves")
	}
	for i, w := range s.Waves {
		n := 0
		if len(w.Hosts) > 0 {
			n++
		}
		if w.Percent != 0 {
			n++
		}
		if w.Count != 0 {
			n++
		}
		switch {
		case n != 1:
			return fmt.Errorf("wave %d: give one of hosts, percent and count", i+1)
		case w.Percent < 0 || w.Percent > 100:
			return fmt.Errorf("wave %d: percent %d out of 1..100", i+1, w.Percent)
		case w.Count < 0:
			return fmt.Errorf("wave %d: count %d below 1", i+1, w.Count)
		}
	}
	if s.Offline != "" && s.Offline != OfflineWait && s.Offline != OfflineSkip {
		return fmt.Errorf("offline %q: want wait or skip", s.Offline)
	}
	if s.MaxRebooting < 0 {
		return fmt.Errorf("max_rebooting %d below 0", s.MaxRebooting)
	}
	return nil
}

// Window is a maintenance window: days of the week and a time of day
// range in a time zone; a range whose end is before its start crosses
// midnight (and belongs to the day it starts on).
type Window struct {
	Days     [7]bool // by time.Weekday; all false: every day
	From, To int     // minutes after midnight; From == To: all day
	Loc      *time.Location
}

var dayNames = map[string]time.Weekday{"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

// ParseWindow reads days ("Mon,Tue" or "Sat-Sun"; "" every day), hours
// ("02:00-05:00"; "" all day) and a time zone name ("" UTC).
func ParseWindow(days []string, hours, tz string) (*Window, error) {
	w := &Window{Loc: time.UTC}
	if tz != "" {
		loc, err := time.LoadLocation(tz)
		if err != nil {
			return nil, fmt.Errorf("time zone %q: %v", tz, err)
		}
		w.Loc = loc
	}
	for _, d := range days {
		for _, part := range strings.Split(d, ",") {
			part = strings.ToLower(strings.TrimSpace(part))
			if part == "" {
				continue
			}
			a, b, isRange := strings.Cut(part, "-")
			da, ok1 := dayNames[trim3(a)]
			db, ok2 := da, true
			if isRange {
				db, ok2 = dayNames[trim3(b)]
			}
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("day %q: want Mon, Tue, ... Sun or a range like Mon-Fri", part)
			}
			for x := da; ; x = (x + 1) % 7 {
				w.Days[x] = true
				if x == db {
					break
				}
			}
		}
	}
	if hours != "" {
		a, b, ok := strings.Cut(hours, "-")
		from, err1 := clock(a)
		to, err2 := clock(b)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("hours %q: want HH:MM-HH:MM", hours)
		}
		w.From, w.To = from, to
	}
	return w, nil
}

func trim3(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 3 {
		s = s[:3]
	}
	return s
}

func clock(s string) (int, error) {
	t, err := time.Parse("15:04", strings.TrimSpace(s))
	if err != nil {
		return 0, err
	}
	return t.Hour()*60 + t.Minute(), nil
}

func (w *Window) day(d time.Weekday) bool {
	if w.Days == [7]bool{} {
		return true
	}
	return w.Days[d]
}

// Open reports whether t is inside the window.
func (w *Window) Open(t time.Time) bool {
	if w == nil {
		return true
	}
	t = t.In(w.Loc)
	m := t.Hour()*60 + t.Minute()
	switch {
	case w.From == w.To:
		return w.day(t.Weekday())
	case w.From < w.To:
		return w.day(t.Weekday()) && m >= w.From && m < w.To
	}
	// Crossing midnight: the evening part belongs to today, the
	// morning part to yesterday.
	return (m >= w.From && w.day(t.Weekday())) || (m < w.To && w.day((t.Weekday()+6)%7))
}

// Next is the first minute at or after t at which the window is open
// (zero if never, which a valid window is not).
func (w *Window) Next(t time.Time) time.Time {
	if w.Open(t) {
		return t
	}
	c := t.In(w.Loc).Truncate(time.Minute).Add(time.Minute)
	for i := 0; i < 8*24*60; i++ {
		if w.Open(c) {
			return c
		}
		c = c.Add(time.Minute)
	}
	return time.Time{}
}

func (w *Window) String() string {
	if w == nil {
		return "any time"
	}
	var days []string
	names := []string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}
	for d, on := range w.Days {
		if on {
			days = append(days, names[d])
		}
	}
	s := "every day"
	if len(days) > 0 {
		s = strings.Join(days, ",")
	}
	if w.From != w.To {
		s += fmt.Sprintf(" %02d:%02d-%02d:%02d", w.From/60, w.From%60, w.To/60, w.To%60)
	}
	return s + " " + w.Loc.String()
}
