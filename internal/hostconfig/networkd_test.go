package hostconfig

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const networkdBinary = "/lib/systemd/systemd-networkd"

// networkdComplaints runs systemd-networkd over the files in dir, in a
// mount and network namespace of its own (dir bound over
// /etc/systemd/network, tmpfs over /run and the system's network
// directories, no NIC but lo), until it has loaded them, and returns what
// it said about them: an unknown key, a value it cannot parse, a file it
// ignores. networkd has no check mode; loading the files is its parser.
func networkdComplaints(t *testing.T, dir string) []string {
	t.Helper()
	script := `set -e
mount -t tmpfs none /run
mount --bind "$1" /etc/systemd/network
for d in /lib/systemd/network /usr/lib/systemd/network /run/systemd/network; do [ -d "$d" ] && mount -t tmpfs none "$d"; done
exec env SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_LEVEL=info ` + networkdBinary + `
`
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script, "sh", dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var complaints, all []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		l := sc.Text()
		all = append(all, l)
		if strings.Contains(l, "/etc/systemd/network/") {
			complaints = append(complaints, l)
		}
		if strings.Contains(l, "Enumeration completed") {
			break // every file is loaded before the links are enumerated
		}
	}
	cancel()
	cmd.Wait()
	if !strings.Contains(strings.Join(all, "\n"), "Enumeration completed") {
		t.Fatalf("systemd-networkd did not get as far as loading its files:\n%s", strings.Join(all, "\n"))
	}
	return complaints
}

// The networkd files the renderers write are ones systemd-networkd
// reads without a complaint.
func TestNetworkdAcceptsRenderings(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private mount and network namespace")
	}
	if _, err := os.Stat(networkdBinary); err != nil {
		t.Skipf("no %s on this machine", networkdBinary)
	}
	if fi, err := os.Stat("/etc/systemd/network"); err != nil || !fi.IsDir() {
		t.Skip("no /etc/systemd/network to bind the files over")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare")
	}
	// The check itself sees a bad file.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "10-hnboot.network"), []byte("[Match]\nName=eth0\n\n[Network]\nAdress=192.0.2.1/24\nVLAN=\n"), 0o644)
	if got := networkdComplaints(t, bad); len(got) == 0 {
		t.Fatalf("networkd said nothing about a misspelled key: the check is blind")
	}
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			n, _ := Config{Network: c.n}.Validate("h")
			dir := t.TempDir()
			for _, o := range Networkd(n.Network) {
				if err := os.WriteFile(filepath.Join(dir, path.Base(o.Path)), []byte(o.Content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := networkdComplaints(t, dir); len(got) > 0 {
				t.Errorf("systemd-networkd about Networkd(%s):\n%s", c.name, strings.Join(got, "\n"))
			}
		})
	}
}
