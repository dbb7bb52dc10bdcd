package fleet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The observed state before the database was a JSON-lines log, one record
// a line: "<crc32c of the JSON, 8 hex> {"op":"put"|"del","k":KEY,"v":VALUE}".
// An installation that has one imports it once, on the first start with
// the database: in one transaction, recorded in the meta table by the
// log's sha256 (so a crash between the commit and the rename imports
// nothing twice), then the log is renamed aside to PATH.old-store, where
// it stays as a backup.

// OldStoreSuffix is appended to an imported JSON-lines store's name.
const OldStoreSuffix = ".old-store"

type oldRecord struct {
	Op string          `json:"op"`
	K  string          `json:"k"`
	V  json.RawMessage `json:"v,omitempty"`
}

var oldCRC = crc32.MakeTable(crc32.Castagnoli)

// isOldStore reports whether path holds a JSON-lines store (not SQLite,
// not empty).
func isOldStore(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("fleet: old store %s: %w", path, err)
	}
	defer f.Close()
	head := make([]byte, 16)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if n == 0 || bytes.HasPrefix(head, []byte("SQLite format 3\x00")) {
		return false, nil
	}
	return true, nil
}

// readOldStore replays the log as the old store did: a bad last line is a
// write torn by a crash and is dropped; a bad line before it is an error.
func readOldStore(path string, log *slog.Logger) (map[string]json.RawMessage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("fleet: old store: %w", err)
	}
	data := map[string]json.RawMessage{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("fleet: old store %s: %w", path, err)
	}
	torn := len(b) > 0 && b[len(b)-1] != '\n' // the last line has no newline: torn
	for i, line := range lines {
		rec, err := parseOldRecord(line)
		if err != nil || (torn && i == len(lines)-1) {
			if i == len(lines)-1 {
				log.Warn("fleet: old store: dropping a torn last record", "file", path, "line", i+1)
				break
			}
			return nil, fmt.Errorf("fleet: old store %s:%d: %v (the log is damaged before its end; cut the bad line to import the rest)", path, i+1, err)
		}
		if rec.Op == "del" {
			delete(data, rec.K)
		} else {
			data[rec.K] = rec.V
		}
	}
	return data, nil
}

func parseOldRecord(line string) (oldRecord, error) {
	var rec oldRecord
	if len(line) < 10 || line[8] != ' ' {
		return rec, errors.New("malformed record")
	}
	var sum uint32
	if _, err := fmt.Sscanf(line[:8], "%08x", &sum); err != nil {
		return rec, errors.New("malformed checksum")
	}
	body := []byte(line[9:])
	if crc32.Checksum(body, oldCRC) != sum {
		return rec, errors.New("checksum mismatch")
	}
	if err := json.Unmarshal(body, &rec); err != nil {
		return rec, fmt.Errorf("bad JSON: %v", err)
	}
	if rec.Op != "put" && rec.Op != "del" {
		return rec, fmt.Errorf("unknown op %q", rec.Op)
	}
	return rec, nil
}

// openWithImport opens the database and imports the old store at
// oldPath if there is one. When the database is SQLite in the same file
// (the default: both were /var/lib/hnboot/fleet.db), the log is renamed
// aside first.
func openWithImport(ctx context.Context, dbURL, oldPath string, log *slog.Logger) (Store, error) {
	if oldPath != "" {
		old, err := isOldStore(oldPath)
		if err != nil {
			return nil, err
		}
		if p := SQLitePath(dbURL); old && p != "" && sameFile(p, oldPath) {
			if err := renameAside(oldPath); err != nil {
				return nil, err
			}
		}
	}
	st, err := OpenStore(ctx, dbURL, log)
	if err != nil || oldPath == "" {
		return st, err
	}
	for _, p := range []string{oldPath, oldPath + OldStoreSuffix} {
		if err := importOldStore(ctx, st, p, p == oldPath, log); err != nil {
			st.Close()
			return nil, err
		}
	}
	return st, nil
}

func sameFile(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == bb
}

func renameAside(path string) error {
	if _, err := os.Stat(path + OldStoreSuffix); err == nil {
		return fmt.Errorf("fleet: %s is an old JSON-lines store to import, but %s exists too: move one of them away", path, path+OldStoreSuffix)
	}
	if err := os.Rename(path, path+OldStoreSuffix); err != nil {
		return fmt.Errorf("fleet: rename the old store aside: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// importOldStore imports the log at path once; rename moves it aside
// afterwards (it is not already there).
func importOldStore(ctx context.Context, st Store, path string, rename bool, log *slog.Logger) error {
	old, err := isOldStore(path)
	if err != nil || !old {
		return err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("fleet: old store: %w", err)
	}
	sum := sha256.Sum256(raw)
	metaKey := "imported-store-sha256:" + hex.EncodeToString(sum[:])
	var counts map[string]int
	err = st.Update(ctx, func(tx Tx) error {
		if _, done, err := tx.getMeta(metaKey); err != nil || done {
			return err // imported before (a crash came before the rename)
		}
		data, err := readOldStore(path, log)
		if err != nil {
			return err
		}
		if counts, err = importRecords(tx, data); err != nil {
			return fmt.Errorf("fleet: import %s: %w", path, err)
		}
		tx.Changed(ChangeAll)
		return tx.setMeta(metaKey, path)
	})
	if err != nil {
		return err
	}
	if counts != nil {
		log.Info("fleet: imported the old JSON-lines store into the database", "file", path, "database", st.Where(),
			"checkins", counts["observed"], "boots", counts["boot"], "overrides", counts["override"],
			"reverts", counts["revert"], "rollouts", counts["rollout"], "audit", counts["audit"])
	}
	if rename {
		if err := renameAside(path); err != nil {
			return err
		}
		log.Info("fleet: old store renamed aside (keep it as a backup or delete it)", "file", path+OldStoreSuffix)
	}
	return nil
}

// importRecords writes the old store's records. Where the database
// already has a value (several servers importing their stores into one
// PostgreSQL), the newer check-in wins and the database's override,
// revert and rollout stay.
func importRecords(tx Tx, data map[string]json.RawMessage) (map[string]int, error) {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys) // audit keys sort by time
	counts := map[string]int{}
	hostOv, err := tx.ListOverrides(OverrideHost)
	if err != nil {
		return nil, err
	}
	groupOv, err := tx.ListOverrides(OverrideGroup)
	if err != nil {
		return nil, err
	}
	reverts, err := tx.ListReverts()
	if err != nil {
		return nil, err
	}
	rollouts := map[string]bool{}
	if rs, err := tx.ListRollouts(); err == nil {
		for _, r := range rs {
			rollouts[r.Name] = true
		}
	} else {
		return nil, err
	}
	for _, k := range keys {
		v := data[k]
		prefix, rest, _ := strings.Cut(k, "/")
		var err error
		switch prefix {
		case "observed":
			var o Observed
			if err = json.Unmarshal(v, &o); err == nil {
				var cur *Observed
				if cur, err = tx.GetObserved(o.MAC); err == nil && (cur == nil || cur.Time.Before(o.Time)) {
					err = tx.PutObserved(&o)
				}
			}
		case "boot":
			var b Boot
			if err = json.Unmarshal(v, &b); err == nil {
				err = tx.PutBoot(&b)
			}
		case "override":
			kind, name, _ := strings.Cut(rest, "/")
			var ov Override
			if err = json.Unmarshal(v, &ov); err == nil {
				have := hostOv
				if kind == OverrideGroup {
					have = groupOv
				}
				if _, ok := have[name]; !ok {
					err = tx.PutOverride(kind, name, ov)
				}
			}
		case "revert":
			var pr PendingRevert
			if err = json.Unmarshal(v, &pr); err == nil {
				if _, ok := reverts[rest]; !ok {
					err = tx.PutRevert(rest, pr)
				}
			}
		case "rollout":
			var r APIRollout
			if err = json.Unmarshal(v, &r); err == nil && !rollouts[r.Name] {
				err = tx.PutRollout(r)
			}
		case "audit":
			var e AuditEntry
			if err = json.Unmarshal(v, &e); err == nil {
				e.Host, e.MAC = auditHostOf(e.Target)
				err = tx.AppendAudit(e)
			}
		default:
			return nil, fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", k, err)
		}
		counts[prefix]++
	}
	return counts, nil
}

// auditHostOf recovers the host an old audit entry was about from its
// target: "host NAME", "NAME MAC" (revert) or "MAC" (revert-applied).
func auditHostOf(target string) (host, mac string) {
	f := strings.Fields(target)
	switch {
	case len(f) == 2 && f[0] == "host":
		return f[1], ""
	case len(f) == 2 && strings.Count(f[1], ":") == 5:
		return f[0], f[1]
	case len(f) == 1 && strings.Count(f[0], ":") == 5:
		return "", f[0]
	}
	return "", ""
}
