package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// postJSON sends one JSON body to an http:// URL and returns the status
// code. The init needs nothing more, and net/http with its TLS stack would
// add 2.5 MB to /init, which every boot unpacks; imaged's boot endpoints
// are plain HTTP anyway (iPXE fetches them that way).
func postJSON(ctx context.Context, rawURL string, body []byte) (int, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, err
	}
	if u.Scheme != "http" {
		return 0, fmt.Errorf("%s: the init speaks plain http only (the boot server's URL), not %q", rawURL, u.Scheme)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	path := u.RequestURI()
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\nUser-Agent: hninit\r\n\r\n",
		path, u.Host, len(body))
	if _, err := conn.Write(append([]byte(req), body...)); err != nil {
		return 0, fmt.Errorf("POST %s: %w", rawURL, err)
	}
	line, err := textproto.NewReader(bufio.NewReader(conn)).ReadLine()
	if err != nil {
		return 0, fmt.Errorf("POST %s: reading the status line: %w", rawURL, err)
	}
	// "HTTP/1.1 204 No Content"
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return 0, fmt.Errorf("POST %s: not an HTTP response: %q", rawURL, line)
	}
	code, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, fmt.Errorf("POST %s: bad status line %q", rawURL, line)
	}
	return code, nil
}
