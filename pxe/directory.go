// Package pxe serves the network boot: DHCPv4 (proxyDHCP or a full server
// with a pool), TFTP for the first stage (the iPXE binaries) and HTTP for
// everything after it (the per-host iPXE script, kernels and initramfs
// extracted from images, image blobs by digest, check-ins). Decisions are
// pure functions of a request, a Config and a Directory; the socket code
// around them is thin, so the decisions are tested without a network.
package pxe

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

// HostBoot is what one host should boot.
type HostBoot struct {
	MAC      net.HardwareAddr
	Hostname string
	Image    ImageRef // Name, Version, Digest ("sha256:<hex>"), Path (image file on the server)
	Cmdline  string   // extra kernel args, e.g. "hn.revert=ID"
}

// ImageRef names an image and where the server keeps it.
type ImageRef struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Digest  string `json:"digest"`         // sha256:<hex>
	Path    string `json:"path,omitempty"` // the server's file; never sent to hosts
}

// Directory answers which image a MAC boots. The fleet package implements
// it from its desired state; StaticDirectory is a map for tests and quick
// use.
type Directory interface {
	// Lookup answers for one MAC; ok=false means unknown MAC. Must be fast
	// (precomputed): DHCP replies must not wait on it.
	Lookup(mac net.HardwareAddr) (HostBoot, bool)
	// Images lists the images that may be served by digest.
	Images() []ImageRef
}

// Event is one thing the server did for a host, for the boot ledger.
type Event struct {
	Time   time.Time
	MAC    net.HardwareAddr
	Kind   string // "dhcp", "dhcp-ignored", "tftp", "http", "checkin"
	Detail string
	Err    string
}

// Event kinds.
const (
	KindDHCP        = "dhcp"
	KindDHCPIgnored = "dhcp-ignored"
	KindTFTP        = "tftp"
	KindHTTP        = "http"
	KindCheckin     = "checkin"
)

// Recorder receives every Event. Record must not block for long: it is
// called on the serving path.
type Recorder interface{ Record(Event) }

// RecorderFunc adapts a function to Recorder.
type RecorderFunc func(Event)

// Record calls f(e).
func (f RecorderFunc) Record(e Event) { f(e) }

// Recorders fans one Event out to several recorders.
type Recorders []Recorder

// Record passes e to each recorder.
func (rs Recorders) Record(e Event) {
	for _, r := range rs {
		if r != nil {
			r.Record(e)
		}
	}
}

// CheckinHandler receives each check-in POSTed to /checkin, parsed and
// validated (checkin.ParseFor). The fleet package stores it as observed
// state; an error (it could not) answers 500, or 503 with Retry-After
// when it is an ErrRetryLater (the host should send it again). It runs on
// the request path.
type CheckinHandler func(c *checkin.Checkin) error

// ErrRetryLater marks a CheckinHandler error that is temporary (the fleet
// database is away): the check-in was not stored and the host should
// retry.
var ErrRetryLater = errors.New("try again later")

// StaticDirectory is a Directory backed by a map, plus an optional default
// for unknown MACs (used with --allow-unknown). It is safe for concurrent
// use.
type StaticDirectory struct {
	mu      sync.RWMutex
	hosts   map[string]HostBoot
	images  map[string]ImageRef // by digest
	Default *HostBoot           // returned for unknown MACs when set
}

// NewStaticDirectory returns an empty StaticDirectory.
func NewStaticDirectory() *StaticDirectory {
	return &StaticDirectory{hosts: map[string]HostBoot{}, images: map[string]ImageRef{}}
}

// Add assigns hb.Image to hb.MAC and makes the image servable.
func (d *StaticDirectory) Add(hb HostBoot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hosts[hb.MAC.String()] = hb
	if hb.Image.Digest != "" {
		d.images[hb.Image.Digest] = hb.Image
	}
}

// AddImage makes img servable by digest without assigning it.
func (d *StaticDirectory) AddImage(img ImageRef) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.images[img.Digest] = img
}

// SetDefault is what unknown MACs boot (only asked when unknown MACs are
// allowed).
func (d *StaticDirectory) SetDefault(hb HostBoot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.Default = &hb
	if hb.Image.Digest != "" {
		d.images[hb.Image.Digest] = hb.Image
	}
}

// Lookup implements Directory. An unknown MAC gets the default, if any,
// with ok=false so the caller still knows it is unknown.
func (d *StaticDirectory) Lookup(mac net.HardwareAddr) (HostBoot, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if hb, ok := d.hosts[mac.String()]; ok {
		return hb, true
	}
	if d.Default != nil {
		hb := *d.Default
		hb.MAC = mac
		return hb, false
	}
	return HostBoot{}, false
}

// Images implements Directory.
func (d *StaticDirectory) Images() []ImageRef {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]ImageRef, 0, len(d.images))
	for _, im := range d.images {
		out = append(out, im)
	}
	return out
}

// ParseMAC parses an Ethernet MAC in any form net.ParseMAC knows, plus
// the hyphenated form iPXE and pxelinux use (01-aa-bb-... with the ARP
// type prefix).
func ParseMAC(s string) (net.HardwareAddr, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if strings.Count(s, "-") == 6 && strings.HasPrefix(s, "01-") {
		s = s[3:]
	}
	mac, err := net.ParseMAC(strings.ReplaceAll(s, "-", ":"))
	if err != nil {
		return nil, err
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("not an Ethernet MAC: %q", s)
	}
	return mac, nil
}
