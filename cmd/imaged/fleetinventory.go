package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/cli"
)

const fleetHostsUsage = `Usage: imaged fleet hosts [flags] [--label KEY=VALUE]...

Lists the fleet's hosts with what their agents reported: image, state,
CPU, memory, disks, NICs, firmware, and the switch and port (LLDP) of
their first NIC that heard one. --label keeps the hosts that have every
label given (labels come from the fleet's YAML, on hosts and groups).

Examples:
  imaged fleet hosts --server http://127.0.0.1:8081 --label rack=r12
  imaged fleet hosts --server http://127.0.0.1:8081 --json
`

const fleetHostUsage = `Usage: imaged fleet host [flags] HOST|MAC

Shows one host in full: labels, desired and current image, state, its
facts (CPU, memory, disks with model, serial and size, NICs with speed,
link and LLDP neighbour, firmware and Secure Boot, uptime), the image
slots, the packages of the image it runs, and its last boots.

Example:
  imaged fleet host --server http://127.0.0.1:8081 web-07
`

const fleetPackagesUsage = `Usage: imaged fleet packages [flags] NAME [--version V] [--label KEY=VALUE]...

Which hosts run which version of package NAME: from the package lists of
the images the hosts reported running (mkimage rootfs records them), not
guessed. Hosts whose image's packages are not known are listed with why.

Example:
  imaged fleet packages --server http://127.0.0.1:8081 openssl
  imaged fleet packages --server http://127.0.0.1:8081 openssl --version 3.0.15-1~deb12u1
`

type labelFlags []string

func (l *labelFlags) String() string     { return strings.Join(*l, ",") }
func (l *labelFlags) Set(v string) error { *l = append(*l, v); return nil }

func labelQuery(q url.Values, labels labelFlags) {
	for _, l := range labels {
		q.Add("label", l)
	}
}

func fleetHosts(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetHostsUsage, std, true)
	var labels labelFlags
	c.Var(&labels, "label", "only hosts with label `KEY=VALUE` (repeatable)")
	if err := c.parse(args, 0, 0, ""); err != nil {
		return err
	}
	if _, err := fleet.ParseSelector(labels); err != nil {
		return c.Usagef("--label: %v", err)
	}
	q := url.Values{}
	labelQuery(q, labels)
	path := "/api/hosts?" + q.Encode()
	if *c.asJSON {
		return c.raw("GET", path, nil)
	}
	var hs []fleet.HostSummary
	if err := c.c.get(path, &hs); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(std.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tMAC\tGROUP\tCURRENT\tSTATE\tCPU\tMEMORY\tDISKS\tFIRMWARE\tSWITCH PORT")
	for _, h := range hs {
		cpu, mem, disks, fw, sw := "-", "-", "-", "-", "-"
		if f := h.Facts; f != nil {
			if f.CPU.Count > 0 {
				cpu = fmt.Sprintf("%d× %s", f.CPU.Count, f.CPU.Model)
			}
			if f.MemoryBytes > 0 {
				mem = human(f.MemoryBytes)
			}
			var total int64
			for _, d := range f.Disks {
				total += d.SizeBytes
			}
			if len(f.Disks) > 0 {
				disks = fmt.Sprintf("%d, %s", len(f.Disks), human(total))
			}
			fw = firmwareText(f.Firmware.Mode, f.Firmware.SecureBoot)
			for _, n := range f.NICs {
				if n.LLDP != nil {
					sw = n.LLDP.SystemName + " " + n.LLDP.PortID
					break
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Hostname, h.MAC, dash(h.Group), imgText(h.Current), h.State, cpu, mem, disks, fw, sw)
	}
	return tw.Flush()
}

func firmwareText(mode, sb string) string {
	switch {
	case mode == "":
		return "-"
	case sb != "":
		return mode + ", Secure Boot " + sb
	}
	return mode
}

func fleetHost(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetHostUsage, std, true)
	if err := c.parse(args, 1, 1, "HOST or MAC"); err != nil {
		return err
	}
	path := "/api/hosts/" + url.PathEscape(c.Arg(0))
	if *c.asJSON {
		return c.raw("GET", path, nil)
	}
	var inv fleet.HostInventory
	if err := c.c.get(path, &inv); err != nil {
		return err
	}
	printHost(std.Stdout, inv)
	return nil
}

func printHost(w io.Writer, h fleet.HostInventory) {
	fmt.Fprintf(w, "%s (%s), group %s\n", h.Hostname, h.MAC, dash(h.Group))
	if len(h.Labels) > 0 {
		var kv []string
		for k, v := range h.Labels {
			kv = append(kv, k+"="+v)
		}
		sortStrings(kv)
		fmt.Fprintf(w, "labels:    %s\n", strings.Join(kv, " "))
	}
	fmt.Fprintf(w, "desired:   %s\ncurrent:   %s (%s)\n", imgText(h.Desired), imgText(h.Current), h.State)
	if !h.LastCheckin.IsZero() {
		fmt.Fprintf(w, "checked in %s; kernel %s; up %v\n", h.LastCheckin.Local().Format(time.DateTime), dash(h.Kernel), (time.Duration(h.Uptime) * time.Second).String())
	}
	fmt.Fprintf(w, "slots:     current %s, old %s, new %s, broken %s\n", shortOr(h.Slots.Current), shortOr(h.Slots.Old), shortOr(h.Slots.New), shortOr(h.Slots.Broken))
	if h.Checkin != nil && h.Checkin.Staging != nil {
		fmt.Fprintf(w, "staging:   %s\n", stagingText(h.Checkin.Staging))
	}
	if f := h.Facts; f != nil {
		fmt.Fprintf(w, "\nfacts (reported %s):\n", f.Time.Local().Format(time.DateTime))
		fmt.Fprintf(w, "  system:    %s %s, serial %s\n", dash(f.System.Vendor), dash(f.System.Product), dash(f.System.Serial))
		fmt.Fprintf(w, "  firmware:  %s; %s %s %s\n", firmwareText(f.Firmware.Mode, f.Firmware.SecureBoot), dash(f.Firmware.Vendor), f.Firmware.Version, f.Firmware.Date)
		fmt.Fprintf(w, "  cpu:       %d× %s\n  memory:    %s\n", f.CPU.Count, dash(f.CPU.Model), human(f.MemoryBytes))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  DISK\tMODEL\tSERIAL\tSIZE\t")
		for _, d := range f.Disks {
			kind := "ssd"
			if d.Rotational {
				kind = "hdd"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s %s\t\n", d.Name, dash(d.Model), dash(d.Serial), human(d.SizeBytes), kind)
		}
		tw.Flush()
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NIC\tMAC\tSPEED\tLINK\tSWITCH\tPORT\tPORT DESCRIPTION\tVLAN")
		for _, n := range f.NICs {
			speed, link := "-", "down"
			if n.SpeedMbps > 0 {
				speed = fmt.Sprintf("%d Mb/s", n.SpeedMbps)
			}
			if n.Link {
				link = "up"
			}
			sw, port, desc, vlan := "-", "-", "-", "-"
			if l := n.LLDP; l != nil {
				sw, port, desc = dash(l.SystemName+" "+l.ChassisID), dash(l.PortID), dash(l.PortDescription)
				if l.VLAN > 0 {
					vlan = fmt.Sprint(l.VLAN)
				}
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.MAC, speed, link, sw, port, desc, vlan)
		}
		tw.Flush()
	} else {
		fmt.Fprintln(w, "\nfacts: none reported (the host runs no agent, or an older one)")
	}
	if p := h.Packages; p != nil {
		fmt.Fprintf(w, "\npackages of %s: ", imgText(p.Image))
		if p.Source == "unknown" || p.Source == "none" {
			fmt.Fprintf(w, "not known: %s\n", p.Note)
		} else {
			fmt.Fprintf(w, "%d (%s)\n", len(p.Packages), p.Source)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			for _, pk := range p.Packages {
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", pk.Name, pk.Version, pk.Arch)
			}
			tw.Flush()
		}
	}
	if len(h.Boots) > 0 {
		fmt.Fprintln(w, "\nlast boots:")
		for _, b := range h.Boots {
			outcome := "no check-in from the init"
			if b.Checkin != nil {
				outcome = "checked in: booted " + shortOr(b.Checkin.Booted)
				if b.Checkin.Action != "" {
					outcome += ", " + b.Checkin.Action
				}
			}
			fmt.Fprintf(w, "  %s  %s\n", b.Start.Local().Format(time.DateTime), outcome)
		}
	}
}

func shortOr(d string) string {
	if d == "" {
		return "-"
	}
	return shortDigest(d)
}

func fleetPackages(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetPackagesUsage, std, true)
	version := c.String("version", "", "only hosts with this `VERSION` of the package")
	var labels labelFlags
	c.Var(&labels, "label", "only hosts with label `KEY=VALUE` (repeatable)")
	if err := c.parse(args, 1, 1, "NAME (a package)"); err != nil {
		return err
	}
	q := url.Values{}
	if *version != "" {
		q.Set("version", *version)
	}
	labelQuery(q, labels)
	path := "/api/packages/" + url.PathEscape(c.Arg(0)) + "?" + q.Encode()
	if *c.asJSON {
		return c.raw("GET", path, nil)
	}
	var rep fleet.PackageReport
	if err := c.c.get(path, &rep); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(std.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tARCH\tHOSTS\tIMAGES\tHOST NAMES")
	for _, v := range rep.Versions {
		names := strings.Join(v.Hosts, ",")
		if len(v.Hosts) > 10 {
			names = strings.Join(v.Hosts[:10], ",") + fmt.Sprintf(",... (%d more)", len(v.Hosts)-10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", v.Version, v.Arch, len(v.Hosts), strings.Join(v.Images, ","), names)
	}
	tw.Flush()
	fmt.Fprintf(std.Stdout, "%d hosts run an image without %s", rep.Without, rep.Package)
	if len(rep.Unknown) > 0 {
		fmt.Fprintf(std.Stdout, "; %d hosts not known:\n", len(rep.Unknown))
		for i, u := range rep.Unknown {
			if i == 10 {
				fmt.Fprintf(std.Stdout, "  ... and %d more\n", len(rep.Unknown)-10)
				break
			}
			fmt.Fprintf(std.Stdout, "  %s: %s\n", u.Host, u.Reason)
		}
	} else {
		fmt.Fprintln(std.Stdout)
	}
	return nil
}

// stagingText is a host's last staging in one line: what, its state, and
// how the image came (a delta's local and fetched share).
func stagingText(s *checkin.Staging) string {
	t := strings.TrimSpace(dash(s.Image) + " " + s.State)
	switch s.Mode {
	case "delta":
		t += fmt.Sprintf(" by delta: %s (%d of %d chunks) from the host's images, %s (%d chunks) fetched",
			human(s.Local), s.LocalChunks, s.Chunks, human(s.Fetched), s.FetchedChunks)
	case "full":
		t += fmt.Sprintf(", downloaded whole: %s", human(s.Fetched))
	}
	if s.Reused > 0 {
		t += fmt.Sprintf(", %s resumed", human(s.Reused))
	}
	if s.TookMS > 0 {
		t += fmt.Sprintf(", in %v", (time.Duration(s.TookMS) * time.Millisecond).Round(time.Millisecond))
	}
	if s.Fallback != "" {
		t += " (not by delta: " + s.Fallback + ")"
	}
	if s.Error != "" {
		t += ": " + s.Error
	}
	return t
}
