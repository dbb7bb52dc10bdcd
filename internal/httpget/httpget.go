// Package httpget is the init's HTTP/1.1 client: GET (with Range) and
// POST over plain http, nothing else. The init talks to imaged's boot
// endpoints (which iPXE fetches the same way) and must stay small: every
// boot unpacks it, and net/http would add its transport, its HTTP/2 and
// TLS setup and their package initialisers for nothing. The agent, which
// may talk https through proxies, keeps net/http.
//
// Every wait ends: the dial and the response header are bounded by the
// request's context (its deadline, or Timeout when it has none), each read
// of a body by IdleTimeout, and cancelling the context closes the
// connection under a blocked read or write.
package httpget

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults of Client's zero values.
const (
	DefaultTimeout     = 30 * time.Second // dial and response header, when ctx has no deadline
	DefaultIdleTimeout = 30 * time.Second // a body that sends nothing for this long is cut
	maxRedirects       = 5
	maxHeaderBytes     = 64 << 10
)

// Client sends requests. The zero value is ready to use.
type Client struct {
	Timeout     time.Duration
	IdleTimeout time.Duration
	UserAgent   string            // default "hnboot"
	Header      map[string]string // added to every request (e.g. Authorization)
	// Dial connects; nil is net.Dialer.DialContext. Tests and benchmarks
	// count or slow bytes here.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	mu   sync.Mutex
	idle *idleConn // GetRange's connection between two ranges
}

// idleConn is a connection whose last response was read to its end and
// that the server keeps open.
type idleConn struct {
	host string
	conn net.Conn
	br   *bufio.Reader
}

func (c *Client) takeIdle(host string) *idleConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	ic := c.idle
	c.idle = nil
	if ic != nil && ic.host != host {
		ic.conn.Close()
		return nil
	}
	return ic
}

func (c *Client) putIdle(ic *idleConn) {
	c.mu.Lock()
	old := c.idle
	c.idle = ic
	c.mu.Unlock()
	if old != nil {
		old.conn.Close()
	}
}

// CloseIdle closes the connection GetRange keeps between ranges.
func (c *Client) CloseIdle() {
	if ic := c.takeIdle(""); ic != nil {
		ic.conn.Close()
	}
}

// Response is a response whose status line and headers were read. The
// caller must close Body.
type Response struct {
	StatusCode    int
	Status        string // "206 Partial Content"
	Header        textproto.MIMEHeader
	ContentLength int64 // -1 when unknown (chunked, or read to close)
	Body          io.ReadCloser
	URL           string // after redirects
}

// Get fetches rawURL; offset > 0 asks for the bytes from there on
// (Range: bytes=offset-). Redirects are followed (at most 5).
func (c *Client) Get(ctx context.Context, rawURL string, offset int64) (*Response, error) {
	var hdr [][2]string
	if offset > 0 {
		hdr = append(hdr, [2]string{"Range", "bytes=" + strconv.FormatInt(offset, 10) + "-"})
	}
	return c.get(ctx, rawURL, hdr, false)
}

// GetRange fetches bytes [start, end) of rawURL (Range: bytes=start-end-1);
// a server that honours it answers 206, one that does not 200 with the
// whole file. Redirects are followed as by Get. Unlike every other
// request it keeps the connection open (keep-alive) once the body is
// read to its end and closed, for the next range: a delta update asks for
// hundreds, and a new connection each would cost more than the bytes.
func (c *Client) GetRange(ctx context.Context, rawURL string, start, end int64) (*Response, error) {
	return c.get(ctx, rawURL, [][2]string{{"Range", RangeHeader(start, end)}}, true)
}

// RangeHeader is the Range value for bytes [start, end).
func RangeHeader(start, end int64) string {
	return "bytes=" + strconv.FormatInt(start, 10) + "-" + strconv.FormatInt(end-1, 10)
}

func (c *Client) get(ctx context.Context, rawURL string, hdr [][2]string, keep bool) (*Response, error) {
	for i := 0; ; i++ {
		resp, err := c.do(ctx, "GET", rawURL, hdr, nil, keep)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case 301, 302, 303, 307, 308:
		default:
			return resp, nil
		}
		loc := resp.Header.Get("Location")
		resp.Body.Close()
		if loc == "" || i >= maxRedirects {
			return nil, fmt.Errorf("GET %s: %s without a usable Location (after %d redirects)", rawURL, resp.Status, i)
		}
		base, _ := url.Parse(rawURL)
		next, err := base.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("GET %s: redirect to %q: %w", rawURL, loc, err)
		}
		rawURL = next.String()
	}
}

// Post sends body and returns the response.
func (c *Client) Post(ctx context.Context, rawURL, contentType string, body []byte) (*Response, error) {
	return c.Do(ctx, "POST", rawURL, [][2]string{{"Content-Type", contentType}}, body)
}

// Do sends one request (Connection: close) and reads the response header.
func (c *Client) Do(ctx context.Context, method, rawURL string, header [][2]string, body []byte) (*Response, error) {
	return c.do(ctx, method, rawURL, header, body, false)
}

func (c *Client) do(ctx context.Context, method, rawURL string, header [][2]string, body []byte, keep bool) (*Response, error) {
	if keep {
		// A kept connection the server has closed meanwhile fails at once:
		// then once more on a new one.
		u, _ := url.Parse(rawURL)
		if u != nil {
			host := u.Host
			if u.Port() == "" {
				host = net.JoinHostPort(u.Hostname(), "80")
			}
			if ic := c.takeIdle(host); ic != nil {
				resp, err := c.send(ctx, method, rawURL, header, body, true, ic)
				if err == nil || ctx.Err() != nil {
					return resp, err
				}
			}
		}
	}
	return c.send(ctx, method, rawURL, header, body, keep, nil)
}

// send sends one request on ic, or on a new connection when ic is nil.
func (c *Client) send(ctx context.Context, method, rawURL string, header [][2]string, body []byte, keep bool, ic *idleConn) (*Response, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, rawURL, err)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("%s %s: the init speaks plain http only (imaged's boot URL), not %q", method, rawURL, u.Scheme)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	hctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	dial := c.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	var conn net.Conn
	var br *bufio.Reader
	if ic != nil {
		conn, br = ic.conn, ic.br
	} else {
		if conn, err = dial(hctx, "tcp", host); err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, rawURL, err)
		}
		br = bufio.NewReaderSize(conn, 64<<10)
	}
	// Cancelling ctx must end a read or write blocked on the network.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	dl, _ := hctx.Deadline()
	conn.SetDeadline(dl)
	fail := func(err error) (*Response, error) {
		stop()
		conn.Close()
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		case errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(dl):
			err = fmt.Errorf("%w: no answer in time (%v)", context.DeadlineExceeded, err)
		}
		return nil, fmt.Errorf("%s %s: %w", method, rawURL, err)
	}

	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, u.RequestURI(), u.Host)
	ua := c.UserAgent
	if ua == "" {
		ua = "hnboot"
	}
	connection := "close"
	if keep {
		connection = "keep-alive"
	}
	fmt.Fprintf(&req, "User-Agent: %s\r\nConnection: %s\r\n", ua, connection)
	for k, v := range c.Header {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v)
	}
	for _, kv := range header {
		fmt.Fprintf(&req, "%s: %s\r\n", kv[0], kv[1])
	}
	if body != nil || method == "POST" {
		fmt.Fprintf(&req, "Content-Length: %d\r\n", len(body))
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return fail(err)
	}

	code, status, hdr, err := readHeader(br)
	if err != nil {
		return fail(err)
	}
	idle := c.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	resp := &Response{StatusCode: code, Status: status, Header: hdr, ContentLength: -1, URL: rawURL}
	// The header read may have buffered the start of the body: reading
	// through br returns it first. Without a length, the body ends with
	// the connection.
	b := &body_{r: br, conn: conn, stop: stop, idle: idle, ctx: ctx}
	if keep && !strings.EqualFold(hdr.Get("Connection"), "close") {
		b.keep = func() { c.putIdle(&idleConn{host: host, conn: conn, br: br}) }
	}
	switch {
	case method == "HEAD" || code == 204 || code == 304 || code/100 == 1:
		b.r = strings.NewReader("")
		resp.ContentLength = 0
	case strings.EqualFold(hdr.Get("Transfer-Encoding"), "chunked"):
		b.r = &chunked{r: br}
	case hdr.Get("Content-Length") != "":
		n, err := strconv.ParseInt(strings.TrimSpace(hdr.Get("Content-Length")), 10, 64)
		if err != nil || n < 0 {
			return fail(fmt.Errorf("bad Content-Length %q", hdr.Get("Content-Length")))
		}
		resp.ContentLength = n
		b.r = &exact{r: br, n: n}
	}
	resp.Body = b
	return resp, nil
}

// readHeader reads the status line and the header fields, at most
// maxHeaderBytes in all.
func readHeader(br *bufio.Reader) (int, string, textproto.MIMEHeader, error) {
	hdr := textproto.MIMEHeader{}
	total := 0
	next := func() (string, error) {
		line, err := br.ReadSlice('\n')
		total += len(line)
		if errors.Is(err, bufio.ErrBufferFull) || total > maxHeaderBytes {
			return "", errors.New("response header larger than 64 KiB")
		}
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(line), "\r\n"), nil
	}
	line, err := next()
	if err != nil {
		return 0, "", nil, fmt.Errorf("reading the status line: %w", err)
	}
	proto, status, ok := strings.Cut(line, " ")
	code, cerr := strconv.Atoi(strings.SplitN(strings.TrimSpace(status), " ", 2)[0])
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") || cerr != nil {
		return 0, "", nil, fmt.Errorf("not an HTTP/1 response: %q", line)
	}
	for {
		l, err := next()
		if err != nil {
			return 0, "", nil, fmt.Errorf("reading the header: %w", err)
		}
		if l == "" {
			return code, strings.TrimSpace(status), hdr, nil
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return 0, "", nil, fmt.Errorf("malformed header line %q", l)
		}
		hdr.Add(textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(k)), strings.TrimSpace(v))
	}
}

// body_ is a response body: each read has IdleTimeout, and Close ends
// the connection, or keeps it for the next request (keep) when the body
// of known length was read to its end.
type body_ struct {
	r    io.Reader
	conn net.Conn
	stop func() bool
	idle time.Duration
	ctx  context.Context
	keep func()
}

func (b *body_) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	b.conn.SetReadDeadline(time.Now().Add(b.idle))
	if err := b.ctx.Err(); err != nil {
		// Cancelled while the deadline was set: the AfterFunc's
		// deadline may have been overwritten.
		return 0, err
	}
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		if b.ctx.Err() != nil {
			return n, b.ctx.Err()
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return n, fmt.Errorf("no data for %v: %w", b.idle, err)
		}
	}
	return n, err
}

func (b *body_) Close() error {
	stopped := b.stop() // false: the context's end already cut the connection
	if e, ok := b.r.(*exact); ok && e.n == 0 && b.keep != nil && stopped && b.ctx.Err() == nil {
		b.conn.SetDeadline(time.Time{})
		b.keep()
		return nil
	}
	return b.conn.Close()
}

// exact reads a body of Content-Length bytes; a connection that ends
// first is io.ErrUnexpectedEOF, not a short success.
type exact struct {
	r io.Reader
	n int64
}

func (e *exact) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.n {
		p = p[:e.n]
	}
	n, err := e.r.Read(p)
	e.n -= int64(n)
	if err == io.EOF && e.n > 0 {
		err = io.ErrUnexpectedEOF
	}
	if e.n == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

// chunked decodes Transfer-Encoding: chunked (a proxy in front of imaged
// may use it).
type chunked struct {
	r    *bufio.Reader
	left int64 // bytes left in the current chunk
	done bool
}

func (c *chunked) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	if c.left == 0 {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, unexpected(err)
		}
		size, _, _ := strings.Cut(strings.TrimSpace(line), ";")
		n, err := strconv.ParseInt(size, 16, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad chunk size %q", strings.TrimSpace(line))
		}
		if n == 0 {
			// Trailers end with an empty line.
			for {
				l, err := c.r.ReadString('\n')
				if err != nil {
					return 0, unexpected(err)
				}
				if strings.TrimSpace(l) == "" {
					break
				}
			}
			c.done = true
			return 0, io.EOF
		}
		c.left = n
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if err != nil {
		return n, unexpected(err)
	}
	if c.left == 0 {
		if _, err := c.r.Discard(2); err != nil { // CRLF after the chunk
			return n, unexpected(err)
		}
	}
	return n, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ParseContentRange parses "bytes a-b/total" and "bytes */total" (start
// and end -1); total is -1 for "*".
func ParseContentRange(v string) (start, end, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil {
			return 0, 0, 0, false
		}
		total = t
	}
	if rng == "*" {
		return -1, -1, total, true
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	s, err1 := strconv.ParseInt(a, 10, 64)
	e, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, 0, false
	}
	return s, e, total, true
}
