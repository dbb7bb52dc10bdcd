package testvm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Diskless hosts and recovery over the network, end to end: imaged
// serve in the lab's namespace (newFetchLab), a PXE host with QEMU's
// iPXE ROM, the real kernel and init.

// TestPXEDiskless: a PXE host without a disk. The init finds no hostpart
// within the short wait a known server allows, downloads its assigned
// image B into RAM, checks MemAvailable first, and boots B read-only
// under the overlay: the booted system has no /hostpart and no /data0,
// and imaged got a check-in saying the host runs B from RAM.
func TestPXEDiskless(t *testing.T) {
	fl := newFetchLab(t, "52:54:00:77:00:40", "B@2")
	vm := fl.lab.start(t, pxeHost{tap: "tap0", mac: fl.mac, noEntropy: true})
	con := expectBooted(t, vm, "PB")
	vm.Kill()
	netUpWithin(t, con, 10*time.Second)
	wantConsole(t, con, "no hostpart: no partition matches LABEL=hostpart after 5s", "booting the assigned image from RAM",
		"MemAvailable is", "fetching the assigned image into RAM", "image downloaded", "switching root",
		"HNTEST no-hostpart", "HNTEST no-data0", "HNTEST sshkey=AAAA")
	logLines(t, con, "diskless:", "image downloaded", "switching root")
	if n := strings.Count(con, "/hostpart and /data0 are absent"); n != 1 {
		t.Errorf("the init says %d times that /hostpart and /data0 are absent, want once", n)
	}
	if strings.Contains(con, "HNTEST hostpart-mounted") {
		t.Errorf("the diskless system has /hostpart mounted")
	}
	// Staging may build B's repeated chunks (zeros) itself, by delta:
	// at most B's size travels, and some of it did.
	got := fl.served()
	t.Logf("B into RAM: %d bytes of its %d served", got, fl.sizeB)
	if got == 0 || got > fl.sizeB {
		t.Errorf("proxy served %d bytes of B, want some and at most its %d", got, fl.sizeB)
	}
	fl.waitLog(t, 30*time.Second, `kind=checkin `, macRe(fl.mac), `booted=`+regexp.QuoteMeta(fl.dB))
}

// TestPXERecoverCorruptImages: a PXE host whose disk holds garbage in
// hn-root.img and hn-root-old.img. Neither boots; the init brings up the
// boot NIC, fetches the assigned image B from imaged, installs it as
// hn-root.img with the broken files kept aside as hn-root.img.broken and
// hn-root-old.img.broken, and boots B instead of the rescue shell.
func TestPXERecoverCorruptImages(t *testing.T) {
	fl := newFetchLab(t, "52:54:00:77:00:41", "B@2")
	fl.noEntropy = true
	junk := bytes.Repeat([]byte("garbage, not a filesystem\n"), 64<<10)
	err := WithHostpart(fl.disk, func(dir string) error {
		for _, name := range []string{"hn-root.img", "hn-root-old.img"} {
			if err := os.WriteFile(filepath.Join(dir, name), junk, 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	dJunk := fileDigestBytes(junk)
	con := fl.boot("PB")
	wantConsole(t, con, "no image could be booted", "recovering over the network", "image downloaded",
		"keeping hn-root.img aside as hn-root.img.broken", "recovered: the assigned image is hn-root.img", "switching root")
	logLines(t, con, "cannot boot image", "no local image boots", "recover", "image downloaded", "switching root")
	netUpWithin(t, con, 10*time.Second)
	if strings.Contains(con, "cannot boot:") {
		t.Errorf("the boot went to the rescue shell")
	}
	fl.onDisk(map[string]string{"hn-root.img": fl.dB, "hn-root.img.broken": dJunk, "hn-root-old.img.broken": dJunk},
		"hn-root-old.img", "hn-root-recover.img", "hn-root-recover.img.part", ".hnboot/journal", "hn-root.trial")
	fl.waitLog(t, 30*time.Second, `kind=checkin `, macRe(fl.mac), `booted=`+regexp.QuoteMeta(fl.dB), `action=recover`)
}

func fileDigestBytes(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}
