package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/initramfs/identity"
	"github.com/hnboot/hnboot/initramfs/rotate"
	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/digestcache"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/nic"
)

// checkinBudget is the longest the check-in may hold the boot; hn.checkin=
// DURATION changes it ("off" disables the check-in).
const checkinBudget = 5 * time.Second

// checkin reports this boot to imaged (hn.server=URL): it brings up the
// boot NIC (BOOTIF= or the first Ethernet) with DHCP unless it already has
// an address, and posts a checkin.Checkin. It never fails the boot and
// never holds it longer than the budget.
func (b *boot) checkin(res rotate.Result) {
	if b.cfg.Server == "" {
		return
	}
	if b.isKexeced() {
		b.log.Info("check-in: already sent by the init before kexec")
		return
	}
	budget := checkinBudget
	if v, ok := b.cfg.Args["hn.checkin"]; ok {
		if v == "off" {
			return
		}
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			budget = d
		} else {
			b.log.Warn("check-in: bad hn.checkin= duration; using the default", "value", v, "default", budget)
		}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()

	// Gather the report while the network comes up.
	repc := make(chan *checkin.Checkin, 1)
	go func() { repc <- b.checkinReport(ctx, hostpartDir, res) }()

	ifname, mac, err := bootNIC(b.cfg.Args["BOOTIF"])
	if err != nil {
		b.log.Warn("check-in skipped: no network interface", "err", err)
		return
	}
	if err := netUp(ctx, ifname); err != nil {
		b.log.Warn("check-in skipped: network not configured (boot continues)", "interface", ifname, "err", err, "took", time.Since(start).Round(time.Millisecond))
		return
	}
	var rep *checkin.Checkin
	select {
	case rep = <-repc:
	case <-ctx.Done():
		b.log.Warn("check-in skipped: report not ready in time", "budget", budget)
		return
	}
	rep.MAC = mac
	rep.Tidy() // rotation notes name files and errors: fit them, or the server refuses it all
	body, _ := json.Marshal(rep)
	url := strings.TrimRight(b.cfg.Server, "/") + "/checkin"
	code, err := postCheckin(ctx, url, body, b.log)
	if err != nil {
		b.log.Warn("check-in failed (boot continues)", "url", url, "err", err, "took", time.Since(start).Round(time.Millisecond))
		return
	}
	if code/100 != 2 {
		b.log.Warn("check-in refused (boot continues)", "url", url, "status", code)
		return
	}
	b.log.Info("checked in", "server", b.cfg.Server, "mac", mac, "interface", ifname,
		"booted", rep.Booted, "digest_source", rep.BootedImage.Source, "took", time.Since(start).Round(time.Millisecond))
}

// postCheckin posts the check-in, again after a 503 while ctx lasts: the
// server could not store it (its fleet database is away) and said so, so
// it kept nothing.
func postCheckin(ctx context.Context, url string, body []byte, log *slog.Logger) (int, error) {
	code, err := postJSON(ctx, url, body)
	for err == nil && code == 503 && ctx.Err() == nil {
		log.Info("check-in: the server cannot store it now (503); retrying", "url", url)
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return code, nil
		}
		code, err = postJSON(ctx, url, body)
	}
	return code, err
}

// bootNIC picks the interface named by BOOTIF=01-aa-bb-... (pxelinux and
// imaged's iPXE script set it), else the first Ethernet interface.
func bootNIC(bootif string) (name, mac string, err error) {
	const sys = "/sys/class/net"
	if bootif != "" {
		want := strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(bootif), "01-"), "-", ":")
		ents, _ := os.ReadDir(sys)
		for _, e := range ents {
			a, err := os.ReadFile(filepath.Join(sys, e.Name(), "address"))
			if err == nil && strings.TrimSpace(string(a)) == want {
				return e.Name(), want, nil
			}
		}
	}
	// Drivers probe asynchronously after their modules load.
	for i := 0; ; i++ {
		name, mac, err = nic.FirstEthernet(sys)
		if err == nil || i >= 20 {
			return name, mac, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// netUp configures ifname with DHCP unless it already has an IPv4 address.
func netUp(ctx context.Context, ifname string) error {
	if ifi, err := net.InterfaceByName(ifname); err == nil {
		if addrs, _ := ifi.Addrs(); hasIPv4(addrs) {
			return nil
		}
	}
	deadline, _ := ctx.Deadline()
	link, err := dhclient.IfUp(ifname, time.Until(deadline))
	if err != nil {
		return err
	}
	// dhclient logs through the standard logger: main made that the
	// init's debug log (routeStdLog).
	results := dhclient.SendRequests(ctx, []netlink.Link{link}, true, false,
		dhclient.Config{Timeout: 2 * time.Second, Retries: 3}, time.Until(deadline))
	var last error = errors.New("no DHCP answer")
	for r := range results {
		if r.Err != nil {
			last = r.Err
			continue
		}
		if err := r.Lease.Configure(); err != nil {
			return fmt.Errorf("configure DHCP lease: %w", err)
		}
		return nil
	}
	return last
}

func hasIPv4(addrs []net.Addr) bool {
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return true
		}
	}
	return false
}

// checkinReport gathers everything but the MAC; dir is the mounted
// hostpart.
func (b *boot) checkinReport(ctx context.Context, dir string, res rotate.Result) *checkin.Checkin {
	rep := &checkin.Checkin{
		Hostname:  b.cfg.Hostname,
		Source:    checkin.SourceInit,
		Action:    res.Action.String(),
		Trial:     res.Trial,
		TriesLeft: res.TriesLeft,
		Notes:     res.Notes,
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		rep.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	if up, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(up)); len(f) > 0 {
			v, _ := strconv.ParseFloat(f[0], 64)
			rep.UptimeSeconds = int64(v)
		}
	}
	rep.RevertApplied = res.RevertApplied
	// The identity is generated once and kept; instantiate() loads the
	// same keys later.
	if id, err := identity.Ensure(filepath.Join(dir, layout.IdentityDir), nil); err == nil {
		for _, k := range id.HostKeys {
			rep.SSHHostKeys = append(rep.SSHHostKeys, strings.TrimSpace(string(k.Public)))
			rep.Fingerprints = append(rep.Fingerprints, k.Fingerprint)
		}
	}
	if b.digests == nil {
		b.digests = digestcache.Load(dir)
	}
	rep.BootedImage, rep.Images = reportImages(ctx, dir, b.cfg.Image, b.digests)
	rep.Booted = rep.Images.Current
	if err := saveDigests(dir, b.digests); err != nil && b.log != nil {
		b.log.Warn("digest cache not saved", "err", err)
	}
	return rep
}

// reportImages describes the image booting now (dir/image) and the
// digests of the slots. Only the booted image may be hashed, within ctx
// and checkin.HashLimit; the others come from the cache or their manifest.
// New digests go into cache; the caller saves it.
func reportImages(ctx context.Context, dir, image string, cache *digestcache.Cache) (checkin.Image, checkin.Slots) {
	img, digest := imageDigest(ctx, dir, image, cache)
	img.File = image
	slots := checkin.Slots{Current: digest}
	for slot, name := range map[*string]string{&slots.Old: layout.Old, &slots.New: layout.New, &slots.Broken: layout.Broken} {
		*slot = knownDigest(dir, name, cache)
	}
	return img, slots
}

// manifestDigest is the digest named by the manifest beside the image, if
// its size matches. The init checked it against the image at promotion
// (and rotation removes a manifest it finds describing another image), and
// it saves hashing gigabytes at boot (so a host whose first boot promotes
// still reports its old image).
func manifestDigest(path string, size int64) string {
	m, err := manifest.ReadFile(layout.ManifestFor(path))
	if err != nil || m.Size != size || len(m.SHA256) != 64 {
		return ""
	}
	return "sha256:" + m.SHA256
}

// knownDigest is the digest of dir/name from the cache or its manifest,
// without hashing; "" when neither knows it (or the slot is empty).
func knownDigest(dir, name string, cache *digestcache.Cache) string {
	path := filepath.Join(dir, name)
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	if d := cache.Lookup(name, st); d != "" {
		return d
	}
	return manifestDigest(path, st.Size())
}

// imageDigest returns the description of the image dir/name and its full
// digest when it is cached or cheap to compute (see checkin.Image).
func imageDigest(ctx context.Context, dir, name string, cache *digestcache.Cache) (checkin.Image, string) {
	img := checkin.Image{Source: "none"}
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if err != nil {
		return img, ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return img, ""
	}
	img.Size = st.Size()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, 1<<20)); err == nil {
		img.Head = digest.Of(h)
	}
	if d := cache.Lookup(name, st); d != "" {
		img.Source = "cache"
		return img, d
	}
	if d := manifestDigest(path, st.Size()); d != "" {
		img.Source = "manifest"
		return img, d
	}
	if st.Size() > checkin.HashLimit {
		return img, ""
	}
	// Continue the same hash over the rest of the file, stopping when the
	// budget runs out.
	buf := make([]byte, 1<<20)
	for {
		if ctx.Err() != nil {
			return img, ""
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return img, ""
		}
	}
	d := digest.Of(h)
	cache.Put(name, st, d)
	img.Source = "computed"
	return img, d
}

// digestCache is this boot's digest cache of hostpart (package
// digestcache, shared with the agent and imaged status): rotation's
// manifest checks and the check-in use it, so an image is hashed once.
func (b *boot) digestCache() *digestcache.Cache {
	if b.digests == nil {
		b.digests = digestcache.Load(hostpartDir)
	}
	return b.digests
}

// saveDigests saves the cache if this boot learned a digest. A failure
// only costs hashing again.
func (b *boot) saveDigests() {
	if err := saveDigests(hostpartDir, b.digestCache()); err != nil {
		b.log.Warn("digest cache not saved", "err", err)
	}
}

func saveDigests(dir string, cache *digestcache.Cache) error {
	if !cache.Dirty() {
		return nil
	}
	return cache.Save(dir)
}
