package agent

import (
	"context"
	"net/http"
	"net/textproto"
	"strconv"
	"time"

	"github.com/hnboot/hnboot/internal/httpget"
)

// NetGetter is the agent's stage.Getter: net/http, so images also come
// over https and through the proxy of the environment (the init's
// httpget speaks plain http to the boot server only).
type NetGetter struct {
	Client *http.Client // nil: connect and header timeouts, proxy from the environment
}

var defaultTransport = &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	ResponseHeaderTimeout: 30 * time.Second,
	IdleConnTimeout:       90 * time.Second,
}

// Get implements stage.Getter.
func (g NetGetter) Get(ctx context.Context, url string, offset int64) (*httpget.Response, error) {
	rng := ""
	if offset > 0 {
		rng = "bytes=" + strconv.FormatInt(offset, 10) + "-"
	}
	return g.get(ctx, url, rng)
}

// GetRange implements stage.RangeGetter: bytes [start, end) of url.
// Requests reuse connections (keep-alive), so the many small ranges of a
// delta update do not each pay for a new one.
func (g NetGetter) GetRange(ctx context.Context, url string, start, end int64) (*httpget.Response, error) {
	return g.get(ctx, url, httpget.RangeHeader(start, end))
}

func (g NetGetter) get(ctx context.Context, url, rng string) (*httpget.Response, error) {
	c := g.Client
	if c == nil {
		c = &http.Client{Transport: defaultTransport}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	return &httpget.Response{
		StatusCode: resp.StatusCode, Status: resp.Status, Header: textproto.MIMEHeader(resp.Header),
		ContentLength: resp.ContentLength, Body: resp.Body, URL: resp.Request.URL.String(),
	}, nil
}
