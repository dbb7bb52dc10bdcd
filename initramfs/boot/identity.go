package boot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hnboot/hnboot/initramfs/identity"
	"github.com/hnboot/hnboot/internal/hostconfig"
	"github.com/hnboot/hnboot/internal/layout"
)

// The host's identity at boot (DESIGN.md §3 step 6): the kernel command
// line, then imaged's answer to the question the network phase asked
// already (no second round trip), then the cache on hostpart, host.conf,
// generated defaults. identity.Resolve decides; this file gathers its
// inputs, logs where each value came from, and keeps the cache.

// ImagedAnswer is what the network phase gives the identity step: the
// body of imaged's 200 answer, or nil with the reason the cache (or what
// lies below it) applies instead.
func ImagedAnswer(n *networkOutcome) (body []byte, why string) {
	switch {
	case n == nil || n.Server == "":
		return nil, "no server known"
	case n.NetErr != nil:
		return nil, "the network did not come up"
	case errors.Is(n.AssignedErr, ErrUnknownHost):
		return nil, "imaged does not know this MAC"
	case n.AssignedErr != nil:
		return nil, "imaged did not answer"
	case len(n.Assigned.Raw) == 0:
		return nil, "imaged's answer was empty"
	}
	return n.Assigned.Raw, "imaged answered"
}

// resolveIdentity resolves this boot's host configuration for the boot
// NIC mac, logs it, and saves imaged's answer as the new cache when it
// differs from the old one. It never fails: a file that cannot be read
// or a value refused is logged, and the lower layers apply.
func (b *Boot) resolveIdentity(mac string) identity.Resolved {
	in := identity.Inputs{Cmdline: b.cfg, MAC: mac}
	var why string
	in.Imaged, why = ImagedAnswer(b.network)
	cachePath := filepath.Join(b.Paths.Hostpart, layout.HostCache)
	in.Cache = b.readState(cachePath)
	in.HostConf = b.readState(filepath.Join(b.Paths.Hostpart, layout.HostConf))
	if in.Imaged == nil {
		src := "the cache"
		if in.Cache == nil {
			src = "host.conf and the defaults"
		}
		b.Log.Info("identity: " + why + "; using " + src)
	}

	res := identity.Resolve(in)
	for _, p := range res.Problems {
		b.Log.Error("identity: " + p)
	}
	b.Log.Info("identity: " + summary(res))
	for _, o := range res.Origins {
		b.Log.Info("identity: " + o.String())
	}
	if res.Cache != nil {
		if err := identity.SaveCache(cachePath, res.Cache); err != nil {
			b.Log.Warn("identity: the next boot without a server uses the old cache", "err", err)
		} else {
			b.Log.Info("identity: saved imaged's configuration for boots without a server", "file", cachePath, "bytes", len(res.Cache))
		}
	}
	return res
}

// readState reads a file of hostpart's state directory; nil when absent.
func (b *Boot) readState(path string) []byte {
	body, err := os.ReadFile(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			b.Log.Warn("identity: cannot read "+path+"; not used", "err", err)
		}
		return nil
	}
	return body
}

// summary counts the values by source, highest layer first:
// "hostname web-07; 5 values: 4 from imaged, 1 from default".
func summary(res identity.Resolved) string {
	n := map[hostconfig.Source]int{}
	for _, o := range res.Origins {
		n[o.Source]++
	}
	var parts []string
	for _, s := range []hostconfig.Source{hostconfig.Kernel, hostconfig.Imaged, hostconfig.Cache, hostconfig.HostConf, hostconfig.Default} {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d from %s", n[s], s))
		}
	}
	return fmt.Sprintf("hostname %s; %d values: %s", res.Config.Hostname, len(res.Origins), strings.Join(parts, ", "))
}

// applyIdentity writes this boot's host configuration and the host's
// own secrets (id: SSH host keys, machine-id, generated here and never
// sent) into the new root. Refused values are logged and left out; the
// error says the root could not be written.
func (b *Boot) applyIdentity(id identity.Identity) (hostconfig.Config, error) {
	mac := b.bootMAC() // BOOTIF=, the NIC, or the MAC remembered on hostpart
	res := b.resolveIdentity(mac)
	applied, err := identity.ApplyConfig(b.Paths.NewRoot, id, res.Config, mac)
	for _, p := range applied.Problems {
		b.Log.Error("identity: " + p)
	}
	for _, n := range applied.Notes {
		b.Log.Warn("identity: " + n)
	}
	if err != nil {
		return res.Config, err
	}
	b.Log.Info("identity applied", "network", applied.Network, "files", len(applied.Files))
	return res.Config, nil
}

// handOverNIC removes the init's DHCP lease from the boot NIC and sets
// it down before switch_root (netup.Down), so the image's udev names it
// and its systemd-networkd or ifupdown configures the fleet's network (a
// static address) on a clean link, not beside the init's address and
// routes.
func (b *Boot) handOverNIC() {
	if b.network == nil || !b.network.Lease.Ours() {
		return
	}
	l := b.network.Lease
	if err := b.Sys.NetDown(l); err != nil {
		b.Log.Warn("cannot hand the boot NIC over to the image; its network manager may find the init's lease", "interface", l.Interface, "err", err)
		return
	}
	b.Log.Info("boot NIC handed over to the image: the init's lease removed, link down", "interface", l.Interface, "address", l.Address.String())
}
