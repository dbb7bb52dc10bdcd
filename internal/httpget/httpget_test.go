package httpget

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// raw serves each connection with fn, which reads the request itself:
// the tests control every byte of the response.
func raw(t *testing.T, fn func(c net.Conn, req string)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				var req strings.Builder
				for {
					line, err := br.ReadString('\n')
					req.WriteString(line)
					if err != nil || line == "\r\n" {
						break
					}
				}
				fn(c, req.String())
			}()
		}
	}()
	return "http://" + l.Addr().String()
}

func TestGet(t *testing.T) {
	for _, tc := range []struct {
		name     string
		response string
		want     string
		length   int64
		err      error
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "hello", 5, nil},
		{"content-length, more sent", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhello", "hel", 3, nil},
		{"cut short", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "hello", 10, io.ErrUnexpectedEOF},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nTrailer: a\r\n\r\n", "hello", -1, nil},
		{"chunked, cut", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "hel", -1, io.ErrUnexpectedEOF},
		{"to close", "HTTP/1.0 200 OK\r\n\r\nhello", "hello", -1, nil},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", "", 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := raw(t, func(c net.Conn, _ string) { io.WriteString(c, tc.response) })
			var cl Client
			resp, err := cl.Get(context.Background(), u+"/x", 0)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if string(got) != tc.want || !errors.Is(err, tc.err) || resp.ContentLength != tc.length {
				t.Errorf("body = %q, %v, length %d; want %q, %v, %d", got, err, resp.ContentLength, tc.want, tc.err, tc.length)
			}
		})
	}
}

func TestGetRangeAndRedirect(t *testing.T) {
	data := strings.Repeat("0123456789", 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/old" {
			http.Redirect(w, r, "/blob", http.StatusFound)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(data))
	}))
	defer srv.Close()
	var c Client
	resp, err := c.Get(context.Background(), srv.URL+"/old", 9990)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	s, e, total, ok := ParseContentRange(resp.Header.Get("Content-Range"))
	if resp.StatusCode != 206 || string(b) != "0123456789" || err != nil || !ok || s != 9990 || e != 9999 || total != 10000 || resp.URL != srv.URL+"/blob" {
		t.Errorf("Get(Range 9990-, redirected) = %d %q %v, range %d-%d/%d, url %s", resp.StatusCode, b, err, s, e, total, resp.URL)
	}
}

// Every wait ends: a server that accepts and never answers, one that
// stops sending mid-body, and a cancelled context.
func TestDeadlines(t *testing.T) {
	silent := raw(t, func(c net.Conn, _ string) { time.Sleep(10 * time.Second) })
	stalls := raw(t, func(c net.Conn, _ string) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
		time.Sleep(10 * time.Second)
	})
	for _, tc := range []struct {
		name   string
		url    string
		client *Client
		ctx    func() (context.Context, context.CancelFunc)
		body   bool // the header arrives; the wait is in the body
		want   string
	}{
		{"header, ctx deadline", silent, &Client{}, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, false, "deadline"},
		{"header, Timeout", silent, &Client{Timeout: 200 * time.Millisecond}, func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}, false, "deadline"},
		{"body, idle", stalls, &Client{IdleTimeout: 200 * time.Millisecond}, func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}, true, "no data for 200ms"},
		{"body, cancelled", stalls, &Client{}, func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		}, true, "canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			resp, err := tc.client.Get(ctx, tc.url, 0)
			if tc.body {
				if err != nil {
					t.Fatal(err)
				}
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			took := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), tc.want) || took > 2*time.Second {
				t.Errorf("err = %v after %v, want one containing %q within 2 s", err, took, tc.want)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	big := raw(t, func(c net.Conn, _ string) {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX: %s\r\n\r\n", strings.Repeat("a", 70<<10))
	})
	junk := raw(t, func(c net.Conn, _ string) { io.WriteString(c, "SSH-2.0-OpenSSH\r\n\r\n") })
	var c Client
	for _, tc := range []struct{ url, want string }{
		{"https://example.invalid/x", "plain http only"},
		{big, "larger than 64 KiB"},
		{junk, "not an HTTP/1 response"},
	} {
		_, err := c.Get(context.Background(), tc.url, 0)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Get(%s) = %v, want an error containing %q", tc.url, err, tc.want)
		}
	}
}

func TestPost(t *testing.T) {
	got := make(chan string, 1)
	u := raw(t, func(c net.Conn, req string) {
		got <- req
		io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
	})
	c := Client{Header: map[string]string{"Authorization": "Bearer x"}}
	resp, err := c.Post(context.Background(), u+"/checkin", "application/json", []byte(`{}`))
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("Post = %v, %v", resp, err)
	}
	resp.Body.Close()
	req := <-got
	for _, want := range []string{"POST /checkin HTTP/1.1\r\n", "Content-Type: application/json\r\n", "Content-Length: 2\r\n", "Authorization: Bearer x\r\n"} {
		if !strings.Contains(req, want) {
			t.Errorf("request %q lacks %q", req, want)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in                string
		start, end, total int64
		ok                bool
	}{
		{"bytes 10-19/100", 10, 19, 100, true},
		{"bytes */100", -1, -1, 100, true},
		{"bytes 0-9/*", 0, 9, -1, true},
		{"items 0-9/10", 0, 0, 0, false},
	} {
		s, e, tot, ok := ParseContentRange(tc.in)
		if s != tc.start || e != tc.end || tot != tc.total || ok != tc.ok {
			t.Errorf("ParseContentRange(%q) = %d, %d, %d, %v; want %d, %d, %d, %v", tc.in, s, e, tot, ok, tc.start, tc.end, tc.total, tc.ok)
		}
	}
}

// GetRange keeps its connection for the next range once a body is read
// to its end, and opens a new one when the server closed the kept one.
func TestGetRangeKeepAlive(t *testing.T) {
	data := strings.Repeat("0123456789", 1000)
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(data))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := &Client{}
	get := func(a, b int64) {
		t.Helper()
		resp, err := c.GetRange(context.Background(), srv.URL, a, b)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 206 || string(got) != data[a:b] {
			t.Fatalf("GetRange(%d, %d) = %d %q, %v; want 206 %q", a, b, resp.StatusCode, got, err, data[a:b])
		}
	}
	for i := int64(0); i < 10; i++ {
		get(i*100, i*100+50)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("10 ranges on %d connections, want 1", n)
	}
	srv.CloseClientConnections() // the server drops the idle connection
	get(5000, 5100)
	if n := conns.Load(); n != 2 {
		t.Errorf("after the server closed it: %d connections, want 2", n)
	}
	c.CloseIdle()
}
