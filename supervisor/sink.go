package supervisor

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"sync"
	"time"
)

// Ring keeps the last N bytes written to it.
type Ring struct {
	mu   sync.Mutex
	buf  []byte
	next int
	full bool
}

// NewRing returns a ring of n bytes.
func NewRing(n int) *Ring { return &Ring{buf: make([]byte, n)} }

// Write implements io.Writer; it never fails.
func (r *Ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	if len(p) >= len(r.buf) {
		p = p[len(p)-len(r.buf):]
	}
	for len(p) > 0 {
		c := copy(r.buf[r.next:], p)
		p = p[c:]
		r.next += c
		if r.next == len(r.buf) {
			r.next, r.full = 0, true
		}
	}
	return n, nil
}

// Bytes returns the kept bytes, oldest first; after wrapping, starting at a
// line boundary.
func (r *Ring) Bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return append([]byte(nil), r.buf[:r.next]...)
	}
	out := append(append([]byte(nil), r.buf[r.next:]...), r.buf[:r.next]...)
	if i := bytes.IndexByte(out, '\n'); i >= 0 {
		out = out[i+1:]
	}
	return out
}

// sink writes a service's lines, prefixed with time and stream, to its
// ring and its log file.
type sink struct {
	ring *Ring
	path string
	max  int64

	mu   sync.Mutex
	f    *os.File
	size int64
}

func newSink(ringBytes int) *sink { return &sink{ring: NewRing(ringBytes)} }

const maxLine = 4096

// copy reads r until EOF, splitting lines (long ones are cut at maxLine).
func (s *sink) copy(stream string, r io.Reader) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			s.line(stream, string(bytes.TrimRight(line, "\n")))
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return
		}
	}
}

func (s *sink) line(stream, text string) {
	b := []byte(time.Now().Format("2006-01-02T15:04:05.000Z07:00") + " " + stream + ": " + text + "\n")
	s.ring.Write(b)
	if s.path == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil || s.size+int64(len(b)) > s.max {
		if s.f != nil {
			s.f.Close()
			s.f = nil
			os.Rename(s.path, s.path+".1")
		}
		f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return // the ring still has it
		}
		st, _ := f.Stat()
		s.f, s.size = f, st.Size()
	}
	n, _ := s.f.Write(b)
	s.size += int64(n)
}

func (s *sink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}
