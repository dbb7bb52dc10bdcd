package fleet

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/manifest"
)

// putCheckin stores a check-in; its facts, when it has some, go to their
// own table (agents send them only when they change), the rest as the
// host's last check-in.
func putCheckin(tx Tx, o *Observed) error {
	if f := o.Checkin.Facts; f != nil {
		if err := tx.PutFacts(o.MAC, o.Time, f); err != nil {
			return err
		}
		tx.Changed(ChangeFacts, o.MAC)
		lean := *o
		lean.Checkin.Facts = nil
		return tx.PutObserved(&lean)
	}
	return tx.PutObserved(o)
}

// HostSummary is one host in the inventory (GET /api/hosts).
type HostSummary struct {
	Hostname    string            `json:"hostname"`
	MAC         string            `json:"mac"`
	Group       string            `json:"group,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Desired     ImageInfo         `json:"desired"`
	Current     ImageInfo         `json:"current"`
	State       string            `json:"state"`
	LastCheckin time.Time         `json:"last_checkin,omitzero"`
	Uptime      int64             `json:"uptime_seconds,omitempty"`
	Kernel      string            `json:"kernel,omitempty"`
	Facts       *HostFacts        `json:"facts,omitempty"` // what its agent last reported
}

// HostInventory is one host in full (GET /api/hosts/{host}): its summary,
// the image slots of its last check-in, the packages of the image it
// runs, and its last boots.
type HostInventory struct {
	HostSummary
	Slots    checkin.Slots    `json:"slots"`
	Trial    bool             `json:"trial,omitempty"`
	Packages *ImagePackages   `json:"packages,omitempty"`
	Boots    []Boot           `json:"boots,omitempty"`
	Checkin  *checkin.Checkin `json:"last_checkin_body,omitempty"`
}

// ImagePackages are the packages of one image, from its package list.
type ImagePackages struct {
	Image    ImageInfo          `json:"image"`
	Source   string             `json:"source"` // dpkg, none, or "unknown" when the image has no list
	Note     string             `json:"note,omitempty"`
	Packages []manifest.Package `json:"packages,omitempty"`
}

// hostSummaries lists the hosts matching sel (labels, all of them).
func (f *Fleet) hostSummaries(sel map[string]string) ([]HostSummary, error) {
	s := f.snap.Load()
	obs, err := f.observed()
	if err != nil {
		return nil, err
	}
	var facts map[string]HostFacts
	ctx, cancel := dbCtx()
	defer cancel()
	err = f.store.View(ctx, func(tx Tx) error {
		var err error
		facts, err = tx.ListFacts()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := []HostSummary{}
	for _, rh := range s.hosts {
		if !s.desired.Matches(rh.host, sel) {
			continue
		}
		out = append(out, s.summary(rh, obs[rh.host.MAC.String()], facts))
	}
	return out, nil
}

func (s *snapshot) summary(rh *resolvedHost, o *Observed, facts map[string]HostFacts) HostSummary {
	mac := rh.host.MAC.String()
	hs := HostSummary{Hostname: rh.host.Hostname, MAC: mac, Group: rh.host.Group, Labels: s.desired.Labels(rh.host)}
	if len(hs.Labels) == 0 {
		hs.Labels = nil
	}
	if rh.image != nil {
		hs.Desired = ImageInfo{Ref: rh.image.Ref(), Digest: rh.image.Digest}
	}
	var c *checkin.Checkin
	if o != nil {
		c = &o.Checkin
		hs.Current, hs.LastCheckin, hs.Uptime, hs.Kernel = s.info(running(c)), o.Time, c.UptimeSeconds, c.Kernel
	}
	hs.State = hostState(hs.Desired.Digest, rh.revert, c)
	if fc, ok := facts[mac]; ok {
		hs.Facts = &fc
	}
	return hs
}

// HostInventory is everything the server knows of one host (hostname or
// MAC).
func (f *Fleet) HostInventory(who string) (HostInventory, error) {
	s := f.snap.Load()
	h := s.desired.FindHost(who)
	if h == nil {
		return HostInventory{}, fmt.Errorf("unknown host %q (not a hostname or MAC in %s)", who, s.desired.Dir)
	}
	mac := h.MAC.String()
	var o *Observed
	var fc *HostFacts
	var boots []Boot
	ctx, cancel := dbCtx()
	defer cancel()
	err := f.store.View(ctx, func(tx Tx) error {
		var err error
		if o, err = tx.GetObserved(mac); err != nil {
			return err
		}
		if fc, err = tx.GetFacts(mac); err != nil {
			return err
		}
		boots, err = tx.ListBoots(mac, f.opts.KeepBoots)
		return err
	})
	if err != nil {
		return HostInventory{}, err
	}
	facts := map[string]HostFacts{}
	if fc != nil {
		facts[mac] = *fc
	}
	inv := HostInventory{HostSummary: s.summary(s.byMAC[mac], o, facts)}
	inv.Boots = mergeBoots(boots, f.led.Boots(mac), f.opts.KeepBoots)
	if o != nil {
		inv.Slots, inv.Trial, inv.Checkin = o.Images, o.Trial, &o.Checkin
		if d := running(&o.Checkin); d != "" {
			p := f.imagePackages(s, d)
			inv.Packages = &p
		}
	}
	return inv, nil
}

// pkgCache keeps the images' package lists, read again when the file
// changes.
type pkgCache struct {
	mu sync.Mutex
	m  map[string]pkgEntry // image path → list
}

type pkgEntry struct {
	size  int64
	mtime time.Time
	list  *manifest.PackageList
	err   error
}

// packagesOf reads the package list beside the image file at path, which
// must describe the image with digest d.
func (c *pkgCache) packagesOf(path, d string) (*manifest.PackageList, error) {
	p := manifest.PackagesFor(path)
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]pkgEntry{}
	}
	if e, ok := c.m[p]; ok && e.size == st.Size() && e.mtime.Equal(st.ModTime()) {
		return e.list, e.err
	}
	l, err := manifest.ReadPackages(p)
	if err == nil && "sha256:"+l.SHA256 != d {
		l, err = nil, fmt.Errorf("%s describes sha256:%s, not the image %s", p, l.SHA256, short(d))
	}
	c.m[p] = pkgEntry{size: st.Size(), mtime: st.ModTime(), list: l, err: err}
	return l, err
}

// imagePackages are the packages of the image with digest d.
func (f *Fleet) imagePackages(s *snapshot, d string) ImagePackages {
	ip := ImagePackages{Image: s.info(d), Source: "unknown"}
	img := s.imageByDigest[d]
	if img == nil {
		ip.Note = "the image is not declared in the fleet: its packages are not known"
		return ip
	}
	l, err := f.pkgs.packagesOf(img.Path, d)
	if err != nil {
		ip.Note = "no package list: " + err.Error() + " (mkimage rootfs writes one beside the image)"
		return ip
	}
	ip.Source, ip.Note, ip.Packages = l.Source, l.Note, l.Packages
	return ip
}

// PackageReport says which hosts run which version of a package (GET
// /api/packages/{name}), from the package lists of the images the hosts
// reported running: not guessed.
type PackageReport struct {
	Package  string           `json:"package"`
	Versions []PackageVersion `json:"versions"`
	// Unknown are hosts whose image's packages are not known (not
	// declared, no list), and hosts that never checked in.
	Unknown []PackageHost `json:"unknown,omitempty"`
	// Without are hosts whose image does not have the package.
	Without int `json:"without"`
}

// PackageVersion is one version of the package and who runs it.
type PackageVersion struct {
	Version string   `json:"version"`
	Arch    string   `json:"arch"`
	Images  []string `json:"images"` // name@version, or the short digest
	Hosts   []string `json:"hosts"`
}

// PackageHost is a host the report cannot place, and why.
type PackageHost struct {
	Host   string `json:"host"`
	Reason string `json:"reason"`
}

// Packages reports package name (version, if set, only that version)
// across the hosts matching sel.
func (f *Fleet) Packages(name, version string, sel map[string]string) (PackageReport, error) {
	s := f.snap.Load()
	obs, err := f.observed()
	if err != nil {
		return PackageReport{}, err
	}
	rep := PackageReport{Package: name, Versions: []PackageVersion{}}
	type key struct{ v, a string }
	byVer := map[key]*PackageVersion{}
	lists := map[string]ImagePackages{}
	for _, rh := range s.hosts {
		if !s.desired.Matches(rh.host, sel) {
			continue
		}
		o := obs[rh.host.MAC.String()]
		if o == nil {
			rep.Unknown = append(rep.Unknown, PackageHost{rh.host.Hostname, "never checked in"})
			continue
		}
		d := running(&o.Checkin)
		if d == "" {
			rep.Unknown = append(rep.Unknown, PackageHost{rh.host.Hostname, "its check-ins name no image digest"})
			continue
		}
		ip, ok := lists[d]
		if !ok {
			ip = f.imagePackages(s, d)
			lists[d] = ip
		}
		if ip.Source == "unknown" {
			rep.Unknown = append(rep.Unknown, PackageHost{rh.host.Hostname, infoText(ip.Image) + ": " + ip.Note})
			continue
		}
		found := false
		for _, p := range ip.Packages {
			if p.Name != name || (version != "" && p.Version != version) {
				continue
			}
			found = true
			k := key{p.Version, p.Arch}
			pv := byVer[k]
			if pv == nil {
				pv = &PackageVersion{Version: p.Version, Arch: p.Arch}
				byVer[k] = pv
			}
			ref := ip.Image.Ref
			if ref == "" {
				ref = "sha256:" + short(d)
			}
			if len(pv.Images) == 0 || pv.Images[len(pv.Images)-1] != ref {
				if !contains(pv.Images, ref) {
					pv.Images = append(pv.Images, ref)
				}
			}
			pv.Hosts = append(pv.Hosts, rh.host.Hostname)
		}
		if !found {
			rep.Without++
		}
	}
	for _, pv := range byVer {
		sort.Strings(pv.Images)
		rep.Versions = append(rep.Versions, *pv)
	}
	sort.Slice(rep.Versions, func(i, j int) bool {
		if rep.Versions[i].Version != rep.Versions[j].Version {
			return rep.Versions[i].Version < rep.Versions[j].Version
		}
		return rep.Versions[i].Arch < rep.Versions[j].Arch
	})
	return rep, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// ParseSelector reads "k=v" label selectors (repeated or comma-separated).
func ParseSelector(args []string) (map[string]string, error) {
	sel := map[string]string{}
	for _, a := range args {
		for _, kv := range strings.Split(a, ",") {
			if kv = strings.TrimSpace(kv); kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("label %q: want KEY=VALUE", kv)
			}
			if err := CheckLabel(k, v); err != nil {
				return nil, err
			}
			sel[k] = v
		}
	}
	return sel, nil
}
