package fleet

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"time"

	"github.com/hnboot/hnboot/fleet/rollout"
	"github.com/hnboot/hnboot/internal/hostconfig"
)

// snapshot is the immutable answer table the boot server reads without a
// lock. It is rebuilt from scratch on every change and swapped atomically.
type snapshot struct {
	desired       *Desired
	boots         map[string]HostBoot // key: string(mac bytes)
	images        []ImageRef
	imageByDigest map[string]*Image
	hosts         []*resolvedHost // in YAML order
	byMAC         map[string]*resolvedHost
	rollouts      []rolloutView
	autos         map[string]*autoRollout // rollouts with waves, by name
	warnings      []string
}

type resolvedHost struct {
	host   *Host
	image  *Image
	source string // why this image, in words
	revert *PendingRevert
	config hostconfig.Config // files rendered for image
}

type rolloutView struct {
	Rollout
	Origin  string   `json:"origin"` // "api" or file:line
	Members []string `json:"members"`
	// State is the phase of a rollout with waves (pending until started);
	// its Members are the hosts it assigns its image now.
	State string `json:"state,omitempty"`
}

// buildInput is the database's part of the desired state.
type buildInput struct {
	hostOv   map[string]Override // by MAC
	groupOv  map[string]Override // by group
	rollouts []APIRollout
	reverts  map[string]PendingRevert // by MAC
	// The rollouts with waves: their phases, and the hosts they assign
	// their image (by MAC).
	phases       map[string]string
	rolloutHosts map[string]rolloutAssigned
}

// rolloutMembers: the listed hosts, plus ceil(percent) of the group's hosts
// ordered by sha256(rollout name, MAC), so raising the percentage only adds
// hosts and the choice does not follow file order.
func rolloutMembers(d *Desired, r Rollout) []*Host {
	seen := map[*Host]bool{}
	var out []*Host
	for _, n := range r.Hosts {
		if h := d.FindHost(n); h != nil && !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	if r.Group != "" && r.Percent > 0 {
		var cand []*Host
		for _, h := range d.Hosts {
			if h.Group == r.Group {
				cand = append(cand, h)
			}
		}
		key := func(h *Host) string {
			s := sha256.Sum256([]byte(r.Name + "\x00" + h.MAC.String()))
			return string(s[:])
		}
		sort.Slice(cand, func(i, j int) bool { return key(cand[i]) < key(cand[j]) })
		n := (len(cand)*r.Percent + 99) / 100
		for _, h := range cand[:n] {
			if !seen[h] {
				seen[h] = true
				out = append(out, h)
			}
		}
	}
	return out
}

// build computes the answer for every host. Precedence, first that applies:
// host override (API), group override (API), API rollouts (newest first),
// YAML rollouts (last declared first), the host's image or channel, its
// group's image or channel.
func build(d *Desired, in buildInput) *snapshot {
	s := &snapshot{
		desired:       d,
		boots:         map[string]HostBoot{},
		imageByDigest: map[string]*Image{},
		byMAC:         map[string]*resolvedHost{},
	}
	for _, img := range d.Images {
		s.images = append(s.images, img.ImageRef())
		if _, dup := s.imageByDigest[img.Digest]; !dup {
			s.imageByDigest[img.Digest] = img
		}
	}
	type ro struct {
		r      Rollout
		origin string
	}
	var ros []ro
	api := append([]APIRollout(nil), in.rollouts...)
	sort.Slice(api, func(i, j int) bool { return api[i].Time.After(api[j].Time) })
	for _, r := range api {
		if !r.IsAuto() {
			ros = append(ros, ro{r.Rollout, "api"})
		}
	}
	for i := len(d.Rollouts) - 1; i >= 0; i-- {
		if !d.Rollouts[i].IsAuto() {
			ros = append(ros, ro{*d.Rollouts[i], d.Rollouts[i].Pos.String()})
		}
	}
	s.autos = resolveAutos(d, in.rollouts, func(w string) { s.warnings = append(s.warnings, w) })
	autoMembers := map[string][]string{}
	rolloutOf := map[*Host]string{}
	rolloutImg := map[*Host]*Image{}
	for _, x := range ros {
		img := d.Image(x.r.Image)
		if img == nil {
			s.warnings = append(s.warnings, fmt.Sprintf("rollout %s (%s): image %s is no longer declared; ignored", x.r.Name, x.origin, x.r.Image))
			continue
		}
		v := rolloutView{Rollout: x.r, Origin: x.origin}
		for _, h := range rolloutMembers(d, x.r) {
			v.Members = append(v.Members, h.Hostname)
			if _, taken := rolloutOf[h]; !taken {
				rolloutOf[h] = fmt.Sprintf("rollout %s at %d%% (%s)", x.r.Name, x.r.Percent, x.origin)
				rolloutImg[h] = img
			}
		}
		s.rollouts = append(s.rollouts, v)
	}
	overrideImg := func(ov Override, what string) *Image {
		img := d.Image(ov.Image)
		if img == nil {
			s.warnings = append(s.warnings, fmt.Sprintf("%s: override to image %s (by %s) is no longer declared; ignored", what, ov.Image, ov.By))
		}
		return img
	}
	for _, h := range d.Hosts {
		mac := h.MAC.String()
		rh := &resolvedHost{host: h}
		if ov, ok := in.hostOv[mac]; ok {
			if img := overrideImg(ov, "host "+h.Hostname); img != nil {
				rh.image, rh.source = img, fmt.Sprintf("assigned to host by %s at %s", ov.By, ov.Time.UTC().Format("2006-01-02 15:04"))
			}
		}
		if ov, ok := in.groupOv[h.Group]; ok && rh.image == nil && h.Group != "" {
			if img := overrideImg(ov, "group "+h.Group); img != nil {
				rh.image, rh.source = img, fmt.Sprintf("assigned to group %s by %s at %s", h.Group, ov.By, ov.Time.UTC().Format("2006-01-02 15:04"))
			}
		}
		if ra, ok := in.rolloutHosts[mac]; ok && rh.image == nil && s.autos[ra.rollout] != nil {
			a := s.autos[ra.rollout]
			rh.image, rh.source = a.image, fmt.Sprintf("rollout %s, wave %d (%s)", a.r.Name, ra.wave+1, a.origin)
			autoMembers[a.r.Name] = append(autoMembers[a.r.Name], h.Hostname)
		}
		if rh.image == nil && rolloutImg[h] != nil {
			rh.image, rh.source = rolloutImg[h], rolloutOf[h]
		}
		if rh.image == nil {
			rh.image = d.HostImage(h)
			switch {
			case h.Image != "":
				rh.source = "host entry " + h.Pos.String()
			case h.Channel != "":
				rh.source = "channel " + h.Channel + " of host entry " + h.Pos.String()
			default:
				g := d.Groups[h.Group]
				rh.source = "group " + g.Name + " " + g.Pos.String()
				if g.Channel != "" {
					rh.source = "channel " + g.Channel + " of " + rh.source
				}
			}
		}
		// Templates ran at load with the YAML's image; an assignment or
		// rollout changes .Image, and a template may fail on the new one
		// (a branch the first never took). The file is left out and the
		// status says why.
		var problems []string
		rh.config, problems = d.HostConfig(h, rh.image)
		s.warnings = append(s.warnings, problems...)
		hb := HostBoot{MAC: h.MAC, Hostname: h.Hostname}
		if rh.image != nil {
			hb.Image = rh.image.ImageRef()
		}
		if pr, ok := in.reverts[mac]; ok {
			p := pr
			rh.revert = &p
			hb.Cmdline = "hn.revert=" + pr.ID
		}
		s.boots[string(h.MAC)] = hb
		s.byMAC[mac] = rh
		s.hosts = append(s.hosts, rh)
	}
	for mac := range in.hostOv {
		if s.byMAC[mac] == nil {
			s.warnings = append(s.warnings, "override for "+mac+": host no longer declared; ignored")
		}
	}
	for g := range in.groupOv {
		if d.Groups[g] == nil {
			s.warnings = append(s.warnings, "override for group "+g+": group no longer declared; ignored")
		}
	}
	names := make([]string, 0, len(s.autos))
	for n := range s.autos {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		a := s.autos[n]
		v := rolloutView{Rollout: a.r, Origin: a.origin, Members: autoMembers[n], State: in.phases[n]}
		if v.State == "" {
			v.State = "pending"
		}
		s.rollouts = append(s.rollouts, v)
	}
	s.warnings = append(s.warnings, d.imageWarnings...)
	sort.Strings(s.warnings)
	return s
}

// rebuildLocked builds and swaps a new snapshot; d nil keeps the desired
// state. It rereads the database's part; while the database is away the
// last one read is used, so a reload of the YAML still takes effect and
// the boot answers go on.
func (f *Fleet) rebuildLocked(d *Desired) {
	if d == nil {
		d = f.snap.Load().desired
	}
	in, err := f.readBuildInput()
	if err != nil {
		if f.dbErr == "" {
			f.log.Warn("fleet: database unavailable; answering from the last state read", "err", err)
		}
		f.dbErr = err.Error()
		in = f.lastIn
	} else {
		if f.dbErr != "" {
			f.log.Info("fleet: database available again", "database", f.store.Where())
		}
		f.dbErr = ""
		f.lastIn = in
	}
	s := build(d, in)
	for _, w := range s.warnings {
		f.log.Warn("fleet: " + w)
	}
	f.snap.Store(s)
	f.changes.notify()
}

func (f *Fleet) readBuildInput() (buildInput, error) {
	var in buildInput
	ctx, cancel := dbCtx()
	defer cancel()
	err := f.store.View(ctx, func(tx Tx) error {
		var err error
		if in.hostOv, err = tx.ListOverrides(OverrideHost); err != nil {
			return err
		}
		if in.groupOv, err = tx.ListOverrides(OverrideGroup); err != nil {
			return err
		}
		if in.rollouts, err = tx.ListRollouts(); err != nil {
			return err
		}
		if in.reverts, err = tx.ListReverts(); err != nil {
			return err
		}
		return readRolloutHosts(tx, &in)
	})
	return in, err
}

// readRolloutHosts reads the rollouts with waves' phases and the hosts
// they assign their image.
func readRolloutHosts(tx Tx, in *buildInput) error {
	ps, err := tx.ListRolloutProgress()
	if err != nil {
		return err
	}
	in.phases, in.rolloutHosts = map[string]string{}, map[string]rolloutAssigned{}
	moved := map[string]time.Time{}
	for _, p := range ps {
		in.phases[p.Name] = p.State
		hs, err := tx.ListRolloutHosts(p.Name)
		if err != nil {
			return err
		}
		for _, h := range hs {
			// The rollout that moved the host last wins: a new rollout
			// takes over the hosts of one that is done.
			rh := rollout.Host{State: h.State, Moved: h.Moved}
			if t, taken := moved[h.MAC]; rh.Assigned() && (!taken || h.Moved.After(t)) {
				in.rolloutHosts[h.MAC] = rolloutAssigned{rollout: p.Name, wave: h.Wave}
				moved[h.MAC] = h.Moved
			}
		}
	}
	return nil
}

// imageName is "name@version (sha256:0123456789ab)" for a declared image,
// else the short digest.
func (s *snapshot) imageName(digest string) string {
	if digest == "" {
		return "-"
	}
	if img := s.imageByDigest[digest]; img != nil {
		return img.Ref() + " (" + short(digest) + ")"
	}
	return "sha256:" + short(digest) + " (not declared)"
}
