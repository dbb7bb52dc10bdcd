// Package fleet keeps the fleet's desired state (YAML files an operator
// keeps in git), its observed state (what hosts report, in an embedded
// append-only store), the boot ledger, and the admin API over both. It
// answers the boot server (package pxe) through Lookup, which reads a
// precomputed immutable snapshot swapped atomically on every change.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/pxe"
	"github.com/hnboot/hnboot/supervisor"
)

// Options configure a Fleet.
type Options struct {
	Dir          string        // desired state: a directory of YAML files
	StatePath    string        // the observed-state log, e.g. /var/lib/hnboot/fleet.db
	TokenFile    string        // admin tokens, "NAME TOKEN" per line; empty: every admin call is refused
	OpenReads    bool          // GET endpoints need no token
	PollInterval time.Duration // how often Run looks for changed files; 0 → 2s, <0 → never
	Logger       *slog.Logger
	// Services, if set, adds the supervised services to status and metrics.
	Services func() []supervisor.ServiceStatus
	Now      func() time.Time // for tests; time.Now when nil
}

// Fleet is the fleet state. Create it with New; it is safe for concurrent use.
type Fleet struct {
	opts  Options
	log   *slog.Logger
	now   func() time.Time
	store *Store
	led   *Ledger

	snap   atomic.Pointer[snapshot]
	tokens atomic.Pointer[tokenSet]

	mu        sync.Mutex // serializes writers: reload, admin actions, check-ins
	reloadErr string
	reloadOK  time.Time
	reloads   map[string]uint64 // "ok", "error"
	dirSig    string
	sigPaths  []string // the image files dirSig covers
	newSig    string   // a changed signature seen at the last poll

	// reloadMu serializes reloads without holding mu while images are
	// hashed, which can take minutes.
	reloadMu sync.Mutex

	checkins  map[string]*atomic.Uint64 // "ok", "error"
	apiCodes  sync.Map                  // int → *atomic.Uint64
	persistCh chan Boot
	done      chan struct{}
	wg        sync.WaitGroup
}

// Store keys.
const (
	keyObserved      = "observed/"       // + MAC → Observed
	keyOverrideHost  = "override/host/"  // + MAC → Override
	keyOverrideGroup = "override/group/" // + group → Override
	keyRollout       = "rollout/"        // + name → APIRollout
	keyRevert        = "revert/"         // + MAC → PendingRevert
	keyBoot          = "boot/"           // + MAC + "/" + start → Boot
	keyAudit         = "audit/"          // + time → AuditEntry
)

// Override is an assignment made through the API. It lives in the store,
// not in the operator's YAML, and wins over it until cleared (assign with
// an empty image).
type Override struct {
	Image string    `json:"image"` // name@version
	By    string    `json:"by"`
	Time  time.Time `json:"time"`
	Note  string    `json:"note,omitempty"`
}

// APIRollout is a rollout created or advanced through the API.
type APIRollout struct {
	Rollout
	By   string    `json:"by"`
	Time time.Time `json:"time"`
}

// PendingRevert is a revert the server asks of a host until the host
// reports it applied.
type PendingRevert struct {
	ID   string    `json:"id"`
	By   string    `json:"by"`
	Time time.Time `json:"time"`
}

// AuditEntry is one admin action.
type AuditEntry struct {
	Time   time.Time `json:"time"`
	Who    string    `json:"who"`
	Action string    `json:"action"`
	Target string    `json:"target"`
	Detail string    `json:"detail,omitempty"`
	Remote string    `json:"remote,omitempty"`
}

// New loads the desired state (it must be valid, and every image file
// that exists must match its digest), opens the store and builds the
// first snapshot.
func New(opts Options) (*Fleet, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 2 * time.Second
	}
	d, err := Load(opts.Dir)
	if err != nil {
		return nil, err
	}
	toks, err := readTokens(opts.TokenFile)
	if err != nil {
		return nil, err
	}
	st, err := OpenStore(opts.StatePath, opts.Logger)
	if err != nil {
		return nil, err
	}
	f := &Fleet{
		opts: opts, log: opts.Logger, now: opts.Now, store: st, led: NewLedger(),
		reloads:   map[string]uint64{},
		checkins:  map[string]*atomic.Uint64{"ok": {}, "error": {}},
		persistCh: make(chan Boot, 256),
		done:      make(chan struct{}),
	}
	f.tokens.Store(toks)
	f.sigPaths = imagePaths(d)
	f.dirSig = f.signature(f.sigPaths)
	if err := f.checkImages(d); err != nil {
		st.Close()
		return nil, err
	}
	f.reloadOK = f.now()
	f.seedLedger()
	f.mu.Lock()
	f.rebuildLocked(d)
	f.mu.Unlock()
	f.wg.Add(1)
	go f.persister()
	return f, nil
}

// Close stops background work and closes the store.
func (f *Fleet) Close() error {
	select {
	case <-f.done:
	default:
		close(f.done)
	}
	f.wg.Wait()
	return f.store.Close()
}

// Lookup implements pxe.Directory: a map read on an immutable snapshot.
func (f *Fleet) Lookup(mac net.HardwareAddr) (HostBoot, bool) {
	hb, ok := f.snap.Load().boots[string(mac)]
	return hb, ok
}

// Images implements pxe.Directory: every image declared in the YAML files.
func (f *Fleet) Images() []ImageRef { return f.snap.Load().images }

// Desired returns the current (last good) desired state. Do not modify it.
func (f *Fleet) Desired() *Desired { return f.snap.Load().desired }

// Record implements pxe.Recorder: it links the event into the MAC's boot
// record in memory. Accepted "checkin" events are ignored here: check-ins
// enter the ledger through Checkin, with the check-in linked; a refused
// one (Err set) is counted and linked like any event, so `why` says why
// the boot never checked in. A boot that ends without a check-in is
// persisted in the background (known MACs only), so Record never waits on
// the disk.
func (f *Fleet) Record(ev Event) {
	if ev.Kind == pxe.KindCheckin {
		if ev.Err == "" {
			return
		}
		f.checkins["error"].Add(1)
		if ev.MAC == nil {
			return
		}
	}
	if ev.Time.IsZero() {
		ev.Time = f.now()
	}
	mac := ev.MAC.String()
	_, prev := f.led.add(mac, LedgerEvent{Time: ev.Time, Kind: ev.Kind, Detail: ev.Detail, Err: ev.Err}, nil)
	if prev != nil && f.snap.Load().desired.HostByMAC(ev.MAC) != nil {
		select {
		case f.persistCh <- *prev:
		default:
			f.log.Warn("fleet: boot ledger persistence queue full; dropping a record", "mac", mac)
		}
	}
}

func (f *Fleet) persister() {
	defer f.wg.Done()
	for {
		select {
		case b := <-f.persistCh:
			f.persistBoot(b)
		case <-f.done:
			return
		}
	}
}

func (f *Fleet) persistBoot(b Boot) {
	key := fmt.Sprintf("%s%s/%020d", keyBoot, b.MAC, b.Start.UnixNano())
	if err := f.store.Put(key, b); err != nil {
		f.log.Error("fleet: persist boot record", "err", err)
		return
	}
	keys := f.store.Keys(keyBoot + b.MAC + "/")
	for len(keys) > maxBootsPerMAC {
		f.store.Delete(keys[0])
		keys = keys[1:]
	}
}

func (f *Fleet) seedLedger() {
	byMAC := map[string][]Boot{}
	for _, k := range f.store.Keys(keyBoot) {
		var b Boot
		if ok, err := f.store.Get(k, &b); ok && err == nil {
			byMAC[b.MAC] = append(byMAC[b.MAC], b)
		}
	}
	for mac, bs := range byMAC {
		f.led.seed(mac, bs)
	}
}

// Checkin stores a host's check-in, parsed and validated at the HTTP edge
// (checkin.Parse): POST /api/checkin here, the boot server's /checkin
// (Checkin is its pxe.CheckinHandler). An init's check-in closes the boot
// in the ledger; one that reports the pending revert ID clears it.
func (f *Fleet) Checkin(c *checkin.Checkin) error {
	obs := &Observed{Checkin: *c, Time: f.now()}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.store.Put(keyObserved+c.MAC, obs); err != nil {
		f.checkins["error"].Add(1)
		return fmt.Errorf("store the check-in of %s: %w", c.MAC, err)
	}
	f.checkins["ok"].Add(1)
	hw, _ := net.ParseMAC(c.MAC)
	if c.Source == checkin.SourceInit {
		s := f.snap.Load()
		ev := LedgerEvent{Time: obs.Time, Kind: pxe.KindCheckin, Detail: summary(c, s.imageName)}
		b, prev := f.led.add(c.MAC, ev, obs)
		if s.desired.HostByMAC(hw) != nil {
			if prev != nil {
				f.persistBoot(*prev)
			}
			f.persistBoot(b)
		}
	}
	var pr PendingRevert
	if ok, _ := f.store.Get(keyRevert+c.MAC, &pr); ok && c.RevertApplied != "" && c.RevertApplied == pr.ID {
		if err := f.store.Delete(keyRevert + c.MAC); err != nil {
			return fmt.Errorf("clear the pending revert of %s: %w", c.MAC, err)
		}
		f.auditLocked(AuditEntry{Who: "host:" + c.MAC, Action: "revert-applied", Target: c.MAC, Detail: "revert " + pr.ID + " applied by the host"})
		f.rebuildLocked(nil)
	}
	return nil
}

// Reload re-reads the YAML directory and the token file, and checks the
// images' digests against their files. An invalid directory, or an image
// file that does not match, keeps the last good state; the error is
// returned, logged and shown by status and metrics. While images are
// hashed the last good state is served and check-ins and admin calls
// go on.
func (f *Fleet) Reload() error {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	conf := confSignature(f.opts.Dir, f.opts.TokenFile)
	d, err := Load(f.opts.Dir)
	f.mu.Lock()
	if err == nil {
		f.sigPaths = imagePaths(d)
	}
	// Taken before hashing: a file that changes meanwhile differs at the
	// next poll and is checked again.
	f.dirSig = conf + imageSignature(f.sigPaths)
	f.newSig = ""
	f.mu.Unlock()
	if err == nil {
		err = f.checkImages(d)
	}
	var toks *tokenSet
	if err == nil {
		toks, err = readTokens(f.opts.TokenFile)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		f.tokens.Store(toks)
	}
	if err != nil {
		f.reloads["error"]++
		f.reloadErr = err.Error()
		f.log.Error("fleet: reload failed; keeping the last good state", "dir", f.opts.Dir, "err", err)
		return err
	}
	f.reloads["ok"]++
	f.reloadErr = ""
	f.reloadOK = f.now()
	f.rebuildLocked(d)
	f.log.Info("fleet: reloaded", "dir", f.opts.Dir, "hosts", len(d.Hosts), "images", len(d.Images))
	return nil
}

// Run reloads on SIGHUP and when a file in the directory (or the token
// file) changes, until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var tick <-chan time.Time
	if f.opts.PollInterval > 0 {
		t := time.NewTicker(f.opts.PollInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			f.Reload()
		case <-tick:
			if f.changed() {
				f.Reload()
			}
		}
	}
}

// changed reports a change once it has held for one poll interval: a
// file still being written (an image being copied in takes minutes) is
// not read, and hashed, at every poll.
func (f *Fleet) changed() bool {
	f.mu.Lock()
	paths := f.sigPaths
	f.mu.Unlock()
	sig := f.signature(paths)
	f.mu.Lock()
	defer f.mu.Unlock()
	if sig == f.dirSig {
		f.newSig = ""
		return false
	}
	if sig != f.newSig {
		f.newSig = sig
		return false
	}
	return true
}

// signature covers the YAML files, the token file and the image files.
func (f *Fleet) signature(imagePaths []string) string {
	return confSignature(f.opts.Dir, f.opts.TokenFile) + imageSignature(imagePaths)
}

func confSignature(dir, tokenFile string) string {
	return dirSignature(dir) + "token " + tokenSignature(tokenFile) + "\n"
}

// dirSignature is names, sizes and mtimes of the YAML files (and of the
// token file, appended by the caller).
func dirSignature(dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "error:" + err.Error()
	}
	var b strings.Builder
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			fmt.Fprintf(&b, "%s %d %d\n", e.Name(), fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return b.String()
}

func tokenSignature(path string) string {
	if path == "" {
		return ""
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "none"
	}
	return fmt.Sprintf("%d %d", fi.Size(), fi.ModTime().UnixNano())
}

func newRevertID(now time.Time) string {
	var b [3]byte
	rand.Read(b[:])
	return "r" + now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// Target names what an admin action applies to: one host (hostname or
// MAC) or one group.
type Target struct {
	Host  string `json:"host,omitempty"`
	Group string `json:"group,omitempty"`
}

func (t Target) String() string {
	if t.Host != "" {
		return "host " + t.Host
	}
	return "group " + t.Group
}

// hosts resolves t against the desired state.
func (t Target) hosts(d *Desired) ([]*Host, error) {
	switch {
	case t.Host != "" && t.Group != "":
		return nil, errors.New("name a host or a group, not both")
	case t.Host != "":
		h := d.FindHost(t.Host)
		if h == nil {
			return nil, fmt.Errorf("unknown host %q (not in %s)", t.Host, d.Dir)
		}
		return []*Host{h}, nil
	case t.Group != "":
		if d.Groups[t.Group] == nil {
			return nil, fmt.Errorf("unknown group %q", t.Group)
		}
		var out []*Host
		for _, h := range d.Hosts {
			if h.Group == t.Group {
				out = append(out, h)
			}
		}
		return out, nil
	}
	return nil, errors.New("name a host or a group")
}

// Assign sets (or, with image "", clears) an override for a host or a
// group. Assigning a group clears the host overrides of its members.
func (f *Fleet) Assign(who, remote string, t Target, image string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.snap.Load().desired
	hosts, err := t.hosts(d)
	if err != nil {
		return err
	}
	if image != "" && d.Image(image) == nil {
		return fmt.Errorf("unknown image %q (declare it in %s first)", image, d.Dir)
	}
	ov := Override{Image: image, By: who, Time: f.now()}
	var key string
	if t.Host != "" {
		key = keyOverrideHost + hosts[0].MAC.String()
	} else {
		key = keyOverrideGroup + t.Group
		for _, h := range hosts {
			if err := f.store.Delete(keyOverrideHost + h.MAC.String()); err != nil {
				return err
			}
		}
	}
	if image == "" {
		err = f.store.Delete(key)
	} else {
		err = f.store.Put(key, ov)
	}
	if err != nil {
		return err
	}
	detail := "image " + image
	if image == "" {
		detail = "override cleared; the YAML assignment applies"
	}
	f.auditLocked(AuditEntry{Who: who, Remote: remote, Action: "assign", Target: t.String(), Detail: detail})
	f.rebuildLocked(nil)
	return nil
}

// RevertResult tells what a revert did for one host.
type RevertResult struct {
	Host     string `json:"host"`
	MAC      string `json:"mac"`
	ID       string `json:"id"`
	PinnedTo string `json:"pinned_to,omitempty"` // the image assigned after the revert
	Note     string `json:"note,omitempty"`
}

// Revert is the big red button: each host of the target gets a new revert
// ID, sent as hn.revert=ID on its next PXE boot (and to its agent through
// GET /api/hosts/{mac}/desired) until it reports the ID applied. When the
// host's last check-in names its old image and that image is declared, the
// host is also assigned that image (a host override), so the agent does
// not stage the reverted image again.
func (f *Fleet) Revert(who, remote string, t Target) ([]RevertResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.snap.Load()
	hosts, err := t.hosts(s.desired)
	if err != nil {
		return nil, err
	}
	now := f.now()
	var out []RevertResult
	for _, h := range hosts {
		mac := h.MAC.String()
		r := RevertResult{Host: h.Hostname, MAC: mac, ID: newRevertID(now)}
		var obs Observed
		if ok, _ := f.store.Get(keyObserved+mac, &obs); !ok {
			r.Note = "host never checked in: no old image known; assignment unchanged"
		} else if obs.Images.Old == "" {
			r.Note = "host reported no old image: the init will boot its current image; assignment unchanged"
		} else if img := s.imageByDigest[obs.Images.Old]; img == nil {
			r.Note = "host's old image " + short(obs.Images.Old) + " is not declared; assignment unchanged"
		} else {
			r.PinnedTo = img.Ref()
			if err := f.store.Put(keyOverrideHost+mac, Override{Image: img.Ref(), By: who, Time: now, Note: "revert " + r.ID}); err != nil {
				return out, err
			}
		}
		if err := f.store.Put(keyRevert+mac, PendingRevert{ID: r.ID, By: who, Time: now}); err != nil {
			return out, err
		}
		detail := "revert " + r.ID
		if r.PinnedTo != "" {
			detail += ", assigned " + r.PinnedTo
		}
		f.auditLocked(AuditEntry{Who: who, Remote: remote, Action: "revert", Target: h.Hostname + " " + mac, Detail: detail})
		out = append(out, r)
	}
	f.rebuildLocked(nil)
	return out, nil
}

// SetRollout creates, advances or (with del) removes an API rollout.
func (f *Fleet) SetRollout(who, remote string, r Rollout, del bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.snap.Load().desired
	if r.Name == "" || strings.ContainsAny(r.Name, "/ ") {
		return errors.New("rollout: name missing or contains '/' or spaces")
	}
	if del {
		if err := f.store.Delete(keyRollout + r.Name); err != nil {
			return err
		}
		f.auditLocked(AuditEntry{Who: who, Remote: remote, Action: "rollout-delete", Target: "rollout " + r.Name})
		f.rebuildLocked(nil)
		return nil
	}
	if d.Image(r.Image) == nil {
		return fmt.Errorf("rollout %s: unknown image %q", r.Name, r.Image)
	}
	if r.Group != "" && d.Groups[r.Group] == nil {
		return fmt.Errorf("rollout %s: unknown group %q", r.Name, r.Group)
	}
	if r.Group == "" && len(r.Hosts) == 0 {
		return fmt.Errorf("rollout %s: needs a group or a list of hosts", r.Name)
	}
	if r.Percent < 0 || r.Percent > 100 {
		return fmt.Errorf("rollout %s: percent %d out of 0..100", r.Name, r.Percent)
	}
	for _, h := range r.Hosts {
		if d.FindHost(h) == nil {
			return fmt.Errorf("rollout %s: unknown host %q", r.Name, h)
		}
	}
	if err := f.store.Put(keyRollout+r.Name, APIRollout{Rollout: r, By: who, Time: f.now()}); err != nil {
		return err
	}
	f.auditLocked(AuditEntry{Who: who, Remote: remote, Action: "rollout", Target: "rollout " + r.Name,
		Detail: fmt.Sprintf("image %s, group %q, %d%%, hosts %v", r.Image, r.Group, r.Percent, r.Hosts)})
	f.rebuildLocked(nil)
	return nil
}

func (f *Fleet) auditLocked(e AuditEntry) {
	if e.Time.IsZero() {
		e.Time = f.now()
	}
	key := fmt.Sprintf("%s%020d", keyAudit, e.Time.UnixNano())
	for i := 1; ; i++ { // two entries in the same nanosecond
		var x AuditEntry
		if ok, _ := f.store.Get(key, &x); !ok {
			break
		}
		key = fmt.Sprintf("%s%020d-%d", keyAudit, e.Time.UnixNano(), i)
	}
	if err := f.store.Put(key, e); err != nil {
		f.log.Error("fleet: audit log write failed", "err", err)
	}
	f.log.Info("fleet: audit", "who", e.Who, "action", e.Action, "target", e.Target, "detail", e.Detail)
}

// Audit returns the last n audit entries, oldest first (n <= 0: all).
func (f *Fleet) Audit(n int) []AuditEntry {
	keys := f.store.Keys(keyAudit)
	if n > 0 && len(keys) > n {
		keys = keys[len(keys)-n:]
	}
	out := make([]AuditEntry, 0, len(keys))
	for _, k := range keys {
		var e AuditEntry
		if ok, err := f.store.Get(k, &e); ok && err == nil {
			out = append(out, e)
		}
	}
	return out
}

// observed returns the last check-in of every MAC.
func (f *Fleet) observed() map[string]*Observed {
	out := map[string]*Observed{}
	for _, k := range f.store.Keys(keyObserved) {
		var c Observed
		if ok, err := f.store.Get(k, &c); ok && err == nil {
			out[c.MAC] = &c
		}
	}
	return out
}

// KnownHosts is an ssh_known_hosts file from the host keys the hosts
// reported: "hostname,ip key" per key, sorted by hostname.
func (f *Fleet) KnownHosts() string {
	d := f.snap.Load().desired
	obs := f.observed()
	type line struct{ name, text string }
	var lines []line
	for mac, c := range obs {
		names := []string{}
		hw, _ := net.ParseMAC(mac)
		if h := d.HostByMAC(hw); h != nil {
			names = append(names, h.Hostname)
			if a := d.EffectiveNetwork(h).Addresses; len(a) > 0 {
				names = append(names, strings.Split(a[0], "/")[0])
			}
		} else if c.Hostname != "" {
			names = append(names, c.Hostname)
		} else {
			continue
		}
		for _, k := range c.SSHHostKeys {
			lines = append(lines, line{names[0], strings.Join(names, ",") + " " + k})
		}
	}
	sort.Slice(lines, func(i, j int) bool {
		if lines[i].name != lines[j].name {
			return lines[i].name < lines[j].name
		}
		return lines[i].text < lines[j].text
	})
	var b strings.Builder
	b.WriteString("# ssh_known_hosts from hnboot check-ins\n")
	for _, l := range lines {
		b.WriteString(l.text + "\n")
	}
	return b.String()
}

func short(digest string) string {
	s := strings.TrimPrefix(digest, "sha256:")
	if len(s) > 12 {
		s = s[:12]
	}
	return s
}
