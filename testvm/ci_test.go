package testvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hnboot/hnboot/internal/layout"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/fleet"
)

// From CI to the fleet, end to end: examples/ci/pipeline.sh as CI runs
// it (mkimage build of a small recipe, mkimage test, imaged fleet
// publish, a rollout to the canary group) against a real imaged serve in
// the lab namespace, and a PXE-booted QEMU host that ends on the image
// the pipeline built. The host's disk holds "ciold"; the rollout assigns
// it the new image, and the host's next PXE boot downloads it, promotes it
// on trial and runs its systemd (the agent's staging path is
// TestRolloutQEMU's).

// ciExtra is added to examples/ci/minimal.yaml for the test: a file with
// an owner and a mode, and a command that runs it.
const ciExtra = `files:
  - path: /etc/hn-image
    content: "ci\n"
  - path: /usr/local/sbin/ci-hello
    content: "#!/bin/sh\necho hello\n"
    mode: "0750"
    owner: root:adm
commands:
  - /usr/local/sbin/ci-hello > /etc/ci-hello
`

// ciOldInit is /sbin/init of the image the host runs first: its agent
// talks to the lab's server from an address outside the DHCP pool.
const ciOldInit = `#!/bin/sh
export PATH=/bin:/sbin
[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/class ] || mount -t sysfs sysfs /sys
echo "HNTEST booted image=$(cat /etc/hn-image)"
ip link set lo up
ip link set eth0 up
ip addr add ` + labNet + `.60/24 dev eth0
imaged agent --config /etc/hnboot/agent.yaml &
while true; do sleep 3600; done
`

const ciOldAgent = `server: http://` + labHTTP + `
interval: 2s
reboot: immediate
`

// ciOldImage builds ciold: the busybox test root with imaged agent, and
// the test kernel and initramfs in /boot as real images have them.
func ciOldImage(t *testing.T, f *Fixture) string {
	t.Helper()
	tree := filepath.Join(t.TempDir(), "tree")
	if err := RootTree(tree, RootOptions{Name: "ciold"}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"ip", "test", "sed", "head"} {
		os.Symlink("busybox", filepath.Join(tree, "bin", a))
	}
	os.MkdirAll(filepath.Join(tree, "etc", "hnboot"), 0o755)
	os.MkdirAll(filepath.Join(tree, "boot"), 0o755)
	for dst, src := range map[string]string{"sbin/imaged": f.Imaged, "boot/vmlinuz": f.Kernel, "boot/initramfs": f.Initramfs} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, dst), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, body := range map[string]string{"sbin/init": ciOldInit, "etc/hnboot/agent.yaml": ciOldAgent} {
		if err := os.WriteFile(filepath.Join(tree, p), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "ciold.img")
	if err := f.Run(context.Background(), "rootfs", "--from", tree, "--out", img); err != nil {
		t.Fatal(err)
	}
	return img
}

// forward listens on the test's loopback and connects each connection to
// addr inside the namespace: the pipeline runs where the Debian mirror is
// reachable, and reaches the server in the lab through it.
func forward(t *testing.T, ns, addr string) string {
	t.Helper()
	ln, err := (&NetNS{Name: ns}).Forward("127.0.0.1:0", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func TestCIPipeline(t *testing.T) {
	f := fixture(t)
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	old := ciOldImage(t, f)
	dOld := fileDigest(t, old)
	mac := "52:54:00:77:00:30"
	const token = "ci-pipeline-token-0123456789abcdef"

	state := t.TempDir()
	desired := filepath.Join(state, "fleet")
	os.Mkdir(desired, 0o755)
	yaml := fmt.Sprintf(`images:
  - {name: ciold, version: "1", digest: %s, path: %s}
groups:
  - name: canary
    image: ciold@1
hosts:
  - mac: %s
    hostname: ci-host
    group: canary
`, dOld, old, mac)
	if err := os.WriteFile(filepath.Join(desired, "fleet.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(state, "tokens")
	if err := os.WriteFile(tokens, []byte("ci "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l := newLab(t, 1)
	l.serve(t, "--dhcp-mode", "full", "--pool", labNet+".100-"+labNet+".150",
		"--state", desired, "--observed", filepath.Join(state, "fleet.db"), "--tokens", tokens,
		"--images", filepath.Join(state, "images"))
	server := "http://" + forward(t, l.ns.Name, labAdmin)

	// The pipeline, as CI runs it.
	recipeDir := t.TempDir()
	minimal, err := os.ReadFile(filepath.Join(root, "examples", "ci", "minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(recipeDir, "ci.yaml"), append(minimal, ciExtra...), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", filepath.Join(root, "examples", "ci", "pipeline.sh"))
	cmd.Env = append(os.Environ(),
		"PATH="+filepath.Dir(f.MkImage)+":"+os.Getenv("PATH"),
		"IMAGED_SERVER="+server, "IMAGED_TOKEN_FILE="+tokens,
		"RECIPE="+filepath.Join(recipeDir, "ci.yaml"), "VERSION=1", "OUT="+out,
		"CANARY_GROUP=canary", "CANARY_PERCENT=100",
		"SOURCE_DATE_EPOCH=1700000000",
		"HNBOOT_KVM=off") // never KVM in this project's tests
	var plog syncLog
	cmd.Stdout, cmd.Stderr = &plog, &plog
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("examples/ci/pipeline.sh: %v\n%s", err, tail(plog.String(), 60))
	}
	t.Logf("pipeline (build, test, publish, rollout) in %v", time.Since(start).Round(time.Second))
	for _, l := range strings.Split(plog.String(), "\n") {
		if strings.HasPrefix(l, "pipeline:") || strings.Contains(l, "built in") || strings.Contains(l, "tree by mmdebstrap") || strings.Contains(l, "published") {
			t.Log(l)
		}
	}
	img := filepath.Join(out, "image-1.img")
	dNew := fileDigest(t, img)
	var res struct {
		Result  string  `json:"result"`
		Seconds float64 `json:"seconds"`
	}
	if b, err := os.ReadFile(img + ".test.json"); err != nil || json.Unmarshal(b, &res) != nil || res.Result != "passed" {
		t.Fatalf("mkimage test's JSON result: %v %+v", err, res)
	}
	t.Logf("mkimage test: %s in %.1fs", res.Result, res.Seconds)
	// The recipe's files and commands are in the image.
	for name, want := range map[string]string{"etc/hn-image": "ci", "etc/ci-hello": "hello"} {
		if got, err := ReadImageFile(img, name); err != nil || got != want {
			t.Errorf("/%s in the image = %q, %v; want %q", name, got, err, want)
		}
	}
	// Built again from the same recipe and SOURCE_DATE_EPOCH (the package
	// cache warm now): the same bytes.
	again := filepath.Join(t.TempDir(), "again.img")
	start2 := time.Now()
	if err := f.Run(ctx, "build", filepath.Join(recipeDir, "ci.yaml"), "--out", again, "--version", "1"); err != nil {
		t.Fatal(err)
	}
	if d := fileDigest(t, again); d != dNew {
		t.Errorf("a second build of the recipe is %s, the first %s: not reproducible", d, dNew)
	} else {
		t.Logf("a second build (%v) is byte-identical: %s", time.Since(start2).Round(time.Second), d)
	}
	os.Remove(again)

	// Published and rolled out.
	code, body := l.labAPI(t, "GET", "/api/images", token, "")
	var imgs []fleet.ImageListing
	json.Unmarshal([]byte(body), &imgs)
	var pub *fleet.ImageListing
	for i := range imgs {
		if imgs[i].Image == "ci@1" {
			pub = &imgs[i]
		}
	}
	if code != 200 || pub == nil || !pub.Published || pub.Digest != dNew || pub.Assigned != 1 {
		t.Fatalf("GET /api/images = %d %s; want ci@1 published with %s, assigned to ci-host", code, body, dNew)
	}

	// The host PXE-boots with ciold on its disk: the init asks imaged
	// what it should run, downloads ci@1 into hn-root-new.img, promotes it
	// on trial in the same boot, and its systemd comes up.
	d := filepath.Join(t.TempDir(), "disk.img")
	if err := f.Run(context.Background(), "disk", "--out", d, "--size", "2G", "--root", old); err != nil {
		t.Fatal(err)
	}
	vm := l.start(t, pxeHost{tap: "tap0", mac: mac, disk: d})
	if _, err := vm.Expect(`multi-user\.target.* - Multi-User System`, debianBootTimeout); err != nil {
		t.Fatal(err)
	}
	con := vm.Console()
	vm.Kill()
	if strings.Contains(con, "HNTEST booted image=ciold") {
		t.Errorf("the host booted ciold before ci@1; the init should have fetched the assigned image at boot")
	}
	wantConsole(t, con, "action=promote")
	// The image, whole or by delta: ranges of the blob or of its pack.
	l.waitLog(t, 10*time.Second, `kind=http `, macRe(mac), `GET /blobs/`+regexp.QuoteMeta(dNew)+`(`+regexp.QuoteMeta(layout.PackSuffix)+`)? 20[06]`)
	l.waitLog(t, 60*time.Second, `kind=checkin `, macRe(mac), `source=init booted=`+regexp.QuoteMeta(dNew), `action=promote`)
	t.Logf("the host ends on ci@1 %s in one boot: %v after the pipeline started", dNew, time.Since(start).Round(time.Second))
}

// TestMkimageTestFails: mkimage test of an image that never becomes
// healthy (G: the busybox test root, no systemd; its init reports and
// powers off) boots it through UEFI and GRUB from the image's own
// initramfs, then fails with status 1, the reason, the console's tail,
// and the whole console kept.
func TestMkimageTestFails(t *testing.T) {
	f := grubImages(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "console.log")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.MkImage, "test", images["G"], "--kvm", "off", "--deadline", "5m", "--json", "--console-log", logPath)
	var stdout, stderr syncLog
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("mkimage test of an image without systemd = %v, want exit status 1\n%s\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("mkimage test failed as it should in %v", time.Since(start).Round(time.Millisecond))
	var res struct {
		Result, Reason, Firmware, Accel string
		ConsoleTail                     []string `json:"console_tail"`
		ConsoleLog                      string   `json:"console_log"`
	}
	if err := json.Unmarshal([]byte(stdout.String()), &res); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout.String())
	}
	if res.Result != "failed" || !strings.Contains(res.Reason, "QEMU exited before the system was healthy") || res.Firmware != "uefi" || res.Accel != "tcg" || len(res.ConsoleTail) == 0 || res.ConsoleLog != logPath {
		t.Errorf("result = %+v; want failed, the reason, UEFI under TCG, the console's tail and %s", res, logPath)
	}
	if !strings.Contains(stderr.String(), "not healthy: QEMU exited") || !strings.Contains(stderr.String(), "--- console (last") {
		t.Errorf("stderr lacks the reason and the console's tail:\n%s", stderr.String())
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// GRUB loaded the image's kernel and initramfs, with the probe's
	// hn.init; the image's own init ran and powered off.
	wantConsole(t, string(b), "real_root=/hn-root.img", "hn.init=/var/lib/hnboot-test/init", "hnboot init starting", "switching root", "HNTEST booted image=G")
}
