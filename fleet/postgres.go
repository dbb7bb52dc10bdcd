package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// pgChannel is the LISTEN/NOTIFY channel the servers of one fleet share.
const pgChannel = "hnboot_fleet"

// pgStore is the scale-out backend: any number of imaged serve share one
// PostgreSQL database. Each write transaction with changes sends
// pg_notify(hnboot_fleet, change) before its commit, so PostgreSQL
// delivers the notification to every listening server exactly when (and
// only if) the change is visible; each server keeps one connection in
// LISTEN and reconnects when it breaks, telling its subscribers to reread
// everything (they may have missed changes meanwhile). Leader locks are
// session advisory locks, each on a connection of its own: when a server
// dies its connections close and PostgreSQL releases its locks, so
// another server's next TryLock gets them.
type pgStore struct {
	*sqlCore
	cfg    *pgx.ConnConfig
	ctx    context.Context
	cancel context.CancelFunc
}

// lockKey maps a lock name to the 64-bit key of pg_advisory_lock.
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("hnboot/" + name))
	return int64(h.Sum64())
}

func openPostgres(ctx context.Context, dsn string, log *slog.Logger) (Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("fleet database %s: %w", redact(dsn), err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	host := cfg.Host
	if !strings.HasPrefix(host, "/") {
		host = fmt.Sprintf("%s:%d", host, cfg.Port)
	}
	where := fmt.Sprintf("postgres %s@%s/%s", cfg.User, host, cfg.Database)
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &pgStore{sqlCore: newCore("postgres", where, log), cfg: cfg}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.w, s.r = db, db
	if err := db.PingContext(ctx); err != nil {
		s.Close()
		return nil, dbErr("connect to "+where, err)
	}
	from, to, err := migrate(ctx, db, "postgres", where, fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", lockKey("migrate")))
	if err != nil {
		s.Close()
		return nil, err
	}
	if from != to {
		log.Info("fleet database: schema migrated", "database", where, "from", from, "to", to)
	}
	s.notify = func(ctx context.Context, tx *sql.Tx, changes []Change) error {
		for _, ch := range changes {
			// A NOTIFY payload holds < 8000 bytes: a long key list
			// becomes "many" (no keys), which subscribers treat as such.
			b, _ := json.Marshal(ch)
			if len(b) > 7000 {
				b, _ = json.Marshal(Change{Kind: ch.Kind, Origin: ch.Origin})
			}
			if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, $2)`, pgChannel, string(b)); err != nil {
				return err
			}
		}
		return nil
	}
	ready := make(chan error, 1)
	s.wg.Add(1)
	go s.listen(ready)
	select {
	case err := <-ready:
		if err != nil {
			s.Close()
			return nil, dbErr("LISTEN on "+where, err)
		}
	case <-ctx.Done():
		s.Close()
		return nil, dbErr("LISTEN on "+where, ctx.Err())
	}
	return s, nil
}

func (s *pgStore) Close() error {
	s.cancel()
	s.closeCore()
	return s.w.Close()
}

// listen keeps one connection in LISTEN and publishes what other servers
// commit. ready gets the first connection's outcome.
func (s *pgStore) listen(ready chan<- error) {
	defer s.wg.Done()
	first := true
	backoff := 100 * time.Millisecond
	for {
		conn, err := pgx.ConnectConfig(s.ctx, s.cfg)
		if err == nil {
			if _, err = conn.Exec(s.ctx, "LISTEN "+pgChannel); err != nil {
				conn.Close(context.Background())
			}
		}
		if first {
			ready <- err
			if err != nil {
				return
			}
			first = false
		} else if err == nil {
			s.log.Info("fleet database: listening for changes again", "database", s.where)
			s.publish(Change{Kind: ChangeAll})
		}
		if err == nil {
			backoff = 100 * time.Millisecond
			err = s.wait(conn)
			conn.Close(context.Background())
		}
		if s.ctx.Err() != nil {
			return
		}
		s.log.Warn("fleet database: change notifications interrupted; reconnecting", "database", s.where, "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-s.ctx.Done():
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// wait delivers notifications until the connection fails. A connection
// quiet for 10 s is pinged, so a dead server is noticed without relying on
// TCP keep-alives.
func (s *pgStore) wait(conn *pgx.Conn) error {
	for {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		if err != nil {
			if s.ctx.Err() != nil {
				return s.ctx.Err()
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			pctx, pcancel := context.WithTimeout(s.ctx, 5*time.Second)
			err = conn.Ping(pctx)
			pcancel()
			if err != nil {
				return err
			}
			continue
		}
		var ch Change
		if err := json.Unmarshal([]byte(n.Payload), &ch); err != nil {
			s.log.Warn("fleet database: unreadable change notification", "payload", n.Payload, "err", err)
			ch = Change{Kind: ChangeAll}
		}
		if ch.Origin == s.origin {
			continue // published locally at commit
		}
		s.publish(ch)
	}
}

func (s *pgStore) TryLock(ctx context.Context, name string) (Lock, error) {
	conn, err := pgx.ConnectConfig(ctx, s.cfg)
	if err != nil {
		return nil, dbErr("connect for leader lock "+name, err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, lockKey(name)).Scan(&ok); err != nil {
		conn.Close(context.Background())
		return nil, dbErr("take leader lock "+name, err)
	}
	if !ok {
		conn.Close(context.Background())
		return nil, nil
	}
	l := &pgLock{conn: conn, key: lockKey(name), lost: make(chan struct{}), stop: make(chan struct{})}
	go l.watch()
	return l, nil
}

// pgLock is a session advisory lock on a connection of its own, checked
// every second: a lock whose connection broke may already be someone
// else's.
type pgLock struct {
	mu   sync.Mutex
	conn *pgx.Conn
	key  int64
	lost chan struct{}
	stop chan struct{}
	once sync.Once
}

func (l *pgLock) Lost() <-chan struct{} { return l.lost }

func (l *pgLock) watch() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		l.mu.Lock()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := l.conn.Ping(ctx)
		cancel()
		l.mu.Unlock()
		if err != nil {
			l.end(false)
			return
		}
	}
}

func (l *pgLock) Release() { l.end(true) }

func (l *pgLock) end(unlock bool) {
	l.once.Do(func() {
		close(l.stop)
		l.mu.Lock()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if unlock {
			l.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, l.key)
		}
		l.conn.Close(ctx)
		cancel()
		l.mu.Unlock()
		close(l.lost)
	})
}
