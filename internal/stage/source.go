package stage

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hnboot/hnboot/internal/httpget"
)

// Source is where an image comes from.
type Source interface {
	// Open returns the image from byte offset on. start is where the
	// stream really begins (0 when the source cannot resume), total the
	// image's size (-1 when unknown).
	Open(ctx context.Context, offset int64) (rc io.ReadCloser, start, total int64, err error)
	String() string
}

// Getter does one HTTP GET, from offset on when offset > 0 (a Range
// request). *httpget.Client is one; the agent adapts net/http (https,
// proxies from the environment).
type Getter interface {
	Get(ctx context.Context, url string, offset int64) (*httpget.Response, error)
}

// HTTPSource fetches an image over HTTP, resuming with Range requests.
type HTTPSource struct {
	URL    string
	Client Getter // nil: an httpget.Client with its default timeouts
}

func (s HTTPSource) String() string { return s.URL }

func (s HTTPSource) client() Getter {
	if s.Client != nil {
		return s.Client
	}
	return &httpget.Client{}
}

// Open implements Source.
func (s HTTPSource) Open(ctx context.Context, offset int64) (io.ReadCloser, int64, int64, error) {
	c := s.client()
	resp, err := c.Get(ctx, s.URL, offset)
	if err != nil {
		return nil, 0, 0, err
	}
	switch resp.StatusCode {
	case 200:
		return resp.Body, 0, resp.ContentLength, nil
	case 206:
		start, _, total, ok := httpget.ParseContentRange(resp.Header.Get("Content-Range"))
		if !ok {
			resp.Body.Close()
			return nil, 0, 0, fmt.Errorf("GET %s: 206 with bad Content-Range %q", s.URL, resp.Header.Get("Content-Range"))
		}
		return resp.Body, start, total, nil
	case 416:
		resp.Body.Close()
		if _, _, total, ok := httpget.ParseContentRange(resp.Header.Get("Content-Range")); ok && total == offset {
			return io.NopCloser(strings.NewReader("")), offset, total, nil // we had it all
		}
		if resp, err = c.Get(ctx, s.URL, 0); err != nil {
			return nil, 0, 0, err
		}
		if resp.StatusCode == 200 {
			return resp.Body, 0, resp.ContentLength, nil
		}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return nil, 0, 0, fmt.Errorf("GET %s: %s: %s", s.URL, resp.Status, strings.TrimSpace(string(body)))
}

// FileSource copies an image from a local file.
type FileSource struct{ Path string }

func (s FileSource) String() string { return s.Path }

// Open implements Source.
func (s FileSource) Open(_ context.Context, offset int64) (io.ReadCloser, int64, int64, error) {
	f, err := os.Open(s.Path)
	if err != nil {
		return nil, 0, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, 0, fmt.Errorf("%s is not a regular file", s.Path)
	}
	if offset > fi.Size() {
		offset = 0
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return nil, 0, 0, err
	}
	return f, offset, fi.Size(), nil
}
