package fleet

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hnboot/hnboot/pxe"
)

// Run once with HNBOOT_GEN_OLDSTORE=1 while the JSON-lines store existed:
// it writes testdata/oldstore/fleet.db with the old code and what the old
// code answered from it.
func TestGenOldStore(t *testing.T) {
	if os.Getenv("HNBOOT_GEN_OLDSTORE") != "1" {
		t.Skip("generator")
	}
	dir := copyExample(t)
	state := filepath.Join(t.TempDir(), "fleet.db")
	clock := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	now := func() time.Time { clock = clock.Add(1500 * time.Millisecond); return clock }
	os.WriteFile(filepath.Join(dir, "tokens"), []byte("alice "+aliceToken+"\n"), 0o600)
	f, err := New(Options{Dir: dir, StatePath: state, PollInterval: -1, Now: now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ci := func(body string) {
		if err := f.Checkin(mustParse(t, body)); err != nil {
			t.Fatal(err)
		}
	}
	rec := func(mac, kind, detail string) {
		f.Record(Event{Time: now(), MAC: mustMAC(mac), Kind: kind, Detail: detail})
	}
	// web-01 boots by PXE and checks in from the init; its agent later.
	rec("52:54:00:00:00:01", pxe.KindDHCP, "offered ipxe.efi (UEFI x86-64, option 93=7)")
	rec("52:54:00:00:00:01", pxe.KindTFTP, "ipxe.efi sent")
	rec("52:54:00:00:00:01", pxe.KindHTTP, "GET /boot/52:54:00:00:00:01.ipxe 200")
	ci(`{"mac":"52:54:00:00:00:01","source":"init","booted":"` + d12 + `","action":"boot","kernel":"6.1.0-test","images":{"current":"` + d12 + `"}}`)
	ci(`{"mac":"52:54:00:00:00:01","source":"agent","hostname":"web-01","images":{"current":"` + d12 + `"},"ssh_host_keys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEGkJqDjKuC9YPxUYA0QxhCoq0AKDGCbqeSbA/d5wUxp root@web-01"]}`)
	// db-01 promoted 1.3 on trial, with 1.2 old.
	rec("52:54:00:00:00:10", pxe.KindDHCP, "offered undionly.kpxe (BIOS, option 93=0)")
	ci(`{"mac":"52:54:00:00:00:10","source":"init","booted":"` + d13 + `","action":"promote","trial":true,"tries_left":2,"images":{"current":"` + d13 + `","old":"` + d12 + `"}}`)
	// web-02: a boot that never checked in, then a new one.
	rec("52:54:00:00:00:02", pxe.KindDHCP, "offered ipxe.efi (UEFI x86-64, option 93=7)")
	clock = clock.Add(BootWindow + time.Minute)
	rec("52:54:00:00:00:02", pxe.KindDHCP, "offered ipxe.efi (UEFI x86-64, option 93=7)")
	ci(`{"mac":"52:54:00:00:00:02","source":"init","booted":"` + d12 + `","images":{"current":"` + d12 + `"},"failed_digests":["` + d13 + `"]}`)
	// A MAC not in the fleet.
	ci(`{"mac":"52:54:00:aa:bb:cc","source":"agent","hostname":"stray"}`)
	// Admin actions: overrides, a rollout, a pending revert.
	if err := f.Assign("alice", "192.0.2.99:1234", Target{Host: "web-03"}, "base@1.3"); err != nil {
		t.Fatal(err)
	}
	// An override set and cleared: a put and a del in the log.
	if err := f.Assign("alice", "192.0.2.99:1234", Target{Host: "web-04"}, "base@1.3"); err != nil {
		t.Fatal(err)
	}
	if err := f.Assign("alice", "192.0.2.99:1234", Target{Host: "web-04"}, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.Assign("alice", "192.0.2.99:1234", Target{Group: "db"}, "base@1.2"); err != nil {
		t.Fatal(err)
	}
	if err := f.SetRollout("alice", "192.0.2.99:1234", Rollout{Name: "web-1.3", Image: "base@1.3", Group: "web", Percent: 50}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Revert("alice", "192.0.2.99:1234", Target{Host: "db-01"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"status": f.Status(), "audit": f.Audit(0)}
	boots := map[string][]Boot{}
	for _, mac := range []string{"52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:10"} {
		boots[mac] = f.led.Boots(mac)
	}
	want["boots"] = boots
	f.Close()
	b, _ := os.ReadFile(state)
	if err := os.WriteFile("testdata/oldstore/fleet.db", b, 0o644); err != nil {
		t.Fatal(err)
	}
	j, _ := json.MarshalIndent(want, "", "  ")
	if err := os.WriteFile("testdata/oldstore/want.json", append(j, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
