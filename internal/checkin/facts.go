package checkin

import (
	"fmt"
	"net"
)

// Facts are what the agent knows about the host's hardware, for the
// fleet's inventory (imaged fleet hosts, imaged fleet host). The agent
// sends them in its first check-in and whenever they change; the server
// keeps the last ones it got apart from the check-ins.
//
//	"facts": {
//	  "cpu": {"model": "AMD EPYC 7302P 16-Core Processor", "count": 32},
//	  "memory_bytes": 135089958912,
//	  "disks": [{"name": "nvme0n1", "model": "SAMSUNG MZQL2960HCJR", "serial": "S64FNE0R", "size_bytes": 960197124096, "rotational": false}],
//	  "nics": [{"name": "eno1", "mac": "52:54:00:12:34:56", "speed_mbps": 25000, "link": true,
//	            "lldp": {"chassis_id": "mac 00:1c:73:aa:bb:cc", "system_name": "leaf-12", "port_id": "Ethernet12", "port_description": "web-07 eno1", "vlan": 120, "ttl": 120}}],
//	  "firmware": {"mode": "uefi", "secure_boot": "enabled", "vendor": "Dell Inc.", "version": "2.19.1", "date": "10/12/2023"},
//	  "system": {"vendor": "Dell Inc.", "product": "PowerEdge R6525", "serial": "7XK2LQ3"}
//	}
type Facts struct {
	CPU         CPU      `json:"cpu"`
	MemoryBytes int64    `json:"memory_bytes,omitempty"`
	Disks       []Disk   `json:"disks,omitempty"`
	NICs        []NIC    `json:"nics,omitempty"`
	Firmware    Firmware `json:"firmware"`
	System      System   `json:"system,omitzero"`
}

// CPU is the processor model and the number of logical CPUs.
type CPU struct {
	Model string `json:"model,omitempty"`
	Count int    `json:"count,omitempty"`
}

// Disk is one block device (not a partition, loop, RAM or device-mapper
// device).
type Disk struct {
	Name       string `json:"name"`
	Model      string `json:"model,omitempty"`
	Serial     string `json:"serial,omitempty"`
	SizeBytes  int64  `json:"size_bytes"`
	Rotational bool   `json:"rotational,omitempty"`
}

// NIC is one network interface (not loopback), with the switch port it
// is plugged into when LLDP told.
type NIC struct {
	Name      string    `json:"name"`
	MAC       string    `json:"mac,omitempty"`
	SpeedMbps int       `json:"speed_mbps,omitempty"` // 0: unknown (link down, virtual)
	Link      bool      `json:"link"`
	LLDP      *Neighbor `json:"lldp,omitempty"`
}

// Neighbor is what an LLDP frame heard on a NIC says about the switch.
type Neighbor struct {
	ChassisID       string `json:"chassis_id,omitempty"` // "mac 00:1c:73:aa:bb:cc", or the text
	SystemName      string `json:"system_name,omitempty"`
	SystemDesc      string `json:"system_description,omitempty"`
	PortID          string `json:"port_id,omitempty"`
	PortDescription string `json:"port_description,omitempty"`
	VLAN            int    `json:"vlan,omitempty"` // the port's VLAN id (IEEE 802.1 TLV)
	MgmtAddress     string `json:"management_address,omitempty"`
	TTL             int    `json:"ttl,omitempty"` // seconds
}

// Firmware is how the host booted: "bios" or "uefi", Secure Boot
// "enabled", "disabled" or "" (unknown, or not UEFI), and the firmware's
// DMI strings.
type Firmware struct {
	Mode       string `json:"mode,omitempty"`
	SecureBoot string `json:"secure_boot,omitempty"`
	Vendor     string `json:"vendor,omitempty"`
	Version    string `json:"version,omitempty"`
	Date       string `json:"date,omitempty"`
}

// System is the machine's DMI vendor, product and serial number.
type System struct {
	Vendor  string `json:"vendor,omitempty"`
	Product string `json:"product,omitempty"`
	Serial  string `json:"serial,omitempty"`
}

// Limits of the facts: a big server has a few dozen disks and NICs (with
// SR-IOV functions, a few hundred; the rest is cut by Tidy).
const (
	maxDisks = 128
	maxNICs  = 128
	maxCPUs  = 1 << 16
)

func (f *Facts) check() *Error {
	bad := func(field string, err error) *Error { return &Error{Field: "facts." + field, Err: err} }
	if len(f.Disks) > maxDisks {
		return bad("disks", fmt.Errorf("%d entries, over the limit of %d", len(f.Disks), maxDisks))
	}
	if len(f.NICs) > maxNICs {
		return bad("nics", fmt.Errorf("%d entries, over the limit of %d", len(f.NICs), maxNICs))
	}
	if f.CPU.Count < 0 || f.CPU.Count > maxCPUs {
		return bad("cpu.count", fmt.Errorf("%d is out of 0..%d", f.CPU.Count, maxCPUs))
	}
	if f.MemoryBytes < 0 {
		return bad("memory_bytes", fmt.Errorf("%d is negative", f.MemoryBytes))
	}
	for i, d := range f.Disks {
		if d.SizeBytes < 0 {
			return bad(fmt.Sprintf("disks[%d].size_bytes", i), fmt.Errorf("%d is negative", d.SizeBytes))
		}
	}
	for i := range f.NICs {
		n := &f.NICs[i]
		if n.SpeedMbps < 0 || n.SpeedMbps > 10_000_000 {
			return bad(fmt.Sprintf("nics[%d].speed_mbps", i), fmt.Errorf("%d is out of 0..10000000", n.SpeedMbps))
		}
		if n.MAC != "" {
			hw, err := net.ParseMAC(n.MAC)
			if err != nil {
				return bad(fmt.Sprintf("nics[%d].mac", i), fmt.Errorf("%s is not a MAC", quote(n.MAC)))
			}
			n.MAC = hw.String()
		}
		if l := n.LLDP; l != nil && (l.VLAN < 0 || l.VLAN > 4095 || l.TTL < 0 || l.TTL > 65535) {
			return bad(fmt.Sprintf("nics[%d].lldp", i), fmt.Errorf("vlan %d or ttl %d out of range", l.VLAN, l.TTL))
		}
	}
	for _, w := range f.words() {
		if err := word(*w.p); err != nil {
			return bad(w.name, err)
		}
	}
	for _, t := range f.texts() {
		if err := checkText(*t.p, false, t.max); err != nil {
			return bad(t.name, err)
		}
	}
	return nil
}

// words are the fields that are one token: names, modes.
func (f *Facts) words() []field {
	fs := []field{{"firmware.mode", &f.Firmware.Mode}, {"firmware.secure_boot", &f.Firmware.SecureBoot}}
	for i := range f.Disks {
		fs = append(fs, field{fmt.Sprintf("disks[%d].name", i), &f.Disks[i].Name})
	}
	for i := range f.NICs {
		fs = append(fs, field{fmt.Sprintf("nics[%d].name", i), &f.NICs[i].Name})
	}
	return fs
}

// texts are the free text: what firmware, disks and switches say of
// themselves, one line each.
func (f *Facts) texts() []textField {
	line := func(name string, p *string) textField { return textField{field{name, p}, false, maxLine} }
	ts := []textField{line("cpu.model", &f.CPU.Model),
		line("firmware.vendor", &f.Firmware.Vendor), line("firmware.version", &f.Firmware.Version), line("firmware.date", &f.Firmware.Date),
		line("system.vendor", &f.System.Vendor), line("system.product", &f.System.Product), line("system.serial", &f.System.Serial)}
	for i := range f.Disks {
		d := &f.Disks[i]
		ts = append(ts, line(fmt.Sprintf("disks[%d].model", i), &d.Model), line(fmt.Sprintf("disks[%d].serial", i), &d.Serial))
	}
	for i := range f.NICs {
		if l := f.NICs[i].LLDP; l != nil {
			p := fmt.Sprintf("nics[%d].lldp.", i)
			ts = append(ts, line(p+"chassis_id", &l.ChassisID), line(p+"system_name", &l.SystemName),
				textField{field{p + "system_description", &l.SystemDesc}, false, maxText},
				line(p+"port_id", &l.PortID), line(p+"port_description", &l.PortDescription), line(p+"management_address", &l.MgmtAddress))
		}
	}
	return ts
}

// tidy fits the facts' text and lists to the limits (Checkin.Tidy).
func (f *Facts) tidy() {
	if len(f.Disks) > maxDisks {
		f.Disks = f.Disks[:maxDisks]
	}
	if len(f.NICs) > maxNICs {
		f.NICs = f.NICs[:maxNICs]
	}
	for _, t := range f.texts() {
		*t.p = tidyText(*t.p, false, t.max)
	}
}
