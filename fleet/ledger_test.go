package fleet

import (
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

func TestStartsBoot(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)
	open := &Boot{Start: t0}
	done := &Boot{Start: t0, Checkin: &Observed{}}
	for _, c := range []struct {
		name string
		cur  *Boot
		ev   LedgerEvent
		want bool
	}{
		{"first dhcp", nil, LedgerEvent{Time: t0, Kind: "dhcp"}, true},
		{"first event not dhcp", nil, LedgerEvent{Time: t0, Kind: "http"}, true},
		{"iPXE's own dhcp in the same boot", open, LedgerEvent{Time: t0.Add(5 * time.Second), Kind: "dhcp"}, false},
		{"tftp in the open boot", open, LedgerEvent{Time: t0.Add(time.Second), Kind: "tftp"}, false},
		{"dhcp after the window", open, LedgerEvent{Time: t0.Add(BootWindow + time.Second), Kind: "dhcp"}, true},
		{"dhcp after a check-in", done, LedgerEvent{Time: t0.Add(time.Minute), Kind: "dhcp"}, true},
		{"ignored dhcp after a check-in", done, LedgerEvent{Time: t0.Add(time.Minute), Kind: "dhcp-ignored"}, true},
		{"http after the window stays", open, LedgerEvent{Time: t0.Add(BootWindow + time.Second), Kind: "http"}, false},
	} {
		if got := startsBoot(c.cur, c.ev); got != c.want {
			t.Errorf("startsBoot(%s) = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLedgerLinksOneBoot(t *testing.T) {
	l := NewLedger()
	mac := "52:54:00:00:00:01"
	t0 := time.Date(2026, 1, 2, 12, 1, 3, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	l.add(mac, LedgerEvent{Time: at(0), Kind: "dhcp", Detail: "offered ipxe.efi (UEFI x86-64, option 93=7)"}, nil)
	l.add(mac, LedgerEvent{Time: at(1), Kind: "tftp", Detail: "ipxe.efi"}, nil)
	l.add(mac, LedgerEvent{Time: at(4), Kind: "dhcp", Detail: "iPXE: script URL"}, nil)
	l.add(mac, LedgerEvent{Time: at(5), Kind: "http", Detail: "script"}, nil)
	l.add(mac, LedgerEvent{Time: at(30), Kind: "checkin"}, &Observed{Checkin: checkin.Checkin{MAC: mac, Booted: d12}})
	_, prev := l.add(mac, LedgerEvent{Time: at(600), Kind: "dhcp"}, nil) // next boot
	boots := l.Boots(mac)
	if len(boots) != 2 {
		t.Fatalf("len(Boots) = %d, want 2", len(boots))
	}
	if got, want := len(boots[0].Events), 5; got != want {
		t.Errorf("events in the first boot = %d, want %d", got, want)
	}
	if boots[0].Checkin == nil || boots[0].Checkin.Booted != d12 {
		t.Errorf("first boot's check-in = %+v, want booted %s", boots[0].Checkin, d12)
	}
	if prev != nil {
		t.Errorf("add(new boot after a checked-in one) prev = %+v, want nil (it was persisted at check-in)", prev)
	}
	_, prev = l.add(mac, LedgerEvent{Time: at(600 + 700), Kind: "dhcp"}, nil)
	if prev == nil || !prev.Start.Equal(at(600)) {
		t.Errorf("add(dhcp after the window of an unfinished boot) prev = %v, want the unfinished boot", prev)
	}
}

func TestLedgerIsBounded(t *testing.T) {
	l := NewLedger()
	t0 := time.Now()
	for i := range maxLedgerMACs + 50 {
		mac := mustMAC("02:00:00:00:00:00")
		mac[3], mac[4], mac[5] = byte(i>>16), byte(i>>8), byte(i)
		l.Add(mac, LedgerEvent{Time: t0, Kind: "dhcp-ignored"})
	}
	if got := len(l.byMAC); got != maxLedgerMACs {
		t.Errorf("MACs kept after %d = %d, want %d", maxLedgerMACs+50, got, maxLedgerMACs)
	}
	mac := "02:00:00:00:00:01"
	for i := range 3 * maxBootsPerMAC {
		l.add(mac, LedgerEvent{Time: t0.Add(time.Duration(i) * time.Hour), Kind: "dhcp"}, nil)
	}
	for i := range 2 * maxEventsPerBoot {
		l.add(mac, LedgerEvent{Time: t0.Add(100*time.Hour + time.Duration(i)), Kind: "http"}, nil)
	}
	bs := l.Boots(mac)
	if len(bs) != maxBootsPerMAC {
		t.Errorf("boots kept = %d, want %d", len(bs), maxBootsPerMAC)
	}
	last := bs[len(bs)-1]
	if len(last.Events) != maxEventsPerBoot || last.Dropped != maxEventsPerBoot+1 {
		t.Errorf("last boot events, dropped = %d, %d, want %d, %d", len(last.Events), last.Dropped, maxEventsPerBoot, maxEventsPerBoot+1)
	}
}

func TestRenderWhyPlainWords(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 12, 1, 3, 0, time.UTC)
	r := WhyReport{MAC: "52:54:00:99:99:99", Boots: []Boot{{Start: t0, Events: []LedgerEvent{
		{Time: t0, Kind: "dhcp-ignored", Detail: "unknown MAC (not in the fleet; --allow-unknown serves it)"},
	}}}}
	got := RenderWhy(r, time.UTC)
	for _, want := range []string{
		"52:54:00:99:99:99 is not in the fleet's hosts files",
		"12:01:03 DHCP ignored: unknown MAC (not in the fleet; --allow-unknown serves it) (add it to a hosts file in the fleet directory, or run imaged serve with --allow-unknown)",
		"no check-in from the init",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("RenderWhy(unknown MAC) = %q, want it to contain %q", got, want)
		}
	}
	r = WhyReport{MAC: "52:54:00:00:00:01", Known: true, Hostname: "web-01", Group: "web", State: StateOK,
		Desired: ImageInfo{Ref: "base@1.2", Digest: d12}, DesiredSource: "group web",
		Boots: []Boot{{Start: t0, Checkin: &Observed{}, Events: []LedgerEvent{
			{Time: t0, Kind: "dhcp", Detail: "offered ipxe.efi (UEFI x86-64, option 93=7)"},
			{Time: t0.Add(time.Second), Kind: "tftp", Detail: "ipxe.efi", Err: "timeout"},
		}}}}
	got = RenderWhy(r, time.UTC)
	for _, want := range []string{
		"web-01 (52:54:00:00:00:01, group web): state ok",
		"should run base@1.2 (111111111111) — group web",
		"boot at 2026-01-02 12:01:03 (checked in):",
		"12:01:03 DHCP: offered ipxe.efi (UEFI x86-64, option 93=7)",
		"12:01:04 TFTP: ipxe.efi — failed: timeout",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("RenderWhy(web-01) = %q, want it to contain %q", got, want)
		}
	}
}
