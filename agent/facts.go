package agent

import (
	"context"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	"github.com/prometheus/procfs/sysfs"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/lldp"
)

// DefaultLLDPListen is how long the agent listens for LLDP frames on each
// NIC: switches send one every 30 s by default.
const DefaultLLDPListen = 35 * time.Second

// factsEvery is how often the agent reads its facts again (disks and NICs
// come and go; LLDP neighbours change with the cabling).
const factsEvery = time.Hour

// Facts reads the host's hardware facts: CPU and memory (/proc), disks,
// NICs, firmware and DMI strings (/sys), and each NIC's LLDP neighbour
// heard within listen (0: no listening). NICs are the kernel's interfaces
// of this network namespace, less loopback.
func (s System) Facts(ctx context.Context, listen time.Duration) checkin.Facts {
	var f checkin.Facts
	if p, err := procfs.NewFS(s.path("/proc")); err == nil {
		if cpus, err := p.CPUInfo(); err == nil && len(cpus) > 0 {
			f.CPU = checkin.CPU{Model: cpus[0].ModelName, Count: len(cpus)}
		}
		if m, err := p.Meminfo(); err == nil && m.MemTotal != nil {
			f.MemoryBytes = int64(*m.MemTotal) * 1024
		}
	}
	f.Disks = s.disks()
	f.NICs = s.nics(ctx, listen)
	if _, err := os.Stat(s.path("/sys/firmware/efi")); err == nil {
		f.Firmware.Mode = "uefi"
		f.Firmware.SecureBoot = s.secureBoot()
	} else {
		f.Firmware.Mode = "bios"
	}
	if sfs, err := sysfs.NewFS(s.path("/sys")); err == nil {
		if d, err := sfs.DMIClass(); err == nil {
			str := func(p *string) string {
				if p == nil {
					return ""
				}
				return strings.TrimSpace(*p)
			}
			f.Firmware.Vendor, f.Firmware.Version, f.Firmware.Date = str(d.BiosVendor), str(d.BiosVersion), str(d.BiosDate)
			f.System = checkin.System{Vendor: str(d.SystemVendor), Product: str(d.ProductName), Serial: str(d.ProductSerial)}
		}
	}
	return f
}

// secureBoot reads the SecureBoot EFI variable: 4 bytes of attributes,
// then 1 (enabled) or 0.
func (s System) secureBoot() string {
	b, err := os.ReadFile(s.path("/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"))
	switch {
	case err != nil || len(b) < 5:
		return ""
	case b[4] == 1:
		return "enabled"
	}
	return "disabled"
}

func (s System) read(p string) string {
	b, err := os.ReadFile(s.path(p))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// disks are the block devices that are disks: not loop, RAM, zram,
// device-mapper, md or optical devices, and not empty.
func (s System) disks() []checkin.Disk {
	ents, _ := os.ReadDir(s.path("/sys/block"))
	var out []checkin.Disk
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") ||
			strings.HasPrefix(n, "dm-") || strings.HasPrefix(n, "md") || strings.HasPrefix(n, "sr") || strings.HasPrefix(n, "nbd") {
			continue
		}
		dir := "/sys/block/" + n
		sectors, _ := strconv.ParseInt(s.read(dir+"/size"), 10, 64)
		if sectors == 0 {
			continue
		}
		d := checkin.Disk{Name: n, SizeBytes: sectors * 512, Rotational: s.read(dir+"/queue/rotational") == "1",
			Model: s.read(dir + "/device/model"), Serial: s.read(dir + "/device/serial")}
		if d.Serial == "" {
			d.Serial = s.read(dir + "/serial") // virtio
		}
		if d.Serial == "" {
			d.Serial = vpdSerial(s.read(dir + "/device/vpd_pg80")) // SCSI, SATA behind libata
		}
		out = append(out, d)
	}
	return out
}

// vpdSerial is the serial number in a SCSI VPD page 0x80 (4 bytes of
// header, then the text).
func vpdSerial(p string) string {
	if len(p) <= 4 {
		return ""
	}
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < ' ' || r > '~' {
			return -1
		}
		return r
	}, p[4:]))
}

// nics are the network interfaces with a MAC, each with its speed and
// link from /sys and the LLDP neighbour heard within listen (all NICs
// listen at once).
func (s System) nics(ctx context.Context, listen time.Duration) []checkin.NIC {
	ifs, _ := net.Interfaces()
	sort.Slice(ifs, func(i, j int) bool { return ifs[i].Index < ifs[j].Index })
	var out []checkin.NIC
	var ifis []net.Interface
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagLoopback != 0 || len(ifi.HardwareAddr) != 6 {
			continue
		}
		n := checkin.NIC{Name: ifi.Name, MAC: ifi.HardwareAddr.String(), Link: ifi.Flags&net.FlagRunning != 0}
		dir := "/sys/class/net/" + ifi.Name
		if c := s.read(dir + "/carrier"); c != "" {
			n.Link = c == "1"
		}
		if sp, err := strconv.Atoi(s.read(dir + "/speed")); err == nil && sp > 0 {
			n.SpeedMbps = sp
		}
		out = append(out, n)
		ifis = append(ifis, ifi)
	}
	if listen <= 0 {
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, listen)
	defer cancel()
	var wg sync.WaitGroup
	for i := range ifis {
		if !out[i].Link {
			continue
		}
		l, err := lldp.Listen(&ifis[i])
		if err != nil {
			continue // no CAP_NET_RAW, or a NIC that went away
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer l.Close()
			if nb, err := l.Next(ctx); err == nil && nb != nil {
				out[i].LLDP = nb
			}
		}()
	}
	wg.Wait()
	return out
}

// refreshFacts reads the facts in the background, now and every
// factsEvery, for the next check-ins.
func (a *Agent) refreshFacts(ctx context.Context) {
	for {
		f := a.System.Facts(ctx, a.Config.lldpListen())
		a.mu.Lock()
		a.facts = &f
		a.mu.Unlock()
		a.wake()
		select {
		case <-ctx.Done():
			return
		case <-time.After(factsEvery):
		}
	}
}

// pendingFacts are the facts to send with this check-in: new ones, or
// nil when the server has them already. Facts are never changed once
// read, so the pointer tells them apart.
func (a *Agent) pendingFacts() *checkin.Facts {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.facts == a.factsSent {
		return nil
	}
	return a.facts
}

// factsDelivered records that the server stored f.
func (a *Agent) factsDelivered(f *checkin.Facts) {
	if f == nil {
		return
	}
	a.mu.Lock()
	a.factsSent = f
	a.mu.Unlock()
}
