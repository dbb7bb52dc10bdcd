package fleet

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	_ "modernc.org/sqlite" // database/sql driver "sqlite", pure Go: imaged stays CGO_ENABLED=0
)

// sqliteStore is the embedded default: one file in WAL mode. Writes go
// through one connection in BEGIN IMMEDIATE transactions (SQLite has one
// writer anyway; taking the write lock up front avoids the deadlock of two
// readers upgrading), reads through a small pool that WAL lets run beside
// the writer. synchronous=FULL fsyncs the WAL at every commit, so a
// check-in acknowledged to a host survives a power cut, as it did with the
// old store; check-ins are committed in groups (Fleet.checkinWriter) so
// the fsyncs do not bound the rate.
type sqliteStore struct {
	*sqlCore
	path string

	lockMu sync.Mutex
	locks  map[string]bool
}

func openSQLite(ctx context.Context, path string, log *slog.Logger) (Store, error) {
	if path == "" {
		return nil, fmt.Errorf("fleet database: sqlite: no file named (want sqlite:///PATH)")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("fleet database: %w", err)
	}
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("fleet database: sqlite file %q: '?' and '#' are not allowed in the name", path)
	}
	const params = "_busy_timeout=10000&_journal_mode=WAL&_synchronous=FULL&_foreign_keys=1"
	w, err := sql.Open("sqlite", "file:"+path+"?"+params+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("fleet database: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	r, err := sql.Open("sqlite", "file:"+path+"?"+params)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("fleet database: open %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	r.SetConnMaxLifetime(0)
	s := &sqliteStore{sqlCore: newCore("sqlite", path, log), path: path, locks: map[string]bool{}}
	s.w, s.r = w, r
	if err := w.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("fleet database: open %s: %w (is it a SQLite file?)", path, err)
	}
	from, to, err := migrate(ctx, w, "sqlite", path, "")
	if err != nil {
		s.Close()
		return nil, err
	}
	if from != to {
		log.Info("fleet database: schema migrated", "file", path, "from", from, "to", to)
	}
	os.Chmod(path, 0o600)
	return s, nil
}

func (s *sqliteStore) Close() error {
	s.closeCore()
	err := s.w.Close()
	if err2 := s.r.Close(); err == nil {
		err = err2
	}
	return err
}

// TryLock is an flock(2) on a file beside the database, so two imaged on
// one machine that were pointed at one file still run the work once; the
// kernel drops it when the process dies. (SQLite serves one boot network;
// several servers share PostgreSQL.)
func (s *sqliteStore) TryLock(ctx context.Context, name string) (Lock, error) {
	s.lockMu.Lock()
	defer s.lockMu.Unlock()
	if s.locks[name] {
		return nil, nil
	}
	p := s.path + "-lock-" + name
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("fleet database: leader lock %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, nil
		}
		return nil, fmt.Errorf("fleet database: leader lock %s: %w", p, err)
	}
	s.locks[name] = true
	return &fileLock{f: f, lost: make(chan struct{}), release: func() {
		s.lockMu.Lock()
		delete(s.locks, name)
		s.lockMu.Unlock()
	}}, nil
}

type fileLock struct {
	f       *os.File
	lost    chan struct{}
	once    sync.Once
	release func()
}

func (l *fileLock) Lost() <-chan struct{} { return l.lost }

func (l *fileLock) Release() {
	l.once.Do(func() {
		l.f.Close() // drops the flock
		l.release()
		close(l.lost)
	})
}
