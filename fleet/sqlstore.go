package fleet

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

// sqlCore is what both backends share: the SQL (one dialect subset that
// SQLite and PostgreSQL both speak: $N placeholders, INSERT … ON CONFLICT,
// window functions), transactions and local subscribers. Values are
// stored as the JSON the API speaks, beside the columns queries need;
// times as Unix nanoseconds (exact, and sortable in either database).
type sqlCore struct {
	backend, where string
	log            *slog.Logger
	origin         string
	w, r           *sql.DB // writes and reads; the same pool for PostgreSQL
	// notify, if set, is called inside each write transaction that has
	// changes, before its commit (PostgreSQL: pg_notify).
	notify func(ctx context.Context, tx *sql.Tx, changes []Change) error

	subMu sync.Mutex
	subs  map[int]func(Change)
	subN  int
	subQ  chan Change // delivers in order, off the committing goroutine
	done  chan struct{}
	wg    sync.WaitGroup

	obs observedCache
}

func newCore(backend, where string, log *slog.Logger) *sqlCore {
	var b [8]byte
	rand.Read(b[:])
	c := &sqlCore{backend: backend, where: where, log: log, origin: hex.EncodeToString(b[:]),
		subs: map[int]func(Change){}, subQ: make(chan Change, 4096), done: make(chan struct{})}
	c.wg.Add(1)
	go c.deliver()
	return c
}

func (c *sqlCore) Backend() string { return c.backend }
func (c *sqlCore) Where() string   { return c.where }

func (c *sqlCore) Ping(ctx context.Context) error {
	return dbErr("ping "+c.where, c.r.PingContext(ctx))
}

func (c *sqlCore) Subscribe(fn func(Change)) func() {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	c.subN++
	id := c.subN
	c.subs[id] = fn
	return func() {
		c.subMu.Lock()
		delete(c.subs, id)
		c.subMu.Unlock()
	}
}

// publish queues a change for the subscribers; a full queue (a stuck
// subscriber) degrades to one ChangeAll rather than blocking commits.
func (c *sqlCore) publish(ch Change) {
	select {
	case c.subQ <- ch:
	default:
		c.log.Warn("fleet database: change queue full; subscribers will reread everything")
		select {
		case c.subQ <- Change{Kind: ChangeAll, Origin: ch.Origin}:
		default:
		}
	}
}

func (c *sqlCore) deliver() {
	defer c.wg.Done()
	for {
		select {
		case ch := <-c.subQ:
			c.subMu.Lock()
			fns := make([]func(Change), 0, len(c.subs))
			for _, fn := range c.subs {
				fns = append(fns, fn)
			}
			c.subMu.Unlock()
			for _, fn := range fns {
				fn(ch)
			}
		case <-c.done:
			return
		}
	}
}

func (c *sqlCore) closeCore() {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	c.wg.Wait()
}

func (c *sqlCore) Update(ctx context.Context, fn func(Tx) error) error {
	return c.run(ctx, c.w, false, fn)
}

func (c *sqlCore) View(ctx context.Context, fn func(Tx) error) error {
	return c.run(ctx, c.r, true, fn)
}

func (c *sqlCore) run(ctx context.Context, db *sql.DB, readOnly bool, fn func(Tx) error) error {
	stx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return dbErr("begin a transaction on "+c.where, err)
	}
	tx := &sqlTx{ctx: ctx, tx: stx, readOnly: readOnly, obs: &c.obs}
	if err := fn(tx); err != nil {
		stx.Rollback()
		return err
	}
	if readOnly {
		stx.Rollback()
		return nil
	}
	for i := range tx.changes {
		tx.changes[i].Origin = c.origin
	}
	if len(tx.changes) > 0 && c.notify != nil {
		if err := c.notify(ctx, stx, tx.changes); err != nil {
			stx.Rollback()
			return dbErr("announce changes", err)
		}
	}
	if err := stx.Commit(); err != nil {
		return dbErr("commit to "+c.where, err)
	}
	for _, ch := range tx.changes {
		ch.Local = true
		c.publish(ch)
	}
	return nil
}

// sqlTx implements Tx over database/sql.
type sqlTx struct {
	ctx      context.Context
	tx       *sql.Tx
	readOnly bool
	changes  []Change
	obs      *observedCache
}

func (t *sqlTx) exec(op, q string, args ...any) (sql.Result, error) {
	if t.readOnly {
		return nil, fmt.Errorf("fleet database: %s in a read-only transaction", op)
	}
	r, err := t.tx.ExecContext(t.ctx, q, args...)
	return r, dbErr(op, err)
}

// rows runs q and calls scan for each row.
func (t *sqlTx) rows(op, q string, scan func(*sql.Rows) error, args ...any) error {
	rs, err := t.tx.QueryContext(t.ctx, q, args...)
	if err != nil {
		return dbErr(op, err)
	}
	defer rs.Close()
	for rs.Next() {
		if err := scan(rs); err != nil {
			return dbErr(op, err)
		}
	}
	return dbErr(op, rs.Err())
}

func (t *sqlTx) Changed(kind string, keys ...string) {
	for i := range t.changes {
		if t.changes[i].Kind == kind {
			for _, k := range keys {
				if !slices.Contains(t.changes[i].Keys, k) {
					t.changes[i].Keys = append(t.changes[i].Keys, k)
				}
			}
			return
		}
	}
	t.changes = append(t.changes, Change{Kind: kind, Keys: append([]string(nil), keys...)})
}

func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func mustJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

func (t *sqlTx) PutObserved(o *Observed) error {
	body, err := mustJSON(o)
	if err != nil {
		return fmt.Errorf("fleet database: encode the check-in of %s: %w", o.MAC, err)
	}
	_, err = t.exec("store the check-in of "+o.MAC,
		`INSERT INTO observed (mac, time_ns, body) VALUES ($1, $2, $3)
		 ON CONFLICT (mac) DO UPDATE SET time_ns = excluded.time_ns, body = excluded.body`,
		o.MAC, ns(o.Time), body)
	return err
}

func (t *sqlTx) GetObserved(mac string) (*Observed, error) {
	var out *Observed
	err := t.rows("read the check-in of "+mac, `SELECT body FROM observed WHERE mac = $1`, func(rs *sql.Rows) error {
		var body string
		if err := rs.Scan(&body); err != nil {
			return err
		}
		out = new(Observed)
		return json.Unmarshal([]byte(body), out)
	}, mac)
	return out, err
}

// ListObserved decodes only the check-ins that changed since the last
// list (observedCache): the status, the dashboard and the rollouts list
// every check-in, and decoding 10,000 JSON bodies was most of a page.
func (t *sqlTx) ListObserved() ([]*Observed, error) {
	var out []*Observed
	next := make(map[string]observedEntry)
	err := t.rows("read the check-ins", `SELECT mac, body FROM observed ORDER BY mac`, func(rs *sql.Rows) error {
		var mac string
		var body []byte
		if err := rs.Scan(&mac, &body); err != nil {
			return err
		}
		o, e, err := t.obs.decode(mac, body)
		if err != nil {
			return fmt.Errorf("check-in of %s: %w", mac, err)
		}
		next[mac] = e
		out = append(out, o)
		return nil
	})
	if err == nil {
		t.obs.replace(next)
	}
	return out, err
}

// observedCache keeps the decoded check-ins by MAC with a seeded hash of
// the stored body: a row whose body hashes the same is not decoded again.
// The seed is random per process, so a host cannot make its body collide
// with another's. Callers get a shallow copy: they only read check-ins.
type observedCache struct {
	mu     sync.Mutex
	seeded bool
	seed   maphash.Seed
	m      map[string]observedEntry
}

type observedEntry struct {
	sum uint64
	o   *Observed
}

func (c *observedCache) decode(mac string, body []byte) (*Observed, observedEntry, error) {
	c.mu.Lock()
	if !c.seeded {
		c.seed, c.seeded = maphash.MakeSeed(), true
	}
	seed := c.seed
	e, ok := c.m[mac]
	c.mu.Unlock()
	sum := maphash.Bytes(seed, body)
	if !ok || e.sum != sum {
		o := new(Observed)
		if err := json.Unmarshal(body, o); err != nil {
			return nil, observedEntry{}, err
		}
		e = observedEntry{sum: sum, o: o}
	}
	cp := *e.o
	return &cp, e, nil
}

// replace keeps what one whole list saw, so deleted rows leave the cache.
func (c *observedCache) replace(m map[string]observedEntry) {
	c.mu.Lock()
	c.m = m
	c.mu.Unlock()
}

func (t *sqlTx) PutBoot(b *Boot) error {
	body, err := mustJSON(b)
	if err != nil {
		return fmt.Errorf("fleet database: encode a boot of %s: %w", b.MAC, err)
	}
	done := 0
	if b.Done() {
		done = 1
	}
	_, err = t.exec("store a boot of "+b.MAC,
		`INSERT INTO boots (mac, start_ns, checked_in, body) VALUES ($1, $2, $3, $4)
		 ON CONFLICT (mac, start_ns) DO UPDATE SET checked_in = excluded.checked_in, body = excluded.body`,
		b.MAC, ns(b.Start), done, body)
	return err
}

func (t *sqlTx) ListBoots(mac string, n int) ([]Boot, error) {
	if n <= 0 {
		n = 1 << 30
	}
	var out []Boot
	err := t.rows("read the boots of "+mac, `SELECT body FROM boots WHERE mac = $1 ORDER BY start_ns DESC LIMIT $2`, func(rs *sql.Rows) error {
		var body []byte
		var b Boot
		if err := rs.Scan(&body); err != nil {
			return err
		}
		if err := json.Unmarshal(body, &b); err != nil {
			return err
		}
		out = append(out, b)
		return nil
	}, mac, n)
	slices.Reverse(out)
	return out, err
}

func (t *sqlTx) PruneBoots(keep int) (int64, error) {
	r, err := t.exec("prune the boot ledger",
		`DELETE FROM boots WHERE (mac, start_ns) IN (
		   SELECT mac, start_ns FROM (
		     SELECT mac, start_ns, row_number() OVER (PARTITION BY mac ORDER BY start_ns DESC) AS rn FROM boots
		   ) ranked WHERE rn > $1)`, keep)
	if err != nil {
		return 0, err
	}
	n, _ := r.RowsAffected()
	return n, nil
}

func (t *sqlTx) PutOverride(kind, name string, ov Override) error {
	body, err := mustJSON(ov)
	if err != nil {
		return err
	}
	_, err = t.exec("store the override of "+kind+" "+name,
		`INSERT INTO overrides (kind, name, body) VALUES ($1, $2, $3)
		 ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body`, kind, name, body)
	return err
}

func (t *sqlTx) DeleteOverride(kind, name string) error {
	_, err := t.exec("delete the override of "+kind+" "+name, `DELETE FROM overrides WHERE kind = $1 AND name = $2`, kind, name)
	return err
}

func (t *sqlTx) ListOverrides(kind string) (map[string]Override, error) {
	out := map[string]Override{}
	err := t.rows("read the overrides", `SELECT name, body FROM overrides WHERE kind = $1`, func(rs *sql.Rows) error {
		var name, body string
		var ov Override
		if err := rs.Scan(&name, &body); err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(body), &ov); err != nil {
			return err
		}
		out[name] = ov
		return nil
	}, kind)
	return out, err
}

func (t *sqlTx) PutRevert(mac string, pr PendingRevert) error {
	body, err := mustJSON(pr)
	if err != nil {
		return err
	}
	_, err = t.exec("store the pending revert of "+mac,
		`INSERT INTO reverts (mac, id, body) VALUES ($1, $2, $3)
		 ON CONFLICT (mac) DO UPDATE SET id = excluded.id, body = excluded.body`, mac, pr.ID, body)
	return err
}

func (t *sqlTx) DeleteRevert(mac, id string) (bool, error) {
	var r sql.Result
	var err error
	if id == "" {
		r, err = t.exec("clear the pending revert of "+mac, `DELETE FROM reverts WHERE mac = $1`, mac)
	} else {
		r, err = t.exec("clear the pending revert of "+mac, `DELETE FROM reverts WHERE mac = $1 AND id = $2`, mac, id)
	}
	if err != nil {
		return false, err
	}
	n, _ := r.RowsAffected()
	return n > 0, nil
}

func (t *sqlTx) ListReverts() (map[string]PendingRevert, error) {
	out := map[string]PendingRevert{}
	err := t.rows("read the pending reverts", `SELECT mac, body FROM reverts`, func(rs *sql.Rows) error {
		var mac, body string
		var pr PendingRevert
		if err := rs.Scan(&mac, &body); err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(body), &pr); err != nil {
			return err
		}
		out[mac] = pr
		return nil
	})
	return out, err
}

func (t *sqlTx) PutRollout(r APIRollout) error {
	body, err := mustJSON(r)
	if err != nil {
		return err
	}
	_, err = t.exec("store rollout "+r.Name,
		`INSERT INTO rollouts (name, body) VALUES ($1, $2)
		 ON CONFLICT (name) DO UPDATE SET body = excluded.body`, r.Name, body)
	return err
}

func (t *sqlTx) DeleteRollout(name string) error {
	_, err := t.exec("delete rollout "+name, `DELETE FROM rollouts WHERE name = $1`, name)
	return err
}

func (t *sqlTx) ListRollouts() ([]APIRollout, error) {
	var out []APIRollout
	err := t.rows("read the rollouts", `SELECT body FROM rollouts ORDER BY name`, func(rs *sql.Rows) error {
		var body string
		var r APIRollout
		if err := rs.Scan(&body); err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

func (t *sqlTx) PutRolloutProgress(p RolloutProgress) (int64, error) {
	data := string(p.Data)
	if data == "" {
		data = "null"
	}
	op := "store the progress of rollout " + p.Name
	if p.Version == 0 {
		r, err := t.exec(op, `INSERT INTO rollout_progress (name, state, wave, data, updated_ns, version)
			VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (name) DO NOTHING`, p.Name, p.State, p.Wave, data, ns(p.Updated))
		if err != nil {
			return 0, err
		}
		if n, _ := r.RowsAffected(); n == 0 {
			return 0, fmt.Errorf("rollout %s: %w", p.Name, ErrConflict)
		}
		return 1, nil
	}
	r, err := t.exec(op, `UPDATE rollout_progress SET state = $2, wave = $3, data = $4, updated_ns = $5, version = version + 1
		WHERE name = $1 AND version = $6`, p.Name, p.State, p.Wave, data, ns(p.Updated), p.Version)
	if err != nil {
		return 0, err
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return 0, fmt.Errorf("rollout %s (version %d): %w", p.Name, p.Version, ErrConflict)
	}
	return p.Version + 1, nil
}

func scanProgress(rs *sql.Rows) (RolloutProgress, error) {
	var p RolloutProgress
	var data string
	var upd int64
	if err := rs.Scan(&p.Name, &p.State, &p.Wave, &data, &upd, &p.Version); err != nil {
		return p, err
	}
	if data != "null" {
		p.Data = json.RawMessage(data)
	}
	p.Updated = fromNS(upd)
	return p, nil
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func (t *sqlTx) GetRolloutProgress(name string) (*RolloutProgress, error) {
	var out *RolloutProgress
	err := t.rows("read the progress of rollout "+name,
		`SELECT name, state, wave, data, updated_ns, version FROM rollout_progress WHERE name = $1`, func(rs *sql.Rows) error {
			p, err := scanProgress(rs)
			out = &p
			return err
		}, name)
	return out, err
}

func (t *sqlTx) ListRolloutProgress() ([]RolloutProgress, error) {
	var out []RolloutProgress
	err := t.rows("read the rollouts' progress",
		`SELECT name, state, wave, data, updated_ns, version FROM rollout_progress ORDER BY name`, func(rs *sql.Rows) error {
			p, err := scanProgress(rs)
			out = append(out, p)
			return err
		})
	return out, err
}

func (t *sqlTx) DeleteRolloutProgress(name string) error {
	if _, err := t.exec("delete the progress of rollout "+name, `DELETE FROM rollout_hosts WHERE rollout = $1`, name); err != nil {
		return err
	}
	_, err := t.exec("delete the progress of rollout "+name, `DELETE FROM rollout_progress WHERE name = $1`, name)
	return err
}

func (t *sqlTx) PutRolloutHost(h RolloutHost) error {
	_, err := t.exec("store the progress of "+h.MAC+" in rollout "+h.Rollout,
		`INSERT INTO rollout_hosts (rollout, mac, wave, state, reason, updated_ns, moved_ns, from_digest) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		 ON CONFLICT (rollout, mac) DO UPDATE SET wave = excluded.wave, state = excluded.state,
		   reason = excluded.reason, updated_ns = excluded.updated_ns, moved_ns = excluded.moved_ns, from_digest = excluded.from_digest`,
		h.Rollout, h.MAC, h.Wave, h.State, h.Reason, ns(h.Updated), ns(h.Moved), h.From)
	return err
}

func (t *sqlTx) ListRolloutHosts(rollout string) ([]RolloutHost, error) {
	var out []RolloutHost
	err := t.rows("read the hosts of rollout "+rollout,
		`SELECT rollout, mac, wave, state, reason, updated_ns, moved_ns, from_digest FROM rollout_hosts WHERE rollout = $1 ORDER BY wave, mac`,
		func(rs *sql.Rows) error {
			var h RolloutHost
			var upd, moved int64
			if err := rs.Scan(&h.Rollout, &h.MAC, &h.Wave, &h.State, &h.Reason, &upd, &moved, &h.From); err != nil {
				return err
			}
			h.Updated, h.Moved = fromNS(upd), fromNS(moved)
			out = append(out, h)
			return nil
		}, rollout)
	return out, err
}

func (t *sqlTx) PutFacts(mac string, at time.Time, f *checkin.Facts) error {
	body, err := mustJSON(f)
	if err != nil {
		return fmt.Errorf("fleet database: encode the facts of %s: %w", mac, err)
	}
	_, err = t.exec("store the facts of "+mac,
		`INSERT INTO host_facts (mac, time_ns, body) VALUES ($1, $2, $3)
		 ON CONFLICT (mac) DO UPDATE SET time_ns = excluded.time_ns, body = excluded.body`, mac, ns(at), body)
	return err
}

func (t *sqlTx) ListFacts() (map[string]HostFacts, error) {
	out := map[string]HostFacts{}
	err := t.rows("read the hosts' facts", `SELECT mac, time_ns, body FROM host_facts`, func(rs *sql.Rows) error {
		var mac string
		var tn int64
		var body []byte
		if err := rs.Scan(&mac, &tn, &body); err != nil {
			return err
		}
		hf := HostFacts{Time: fromNS(tn)}
		if err := json.Unmarshal(body, &hf.Facts); err != nil {
			return err
		}
		out[mac] = hf
		return nil
	})
	return out, err
}

func (t *sqlTx) GetFacts(mac string) (*HostFacts, error) {
	var out *HostFacts
	err := t.rows("read the facts of "+mac, `SELECT time_ns, body FROM host_facts WHERE mac = $1`, func(rs *sql.Rows) error {
		var tn int64
		var body []byte
		if err := rs.Scan(&tn, &body); err != nil {
			return err
		}
		out = &HostFacts{Time: fromNS(tn)}
		return json.Unmarshal(body, &out.Facts)
	}, mac)
	return out, err
}

func (t *sqlTx) AppendAudit(e AuditEntry) error {
	_, err := t.exec("append to the audit log",
		`INSERT INTO audit (time_ns, who, action, target, host, mac, detail, remote) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		ns(e.Time), e.Who, e.Action, e.Target, e.Host, e.MAC, e.Detail, e.Remote)
	if err == nil {
		t.Changed(ChangeAudit, e.Action)
	}
	return err
}

func (t *sqlTx) QueryAudit(q AuditQuery) ([]AuditEntry, error) {
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if !q.Since.IsZero() {
		where = append(where, "time_ns >= "+arg(q.Since.UnixNano()))
	}
	if !q.Until.IsZero() {
		where = append(where, "time_ns < "+arg(q.Until.UnixNano()))
	}
	if q.Who != "" {
		where = append(where, "who = "+arg(q.Who))
	}
	if q.Action != "" {
		where = append(where, "action = "+arg(q.Action))
	}
	if len(q.Hosts) > 0 {
		var in []string
		for _, h := range q.Hosts {
			in = append(in, arg(h))
		}
		list := strings.Join(in, ", ")
		where = append(where, "(host IN ("+list+") OR mac IN ("+list+"))")
	}
	query := `SELECT time_ns, who, action, target, host, mac, detail, remote FROM audit`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY time_ns DESC, id DESC"
	if q.Limit > 0 {
		query += " LIMIT " + arg(q.Limit)
	}
	var out []AuditEntry
	err := t.rows("query the audit log", query, func(rs *sql.Rows) error {
		var e AuditEntry
		var tn int64
		if err := rs.Scan(&tn, &e.Who, &e.Action, &e.Target, &e.Host, &e.MAC, &e.Detail, &e.Remote); err != nil {
			return err
		}
		e.Time = time.Unix(0, tn)
		out = append(out, e)
		return nil
	}, args...)
	slices.Reverse(out)
	return out, err
}

func (t *sqlTx) PruneAudit(before time.Time) (int64, error) {
	r, err := t.exec("prune the audit log", `DELETE FROM audit WHERE time_ns < $1`, before.UnixNano())
	if err != nil {
		return 0, err
	}
	n, _ := r.RowsAffected()
	return n, nil
}

func (t *sqlTx) getMeta(key string) (string, bool, error) {
	var v string
	found := false
	err := t.rows("read "+key, `SELECT value FROM meta WHERE key = $1`, func(rs *sql.Rows) error {
		found = true
		return rs.Scan(&v)
	}, key)
	return v, found, err
}

func (t *sqlTx) setMeta(key, value string) error {
	_, err := t.exec("store "+key, `INSERT INTO meta (key, value) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
	return err
}

// core gives tests the database handles beneath either backend.
func (c *sqlCore) core() *sqlCore { return c }
