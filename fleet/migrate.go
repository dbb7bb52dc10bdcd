package fleet

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Schema migrations are SQL files embedded in the binary, one directory
// per backend (migrations/sqlite, migrations/postgres), named
// NNNN_what.sql and applied in order at start, each in the transaction
// that records it in schema_version. Why not goose or golang-migrate: the
// schema is small, the two dialects differ in a few column types only,
// and what the fleet needs on top — refusing a database that a newer
// imaged migrated, and several servers starting at once against one
// PostgreSQL (serialized by an advisory lock held for the transaction) —
// is a dozen lines here but configuration and extra dependencies there.
//
//go:embed migrations
var migrations embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations(backend string) ([]migration, error) {
	dir := path.Join("migrations", backend)
	ents, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return nil, fmt.Errorf("fleet database: migrations for %s: %w", backend, err)
	}
	var out []migration
	for _, e := range ents {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("fleet database: migration %s/%s: want NNNN_name.sql", dir, e.Name())
		}
		b, err := fs.ReadFile(migrations, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("fleet database: migrations for %s: %s out of sequence (want version %d)", backend, m.name, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the newest schema this binary knows.
func SchemaVersion() int {
	ms, _ := loadMigrations("sqlite")
	return len(ms)
}

// migrate brings the schema up to date. lock, if set, runs first in the
// transaction (PostgreSQL: an advisory lock, so servers starting together
// migrate one after the other).
func migrate(ctx context.Context, db *sql.DB, backend, where string, lock string) (from, to int, err error) {
	ms, err := loadMigrations(backend)
	if err != nil {
		return 0, 0, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, dbErr("migrate "+where, err)
	}
	defer tx.Rollback()
	if lock != "" {
		if _, err := tx.ExecContext(ctx, lock); err != nil {
			return 0, 0, dbErr("lock "+where+" for migration", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER PRIMARY KEY,
		applied_ns BIGINT NOT NULL,
		applied_by TEXT NOT NULL)`); err != nil {
		return 0, 0, dbErr("migrate "+where, err)
	}
	var cur sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_version`).Scan(&cur); err != nil {
		return 0, 0, dbErr("read the schema version of "+where, err)
	}
	from = int(cur.Int64)
	if from > len(ms) {
		return from, from, fmt.Errorf("fleet database %s has schema version %d, newer than this imaged knows (%d): "+
			"a newer imaged has upgraded it. Run that imaged (or newer) against it, or restore the backup taken before the upgrade; "+
			"this imaged does not write to a schema it does not know", where, from, len(ms))
	}
	host, _ := os.Hostname()
	for _, m := range ms[from:] {
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return from, m.version - 1, dbErr("migrate "+where+" to version "+strconv.Itoa(m.version)+" ("+m.name+")", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version, applied_ns, applied_by) VALUES ($1, $2, $3)`,
			m.version, time.Now().UnixNano(), "imaged on "+host); err != nil {
			return from, m.version - 1, dbErr("migrate "+where, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return from, from, dbErr("commit the migration of "+where, err)
	}
	return from, len(ms), nil
}
