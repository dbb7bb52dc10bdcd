package testvm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hnboot/hnboot/internal/chromiumtest"
)

// TestDashboardQEMU: the dashboard in chromium, on a QEMU host that
// PXE-boots from imaged serve in the lab. The operator logs in and sees
// the host that booted A; assigns B on the host's page (B is staged on
// the disk as "imaged stage" does) and, without reloading, watches the
// page change to B when the host's next boot checks in (server-sent
// events); presses the red button, typing the host's name; the host's
// next boot reverts to A, and the page of the revert says it applied.
func TestDashboardQEMU(t *testing.T) {
	imgs := pxeImages(t)
	dA, dB := fileDigest(t, imgs["PA"]), fileDigest(t, imgs["PB"])
	mac := "52:54:00:77:00:30"
	const token = "dashboard-admin-token-0123456789"
	state := t.TempDir()
	desired := filepath.Join(state, "fleet")
	os.Mkdir(desired, 0o755)
	yaml := fmt.Sprintf(`images:
  - {name: A, version: "1", digest: %s, path: %s}
  - {name: B, version: "2", digest: %s, path: %s}
hosts:
  - mac: %s
    hostname: pxe-ui
    image: A@1
`, dA, imgs["PA"], dB, imgs["PB"], mac)
	tokens := filepath.Join(state, "tokens")
	os.WriteFile(filepath.Join(desired, "fleet.yaml"), []byte(yaml), 0o644)
	os.WriteFile(tokens, []byte("ops "+token+"\n"), 0o600)

	l := newLab(t, 1)
	l.serve(t, "--dhcp-mode", "full", "--pool", labNet+".100-"+labNet+".150",
		"--state", desired, "--observed", filepath.Join(state, "fleet.db"), "--tokens", tokens)
	ui := "http://" + forward(t, l.ns.Name, labAdmin) // the test's chromium reaches the namespace's admin listener
	d := pxeDisk(t, imgs["PA"])
	pxeBoot := func(image string) string {
		t.Helper()
		vm := l.start(t, pxeHost{tap: "tap0", mac: mac, disk: d})
		con := expectBooted(t, vm, image)
		if err := vm.Wait(60 * time.Second); err != nil {
			t.Fatal(err)
		}
		vm.Kill()
		return con
	}
	ctx := chromiumtest.Browser(t, 20*time.Minute)
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
	}
	// waitText waits for sel's text to contain want, the page left as it
	// is: only the event stream can change it.
	waitText := func(what, sel, want string, timeout time.Duration) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
			if got = s; err == nil && strings.Contains(s, want) {
				return
			}
		}
		chromiumtest.Screenshot(t, ctx, "qemu-failed")
		t.Fatalf("%s: %s shows %q after %v, want %q", what, sel, got, timeout, want)
	}

	// Boot 0: A; the host shows up on the dashboard.
	con := pxeBoot("PA")
	wantConsole(t, con, "HNTEST hostname=pxe-ui", "checked in")
	l.waitLog(t, 30*time.Second, `kind=checkin `, macRe(mac), `booted=`+regexp.QuoteMeta(dA))
	do("log in",
		chromedp.Navigate(ui+"/ui/hosts"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#hosts")),
	)
	waitText("the hosts table", "#hosts tbody", "pxe-ui", 10*time.Second)
	waitText("the hosts table", "#hosts tbody", "A@1", 10*time.Second)
	chromiumtest.Screenshot(t, ctx, "qemu-hosts")

	// Assign B on the host's page; B is staged as imaged stage does.
	do("assign B",
		chromedp.Navigate(ui+"/ui/hosts/pxe-ui"),
		chromedp.WaitVisible(chromedp.CSS("#a-image")),
		chromedp.SetValue(chromedp.CSS("#a-image"), "B@2"),
		chromedp.Click(chromedp.CSS("#assign")),
		chromedp.WaitVisible(chromedp.CSS("#hostname")),
	)
	waitText("after the assignment", "#desired", "B@2", 10*time.Second)
	err := stageNew(d, imgs["PB"])
	if err != nil {
		t.Fatal(err)
	}
	con = pxeBoot("PB")
	wantConsole(t, con, "action=promote", "checked in")
	waitText("the host page, live, after the boot into B", "#current", "B@2", 60*time.Second)
	chromiumtest.Screenshot(t, ctx, "qemu-host-on-B")

	// The red button on the host's page.
	do("revert",
		chromedp.SendKeys(chromedp.CSS("#confirm-host"), "pxe-ui"),
		chromedp.WaitEnabled(chromedp.CSS("#revert-host")),
		chromedp.Click(chromedp.CSS("#revert-host")),
		chromedp.WaitVisible(chromedp.CSS("#reverts")),
	)
	waitText("the revert page", "#reverts tbody", "pending", 10*time.Second)
	con = pxeBoot("PA")
	wantConsole(t, con, "hn.revert=", "action=revert", "checked in")
	l.waitLog(t, 30*time.Second, `kind=checkin `, macRe(mac), `revert_applied=`)
	waitText("the revert page, live, after the revert boot", "#reverts tbody", "applied", 60*time.Second)
	waitText("the revert page", "#applied", "1 of 1 hosts applied", 10*time.Second)
	chromiumtest.Screenshot(t, ctx, "qemu-reverted")
	do("host page", chromedp.Navigate(ui+"/ui/hosts/pxe-ui"), chromedp.WaitVisible(chromedp.CSS("#current")))
	waitText("the host page after the revert", "#current", "A@1", 10*time.Second)
	chromiumtest.Screenshot(t, ctx, "qemu-host-reverted")
}
