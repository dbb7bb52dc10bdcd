package fleet

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// Store is the observed state: a small key/value store kept in memory and
// persisted as an append-only log, one record a line:
//
//	<crc32c of the JSON, 8 hex digits> <JSON {"op":"put"|"del","k":KEY,"v":VALUE}>\n
//
// Every Put and Delete is written and fsynced before it returns. On open
// the log is replayed; a last line that is incomplete or fails its checksum
// (a write torn by a crash) is cut off with a warning, while a bad line
// before the last is an error naming file and line (the disk lost data:
// an operator should look). When the log holds more than twice the live
// records, it is compacted: all live records are written to a temporary
// file, fsynced, renamed over the log and the directory fsynced, so a crash
// at any point leaves either the old or the new log.
type Store struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	f       *os.File
	data    map[string]json.RawMessage
	records int // lines in the log file
}

type storeRec struct {
	Op string          `json:"op"`
	K  string          `json:"k"`
	V  json.RawMessage `json:"v,omitempty"`
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// OpenStore opens or creates the log at path.
func OpenStore(path string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{path: path, log: log, data: map[string]json.RawMessage{}}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	good, err := s.replay(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	if st.Size() != good {
		log.Warn("store: cutting off a torn last record (crash during a write)", "file", path, "offset", good, "bytes", st.Size()-good)
		if err := f.Truncate(good); err != nil {
			f.Close()
			return nil, fmt.Errorf("store: truncate torn tail of %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	s.f = f
	if s.records > 2*len(s.data)+64 {
		if err := s.compactLocked(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// replay reads the log and returns the offset just after the last good record.
func (s *Store) replay(f *os.File) (int64, error) {
	r := bufio.NewReaderSize(f, 64<<10)
	var off int64
	line := 0
	for {
		b, err := r.ReadBytes('\n')
		if err == io.EOF {
			// b (if any) has no newline: a torn last write.
			return off, nil
		}
		if err != nil {
			return 0, fmt.Errorf("store: read %s: %w", s.path, err)
		}
		line++
		rec, perr := parseRecord(b)
		if perr != nil {
			// Is it the last line? Then the write was torn.
			if _, err := r.Peek(1); err == io.EOF {
				return off, nil
			}
			return 0, fmt.Errorf("store: %s:%d: %v (the log is damaged before its end; move it aside to start empty, or cut the bad line)", s.path, line, perr)
		}
		s.apply(rec)
		s.records++
		off += int64(len(b))
	}
}

func parseRecord(b []byte) (storeRec, error) {
	var rec storeRec
	b = bytes.TrimSuffix(b, []byte("\n"))
	if len(b) < 10 || b[8] != ' ' {
		return rec, fmt.Errorf("malformed record")
	}
	var sum uint32
	if _, err := fmt.Sscanf(string(b[:8]), "%08x", &sum); err != nil {
		return rec, fmt.Errorf("malformed checksum")
	}
	body := b[9:]
	if crc32.Checksum(body, crcTable) != sum {
		return rec, fmt.Errorf("checksum mismatch")
	}
	if err := json.Unmarshal(body, &rec); err != nil {
		return rec, fmt.Errorf("bad JSON: %v", err)
	}
	if rec.Op != "put" && rec.Op != "del" {
		return rec, fmt.Errorf("unknown op %q", rec.Op)
	}
	return rec, nil
}

func encodeRecord(rec storeRec) ([]byte, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	out := fmt.Appendf(nil, "%08x ", crc32.Checksum(body, crcTable))
	out = append(out, body...)
	return append(out, '\n'), nil
}

func (s *Store) apply(rec storeRec) {
	if rec.Op == "del" {
		delete(s.data, rec.K)
	} else {
		s.data[rec.K] = rec.V
	}
}

// Put stores v (JSON-encoded) under key, durably.
func (s *Store) Put(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: put %s: %w", key, err)
	}
	return s.write(storeRec{Op: "put", K: key, V: b})
}

// Delete removes key, durably. Deleting a missing key is not an error.
func (s *Store) Delete(key string) error {
	s.mu.Lock()
	_, ok := s.data[key]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return s.write(storeRec{Op: "del", K: key})
}

func (s *Store) write(rec storeRec) error {
	line, err := encodeRecord(rec)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return fmt.Errorf("store: %s is closed", s.path)
	}
	if _, err := s.f.Write(line); err != nil {
		return fmt.Errorf("store: write %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("store: fsync %s: %w", s.path, err)
	}
	s.apply(rec)
	s.records++
	if s.records > 2*len(s.data)+1024 {
		return s.compactLocked()
	}
	return nil
}

// Get decodes the value under key into v; false if absent.
func (s *Store) Get(key string, v any) (bool, error) {
	s.mu.Lock()
	b, ok := s.data[key]
	s.mu.Unlock()
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return true, fmt.Errorf("store: %s: %w", key, err)
	}
	return true, nil
}

// Keys returns the keys with the prefix, sorted.
func (s *Store) Keys(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.data {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// Compact rewrites the log with only the live records.
func (s *Store) Compact() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compactLocked()
}

func (s *Store) compactLocked() error {
	tmp := s.path + ".compact"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("store: compact: %w", err)
	}
	keys := make([]string, 0, len(s.data))
	for k := range s.data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	w := bufio.NewWriterSize(f, 64<<10)
	for _, k := range keys {
		line, err := encodeRecord(storeRec{Op: "put", K: k, V: s.data[k]})
		if err == nil {
			_, err = w.Write(line)
		}
		if err != nil {
			f.Close()
			os.Remove(tmp)
			return fmt.Errorf("store: compact %s: %w", tmp, err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("store: compact %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("store: compact %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("store: compact: %w", err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		d.Sync()
		d.Close()
	}
	if s.f != nil {
		s.f.Close()
	}
	s.f = f // positioned at its end
	s.records = len(keys)
	return nil
}

// Close closes the log file.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
