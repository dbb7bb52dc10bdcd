package pxe

import (
	"fmt"
	"strings"
)

// ScriptInput is what an iPXE boot script is made of.
type ScriptInput struct {
	Base    string // http://server:port
	Host    HostBoot
	Cmdline string // server-wide extra kernel arguments
}

// KernelCmdline is the command line a PXE-booted host gets: hn.server=,
// BOOTIF= (the NIC it booted from, pxelinux style), hn.hostname= when the
// directory names the host, then the server's and the host's extra
// arguments.
func KernelCmdline(in ScriptInput) string {
	mac := strings.ReplaceAll(in.Host.MAC.String(), ":", "-")
	parts := []string{"hn.server=" + in.Base, "BOOTIF=01-" + mac}
	if in.Host.Hostname != "" {
		parts = append(parts, "hn.hostname="+in.Host.Hostname)
	}
	for _, extra := range []string{in.Cmdline, in.Host.Cmdline} {
		if s := strings.Join(strings.Fields(oneLine(extra)), " "); s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, " ")
}

// oneLine keeps a value on one script line: control characters become
// spaces.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// Script is the iPXE script for one host: the kernel and initramfs of its
// image, by digest. initrd=initramfs on the kernel line lets the EFI stub
// find the initramfs iPXE registered under that name; BIOS kernels ignore
// it.
func Script(in ScriptInput) string {
	img := in.Host.Image
	u := in.Base + "/images/" + img.Digest
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	fmt.Fprintf(&b, "echo hnboot: %s boots %s\n", in.Host.MAC, oneLine(strings.TrimSpace(img.Name+" "+img.Version+" "+img.Digest)))
	fmt.Fprintf(&b, "kernel %s/vmlinuz initrd=initramfs %s || goto failed\n", u, KernelCmdline(in))
	fmt.Fprintf(&b, "initrd --name initramfs %s/initramfs || goto failed\n", u)
	b.WriteString("boot || goto failed\n")
	b.WriteString(":failed\necho hnboot: boot failed, retrying in 10 s\nsleep 10\nreboot\n")
	return b.String()
}
