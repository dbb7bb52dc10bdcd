package testvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The Debian package, end to end: make deb's script builds it from the
// fixture's binaries, lintian finds no error and no warning, and a real
// Debian system with systemd (the cached debootstrap root, booted by the
// hnboot init in QEMU: the units' hardening needs a real PID 1, and
// systemd-nspawn inside this project's CI container is not) installs it
// with `apt install ./hnboot_*.deb`, starts and stops both units, and
// purges it. The agent checks in with the server in the same VM.

const debVersion = "0.1.0"

// debReport replaces the Debian image's report script: it runs once
// multi-user.target is reached and does what an operator does.
const debReport = `#!/bin/sh
{
echo "HNTEST booted image=$(cat /etc/hn-image)"
cd /root
apt install -y ./ipxe_*.deb ./hnboot_*.deb >/tmp/apt.log 2>&1
echo "HNTEST apt=$?"
tail -3 /tmp/apt.log | sed 's/^/HNTEST apt| /'
echo "HNTEST installed=$(dpkg-query -W -f='${Version} ${db:Status-Abbrev}' hnboot)"
echo "HNTEST enabled=$(systemctl is-enabled hnboot-serve.service hnboot-agent.service | tr '\n' ' ')"
echo "HNTEST man=$(ls /usr/share/man/man8/imaged.8.gz /usr/share/man/man1/mkimage.1.gz | wc -l)"
echo "HNTEST mkimage=$(mkimage version)"
iface=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set "$iface" up
ip addr add 10.0.2.15/24 dev "$iface"
# As the operator does: the boot interface, and the agent's server.
sed -i "s/^IMAGED_INTERFACE=.*/IMAGED_INTERFACE=$iface/" /etc/hnboot/serve.env
sed -i "s|^server:.*|server: http://10.0.2.15:8080|" /etc/hnboot/agent.yaml
echo "lldp_listen: 0s" >>/etc/hnboot/agent.yaml
systemctl start hnboot-serve.service
echo "HNTEST serve-start=$?"
for i in $(seq 60); do journalctl -u hnboot-serve -o cat | grep -q msg=serving && break; sleep 1; done
echo "HNTEST serve-active=$(systemctl is-active hnboot-serve.service)"
echo "HNTEST serve-serving=$(journalctl -u hnboot-serve -o cat | grep -c msg=serving)"
systemctl start hnboot-agent.service
echo "HNTEST agent-start=$?"
# The agent has found /hostpart and this host's MAC under its unit's
# hardening. (Its first check-in follows the sha256 of the 450 MB image it
# runs: minutes under TCG on a busy machine, so not waited for here;
# TestRolloutQEMU and the fleet demo test the agent's work.)
for i in $(seq 60); do journalctl -u hnboot-agent -o cat | grep -q "agent starting" && break; sleep 1; done
echo "HNTEST agent-active=$(systemctl is-active hnboot-agent.service)"
echo "HNTEST agent-started=$(journalctl -u hnboot-agent -o cat | grep -c "agent starting")"
echo "HNTEST state=$(ls /var/lib/hnboot | tr '\n' ' ')"
systemctl stop hnboot-agent.service hnboot-serve.service
echo "HNTEST stop=$?"
for u in serve agent; do
  echo "HNTEST $u-after=$(systemctl is-active hnboot-$u.service) result=$(systemctl show -p Result --value hnboot-$u.service) status=$(systemctl show -p ExecMainStatus --value hnboot-$u.service)"
done
journalctl -u hnboot-serve -u hnboot-agent -o cat --no-pager | tail -25 | sed 's/^/HNTEST journal| /'
apt-get purge -y hnboot >/tmp/purge.log 2>&1
# What the package made or shipped is gone; the init's /etc/hnboot/identity.env
# and network.env (the host's, not the package's) stay.
echo "HNTEST purge=$? left=$(ls -d /var/lib/hnboot /var/cache/hnboot /var/log/hnboot /etc/hnboot/serve.env /etc/hnboot/agent.yaml /etc/hnboot/fleet /usr/sbin/imaged /usr/bin/mkimage 2>/dev/null | tr '\n' ' ')"
sync
echo "HNTEST end"
} >/dev/ttyS0 2>&1
systemctl poweroff --no-block
`

// ipxeDeb is Debian's ipxe package (hnboot depends on it: imaged serve
// copies its binaries for TFTP), fetched once with apt-get download into
// the cache: the VM has no network.
func ipxeDeb(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(CacheDir(), "debs")
	if m, _ := filepath.Glob(filepath.Join(dir, "ipxe_*.deb")); len(m) > 0 {
		return m[0]
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("apt-get", "download", "ipxe")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apt-get download ipxe: %v\n%s", err, out)
	}
	m, _ := filepath.Glob(filepath.Join(dir, "ipxe_*.deb"))
	if len(m) == 0 {
		t.Fatalf("apt-get download ipxe left no ipxe_*.deb in %s", dir)
	}
	return m[0]
}

// buildDeb runs scripts/mkdeb.sh (what make deb runs) on the fixture's
// binaries.
func buildDeb(t *testing.T, f *Fixture) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "scripts", "mkdeb.sh"), debVersion, filepath.Dir(f.Imaged), out)
	cmd.Dir = root
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/mkdeb.sh: %v\n%s", err, b)
	}
	deb := filepath.Join(out, "hnboot_"+debVersion+"_amd64.deb")
	if strings.TrimSpace(string(b[strings.LastIndexByte(strings.TrimSpace(string(b)), '\n')+1:])) != deb {
		t.Fatalf("scripts/mkdeb.sh printed %q, want the path %s", b, deb)
	}
	return deb
}

func TestDebPackage(t *testing.T) {
	f := fixture(t)
	lintian, err := exec.LookPath("lintian")
	if err != nil {
		t.Fatalf("lintian not found: apt-get install lintian (%s)", InstallHint)
	}
	deb := buildDeb(t, f)

	// lintian: no error, no warning; the overrides in
	// packaging/deb/lintian-overrides (static Go binaries, mkimage reading
	// an image's dpkg status) all in use.
	out, _ := exec.Command(lintian, "--show-overrides", deb).CombinedOutput()
	var overridden int
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "E:"), strings.HasPrefix(l, "W:"):
			t.Errorf("lintian: %s", l)
		case strings.HasPrefix(l, "O:"):
			overridden++
		}
	}
	if overridden != 4 {
		t.Errorf("lintian used %d overrides, want the 4 of packaging/deb/lintian-overrides:\n%s", overridden, out)
	}
	list, err := exec.Command("dpkg-deb", "--contents", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"./usr/sbin/imaged", "./usr/lib/hnboot/mkimage", "./usr/lib/hnboot/hninit",
		"./usr/bin/mkimage -> ../lib/hnboot/mkimage", "./lib/systemd/system/hnboot-serve.service",
		"./lib/systemd/system/hnboot-agent.service", "./etc/hnboot/serve.env", "./etc/hnboot/agent.yaml",
		"./etc/hnboot/fleet/fleet.yaml", "./usr/share/man/man8/imaged.8.gz", "./usr/share/man/man1/mkimage.1.gz"} {
		if !strings.Contains(string(list), want) {
			t.Errorf("the package lacks %s:\n%s", want, list)
		}
	}
	conf, err := exec.Command("dpkg-deb", "--ctrl-tarfile", deb).Output()
	if err != nil || !strings.Contains(string(conf), "conffiles") {
		t.Errorf("no conffiles in the control archive (%v)", err)
	}
	if t.Failed() {
		return
	}

	// A Debian system with systemd installs it, runs the units, purges it.
	debBytes, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	ipxe := ipxeDeb(t)
	ipxeBytes, err := os.ReadFile(ipxe)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	imgs, err := f.DebianImagesWith(ctx, map[string]File{
		"root/" + filepath.Base(deb):   {Body: debBytes, Mode: 0o644},
		"root/" + filepath.Base(ipxe):  {Body: ipxeBytes, Mode: 0o644},
		"usr/local/sbin/hntest-report": {Body: []byte(debReport), Mode: 0o755},
	}, "debpkg")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(imgs["debpkg"])
	d := filepath.Join(t.TempDir(), "disk.img")
	if err := f.Run(ctx, "disk", "--out", d, "--size", "3G", "--root", imgs["debpkg"]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	vm, err := Start(ctx, Options{Kernel: f.Kernel, Initrd: f.Initramfs, Disk: d, Memory: 1024,
		// no_timer_check: on a loaded machine the kernel may find the
		// IO-APIC timer "not working" under TCG and panic.
		Append: "hn.hostpart=LABEL=hostpart no_timer_check", MAC: "52:54:00:77:00:50"})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if _, err := vm.Expect(`HNTEST end`, debianBootTimeout+5*time.Minute); err != nil {
		t.Fatal(err)
	}
	con := vm.Console()
	t.Logf("boot, apt install, units started and stopped, purge: %v", time.Since(start).Round(time.Second))
	for _, l := range strings.Split(con, "\n") {
		if strings.Contains(l, "HNTEST ") {
			t.Log(l[strings.Index(l, "HNTEST "):])
		}
	}
	for key, want := range map[string]string{
		"apt":           "0",
		"installed":     debVersion + " ii",
		"enabled":       "disabled disabled",
		"man":           "2",
		"serve-start":   "0",
		"serve-active":  "active",
		"serve-serving": "1",
		"agent-start":   "0",
		"agent-active":  "active",
		"agent-started": "1",
		"stop":          "0",
		"serve-after":   "inactive result=success status=0",
		"agent-after":   "inactive result=success status=0",
		"purge":         "0 left=",
	} {
		if got := debField(con, key); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if got := debField(con, "state"); !strings.Contains(got, "fleet.db") {
		t.Errorf("/var/lib/hnboot holds %q, want the fleet database fleet.db", got)
	}
	if got := debField(con, "mkimage"); !strings.HasPrefix(got, "mkimage ") {
		t.Errorf("mkimage version = %q", got)
	}
}

// debField is the whole value of the console's "HNTEST key=value" line
// (field stops at a space), "" when there is none.
func debField(con, key string) string {
	for _, l := range strings.Split(con, "\n") {
		if i := strings.Index(l, "HNTEST "+key+"="); i >= 0 {
			return strings.TrimSpace(strings.TrimRight(l[i+len("HNTEST "+key+"="):], "\r"))
		}
	}
	return ""
}
