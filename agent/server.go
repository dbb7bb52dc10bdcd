package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

// Server is the fleet server as the agent needs it.
type Server interface {
	// Desired returns what the host with that MAC should run;
	// ErrUnknownHost when the server does not know it.
	Desired(ctx context.Context, mac string) (Desired, error)
	// Checkin sends a check-in.
	Checkin(ctx context.Context, c *checkin.Checkin) error
	// BlobURL is where the image with that digest is downloaded from.
	BlobURL(img DesiredImage) string
}

// ErrUnknownHost is returned by Desired for a MAC the server does not know.
var ErrUnknownHost = errors.New("the server does not know this host")

// HTTPServer talks to `imaged serve`:
//
//	GET  {base}/api/hosts/{mac}/desired   → Desired (JSON)
//	POST {base}/api/checkin               ← checkin.Checkin (JSON), 2xx
//	GET  {base}/blobs/sha256:<hex>        image blobs, with Range
type HTTPServer struct {
	Base   string
	Token  string // sent as "Authorization: Bearer TOKEN" when set
	Client *http.Client
}

func (s *HTTPServer) client() *http.Client {
	if s.Client != nil {
		return s.Client
	}
	return &http.Client{Timeout: 30 * time.Second}
}

func (s *HTTPServer) do(req *http.Request) (*http.Response, error) {
	if s.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.Token)
	}
	return s.client().Do(req)
}

// Desired implements Server.
func (s *HTTPServer) Desired(ctx context.Context, mac string) (Desired, error) {
	var d Desired
	u := strings.TrimRight(s.Base, "/") + "/api/hosts/" + url.PathEscape(mac) + "/desired"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return d, err
	}
	resp, err := s.do(req)
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return d, fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return d, fmt.Errorf("GET %s: %w (%s)", u, ErrUnknownHost, strings.TrimSpace(string(body)))
	}
	if resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return d, fmt.Errorf("GET %s: %w", u, err)
	}
	return d, nil
}

// Checkin implements Server.
func (s *HTTPServer) Checkin(ctx context.Context, c *checkin.Checkin) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	u := strings.TrimRight(s.Base, "/") + "/api/checkin"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("POST %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// BlobURL implements Server.
func (s *HTTPServer) BlobURL(img DesiredImage) string {
	base := strings.TrimRight(s.Base, "/")
	switch {
	case strings.HasPrefix(img.URL, "http://") || strings.HasPrefix(img.URL, "https://"):
		return img.URL
	case strings.HasPrefix(img.URL, "/"):
		return base + img.URL
	}
	return base + "/blobs/" + img.Digest
}
