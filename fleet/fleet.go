// Package fleet keeps the fleet's desired state (YAML files an operator
// keeps in git), its observed state (what hosts report, in a database:
// SQLite by default, PostgreSQL for several servers; see Store), the boot
// ledger, and the admin API over both. It answers the boot server (package
// pxe) through Lookup, which reads a precomputed immutable snapshot
// swapped atomically on every change, here or (PostgreSQL) on any server
// sharing the database, so no boot answer waits on the database.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/pxe"
	"github.com/hnboot/hnboot/supervisor"
)

// Options configure a Fleet.
type Options struct {
	Dir string // desired state: a directory of YAML files
	// DB is the observed state's database: sqlite:///var/lib/hnboot/fleet.db
	// (DefaultDB) or postgres://user@host/db (see OpenStore).
	DB string
	// Import is a JSON-lines store of an older imaged, imported once on
	// the first start and then renamed aside (PATH.old-store); "" or a
	// missing file: nothing to import.
	Import       string
	KeepBoots    int           // boots kept per MAC in the ledger; 0 → 10
	KeepAudit    time.Duration // audit entries older than this are removed; 0 → kept forever
	TokenFile    string        // admin tokens, "NAME TOKEN" per line; empty: every admin call is refused
	OpenReads    bool          // GET endpoints need no token
	PollInterval time.Duration // how often Run looks for changed files; 0 → 2s, <0 → never
	Logger       *slog.Logger
	// Services, if set, adds the supervised services to status and metrics.
	Services func() []supervisor.ServiceStatus
	Now      func() time.Time // for tests; time.Now when nil
	// CheckinWait is how long a check-in waits for the database before it
	// is refused (503, the host retries); 0 → 3s.
	CheckinWait time.Duration
	// RefreshInterval is how often the snapshot is rebuilt from the
	// database even without a change notification (a safety net); 0 → 30s.
	RefreshInterval time.Duration
	// LeaderRetry is how often a server that is not the leader tries to
	// take the leader lock, and PruneInterval how often the leader
	// applies retention; 0 → 2s and 1m.
	LeaderRetry, PruneInterval time.Duration
	// RolloutInterval is how often the leader steps the rollouts with
	// waves when no check-in or action kicks it sooner; 0 → 5s.
	RolloutInterval time.Duration
	// ImageCache is this server's cache of the image files' digests (a
	// JSON file, so a restart does not rehash multi-GiB images); "" keeps
	// it in memory only.
	ImageCache string
	// Images is the directory of published images (imaged fleet
	// publish); "" turns publishing off.
	Images string
	// TrustedKeys, when set, must have signed every published image.
	TrustedKeys []manifest.PublicKey
}

// Fleet is the fleet state. Create it with New; it is safe for concurrent use.
type Fleet struct {
	opts  Options
	log   *slog.Logger
	now   func() time.Time
	store Store
	led   *Ledger
	// images caches the digests of the image files checked at load.
	images *imageCache
	pkgs   pkgCache // the images' package lists (inventory.go)

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

	lastIn  buildInput // the database's part of the last snapshot, for rebuilds while it is away
	dbErr   string     // the last database error seen by a rebuild, "" when fine
	unsubDB func()
	leader  atomic.Bool
	// The rollouts' leader work (rollouts.go): its own lock, kicked by
	// check-ins and actions.
	rolloutLeader   atomic.Bool
	rolloutKick     chan struct{}
	lastRolloutStep time.Time
	ciQ             chan *pendingCheckin
	ciDone          chan struct{} // closed when the check-in writer has stopped
	refresh         chan struct{}
	checkins        map[string]*atomic.Uint64 // "ok", "error"
	apiCodes        sync.Map                  // int → *atomic.Uint64
	persistCh       chan Boot
	done            chan struct{}
	changes         changes // wakes the dashboard's event stream
	wg              sync.WaitGroup
}

// opTimeout bounds one database operation on an admin or host request.
const opTimeout = 10 * time.Second

func dbCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

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
	Host   string    `json:"host,omitempty"` // the host it was about, when one
	MAC    string    `json:"mac,omitempty"`
	Detail string    `json:"detail,omitempty"`
	Remote string    `json:"remote,omitempty"`
}

// New loads the desired state (it must be valid), opens the database
// (importing an old store once), and builds the first snapshot. The
// database must answer now: without it the server would not know the
// pending reverts and overrides its answers depend on.
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
	if opts.KeepBoots <= 0 {
		opts.KeepBoots = maxBootsPerMAC
	}
	if opts.CheckinWait <= 0 {
		opts.CheckinWait = 3 * time.Second
	}
	if opts.RefreshInterval <= 0 {
		opts.RefreshInterval = 30 * time.Second
	}
	if opts.LeaderRetry <= 0 {
		opts.LeaderRetry = 2 * time.Second
	}
	if opts.PruneInterval <= 0 {
		opts.PruneInterval = time.Minute
	}
	if opts.RolloutInterval <= 0 {
		opts.RolloutInterval = 5 * time.Second
	}
	if opts.DB == "" {
		return nil, errors.New("fleet: no database (Options.DB)")
	}
	d, err := (&Fleet{opts: opts}).load()
	if err != nil {
		return nil, err
	}
	toks, err := readTokens(opts.TokenFile)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	st, err := openWithImport(ctx, opts.DB, opts.Import, opts.Logger)
	cancel()
	if err != nil {
		return nil, err
	}
	f := &Fleet{
		opts: opts, log: opts.Logger, now: opts.Now, store: st, led: NewLedger(), images: &imageCache{path: opts.ImageCache},
		reloads:     map[string]uint64{},
		checkins:    map[string]*atomic.Uint64{"ok": {}, "error": {}},
		ciQ:         make(chan *pendingCheckin, maxQueuedCheckins),
		ciDone:      make(chan struct{}),
		refresh:     make(chan struct{}, 1),
		persistCh:   make(chan Boot, 256),
		rolloutKick: make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	f.tokens.Store(toks)
	f.sigPaths = imagePaths(d)
	f.dirSig = f.signature(f.sigPaths)
	if err := f.checkImages(d); err != nil {
		st.Close()
		return nil, err
	}
	f.reloadOK = f.now()
	f.mu.Lock()
	f.rebuildLocked(d)
	f.mu.Unlock()
	if f.dbErr != "" {
		st.Close()
		return nil, fmt.Errorf("fleet: %s", f.dbErr)
	}
	f.unsubDB = st.Subscribe(f.onChange)
	f.wg.Add(5)
	go f.persister()
	go f.checkinWriter()
	go f.refresher()
	go f.leaderLoop()
	go func() {
		defer f.wg.Done()
		f.runLeader("rollouts", f.opts.RolloutInterval, f.rolloutKick, &f.rolloutLeader, f.stepRollouts)
	}()
	f.log.Info("fleet: database", "backend", st.Backend(), "where", st.Where(), "schema", SchemaVersion())
	return f, nil
}

// Close stops background work and closes the database.
func (f *Fleet) Close() error {
	select {
	case <-f.done:
	default:
		close(f.done)
	}
	f.wg.Wait()
	f.unsubDB()
	return f.store.Close()
}

// Store is the fleet's database, for work that builds on it (rollouts,
// the dashboard's change feed through Store.Subscribe).
func (f *Fleet) Store() Store { return f.store }

// IsLeader reports whether this server holds the fleet's leader lock and
// so runs the work that must happen once (retention).
func (f *Fleet) IsLeader() bool { return f.leader.Load() }

// onChange is the store's notification hook: a change committed by
// another server (or a reconnect that may have missed some) refreshes the
// snapshot. This server's own changes rebuilt it already.
func (f *Fleet) onChange(c Change) {
	switch c.Kind {
	case ChangeCheckin, ChangeRollout, ChangeAll:
		// A host moved on, or a rollout changed: the rollouts' leader
		// looks at once rather than at its next tick.
		f.kickRollouts()
	case ChangeRolloutProgress:
		if !c.Local {
			f.kickRollouts()
		}
	}
	if c.Local {
		return
	}
	switch c.Kind {
	case ChangeOverride, ChangeRevert, ChangeRollout, ChangeRolloutProgress, ChangeAll:
		select {
		case f.refresh <- struct{}{}:
		default: // one rebuild pending already reads everything
		}
	}
}

// refresher rebuilds the snapshot on notifications and, as a safety net
// (and to catch up after the database was away), every RefreshInterval.
func (f *Fleet) refresher() {
	defer f.wg.Done()
	t := time.NewTicker(f.opts.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-f.refresh:
		case <-t.C:
		case <-f.done:
			return
		}
		f.mu.Lock()
		f.rebuildLocked(nil)
		f.mu.Unlock()
	}
}

// leaderLoop takes the leader lock when it can and, while it holds it,
// applies retention every PruneInterval. When the leader dies its lock
// goes with its connection and another server's next try takes it.
func (f *Fleet) leaderLoop() {
	defer f.wg.Done()
	f.runLeader("maintenance", f.opts.PruneInterval, nil, &f.leader, f.maintain)
}

// runLeader runs work every interval, and when kick says so, while this
// server holds the named leader lock (flagged in leader), until Close.
func (f *Fleet) runLeader(name string, every time.Duration, kick <-chan struct{}, leader *atomic.Bool, work func(ctx context.Context)) {
	for {
		ctx, cancel := dbCtx()
		lock, err := f.store.TryLock(ctx, name)
		cancel()
		if err != nil {
			f.log.Debug("fleet: leader lock", "lock", name, "err", err)
		}
		if lock != nil {
			leader.Store(true)
			f.log.Info("fleet: this server holds the leader lock", "lock", name, "database", f.store.Where())
			wctx, wcancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-lock.Lost():
				case <-f.done:
				}
				wcancel()
			}()
			t := time.NewTicker(every)
			for held := true; held; {
				work(wctx)
				select {
				case <-t.C:
				case <-kick:
				case <-lock.Lost():
					held = false
				case <-f.done:
					held = false
				}
			}
			t.Stop()
			wcancel()
			leader.Store(false)
			lock.Release()
			select {
			case <-f.done:
				return
			default:
			}
			f.log.Warn("fleet: leader lock lost (database connection broke); trying to take it again", "lock", name)
		}
		select {
		case <-time.After(f.opts.LeaderRetry):
		case <-f.done:
			return
		}
	}
}

// maintain applies retention: the last KeepBoots boots per MAC, audit
// entries younger than KeepAudit.
func (f *Fleet) maintain(ctx context.Context) {
	var boots, audit int64
	err := f.store.Update(ctx, func(tx Tx) error {
		var err error
		if boots, err = tx.PruneBoots(f.opts.KeepBoots); err != nil {
			return err
		}
		if f.opts.KeepAudit > 0 {
			audit, err = tx.PruneAudit(f.now().Add(-f.opts.KeepAudit))
		}
		return err
	})
	switch {
	case err != nil:
		f.log.Warn("fleet: retention", "err", err)
	case boots > 0 || audit > 0:
		f.log.Info("fleet: retention", "boots_removed", boots, "audit_removed", audit)
	}
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
	defer f.changes.notify()
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

// persistBoot stores a boot that ended without a check-in. With the
// database away it stays in the in-memory ledger only.
func (f *Fleet) persistBoot(b Boot) {
	ctx, cancel := dbCtx()
	defer cancel()
	if err := f.store.Update(ctx, func(tx Tx) error { return tx.PutBoot(&b) }); err != nil {
		f.log.Warn("fleet: boot record kept in memory only", "mac", b.MAC, "err", err)
	}
}

// pendingCheckin is a check-in waiting for its group commit.
type pendingCheckin struct {
	obs    *Observed
	queued time.Time
	done   chan error
}

const (
	// maxQueuedCheckins bounds the check-ins waiting for the database;
	// beyond it a check-in is refused at once (503) and the host retries.
	maxQueuedCheckins = 4096
	maxCheckinBatch   = 256
)

// Checkin stores a host's check-in, parsed and validated at the HTTP edge
// (checkin.Parse): POST /api/checkin here, the boot server's /checkin
// (Checkin is its pxe.CheckinHandler). It returns once the check-in is
// committed: a nil error is the promise to the host that it is stored, so
// the handlers answer 2xx only then. While the database is away a
// check-in waits up to CheckinWait and is then refused with an ErrDatabase
// (503): the host keeps it and sends it again. An init's check-in closes
// the boot in the ledger; one that reports the pending revert ID clears it.
func (f *Fleet) Checkin(c *checkin.Checkin) error {
	p := &pendingCheckin{obs: &Observed{Checkin: *c, Time: f.now()}, queued: time.Now(), done: make(chan error, 1)}
	select {
	case f.ciQ <- p:
	default:
		f.checkins["error"].Add(1)
		return fmt.Errorf("check-in of %s not stored: %w: %d check-ins are waiting for it", c.MAC, ErrDatabase, maxQueuedCheckins)
	}
	select {
	case err := <-p.done:
		if err == nil {
			f.changes.notify()
		}
		return err
	case <-f.ciDone:
		select {
		case err := <-p.done:
			return err
		default:
		}
		return fmt.Errorf("check-in of %s not stored: the server is stopping", c.MAC)
	}
}

// checkinWriter commits queued check-ins in groups: whatever arrived while
// the last commit ran goes into the next one transaction, so one fsync
// (SQLite) or one round trip (PostgreSQL) serves many hosts.
func (f *Fleet) checkinWriter() {
	defer f.wg.Done()
	defer close(f.ciDone)
	for {
		var batch []*pendingCheckin
		select {
		case p := <-f.ciQ:
			batch = append(batch, p)
		case <-f.done:
			for {
				select {
				case p := <-f.ciQ:
					p.done <- errors.New("check-in not stored: the server is stopping")
				default:
					return
				}
			}
		}
	more:
		for len(batch) < maxCheckinBatch {
			select {
			case p := <-f.ciQ:
				batch = append(batch, p)
			default:
				break more
			}
		}
		f.commitCheckins(batch)
	}
}

func (f *Fleet) commitCheckins(batch []*pendingCheckin) {
	s := f.snap.Load()
	boots := make([][]Boot, len(batch))
	macs := make([]string, 0, len(batch))
	for i, p := range batch {
		c := &p.obs.Checkin
		macs = append(macs, c.MAC)
		if c.Source != checkin.SourceInit {
			continue
		}
		hw, _ := net.ParseMAC(c.MAC)
		ev := LedgerEvent{Time: p.obs.Time, Kind: pxe.KindCheckin, Detail: summary(c, s.imageName)}
		b, prev := f.led.add(c.MAC, ev, p.obs)
		if s.desired.HostByMAC(hw) != nil {
			if prev != nil {
				boots[i] = append(boots[i], *prev)
			}
			boots[i] = append(boots[i], b)
		}
	}
	deadline := batch[0].queued.Add(f.opts.CheckinWait)
	var cleared []string
	var err error
	for attempt := 0; ; attempt++ {
		cleared = cleared[:0]
		ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(time.Second))
		err = f.store.Update(ctx, func(tx Tx) error {
			for i, p := range batch {
				c := &p.obs.Checkin
				if err := putCheckin(tx, p.obs); err != nil {
					return err
				}
				for j := range boots[i] {
					if err := tx.PutBoot(&boots[i][j]); err != nil {
						return err
					}
				}
				if c.RevertApplied == "" {
					continue
				}
				ok, err := tx.DeleteRevert(c.MAC, c.RevertApplied)
				if err != nil {
					return err
				}
				if ok {
					hw, _ := net.ParseMAC(c.MAC)
					e := AuditEntry{Time: p.obs.Time, Who: "host:" + c.MAC, Action: "revert-applied", Target: c.MAC, MAC: c.MAC,
						Detail: "revert " + c.RevertApplied + " applied by the host"}
					if h := s.desired.HostByMAC(hw); h != nil {
						e.Host = h.Hostname
					}
					if err := tx.AppendAudit(e); err != nil {
						return err
					}
					tx.Changed(ChangeRevert, c.MAC)
					cleared = append(cleared, c.MAC)
				}
			}
			tx.Changed(ChangeCheckin, macs...)
			return nil
		})
		cancel()
		if err == nil || !errors.Is(err, ErrDatabase) || !time.Now().Add(100*time.Millisecond).Before(deadline) {
			break
		}
		time.Sleep(min(100*time.Millisecond<<attempt, time.Until(deadline)))
	}
	for _, mac := range cleared {
		f.log.Info("fleet: audit", "who", "host:"+mac, "action", "revert-applied", "target", mac)
	}
	if len(cleared) > 0 {
		// Before the answer: once the host hears 2xx, its next boot is
		// answered without the revert.
		f.mu.Lock()
		f.rebuildLocked(nil)
		f.mu.Unlock()
	}
	if err != nil {
		f.log.Warn("fleet: check-ins refused (hosts retry)", "count", len(batch), "err", err)
	}
	for _, p := range batch {
		if err != nil {
			f.checkins["error"].Add(1)
			p.done <- fmt.Errorf("check-in of %s not stored: %w", p.obs.MAC, err)
		} else {
			f.checkins["ok"].Add(1)
			p.done <- nil
		}
	}
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
	conf := confSignature(f.opts.Dir, f.opts.TokenFile) + publishedSignature(f.opts.Images)
	d, err := f.load()
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

// Run reloads when a file in the directory (or the token file) changes,
// checking every PollInterval, until ctx ends. Reloading on a signal is
// the caller's: signals are the process's, not a library's (imaged serve
// calls Reload on SIGHUP).
func (f *Fleet) Run(ctx context.Context) error {
	if f.opts.PollInterval <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(f.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
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
	return confSignature(f.opts.Dir, f.opts.TokenFile) + publishedSignature(f.opts.Images) + imageSignature(imagePaths)
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
// MAC) or one group, or a Name that is resolved to either (see resolve).
type Target struct {
	Host  string `json:"host,omitempty"`
	Group string `json:"group,omitempty"`
	Name  string `json:"target,omitempty"`
	// All is every host of the fleet: the whole-fleet red button (revert
	// only; an assignment names a host or a group).
	All bool `json:"all,omitempty"`
}

// resolve turns a Name into a Host or a Group: a host (by hostname or
// MAC) or a group, whichever exists; a name that is both is ambiguous.
func (t Target) resolve(d *Desired) (Target, error) {
	if t.Name == "" {
		return t, nil
	}
	if t.Host != "" || t.Group != "" {
		return t, fmt.Errorf("name the target once: %q, or host/group", t.Name)
	}
	h, g := d.FindHost(t.Name), d.Groups[t.Name]
	switch {
	case h != nil && g != nil:
		return t, fmt.Errorf("%q is both a host and a group in %s: say which (imaged fleet: --host %s or --group %s)", t.Name, d.Dir, t.Name, t.Name)
	case h != nil:
		return Target{Host: t.Name}, nil
	case g != nil:
		return Target{Group: t.Name}, nil
	}
	return t, fmt.Errorf("unknown host or group %q (not in the hosts or groups of %s)", t.Name, d.Dir)
}

func (t Target) String() string {
	if t.All {
		return "the whole fleet"
	}
	if t.Host != "" {
		return "host " + t.Host
	}
	return "group " + t.Group
}

// hosts resolves t against the desired state.
func (t Target) hosts(d *Desired) ([]*Host, error) {
	switch {
	case t.All && (t.Host != "" || t.Group != "" || t.Name != ""):
		return nil, errors.New("the whole fleet, or a host or a group: not both")
	case t.All:
		return d.Hosts, nil
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
func (f *Fleet) Assign(who, remote string, t Target, image string) (Target, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.snap.Load().desired
	if t.All {
		return t, errors.New("assign names a host or a group (a rollout moves the whole fleet)")
	}
	t, err := t.resolve(d)
	if err != nil {
		return t, err
	}
	hosts, err := t.hosts(d)
	if err != nil {
		return t, err
	}
	if image != "" && d.Image(image) == nil {
		return t, fmt.Errorf("unknown image %q (declare it in %s first)", image, d.Dir)
	}
	ov := Override{Image: image, By: who, Time: f.now()}
	detail := "image " + image
	if image == "" {
		detail = "override cleared; the YAML assignment applies"
	}
	e := AuditEntry{Who: who, Remote: remote, Action: "assign", Target: t.String(), Detail: detail}
	kind, name := OverrideGroup, t.Group
	if t.Host != "" {
		kind, name = OverrideHost, hosts[0].MAC.String()
		e.Host, e.MAC = hosts[0].Hostname, name
	}
	err = f.update(func(tx Tx) error {
		if kind == OverrideGroup {
			for _, h := range hosts {
				if err := tx.DeleteOverride(OverrideHost, h.MAC.String()); err != nil {
					return err
				}
			}
		}
		var err error
		if image == "" {
			err = tx.DeleteOverride(kind, name)
		} else {
			err = tx.PutOverride(kind, name, ov)
		}
		if err != nil {
			return err
		}
		tx.Changed(ChangeOverride, kind+"/"+name)
		return f.auditTx(tx, e)
	})
	if err != nil {
		return t, err
	}
	f.rebuildLocked(nil)
	return t, nil
}

// update runs an admin action's writes and its audit entry in one
// transaction: both happen or neither.
func (f *Fleet) update(fn func(Tx) error) error {
	ctx, cancel := dbCtx()
	defer cancel()
	return f.store.Update(ctx, fn)
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
	t, err := t.resolve(s.desired)
	if err != nil {
		return nil, err
	}
	hosts, err := t.hosts(s.desired)
	if err != nil {
		return nil, err
	}
	now := f.now()
	var out []RevertResult
	err = f.update(func(tx Tx) error {
		out = out[:0]
		for _, h := range hosts {
			r, err := f.revertHostTx(tx, s, h, who, "", now)
			if err != nil {
				return err
			}
			detail := "revert " + r.ID
			if r.PinnedTo != "" {
				detail += ", assigned " + r.PinnedTo
			}
			if err := f.auditTx(tx, AuditEntry{Who: who, Remote: remote, Action: "revert", Target: h.Hostname + " " + r.MAC,
				Host: h.Hostname, MAC: r.MAC, Detail: detail}); err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
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
		err := f.update(func(tx Tx) error {
			if err := tx.DeleteRollout(r.Name); err != nil {
				return err
			}
			// Its progress goes with it (a rollout of the YAML keeps
			// its own: the API cannot delete it).
			if !slices.ContainsFunc(d.Rollouts, func(y *Rollout) bool { return y.Name == r.Name }) {
				if err := tx.DeleteRolloutProgress(r.Name); err != nil {
					return err
				}
				tx.Changed(ChangeRolloutProgress, r.Name)
			}
			tx.Changed(ChangeRollout, r.Name)
			return f.auditTx(tx, AuditEntry{Who: who, Remote: remote, Action: "rollout-delete", Target: "rollout " + r.Name})
		})
		if err != nil {
			return err
		}
		f.rebuildLocked(nil)
		return nil
	}
	if d.Image(r.Image) == nil {
		return fmt.Errorf("rollout %s: unknown image %q", r.Name, r.Image)
	}
	if r.Group != "" && d.Groups[r.Group] == nil {
		return fmt.Errorf("rollout %s: unknown group %q", r.Name, r.Group)
	}
	if err := d.checkRollout(&r); err != nil {
		return fmt.Errorf("rollout %s: %w", r.Name, err)
	}
	err := f.update(func(tx Tx) error {
		if err := tx.PutRollout(APIRollout{Rollout: r, By: who, Time: f.now()}); err != nil {
			return err
		}
		tx.Changed(ChangeRollout, r.Name)
		detail := fmt.Sprintf("image %s, group %q, %d%%, hosts %v", r.Image, r.Group, r.Percent, r.Hosts)
		if r.IsAuto() {
			b, _ := json.Marshal(r)
			detail = "rollout with waves: " + string(b)
		}
		return f.auditTx(tx, AuditEntry{Who: who, Remote: remote, Action: "rollout", Target: "rollout " + r.Name, Detail: detail})
	})
	if err != nil {
		return err
	}
	f.rebuildLocked(nil)
	return nil
}

// auditTx appends e in the transaction of the action it records.
func (f *Fleet) auditTx(tx Tx, e AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = f.now()
	}
	if err := tx.AppendAudit(e); err != nil {
		return err
	}
	f.log.Info("fleet: audit", "who", e.Who, "action", e.Action, "target", e.Target, "detail", e.Detail)
	return nil
}

// audit records an action that writes nothing else.
func (f *Fleet) audit(e AuditEntry) error {
	return f.update(func(tx Tx) error { return f.auditTx(tx, e) })
}

// Audit returns the last n audit entries, oldest first (n <= 0: all);
// none when the database is away.
func (f *Fleet) Audit(n int) []AuditEntry {
	es, err := f.QueryAudit(AuditQuery{Limit: n}, "")
	if err != nil {
		f.log.Warn("fleet: audit log", "err", err)
	}
	return es
}

// QueryAudit selects audit entries; host, if set, is a hostname or MAC
// and matches entries about that host under either name.
func (f *Fleet) QueryAudit(q AuditQuery, host string) ([]AuditEntry, error) {
	if host != "" {
		d := f.snap.Load().desired
		q.Hosts = []string{host}
		if h := d.FindHost(host); h != nil {
			q.Hosts = []string{h.Hostname, h.MAC.String()}
		} else if m, err := net.ParseMAC(host); err == nil {
			q.Hosts = []string{m.String()}
			if h := d.HostByMAC(m); h != nil {
				q.Hosts = append(q.Hosts, h.Hostname)
			}
		}
	}
	var out []AuditEntry
	ctx, cancel := dbCtx()
	defer cancel()
	err := f.store.View(ctx, func(tx Tx) error {
		var err error
		out, err = tx.QueryAudit(q)
		return err
	})
	return out, err
}

// observed returns the last check-in of every MAC.
func (f *Fleet) observed() (map[string]*Observed, error) {
	var list []*Observed
	ctx, cancel := dbCtx()
	defer cancel()
	err := f.store.View(ctx, func(tx Tx) error {
		var err error
		list, err = tx.ListObserved()
		return err
	})
	out := make(map[string]*Observed, len(list))
	for _, o := range list {
		out[o.MAC] = o
	}
	return out, err
}

// observedOf returns the last check-in of one MAC (nil: none).
func (f *Fleet) observedOf(mac string) (*Observed, error) {
	var o *Observed
	ctx, cancel := dbCtx()
	defer cancel()
	err := f.store.View(ctx, func(tx Tx) error {
		var err error
		o, err = tx.GetObserved(mac)
		return err
	})
	return o, err
}

// KnownHosts is an ssh_known_hosts file from the host keys the hosts
// reported: "hostname,ip key" per key, sorted by hostname.
func (f *Fleet) KnownHosts() (string, error) {
	d := f.snap.Load().desired
	obs, err := f.observed()
	if err != nil {
		return "", err
	}
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
	return b.String(), nil
}

func short(digest string) string {
	s := strings.TrimPrefix(digest, "sha256:")
	if len(s) > 12 {
		s = s[:12]
	}
	return s
}
