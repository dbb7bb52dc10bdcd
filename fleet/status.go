package fleet

import (
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/hostconfig"
	"github.com/hnboot/hnboot/supervisor"
)

// Host states in the fleet status, first that applies.
const (
	StateRevertPending = "revert-pending" // a revert ID is being sent until the host reports it
	StateNeverSeen     = "never-seen"     // no check-in yet
	StateFailed        = "failed"         // the desired image was reverted on this host (broken slot or failed digests)
	StateTrial         = "trial"          // running the desired image on trial
	StateOK            = "ok"             // running the desired image, confirmed
	StateStaged        = "staged"         // desired image staged as new, waiting for a reboot
	StateOutdated      = "outdated"       // running something else
)

// ImageInfo is an image as status shows it.
type ImageInfo struct {
	Ref    string `json:"ref,omitempty"` // name@version when declared
	Digest string `json:"digest,omitempty"`
}

// HostStatus is one host: desired against observed.
type HostStatus struct {
	MAC           string         `json:"mac"`
	Hostname      string         `json:"hostname"`
	Group         string         `json:"group,omitempty"`
	Desired       ImageInfo      `json:"desired"`
	DesiredSource string         `json:"desired_source"`
	Current       ImageInfo      `json:"current"`
	State         string         `json:"state"`
	RevertPending *PendingRevert `json:"revert_pending,omitempty"`
	LastCheckin   *Observed      `json:"last_checkin,omitempty"`
}

// Status is the whole fleet.
type Status struct {
	Time           time.Time                  `json:"time"`
	Dir            string                     `json:"dir"`
	ConfigError    string                     `json:"config_error,omitempty"` // last reload failed; serving the last good state
	LastGoodReload time.Time                  `json:"last_good_reload"`
	Warnings       []string                   `json:"warnings,omitempty"`
	Hosts          []HostStatus               `json:"hosts"`
	Unknown        []Observed                 `json:"unknown_checkins,omitempty"` // check-ins from MACs not in the YAML
	Rollouts       []rolloutView              `json:"rollouts,omitempty"`
	Services       []supervisor.ServiceStatus `json:"services,omitempty"`
	Database       DatabaseStatus             `json:"database"`
}

// DatabaseStatus is the fleet database as this server sees it.
type DatabaseStatus struct {
	Backend string `json:"backend"` // sqlite or postgres
	Where   string `json:"where"`
	Leader  bool   `json:"leader"`          // this server runs the once-only work
	Error   string `json:"error,omitempty"` // the database is away: boot answers come from memory
}

func (s *snapshot) info(digest string) ImageInfo {
	ii := ImageInfo{Digest: digest}
	if img := s.imageByDigest[digest]; img != nil {
		ii.Ref = img.Ref()
	}
	return ii
}

// hostState is the state rule, pure; c is the last check-in, nil if none.
func hostState(desired string, revert *PendingRevert, c *checkin.Checkin) string {
	switch {
	case revert != nil:
		return StateRevertPending
	case c == nil:
		return StateNeverSeen
	case desired != "" && (c.Images.Broken == desired || slices.Contains(c.FailedDigests, desired)):
		return StateFailed
	}
	cur := running(c)
	switch {
	case cur == desired && c.Trial:
		return StateTrial
	case cur == desired:
		return StateOK
	case c.Images.New == desired:
		return StateStaged
	}
	return StateOutdated
}

// Status computes the fleet status. With the database away the hosts'
// check-ins are missing (so is their state) and Database.Error says why;
// the API answers 503 then (status).
func (f *Fleet) Status() Status {
	st, _ := f.status()
	return st
}

func (f *Fleet) status() (Status, error) {
	s := f.snap.Load()
	obs, err := f.observed()
	f.mu.Lock()
	st := Status{Time: f.now(), Dir: f.opts.Dir, ConfigError: f.reloadErr, LastGoodReload: f.reloadOK}
	f.mu.Unlock()
	st.Database = DatabaseStatus{Backend: f.store.Backend(), Where: f.store.Where(), Leader: f.IsLeader()}
	if err != nil {
		st.Database.Error = err.Error()
	}
	st.Warnings = s.warnings
	st.Rollouts = s.rollouts
	for _, rh := range s.hosts {
		mac := rh.host.MAC.String()
		hs := HostStatus{MAC: mac, Hostname: rh.host.Hostname, Group: rh.host.Group, DesiredSource: rh.source, RevertPending: rh.revert}
		if rh.image != nil {
			hs.Desired = ImageInfo{Ref: rh.image.Ref(), Digest: rh.image.Digest}
		}
		var last *checkin.Checkin
		if o := obs[mac]; o != nil {
			hs.LastCheckin, last = o, &o.Checkin
			hs.Current = s.info(running(last))
			delete(obs, mac)
		}
		hs.State = hostState(hs.Desired.Digest, rh.revert, last)
		st.Hosts = append(st.Hosts, hs)
	}
	for _, c := range obs {
		st.Unknown = append(st.Unknown, *c)
	}
	sort.Slice(st.Unknown, func(i, j int) bool { return st.Unknown[i].MAC < st.Unknown[j].MAC })
	if f.opts.Services != nil {
		st.Services = f.opts.Services()
	}
	return st, err
}

// DesiredHost is what GET /api/hosts/{mac}/desired tells a host: its
// agent decodes it as agent.Desired (mac, hostname, image, revert, force,
// failed_digests), its init reads the host configuration in it with
// hostconfig.Parse.
type DesiredHost struct {
	MAC string `json:"mac"`
	// The host's configuration, inline: hostname, network, identity,
	// files (rendered), so the answer is a hostconfig.Config with more
	// fields, and hostname stays where the agent reads it.
	hostconfig.Config
	Image  DesiredImage `json:"image"`
	Source string       `json:"source"` // why this image
	Revert string       `json:"revert,omitempty"`
	// Force stages Image even if the host remembers it as failed. No API
	// sets it yet: a host refuses a failed image until imaged stage --force.
	Force bool `json:"force,omitempty"`
	// FailedDigests are the digests the host reported as failed in its
	// last check-in, except the one it now runs (confirmed or forced back).
	FailedDigests []string `json:"failed_digests,omitempty"`
}

// DesiredImage is the assigned image as a host sees it: fetched by digest
// from /blobs/<digest> (and its manifest from /blobs/<digest>.json).
type DesiredImage struct {
	ImageRef       // Path is always empty: it is the server's
	Size     int64 `json:"size,omitempty"` // bytes, when the server can stat the file
}

// DesiredFor returns what the host with that MAC should run.
func (f *Fleet) DesiredFor(mac net.HardwareAddr) (DesiredHost, bool) {
	s := f.snap.Load()
	rh := s.byMAC[mac.String()]
	if rh == nil {
		return DesiredHost{}, false
	}
	dh := DesiredHost{MAC: mac.String(), Config: rh.config.Clone(), Source: rh.source}
	if rh.image != nil {
		dh.Image.ImageRef = rh.image.ImageRef()
		dh.Image.Path = ""
		if fi, err := os.Stat(rh.image.Path); err == nil && fi.Mode().IsRegular() {
			dh.Image.Size = fi.Size()
		}
	}
	if rh.revert != nil {
		dh.Revert = rh.revert.ID
	}
	// The failed digests only add to what the host knows itself: with the
	// database away the answer goes without them.
	if c, err := f.observedOf(dh.MAC); err != nil {
		f.log.Debug("fleet: desired state without failed digests", "mac", dh.MAC, "err", err)
	} else if c != nil {
		cur := running(&c.Checkin)
		for _, d := range c.FailedDigests {
			if d != cur {
				dh.FailedDigests = append(dh.FailedDigests, d)
			}
		}
	}
	return dh, true
}

// WhyReport is what `imaged fleet why` shows: the host's desired state and
// its last boots as the server saw them.
type WhyReport struct {
	MAC           string         `json:"mac"`
	Known         bool           `json:"known"`
	Hostname      string         `json:"hostname,omitempty"`
	Group         string         `json:"group,omitempty"`
	Desired       ImageInfo      `json:"desired"`
	DesiredSource string         `json:"desired_source,omitempty"`
	RevertPending *PendingRevert `json:"revert_pending,omitempty"`
	Current       ImageInfo      `json:"current"`
	State         string         `json:"state,omitempty"`
	Boots         []Boot         `json:"boots"`
	Text          string         `json:"text"`
}

// Why explains a host (hostname or MAC): its last n boots (n <= 0: all kept).
func (f *Fleet) Why(who string, n int) (WhyReport, error) {
	s := f.snap.Load()
	var mac net.HardwareAddr
	if h := s.desired.FindHost(who); h != nil {
		mac = h.MAC
	} else if m, err := net.ParseMAC(who); err == nil && len(m) == 6 {
		mac = m
	} else {
		return WhyReport{}, fmt.Errorf("%q is neither a MAC nor a host in %s", who, s.desired.Dir)
	}
	r := WhyReport{MAC: mac.String()}
	if rh := s.byMAC[r.MAC]; rh != nil {
		r.Known, r.Hostname, r.Group, r.DesiredSource, r.RevertPending = true, rh.host.Hostname, rh.host.Group, rh.source, rh.revert
		if rh.image != nil {
			r.Desired = ImageInfo{Ref: rh.image.Ref(), Digest: rh.image.Digest}
		}
	}
	var c *Observed
	var boots []Boot
	ctx, cancel := dbCtx()
	defer cancel()
	err := f.store.View(ctx, func(tx Tx) error {
		var err error
		if c, err = tx.GetObserved(r.MAC); err != nil {
			return err
		}
		boots, err = tx.ListBoots(r.MAC, f.opts.KeepBoots)
		return err
	})
	if err != nil {
		return r, err
	}
	if c != nil {
		r.Current = s.info(running(&c.Checkin))
	}
	if r.Known {
		var cp *checkin.Checkin
		if c != nil {
			cp = &c.Checkin
		}
		r.State = hostState(r.Desired.Digest, r.RevertPending, cp)
	}
	r.Boots = mergeBoots(boots, f.led.Boots(r.MAC), f.opts.KeepBoots)
	if n > 0 && len(r.Boots) > n {
		r.Boots = r.Boots[len(r.Boots)-n:]
	}
	r.Text = RenderWhy(r, time.Local)
	return r, nil
}

// mergeBoots joins the boots in the database (from every server sharing
// it) with this server's ledger in memory, which also holds boots still
// open and those of MACs not in the fleet; the same boot in both is the
// memory's (it may have more events). Oldest first, the last keep.
func mergeBoots(db, mem []Boot, keep int) []Boot {
	byStart := map[int64]Boot{}
	for _, b := range db {
		byStart[b.Start.UnixNano()] = b
	}
	for _, b := range mem {
		byStart[b.Start.UnixNano()] = b
	}
	out := make([]Boot, 0, len(byStart))
	for _, b := range byStart {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	if keep > 0 && len(out) > keep {
		out = out[len(out)-keep:]
	}
	return out
}

var kindLabel = map[string]string{
	"dhcp":         "DHCP",
	"dhcp-ignored": "DHCP ignored",
	"tftp":         "TFTP",
	"http":         "HTTP",
	"checkin":      "check-in",
}

// ignoredHints turn the boot server's refusal reasons (matched by
// substring) into advice.
var ignoredHints = []struct{ match, hint string }{
	{"unknown MAC", "add it to a hosts file in the fleet directory, or run imaged serve with --allow-unknown"},
	{"not a PXE", "in proxyDHCP mode only PXE/HTTP boot clients (option 60 PXEClient or HTTPClient) are answered"},
	{"option 93", "the client sent no or an unsupported architecture (option 93)"},
	{"not allowed", "the host is declared but not allowed to netboot"},
}

func describe(ev LedgerEvent) string {
	label := kindLabel[ev.Kind]
	if label == "" {
		label = ev.Kind
	}
	s := label + ": " + ev.Detail
	if ev.Kind == "dhcp-ignored" {
		for _, h := range ignoredHints {
			if strings.Contains(ev.Detail, h.match) {
				s += " (" + h.hint + ")"
				break
			}
		}
	}
	if ev.Err != "" {
		s += " — failed: " + ev.Err
	}
	return s
}

// RenderWhy prints a WhyReport in plain words, times in loc.
func RenderWhy(r WhyReport, loc *time.Location) string {
	var b strings.Builder
	if !r.Known {
		fmt.Fprintf(&b, "%s is not in the fleet's hosts files: the boot server ignores it unless run with --allow-unknown.\n", r.MAC)
	} else {
		fmt.Fprintf(&b, "%s (%s", r.Hostname, r.MAC)
		if r.Group != "" {
			fmt.Fprintf(&b, ", group %s", r.Group)
		}
		fmt.Fprintf(&b, "): state %s\n", r.State)
		fmt.Fprintf(&b, "  should run %s — %s\n", infoText(r.Desired), r.DesiredSource)
		if r.Current.Digest != "" {
			fmt.Fprintf(&b, "  runs %s (last check-in)\n", infoText(r.Current))
		}
		if r.RevertPending != nil {
			fmt.Fprintf(&b, "  revert %s pending (by %s at %s): its next PXE boot gets hn.revert=%s until it reports the revert applied\n",
				r.RevertPending.ID, r.RevertPending.By, r.RevertPending.Time.In(loc).Format("2006-01-02 15:04:05"), r.RevertPending.ID)
		}
	}
	if len(r.Boots) == 0 {
		b.WriteString("  no boots seen since the server started keeping its ledger.\n")
		return b.String()
	}
	for _, bt := range r.Boots {
		outcome := "no check-in from the init"
		if bt.Checkin != nil {
			outcome = "checked in"
		}
		fmt.Fprintf(&b, "boot at %s (%s):\n", bt.Start.In(loc).Format("2006-01-02 15:04:05"), outcome)
		for _, ev := range bt.Events {
			fmt.Fprintf(&b, "  %s %s\n", ev.Time.In(loc).Format("15:04:05"), describe(ev))
		}
		if bt.Dropped > 0 {
			fmt.Fprintf(&b, "  (%d more events not kept)\n", bt.Dropped)
		}
	}
	return b.String()
}

func infoText(i ImageInfo) string {
	switch {
	case i.Digest == "":
		return "nothing"
	case i.Ref != "":
		return i.Ref + " (" + short(i.Digest) + ")"
	}
	return "sha256:" + short(i.Digest) + " (not declared)"
}
