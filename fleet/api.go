package fleet

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

// tokenSet holds the admin tokens, hashed so every comparison takes the
// same time whatever the lengths.
type tokenSet struct {
	names []string
	sums  [][32]byte
}

const minTokenLen = 16

// readTokens reads a token file: one token a line, "NAME TOKEN" (the name
// goes into the audit log) or a bare TOKEN (named "admin"); '#' starts a
// comment. An empty path gives no tokens: every admin call is refused.
func readTokens(path string) (*tokenSet, error) {
	ts := &tokenSet{}
	if path == "" {
		return ts, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("fleet: token file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		name, tok := "admin", s
		if fs := strings.Fields(s); len(fs) == 2 {
			name, tok = fs[0], fs[1]
		} else if len(fs) > 2 {
			return nil, fmt.Errorf("fleet: %s:%d: want NAME TOKEN or TOKEN (a # comment takes a line of its own)", path, line)
		}
		if len(tok) < minTokenLen {
			return nil, fmt.Errorf("fleet: %s:%d: token of %s is shorter than %d characters: make one with openssl rand -hex 16", path, line, name, minTokenLen)
		}
		ts.names = append(ts.names, name)
		ts.sums = append(ts.sums, sha256.Sum256([]byte(tok)))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("fleet: %s: %w", path, err)
	}
	if len(ts.names) == 0 {
		return nil, fmt.Errorf("fleet: %s: no tokens", path)
	}
	return ts, nil
}

// match compares tok with every token in constant time (no early exit)
// and returns the matching token's name.
func (ts *tokenSet) match(tok string) (string, bool) {
	sum := sha256.Sum256([]byte(tok))
	found := -1
	for i := range ts.sums {
		if subtle.ConstantTimeCompare(sum[:], ts.sums[i][:]) == 1 {
			found = i
		}
	}
	if found < 0 || tok == "" {
		return "", false
	}
	return ts.names[found], true
}

// Handler is the admin API and the metrics, served on the admin listener
// (imaged serve --admin), apart from the boot HTTP that serves
// HostHandler. Admin actions (POST) need "Authorization: Bearer TOKEN";
// GETs too unless OpenReads. Host endpoints (POST /api/checkin, GET
// /api/hosts/{mac}/desired) are open: hosts hold no admin token.
//
//	GET  /api/status                      fleet status (Status)
//	POST /api/assign    {"host"|"group"|"target", "image": "name@version" | ""} → {"result", "target"}
//	GET  /api/rollouts                    rollouts with their members
//	POST /api/rollout   {"name", "image", "group", "hosts": [...], "percent", "delete"}, or with "waves" (Auto)
//	GET  /api/rollouts/{name}              RolloutStatus of a rollout with waves
//	POST /api/rollouts/{name}/{action}     start, pause, resume, abort ({"revert": true}) → RolloutStatus
//	POST /api/revert    {"host"|"group"|"target"}  → [RevertResult]
//	                    ("target": a host name, MAC or group, whichever exists)
//	POST /api/reload                      re-read the YAML directory and the token file
//	GET  /api/audit?n=100&since=24h&until=…&who=…&host=…&action=…
//	                                      the audit log (since/until: RFC 3339, a date, or a duration before now)
//	GET  /api/hosts/{host}/why?boots=3    WhyReport (host: hostname or MAC)
//	GET  /api/known_hosts                 ssh_known_hosts (text)
//	GET  /api/hosts?label=k=v             []HostSummary (inventory.go)
//	GET  /api/hosts/{host}                HostInventory: facts, slots, packages, last boots
//	GET  /api/packages/{name}?version=V&label=k=v  PackageReport
//	POST /api/checkin                     a host's check-in (checkin.Checkin), open
//	GET  /api/hosts/{mac}/desired         DesiredHost, open
//	POST /api/images    a manifest (IMAGE.json) → PublishReply: where to send the bytes, from which offset
//	PATCH /api/uploads/{digest}           the image's bytes from Upload-Offset; the last ones publish it
//	GET  /api/images                      every image with size, age, hosts running and assigned (ImageListing)
//	POST /api/prune     {"apply": bool}   published images nothing references; removed with apply (PruneResult)
//	GET  /metrics                         Prometheus metrics (fleet, Go runtime, process)
//
// With the fleet database away, calls that need it answer 503 with the
// reason (a check-in also with Retry-After: the host sends it again).
func (f *Fleet) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/status", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		st, err := f.status()
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		writeStatus(w, st)
	}))
	mux.HandleFunc("POST /api/assign", f.admin(func(w http.ResponseWriter, r *http.Request, who string) {
		var req struct {
			Target
			Image string `json:"image"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		t, err := f.Assign(who, r.RemoteAddr, req.Target, req.Image)
		if err != nil {
			writeErr(w, actionCode(err), err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "assigned", "target": t.String()})
	}))
	mux.HandleFunc("GET /api/rollouts", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		writeJSON(w, http.StatusOK, f.snap.Load().rollouts)
	}))
	mux.HandleFunc("POST /api/rollout", f.admin(func(w http.ResponseWriter, r *http.Request, who string) {
		var req struct {
			Rollout
			Delete bool `json:"delete"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		if err := f.SetRollout(who, r.RemoteAddr, req.Rollout, req.Delete); err != nil {
			writeErr(w, actionCode(err), err)
			return
		}
		writeJSON(w, http.StatusOK, f.snap.Load().rollouts)
	}))
	mux.HandleFunc("GET /api/rollouts/{name}", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		st, err := f.RolloutStatus(r.PathValue("name"))
		if err != nil {
			writeErr(w, lookupCode(err), err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	}))
	mux.HandleFunc("POST /api/rollouts/{name}/{action}", f.admin(func(w http.ResponseWriter, r *http.Request, who string) {
		var req struct {
			Revert bool `json:"revert"` // abort: revert the hosts it moved
		}
		if r.ContentLength != 0 && !readJSON(w, r, &req) {
			return
		}
		st, err := f.RolloutAction(who, r.RemoteAddr, r.PathValue("name"), r.PathValue("action"), req.Revert)
		if err != nil {
			writeErr(w, lookupCode(err), err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	}))
	mux.HandleFunc("GET /api/hosts", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		sel, err := ParseSelector(r.URL.Query()["label"])
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		hs, err := f.hostSummaries(sel)
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		writeJSON(w, http.StatusOK, hs)
	}))
	mux.HandleFunc("GET /api/hosts/{host}", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		inv, err := f.HostInventory(r.PathValue("host"))
		if err != nil {
			writeErr(w, lookupCode(err), err)
			return
		}
		writeJSON(w, http.StatusOK, inv)
	}))
	mux.HandleFunc("GET /api/packages/{name}", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		sel, err := ParseSelector(r.URL.Query()["label"])
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		rep, err := f.Packages(r.PathValue("name"), r.URL.Query().Get("version"), sel)
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	}))
	mux.HandleFunc("POST /api/revert", f.admin(func(w http.ResponseWriter, r *http.Request, who string) {
		var t Target
		if !readJSON(w, r, &t) {
			return
		}
		res, err := f.Revert(who, r.RemoteAddr, t)
		if err != nil {
			writeErr(w, actionCode(err), err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}))
	mux.HandleFunc("POST /api/reload", f.admin(func(w http.ResponseWriter, r *http.Request, who string) {
		// Every admin action is audited: with the database away the
		// reload is refused (SIGHUP still reloads).
		if err := f.audit(AuditEntry{Who: who, Remote: r.RemoteAddr, Action: "reload", Target: f.opts.Dir}); err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		if err := f.Reload(); err != nil {
			writeErr(w, http.StatusUnprocessableEntity, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "reloaded"})
	}))
	mux.HandleFunc("GET /api/audit", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		v := r.URL.Query()
		q := AuditQuery{Who: v.Get("who"), Action: v.Get("action")}
		q.Limit, _ = strconv.Atoi(v.Get("n"))
		var err error
		if q.Since, err = ParseSince(v.Get("since"), f.now()); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("since: %w", err))
			return
		}
		if q.Until, err = ParseSince(v.Get("until"), f.now()); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("until: %w", err))
			return
		}
		es, err := f.QueryAudit(q, v.Get("host"))
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		if es == nil {
			es = []AuditEntry{}
		}
		writeJSON(w, http.StatusOK, es)
	}))
	mux.HandleFunc("GET /api/hosts/{host}/why", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		n, _ := strconv.Atoi(r.URL.Query().Get("boots"))
		rep, err := f.Why(r.PathValue("host"), n)
		if err != nil {
			code := http.StatusNotFound
			if errors.Is(err, ErrDatabase) {
				code = http.StatusServiceUnavailable
			}
			writeErr(w, code, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	}))
	mux.HandleFunc("GET /api/known_hosts", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		kh, err := f.KnownHosts()
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, kh)
	}))
	f.hostHandlers(mux)
	f.publishHandlers(mux)
	metrics := f.metricsHandler()
	mux.HandleFunc("GET /metrics", f.read(func(w http.ResponseWriter, r *http.Request, _ string) {
		metrics.ServeHTTP(w, r)
	}))
	mux.HandleFunc("/api/", f.count(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
	}))
	return mux
}

// HostHandler is what the boot network reaches (the boot listener's
// /api/): the two endpoints hosts call, which need no token. Every other
// /api/ path answers 404 naming the admin listener, so a client pointed
// at the boot address learns where to go.
func (f *Fleet) HostHandler() http.Handler {
	mux := http.NewServeMux()
	f.hostHandlers(mux)
	mux.HandleFunc("/api/", f.count(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, fmt.Errorf("%s %s: not on the boot listener: the admin API and the dashboard are on imaged serve's --admin address", r.Method, r.URL.Path))
	}))
	mux.HandleFunc("/metrics", f.count(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, errors.New("/metrics is on imaged serve's --admin address"))
	}))
	return mux
}

// hostHandlers are the open endpoints of hosts: check-in and desired.
func (f *Fleet) hostHandlers(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/checkin", f.count(func(w http.ResponseWriter, r *http.Request) {
		c, err := checkin.Parse(r.Body)
		if err != nil {
			f.checkins["error"].Add(1)
			code := http.StatusBadRequest
			if errors.Is(err, checkin.ErrTooLarge) {
				code = http.StatusRequestEntityTooLarge
			}
			writeErr(w, code, err)
			return
		}
		if err := f.Checkin(c); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrDatabase) {
				w.Header().Set("Retry-After", "5")
				code = http.StatusServiceUnavailable
			}
			writeErr(w, code, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "recorded"})
	}))
	mux.HandleFunc("GET /api/hosts/{mac}/desired", f.count(func(w http.ResponseWriter, r *http.Request) {
		mac, err := net.ParseMAC(r.PathValue("mac"))
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("bad MAC %q", r.PathValue("mac")))
			return
		}
		dh, ok := f.DesiredFor(mac)
		if !ok {
			writeErr(w, http.StatusNotFound, fmt.Errorf("%s is not in the fleet", mac))
			return
		}
		writeJSON(w, http.StatusOK, dh)
	}))
}

// actionCode is the status of a refused admin action: 503 when the
// database is away (nothing was changed; try again), else 400.
func actionCode(err error) int {
	if errors.Is(err, ErrDatabase) {
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}

// lookupCode is 404 for an unknown rollout or host, 503 for the
// database, else 400.
func lookupCode(err error) int {
	switch {
	case errors.Is(err, ErrDatabase):
		return http.StatusServiceUnavailable
	case strings.HasPrefix(err.Error(), "unknown "):
		return http.StatusNotFound
	}
	return http.StatusBadRequest
}

// ParseSince reads a point in time: RFC 3339, a date (2006-01-02, local
// time), or a duration meaning that long before now ("24h", "90m").
func ParseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02 15:04", s, time.Local); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q: want RFC 3339, 2006-01-02[ 15:04] or a duration such as 24h", s)
}

type authed func(w http.ResponseWriter, r *http.Request, who string)

// admin requires a valid token.
func (f *Fleet) admin(h authed) http.HandlerFunc {
	return f.count(func(w http.ResponseWriter, r *http.Request) {
		who, ok := f.authenticate(r)
		if !ok {
			f.unauthorized(w)
			return
		}
		h(w, r, who)
	})
}

// read requires a valid token unless reads are open.
func (f *Fleet) read(h authed) http.HandlerFunc {
	return f.count(func(w http.ResponseWriter, r *http.Request) {
		who, ok := f.authenticate(r)
		if !ok && !f.opts.OpenReads {
			f.unauthorized(w)
			return
		}
		h(w, r, who)
	})
}

func (f *Fleet) authenticate(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return "", false
	}
	return f.tokens.Load().match(strings.TrimSpace(tok))
}

func (f *Fleet) unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="hnboot"`)
	err := errors.New("missing or wrong bearer token")
	if len(f.tokens.Load().names) == 0 {
		// Not the client's fault: no token could be right.
		err = errors.New("this server has no admin tokens: start imaged serve with --tokens FILE (\"NAME TOKEN\" lines)")
	}
	writeErr(w, http.StatusUnauthorized, err)
}

type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c *codeWriter) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *codeWriter) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	return c.ResponseWriter.Write(b)
}

// count counts responses by status code for the metrics.
func (f *Fleet) count(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cw := &codeWriter{ResponseWriter: w}
		h(cw, r)
		code := cw.code
		if code == 0 {
			code = http.StatusOK
		}
		v, _ := f.apiCodes.LoadOrStore(code, new(atomic.Uint64))
		v.(*atomic.Uint64).Add(1)
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		err = dec.Decode(v)
	}
	if err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("request body: %v", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeStatus writes st as writeJSON would, but encodes the hosts one at
// a time: the status of 10,000 hosts is tens of MB of JSON, and building it
// whole (and again indented) would double imaged's memory for a moment.
func writeStatus(w http.ResponseWriter, st Status) {
	hosts, unknown := st.Hosts, st.Unknown
	st.Hosts, st.Unknown = nil, nil
	head, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	before, after, ok := bytes.Cut(head, []byte(`"hosts": null`))
	if !ok {
		writeJSON(w, http.StatusOK, st)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	defer bw.Flush()
	bw.Write(before)
	list := func(name string, n int, elem func(i int) any) {
		bw.WriteString(`"` + name + `": [`)
		for i := range n {
			if i > 0 {
				bw.WriteByte(',')
			}
			b, _ := json.MarshalIndent(elem(i), "    ", "  ")
			bw.WriteString("\n    ")
			bw.Write(b)
		}
		if n > 0 {
			bw.WriteString("\n  ")
		}
		bw.WriteString("]")
	}
	if hosts == nil {
		bw.WriteString(`"hosts": null`)
	} else {
		list("hosts", len(hosts), func(i int) any { return hosts[i] })
	}
	if len(unknown) > 0 {
		bw.WriteString(",\n  ")
		list("unknown_checkins", len(unknown), func(i int) any { return unknown[i] })
	}
	bw.Write(after)
	bw.WriteString("\n")
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
