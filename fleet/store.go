package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/pxe"
)

// Store is the fleet's observed state in a database: every host's last
// check-in, the boot ledger, the API's overrides, rollouts and pending
// reverts, rollouts' progress and the audit log. Two implementations sit
// behind it, chosen by the URL given to OpenStore: SQLite in one file (one
// server) and PostgreSQL (any number of servers sharing one fleet).
//
// The desired state stays in the operator's YAML files; what the boot
// server answers per packet is precomputed from both in memory (snapshot),
// so no DHCP, TFTP or iPXE answer waits on the database.
type Store interface {
	// Update runs fn in one read-write transaction and commits it when fn
	// returns nil. Changes fn announces with Tx.Changed reach every
	// subscriber, in this process and (PostgreSQL) in every other server
	// sharing the database, once the transaction committed.
	Update(ctx context.Context, fn func(Tx) error) error
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	// Subscribe calls fn for every change committed from now on, from one
	// goroutine, in commit order per origin. A Change of kind ChangeAll
	// says notifications may have been missed (a lost connection): reread
	// everything.
	Subscribe(fn func(Change)) (cancel func())
	// TryLock takes the named leader lock for work that must run on one
	// server at a time (retention clean-up, rollout steps). It returns nil
	// and no error when another process holds it. The lock is released by
	// Lock.Release or when this process dies.
	TryLock(ctx context.Context, name string) (Lock, error)
	// Backend is "sqlite" or "postgres"; Where names the file or server
	// (no password) for logs and status.
	Backend() string
	Where() string
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	Close() error
}

// Lock is a held leader lock.
type Lock interface {
	// Lost is closed when the lock can no longer be trusted (the
	// connection that holds it broke): stop the work it guards.
	Lost() <-chan struct{}
	Release()
}

// Change kinds, announced by Tx.Changed.
const (
	ChangeAll             = "all"              // reread everything
	ChangeCheckin         = "checkin"          // keys: MACs
	ChangeOverride        = "override"         // keys: "host/MAC", "group/NAME"
	ChangeRevert          = "revert"           // keys: MACs
	ChangeRollout         = "rollout"          // keys: rollout names
	ChangeRolloutProgress = "rollout-progress" // keys: rollout names
	ChangeFacts           = "facts"            // keys: MACs
	ChangeAudit           = "audit"            // keys: actions
)

// Change is one committed change.
type Change struct {
	Kind string   `json:"k"`
	Keys []string `json:"keys,omitempty"` // empty: many or unknown
	// Origin identifies the Store instance (one per imaged process) that
	// committed it; Local says it is this one.
	Origin string `json:"o"`
	Local  bool   `json:"-"`
}

// Tx is one transaction. Getters return nil (and no error) for what is
// absent. Times are kept to the nanosecond.
type Tx interface {
	PutObserved(o *Observed) error
	GetObserved(mac string) (*Observed, error)
	ListObserved() ([]*Observed, error)

	// PutBoot inserts or replaces the boot record (MAC, start).
	PutBoot(b *Boot) error
	// ListBoots returns the last n boots of mac, oldest first (n <= 0: all).
	ListBoots(mac string, n int) ([]Boot, error)
	// PruneBoots keeps the last keep boots of every MAC.
	PruneBoots(keep int) (int64, error)

	PutOverride(kind, name string, ov Override) error // kind: OverrideHost (name: MAC) or OverrideGroup
	DeleteOverride(kind, name string) error
	ListOverrides(kind string) (map[string]Override, error)

	PutRevert(mac string, pr PendingRevert) error
	// DeleteRevert removes the pending revert of mac if its ID is id ("":
	// any) and reports whether one was removed.
	DeleteRevert(mac, id string) (bool, error)
	ListReverts() (map[string]PendingRevert, error)

	PutRollout(r APIRollout) error
	DeleteRollout(name string) error
	ListRollouts() ([]APIRollout, error)

	// PutRolloutProgress stores p if the stored version is still
	// p.Version (0: none stored yet) and returns the new version; another
	// writer in between gives ErrConflict. Rollouts' state machines (one
	// leader at a time) keep their state here, so it survives restarts.
	PutRolloutProgress(p RolloutProgress) (int64, error)
	GetRolloutProgress(name string) (*RolloutProgress, error)
	ListRolloutProgress() ([]RolloutProgress, error)
	DeleteRolloutProgress(name string) error
	PutRolloutHost(h RolloutHost) error
	ListRolloutHosts(rollout string) ([]RolloutHost, error)

	// PutFacts stores the facts a host's agent reported (inventory).
	PutFacts(mac string, at time.Time, f *checkin.Facts) error
	// ListFacts returns the facts of every host that reported some.
	ListFacts() (map[string]HostFacts, error)
	GetFacts(mac string) (*HostFacts, error)

	AppendAudit(e AuditEntry) error
	QueryAudit(q AuditQuery) ([]AuditEntry, error)
	// PruneAudit removes entries older than before.
	PruneAudit(before time.Time) (int64, error)

	// Changed announces a change to subscribers after the commit.
	Changed(kind string, keys ...string)

	getMeta(key string) (string, bool, error)
	setMeta(key, value string) error
}

// HostFacts are a host's facts and when they were reported.
type HostFacts struct {
	Time time.Time `json:"time"`
	checkin.Facts
}

// Override kinds.
const (
	OverrideHost  = "host"
	OverrideGroup = "group"
)

// RolloutProgress is a rollout's own state as its state machine keeps it.
// The store reads State and Wave (for queries) and keeps Data as it is.
type RolloutProgress struct {
	Name    string          `json:"name"`
	State   string          `json:"state"` // e.g. running, paused, halted, done
	Wave    int             `json:"wave"`
	Data    json.RawMessage `json:"data,omitempty"`
	Updated time.Time       `json:"updated"`
	Version int64           `json:"version"` // set by the store
}

// RolloutHost is one host's progress in one rollout.
type RolloutHost struct {
	Rollout string    `json:"rollout"`
	MAC     string    `json:"mac"`
	Wave    int       `json:"wave"`
	State   string    `json:"state"` // pending, staging, rebooting, trial, confirmed, failed, reverted, skipped
	Reason  string    `json:"reason,omitempty"`
	Updated time.Time `json:"updated"`
	Moved   time.Time `json:"moved,omitzero"` // when the rollout assigned it the image
	From    string    `json:"from,omitempty"` // the digest it ran then
}

// AuditQuery selects audit entries; zero fields match everything.
type AuditQuery struct {
	Since, Until time.Time // Since <= time < Until
	Who          string
	Action       string
	Hosts        []string // entries about any of these hostnames or MACs
	Limit        int      // the newest Limit entries (<= 0: all), returned oldest first
}

// ErrDatabase marks a failure of the database itself (down, unreachable,
// refusing): the API answers 503 and hosts retry their check-ins. It is a
// pxe.ErrRetryLater, so the boot server's /checkin answers 503 too.
var ErrDatabase = fmt.Errorf("fleet database unavailable (%w)", pxe.ErrRetryLater)

// ErrConflict is returned by PutRolloutProgress when another writer
// stored a newer version.
var ErrConflict = errors.New("fleet database: changed by another writer")

// dbError wraps a driver error with what was being done.
type dbError struct {
	op  string
	err error
}

func (e *dbError) Error() string   { return "fleet database: " + e.op + ": " + e.err.Error() }
func (e *dbError) Unwrap() []error { return []error{ErrDatabase, e.err} }

func dbErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var de *dbError
	if errors.As(err, &de) || errors.Is(err, ErrConflict) {
		return err
	}
	return &dbError{op: op, err: err}
}

// DefaultDB is where the fleet's database lives when no --db is given.
const DefaultDB = "sqlite:///var/lib/hnboot/fleet.db"

// OpenStore opens (creating it if needed) and migrates the database named
// by dbURL:
//
//	sqlite:///var/lib/hnboot/fleet.db     one file (sqlite:relative/path too)
//	postgres://user@host:5432/db          PostgreSQL (postgresql:// too); a
//	postgres:///db?host=/run/postgresql   Unix socket directory as host
func OpenStore(ctx context.Context, dbURL string, log *slog.Logger) (Store, error) {
	if log == nil {
		log = slog.Default()
	}
	scheme, rest, ok := strings.Cut(dbURL, ":")
	if !ok {
		return nil, fmt.Errorf("fleet database %q: want sqlite:///PATH or postgres://…", dbURL)
	}
	switch scheme {
	case "sqlite":
		return openSQLite(ctx, sqlitePath(rest), log)
	case "postgres", "postgresql":
		return openPostgres(ctx, dbURL, log)
	}
	return nil, fmt.Errorf("fleet database %q: unknown scheme %q (want sqlite or postgres)", redact(dbURL), scheme)
}

// SQLitePath is the file of a sqlite: URL, "" for other URLs.
func SQLitePath(dbURL string) string {
	if rest, ok := strings.CutPrefix(dbURL, "sqlite:"); ok {
		return sqlitePath(rest)
	}
	return ""
}

func sqlitePath(rest string) string {
	if p, ok := strings.CutPrefix(rest, "//"); ok {
		return p // sqlite:///abs → /abs; sqlite://rel → rel
	}
	return rest
}

// redact hides a password in a database URL.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
