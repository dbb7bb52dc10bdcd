package agent

import (
	"fmt"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Reboot policy modes.
const (
	RebootNever     = "never"
	RebootImmediate = "immediate"
	RebootWindow    = "window"
)

// Policy says when the agent may reboot the host to apply a staged image
// or a revert (or to retry an unhealthy trial boot).
//
//	never                       report "reboot pending" and wait for an operator (default)
//	immediate                   reboot as soon as something is pending
//	window 02:00-04:00          every day, local time
//	window Sat,Sun 22:00-02:00  on those days (the day the window opens); may cross midnight
type Policy struct {
	Mode       string
	Days       []time.Weekday // empty: every day
	Start, End int            // minutes after midnight
}

var dayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// ParsePolicy parses the reboot setting; "" is never.
func ParsePolicy(s string) (Policy, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return Policy{Mode: RebootNever}, nil
	}
	switch f[0] {
	case RebootNever, RebootImmediate:
		if len(f) > 1 {
			return Policy{}, fmt.Errorf("reboot %q: %s takes nothing after it", s, f[0])
		}
		return Policy{Mode: f[0]}, nil
	case RebootWindow:
	default:
		return Policy{}, fmt.Errorf("reboot %q: want never, immediate, or window [DAYS] HH:MM-HH:MM", s)
	}
	p := Policy{Mode: RebootWindow}
	rest := f[1:]
	if len(rest) == 2 {
		for _, d := range strings.Split(rest[0], ",") {
			wd, ok := dayNames[strings.ToLower(d)]
			if !ok || len(d) != 3 {
				return Policy{}, fmt.Errorf("reboot %q: day %q: want Mon,Tue,Wed,Thu,Fri,Sat,Sun", s, d)
			}
			p.Days = append(p.Days, wd)
		}
		rest = rest[1:]
	}
	if len(rest) != 1 {
		return Policy{}, fmt.Errorf("reboot %q: want window [DAYS] HH:MM-HH:MM, e.g. window Sat,Sun 02:00-04:00", s)
	}
	a, b, ok := strings.Cut(rest[0], "-")
	var err1, err2 error
	p.Start, err1 = clock(a)
	p.End, err2 = clock(b)
	if !ok || err1 != nil || err2 != nil || p.Start == p.End {
		return Policy{}, fmt.Errorf("reboot %q: window %q: want HH:MM-HH:MM, start and end different", s, rest[0])
	}
	return p, nil
}

func clock(s string) (int, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, err
	}
	return t.Hour()*60 + t.Minute(), nil
}

func (p Policy) String() string {
	if p.Mode != RebootWindow {
		if p.Mode == "" {
			return RebootNever
		}
		return p.Mode
	}
	var days []string
	for _, d := range p.Days {
		days = append(days, d.String()[:3])
	}
	s := "window "
	if len(days) > 0 {
		s += strings.Join(days, ",") + " "
	}
	return s + fmt.Sprintf("%02d:%02d-%02d:%02d", p.Start/60, p.Start%60, p.End/60, p.End%60)
}

// Decide says whether a pending reboot may happen at now and, when not,
// when it next may (zero for never).
func (p Policy) Decide(now time.Time) (reboot bool, next time.Time) {
	switch p.Mode {
	case RebootImmediate:
		return true, now
	case RebootWindow:
	default:
		return false, time.Time{}
	}
	length := time.Duration((p.End-p.Start+24*60)%(24*60)) * time.Minute
	y, m, d := now.Date()
	for i := -1; i <= 8; i++ {
		day := time.Date(y, m, d+i, 0, 0, 0, 0, now.Location())
		if !p.onDay(day.Weekday()) {
			continue
		}
		open := day.Add(time.Duration(p.Start) * time.Minute)
		if !now.Before(open) && now.Before(open.Add(length)) {
			return true, now
		}
		if open.After(now) && (next.IsZero() || open.Before(next)) {
			next = open
		}
	}
	return false, next
}

func (p Policy) onDay(d time.Weekday) bool {
	if len(p.Days) == 0 {
		return true
	}
	for _, x := range p.Days {
		if x == d {
			return true
		}
	}
	return false
}

// SystemReboot reboots the host: with cmd when given, with systemctl when
// systemd runs, else by syncing and calling reboot(2) directly.
func SystemReboot(cmd []string) error {
	if len(cmd) > 0 {
		return exec.Command(cmd[0], cmd[1:]...).Run()
	}
	if systemdRunning() {
		return exec.Command("systemctl", "reboot").Run()
	}
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}
