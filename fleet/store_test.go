package fleet

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := OpenStore(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("OpenStore(%s) = %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func getStr(t *testing.T, s *Store, k string) string {
	t.Helper()
	var v string
	ok, err := s.Get(k, &v)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return "<absent>"
	}
	return v
}

func TestStoreSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	s := openStore(t, path)
	for _, kv := range [][2]string{{"a", "1"}, {"b", "2"}, {"a", "3"}} {
		if err := s.Put(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete("b"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, path)
	for k, want := range map[string]string{"a": "3", "b": "<absent>"} {
		if got := getStr(t, s, k); got != want {
			t.Errorf("after reopen Get(%s) = %s, want %s", k, got, want)
		}
	}
}

// A crash in the middle of a write leaves a torn last record: it is cut
// off, the earlier records survive and the store goes on appending.
func TestStoreTornLastRecord(t *testing.T) {
	for _, c := range []struct {
		name string
		tail func(full []byte) []byte // bytes appended after the good records
	}{
		{"half a record", func(full []byte) []byte { return full[:len(full)/2] }},
		{"all but the newline", func(full []byte) []byte { return full[:len(full)-1] }},
		{"complete line with a bad checksum", func(full []byte) []byte { return append([]byte("00000000"), full[8:]...) }},
		{"zeros (unwritten blocks)", func(full []byte) []byte { return make([]byte, 100) }},
		{"one byte", func(full []byte) []byte { return full[:1] }},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "fleet.db")
			s := openStore(t, path)
			s.Put("kept", "yes")
			s.Close()
			good, _ := os.ReadFile(path)
			full, _ := encodeRecord(storeRec{Op: "put", K: "torn", V: []byte(`"value"`)})
			os.WriteFile(path, append(append([]byte(nil), good...), c.tail(full)...), 0o600)

			s = openStore(t, path)
			if got := getStr(t, s, "kept"); got != "yes" {
				t.Errorf("Get(kept) = %s, want yes", got)
			}
			if got := getStr(t, s, "torn"); got != "<absent>" {
				t.Errorf("Get(torn) = %s, want <absent>", got)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, good) {
				t.Errorf("log after open = %q, want the torn tail cut off (%q)", b, good)
			}
			if err := s.Put("after", "ok"); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s = openStore(t, path)
			if got := getStr(t, s, "after"); got != "ok" {
				t.Errorf("Get(after) after append and reopen = %s, want ok", got)
			}
		})
	}
}

func TestStoreDamageBeforeTheEndIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	s := openStore(t, path)
	s.Put("a", "1")
	s.Put("b", "2")
	s.Put("c", "3")
	s.Close()
	b, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(b), "\n")
	lines[1] = strings.Replace(lines[1], `"2"`, `"X"`, 1) // bit rot in record 2
	os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600)
	_, err := OpenStore(path, nil)
	if err == nil || !strings.Contains(err.Error(), path+":2: checksum mismatch") {
		t.Errorf("OpenStore(damaged line 2) = %v, want an error naming %s:2", err, path)
	}
}

func TestStoreCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.db")
	s := openStore(t, path)
	for i := range 3000 {
		if err := s.Put(fmt.Sprintf("k%d", i%10), i); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(path)
	if got := bytes.Count(b, []byte("\n")); got > 2*10+1024+1 {
		t.Errorf("log lines after 3000 puts to 10 keys = %d, want compaction to keep it under %d", got, 2*10+1024+1)
	}
	s.Close()
	s = openStore(t, path)
	var v int
	s.Get("k9", &v)
	if v != 2999 {
		t.Errorf("Get(k9) after compaction and reopen = %d, want 2999", v)
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Errorf("temporary compaction file left behind: %v", err)
	}
}
