// Package dashboard is the fleet's web dashboard at /ui/ on imaged
// serve's admin listener: server-rendered pages (html/template, so every
// host-reported string is escaped), forms that work without JavaScript,
// a little plain JavaScript for live updates over one server-sent event
// stream, and the big red button. Logins are admin tokens (operators) or
// users of a bcrypt users file (viewers or operators); sessions are
// cookies; every state-changing request carries the session's CSRF token
// and passes the standard library's cross-origin check.
package dashboard

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/manifest"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Options configure the dashboard.
type Options struct {
	Users        map[string]User // from ReadUsers
	UsersFile    string          // where Users came from, for ReloadUsers
	SessionTTL   time.Duration   // 0 → 8h
	OfflineAfter time.Duration   // a host not heard from for this long is offline; 0 → 15m
	PageSize     int             // hosts per page; 0 → 100
	Logger       *slog.Logger
	Now          func() time.Time
}

// Dashboard serves /ui/.
type Dashboard struct {
	f     *fleet.Fleet
	opts  Options
	log   *slog.Logger
	ss    *sessions
	users atomic.Pointer[map[string]User]
	pages map[string]*template.Template
	mux   *http.ServeMux
	fails *throttle // failed logins by client address
}

// New builds the dashboard of f.
func New(f *fleet.Fleet, opts Options) (*Dashboard, error) {
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 8 * time.Hour
	}
	if opts.OfflineAfter <= 0 {
		opts.OfflineAfter = 15 * time.Minute
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 100
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d := &Dashboard{f: f, opts: opts, log: opts.Logger, pages: map[string]*template.Template{}, fails: newThrottle(LoginFailures, LoginWindow),
		ss: &sessions{m: map[[32]byte]*session{}, ttl: opts.SessionTTL, now: opts.Now}}
	d.users.Store(&opts.Users)
	for _, p := range []string{"login", "overview", "hosts", "host", "images", "image", "rollouts", "audit", "reverted", "message"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("dashboard: template %s: %w", p, err)
		}
		d.pages[p] = t
	}
	static, _ := fs.Sub(staticFS, "static")
	m := http.NewServeMux()
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /ui/login", d.loginPage)
	m.HandleFunc("POST /ui/login", d.login)
	m.HandleFunc("POST /ui/logout", d.logout)
	m.HandleFunc("GET /ui/{$}", d.viewer(d.overview))
	m.HandleFunc("GET /ui/hosts", d.viewer(d.hosts))
	m.HandleFunc("GET /ui/hosts/{host}", d.viewer(d.host))
	m.HandleFunc("GET /ui/images", d.viewer(d.images))
	m.HandleFunc("GET /ui/images/{ref}", d.viewer(d.image))
	m.HandleFunc("GET /ui/rollouts", d.viewer(d.rollouts))
	m.HandleFunc("GET /ui/audit", d.viewer(d.audit))
	m.HandleFunc("GET /ui/reverted", d.viewer(d.reverted))
	m.HandleFunc("GET /ui/events", d.viewer(d.events))
	m.HandleFunc("POST /ui/assign", d.operator(d.assign))
	m.HandleFunc("POST /ui/revert", d.operator(d.revert))
	m.HandleFunc("POST /ui/rollouts/{name}/{action}", d.operator(d.rolloutAction))
	m.HandleFunc("/ui", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusFound) })
	d.mux = m
	return d, nil
}

// ServeHTTP serves /ui/ with the security headers every page carries and
// the cross-origin check on every unsafe method (a forged form post
// from another site is refused before any handler runs).
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	if err := cop.Check(r); err != nil {
		d.log.Warn("dashboard: cross-origin request refused", "method", r.Method, "path", r.URL.Path, "origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
		http.Error(w, "refused: cross-origin request", http.StatusForbidden)
		return
	}
	d.mux.ServeHTTP(w, r)
}

var cop = http.NewCrossOriginProtection()

// page is what every template gets.
type page struct {
	Title, Nav string
	User       string
	Role       Role
	CSRF       string
	Operator   bool
	Error      string
	Data       any
}

func (d *Dashboard) render(w http.ResponseWriter, code int, name string, p page) {
	var buf bytes.Buffer
	if err := d.pages[name].Execute(&buf, p); err != nil {
		d.log.Error("dashboard: render", "page", name, "err", err)
		http.Error(w, "render: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

type handler func(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error)

// viewer runs h for any logged-in user; a browser without a session is
// sent to the login page.
func (d *Dashboard) viewer(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss := d.ss.get(r)
		if ss == nil {
			if r.URL.Path == "/ui/events" {
				http.Error(w, "not logged in", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/ui/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		d.run(w, r, ss, h)
	}
}

// operator runs h for an operator, on a POST that carries the session's
// CSRF token.
func (d *Dashboard) operator(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss := d.ss.get(r)
		switch {
		case ss == nil:
			d.render(w, http.StatusUnauthorized, "message", page{Title: "Not logged in", Error: "Your session ended: log in again."})
			return
		case !csrfOK(r, ss):
			d.log.Warn("dashboard: request without the session's CSRF token refused", "user", ss.User, "path", r.URL.Path, "remote", r.RemoteAddr)
			d.render(w, http.StatusForbidden, "message", d.base(ss, "Refused", "", "The form's CSRF token is missing or wrong: reload the page and try again."))
			return
		case ss.Role != RoleOperator:
			d.render(w, http.StatusForbidden, "message", d.base(ss, "Refused", "", "You are a viewer: only operators assign, roll out and revert."))
			return
		}
		d.run(w, r, ss, h)
	}
}

func (d *Dashboard) run(w http.ResponseWriter, r *http.Request, ss *session, h handler) {
	p, name, err := h(w, r, ss)
	if name == "" && err == nil {
		return // h wrote the answer (a redirect, the event stream)
	}
	code := http.StatusOK
	if err != nil {
		code = http.StatusBadRequest
		if errors.Is(err, fleet.ErrDatabase) {
			code = http.StatusServiceUnavailable
		}
		if name == "" {
			p, name = d.base(ss, "Error", "", ""), "message"
		}
		p.Error = err.Error()
	}
	d.render(w, code, name, p)
}

func (d *Dashboard) base(ss *session, title, nav, errMsg string) page {
	p := page{Title: title, Nav: nav, Error: errMsg}
	if ss != nil {
		p.User, p.Role, p.CSRF, p.Operator = ss.User, ss.Role, ss.CSRF, ss.Role == RoleOperator
	}
	return p
}

// who is a dashboard user as the audit log names them.
func who(ss *session) string { return ss.User }

func (d *Dashboard) loginPage(w http.ResponseWriter, r *http.Request) {
	if d.ss.get(r) != nil {
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
		return
	}
	d.render(w, http.StatusOK, "login", page{Title: "Log in", Data: map[string]any{"Next": safeNext(r.URL.Query().Get("next")), "Users": len(*d.users.Load()) > 0}})
}

// safeNext keeps a redirect after login on the dashboard.
func safeNext(s string) string {
	if !strings.HasPrefix(s, "/ui/") || strings.HasPrefix(s, "//") || strings.ContainsAny(s, "\\\r\n") {
		return "/ui/"
	}
	return s
}

func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	client := clientAddr(r.RemoteAddr)
	if wait := d.fails.wait(client, d.opts.Now()); wait > 0 {
		secs := int(wait.Round(time.Second) / time.Second)
		if secs < 1 {
			secs = 1
		}
		d.log.Warn("dashboard: login refused: too many failed logins from this address", "remote", r.RemoteAddr, "retry_after_s", secs)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		d.render(w, http.StatusTooManyRequests, "login", page{Title: "Log in",
			Error: fmt.Sprintf("Too many failed logins from your address: try again in %d s.", secs),
			Data:  map[string]any{"Next": safeNext(r.PostFormValue("next")), "Users": len(*d.users.Load()) > 0}})
		return
	}
	var name string
	var role Role
	ok := false
	if tok := strings.TrimSpace(r.PostFormValue("token")); tok != "" {
		if n, good := d.f.MatchToken(tok); good {
			name, role, ok = n, RoleOperator, true
		}
	} else if user := r.PostFormValue("user"); user != "" {
		u, known := (*d.users.Load())[user]
		if !known {
			_ = (User{hash: dummyHash}).check(r.PostFormValue("password"))
		} else if u.check(r.PostFormValue("password")) {
			name, role, ok = u.Name, u.Role, true
		}
	}
	next := safeNext(r.PostFormValue("next"))
	if !ok {
		d.fails.failed(client, d.opts.Now())
		d.log.Warn("dashboard: login refused", "user", r.PostFormValue("user"), "remote", r.RemoteAddr)
		d.render(w, http.StatusUnauthorized, "login", page{Title: "Log in", Error: "Wrong token, or wrong user or password.",
			Data: map[string]any{"Next": next, "Users": len(*d.users.Load()) > 0}})
		return
	}
	d.fails.succeeded(client)
	id, _ := d.ss.create(name, role)
	http.SetCookie(w, cookie(r, id, int(d.opts.SessionTTL/time.Second)))
	d.auditSession(name, r, "login", "dashboard, as "+string(role))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// ReloadUsers reads the users file again (imaged serve does on SIGHUP);
// a file that does not load keeps the users it had. Sessions stay: a
// removed user's session ends at its expiry or logout.
func (d *Dashboard) ReloadUsers() error {
	if d.opts.UsersFile == "" {
		return nil
	}
	us, err := ReadUsers(d.opts.UsersFile)
	if err != nil {
		d.log.Error("dashboard: users file not reloaded; keeping the last good one", "err", err)
		return err
	}
	d.users.Store(&us)
	d.log.Info("dashboard: users reloaded", "users", len(us))
	return nil
}

// auditSession puts a login or logout in the audit log; with the
// database away it is only logged (reading the dashboard goes on).
func (d *Dashboard) auditSession(user string, r *http.Request, action, detail string) {
	d.log.Info("dashboard: "+action, "user", user, "remote", r.RemoteAddr)
	if err := d.f.AuditAction(fleet.AuditEntry{Who: user, Remote: r.RemoteAddr, Action: action, Target: "dashboard", Detail: detail}); err != nil {
		d.log.Warn("dashboard: audit "+action, "user", user, "err", err)
	}
}

// logout ends the session on the server (its cookie is worth nothing
// after, even if kept) and clears the cookie.
func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	if ss := d.ss.get(r); ss != nil {
		if !csrfOK(r, ss) {
			d.render(w, http.StatusForbidden, "message", d.base(ss, "Refused", "", "The form's CSRF token is missing or wrong."))
			return
		}
		d.auditSession(ss.User, r, "logout", "dashboard")
	}
	d.ss.end(r)
	http.SetCookie(w, cookie(r, "", -1))
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

// Host categories of the overview, beside the fleet's states.
const (
	catOffline = "offline" // checked in once, not for OfflineAfter
)

// row is one host as the pages show it.
type row struct {
	fleet.HostStatus
	Labels  map[string]string
	Offline bool
	Seen    time.Time
}

func (d *Dashboard) rows(st fleet.Status) []row {
	des := d.f.Desired()
	now := d.opts.Now()
	out := make([]row, len(st.Hosts))
	for i, h := range st.Hosts {
		r := row{HostStatus: h}
		if dh := des.FindHost(h.MAC); dh != nil {
			r.Labels = des.Labels(dh)
		}
		if h.LastCheckin != nil {
			r.Seen = h.LastCheckin.Time
			r.Offline = now.Sub(h.LastCheckin.Time) > d.opts.OfflineAfter
		}
		out[i] = r
	}
	return out
}

type count struct {
	Name  string
	Label string
	N     int
}

func (d *Dashboard) overview(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	p := d.base(ss, "Fleet", "overview", "")
	st := d.f.Status()
	rows := d.rows(st)
	by := map[string]int{}
	inUse := map[string]int{}
	for _, h := range rows {
		by[h.State]++
		if h.Offline {
			by[catOffline]++
		}
		if h.Current.Digest != "" {
			inUse[imageName(h.Current)]++
		}
	}
	cats := []count{
		{fleet.StateOK, "confirmed", by[fleet.StateOK]},
		{fleet.StateTrial, "on trial", by[fleet.StateTrial]},
		{fleet.StateRevertPending, "revert pending", by[fleet.StateRevertPending]},
		{fleet.StateFailed, "failed (image reverted)", by[fleet.StateFailed]},
		{fleet.StateStaged, "staged", by[fleet.StateStaged]},
		{fleet.StateOutdated, "outdated", by[fleet.StateOutdated]},
		{catOffline, "offline (no check-in for " + d.opts.OfflineAfter.String() + ")", by[catOffline]},
		{fleet.StateNeverSeen, "never seen", by[fleet.StateNeverSeen]},
	}
	var images []count
	for k, n := range inUse {
		images = append(images, count{Name: k, N: n})
	}
	sort.Slice(images, func(i, j int) bool {
		return images[i].N > images[j].N || images[i].N == images[j].N && images[i].Name < images[j].Name
	})
	var running []fleet.RolloutStatus
	for _, ro := range st.Rollouts {
		if ro.State == "running" || ro.State == "paused" || ro.State == "halted" {
			if rs, err := d.f.RolloutStatus(ro.Name); err == nil {
				running = append(running, rs)
			}
		}
	}
	unknown := st.Unknown
	if len(unknown) > 20 {
		unknown = unknown[:20]
	}
	p.Data = map[string]any{"Hosts": len(rows), "States": cats, "Images": images, "Rollouts": running,
		"Unknown": unknown, "UnknownN": len(st.Unknown), "Database": st.Database, "ConfigError": st.ConfigError, "Warnings": st.Warnings}
	return p, "overview", nil
}

// hostFilter is the hosts table's query.
type hostFilter struct {
	Group, Label, Image, State, Sort, Q string
	Page                                int
}

func parseFilter(v url.Values) hostFilter {
	f := hostFilter{Group: v.Get("group"), Label: v.Get("label"), Image: v.Get("image"), State: v.Get("state"), Sort: v.Get("sort"), Q: v.Get("q")}
	f.Page, _ = strconv.Atoi(v.Get("page"))
	if f.Page < 1 {
		f.Page = 1
	}
	return f
}

// match is the filter's rule, pure.
func (f hostFilter) match(h row) bool {
	if f.Group != "" && h.Group != f.Group {
		return false
	}
	if f.Label != "" {
		k, v, _ := strings.Cut(f.Label, "=")
		if got, ok := h.Labels[k]; !ok || (v != "" && got != v) {
			return false
		}
	}
	if f.Image != "" && !strings.Contains(imageName(h.Desired), f.Image) && !strings.Contains(imageName(h.Current), f.Image) {
		return false
	}
	switch f.State {
	case "":
	case catOffline:
		if !h.Offline {
			return false
		}
	default:
		if h.State != f.State {
			return false
		}
	}
	if f.Q != "" && !strings.Contains(h.Hostname, f.Q) && !strings.Contains(h.MAC, strings.ToLower(f.Q)) {
		return false
	}
	return true
}

func sortRows(rows []row, key string) {
	less := map[string]func(a, b row) bool{
		"state":   func(a, b row) bool { return a.State < b.State },
		"group":   func(a, b row) bool { return a.Group < b.Group },
		"image":   func(a, b row) bool { return imageName(a.Current) < imageName(b.Current) },
		"checkin": func(a, b row) bool { return a.Seen.After(b.Seen) },
	}[key]
	sort.SliceStable(rows, func(i, j int) bool {
		if less != nil {
			if less(rows[i], rows[j]) {
				return true
			}
			if less(rows[j], rows[i]) {
				return false
			}
		}
		return rows[i].Hostname < rows[j].Hostname
	})
}

// with is the query of f with one key changed, for links.
func (f hostFilter) with(k, v string) string {
	q := url.Values{}
	for kk, vv := range map[string]string{"group": f.Group, "label": f.Label, "image": f.Image, "state": f.State, "sort": f.Sort, "q": f.Q} {
		if vv != "" {
			q.Set(kk, vv)
		}
	}
	if v == "" {
		q.Del(k)
	} else {
		q.Set(k, v)
	}
	return "/ui/hosts?" + q.Encode()
}

func (d *Dashboard) hosts(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	p := d.base(ss, "Hosts", "hosts", "")
	f := parseFilter(r.URL.Query())
	all := d.rows(d.f.Status())
	var rows []row
	for _, h := range all {
		if f.match(h) {
			rows = append(rows, h)
		}
	}
	sortRows(rows, f.Sort)
	n := len(rows)
	pages := max(1, (n+d.opts.PageSize-1)/d.opts.PageSize)
	f.Page = min(f.Page, pages)
	lo := (f.Page - 1) * d.opts.PageSize
	rows = rows[lo:min(lo+d.opts.PageSize, n)]
	des := d.f.Desired()
	var groups []string
	for g := range des.Groups {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var sorts []map[string]string
	for _, s := range []string{"", "state", "group", "image", "checkin"} {
		label := s
		if s == "" {
			label = "name"
		}
		sorts = append(sorts, map[string]string{"Key": s, "Label": label, "URL": f.with("sort", s)})
	}
	pg := map[string]any{"N": n, "Page": f.Page, "Pages": pages, "From": lo + 1, "To": lo + len(rows)}
	if f.Page > 1 {
		pg["Prev"] = f.with("page", strconv.Itoa(f.Page-1))
	}
	if f.Page < pages {
		pg["Next"] = f.with("page", strconv.Itoa(f.Page+1))
	}
	p.Data = map[string]any{"Rows": rows, "Filter": f, "Groups": groups, "Images": imageRefs(des),
		"States": []string{fleet.StateOK, fleet.StateTrial, fleet.StateStaged, fleet.StateOutdated, fleet.StateRevertPending, fleet.StateFailed, fleet.StateNeverSeen, catOffline},
		"Sorts":  sorts, "Pager": pg}
	return p, "hosts", nil
}

func imageRefs(des *fleet.Desired) []string {
	var out []string
	for _, img := range des.Images {
		out = append(out, img.Ref())
	}
	sort.Strings(out)
	return out
}

// kv is a fact as the host page lists it.
type kv struct{ K, V string }

// flatten turns a JSON-able value into sorted key/value lines.
func flatten(v any) []kv {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	var m any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // 2147483648, not 2.147483648e+09
	dec.Decode(&m)
	var out []kv
	var walk func(prefix string, x any)
	walk = func(prefix string, x any) {
		switch t := x.(type) {
		case map[string]any:
			for k, v := range t {
				walk(strings.TrimPrefix(prefix+"."+k, "."), v)
			}
		case []any:
			for i, v := range t {
				walk(fmt.Sprintf("%s[%d]", prefix, i), v)
			}
		case nil:
		default:
			out = append(out, kv{prefix, fmt.Sprint(t)})
		}
	}
	walk("", m)
	sort.Slice(out, func(i, j int) bool { return out[i].K < out[j].K })
	return out
}

func (d *Dashboard) host(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	name := r.PathValue("host")
	p := d.base(ss, "Host "+name, "hosts", "")
	inv, err := d.f.HostInventory(name)
	if err != nil {
		return p, "message", err
	}
	why, _ := d.f.Why(name, 5)
	var keys []string
	if inv.Checkin != nil {
		keys = inv.Checkin.SSHHostKeys
	}
	var facts []kv
	if inv.Facts != nil {
		facts = flatten(inv.Facts)
	}
	des := d.f.Desired()
	refOf := map[string]string{}
	for _, img := range des.Images {
		refOf[img.Digest] = img.Ref()
	}
	type slot struct{ Name, Ref, Digest string }
	var slots []slot
	for _, s := range []slot{{"current", "", inv.Slots.Current}, {"new", "", inv.Slots.New}, {"old", "", inv.Slots.Old}, {"broken", "", inv.Slots.Broken}} {
		s.Ref = refOf[s.Digest]
		slots = append(slots, s)
	}
	p.Title = "Host " + inv.Hostname
	p.Data = map[string]any{"Inv": inv, "Why": why, "Slots": slots, "Facts": facts, "Keys": keys, "Images": imageRefs(d.f.Desired()),
		"Name": inv.Hostname, "Labels": inv.Labels}
	return p, "host", nil
}

func (d *Dashboard) images(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	p := d.base(ss, "Images", "images", "")
	ls, err := d.f.ListImages()
	if err != nil {
		return p, "images", err
	}
	p.Data = map[string]any{"Images": ls}
	return p, "images", nil
}

func (d *Dashboard) image(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	ref := r.PathValue("ref")
	p := d.base(ss, "Image "+ref, "images", "")
	des := d.f.Desired()
	img := des.Image(ref)
	if img == nil {
		return p, "message", fmt.Errorf("unknown image %q", ref)
	}
	pk := d.f.ImagePackages(img.Digest)
	data := map[string]any{"Image": img, "Ref": ref, "Packages": pk, "Images": imageRefs(des)}
	// The manifest beside the image (IMAGE.json), as mkimage wrote it.
	if m, err := manifest.ReadFile(img.Path + ".json"); err == nil {
		data["Manifest"] = m
	} else {
		data["ManifestErr"] = err.Error()
	}
	if other := r.URL.Query().Get("diff"); other != "" {
		o := des.Image(other)
		if o == nil {
			return p, "message", fmt.Errorf("unknown image %q", other)
		}
		po := d.f.ImagePackages(o.Digest)
		added, removed, changed := manifest.DiffPackages(po.Packages, pk.Packages)
		data["Diff"] = map[string]any{"Other": other, "Added": added, "Removed": removed, "Changed": changed,
			"Known": pk.Source != "unknown" && po.Source != "unknown"}
	}
	p.Data = data
	return p, "image", nil
}

func (d *Dashboard) rollouts(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	p := d.base(ss, "Rollouts", "rollouts", "")
	st := d.f.Status()
	type ro struct {
		Name, Image, Origin, State string
		Members                    int
		Waves                      *fleet.RolloutStatus
	}
	var list []ro
	for _, v := range st.Rollouts {
		x := ro{Name: v.Name, Image: v.Image, Origin: v.Origin, State: v.State, Members: len(v.Members)}
		if v.State != "" {
			if rs, err := d.f.RolloutStatus(v.Name); err == nil {
				x.Waves = &rs
			}
		}
		list = append(list, x)
	}
	p.Data = map[string]any{"Rollouts": list}
	return p, "rollouts", nil
}

func (d *Dashboard) audit(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	p := d.base(ss, "Audit log", "audit", "")
	v := r.URL.Query()
	q := fleet.AuditQuery{Who: v.Get("actor"), Action: v.Get("action"), Limit: 200}
	filter := map[string]string{"Actor": v.Get("actor"), "Host": v.Get("host"), "Action": v.Get("action"), "Since": v.Get("since"), "Until": v.Get("until")}
	p.Data = map[string]any{"Filter": filter}
	var err error
	if q.Since, err = fleet.ParseSince(v.Get("since"), d.opts.Now()); err != nil {
		return p, "audit", fmt.Errorf("since: %w", err)
	}
	if q.Until, err = fleet.ParseSince(v.Get("until"), d.opts.Now()); err != nil {
		return p, "audit", fmt.Errorf("until: %w", err)
	}
	es, err := d.f.QueryAudit(q, v.Get("host"))
	if err != nil {
		return p, "audit", err
	}
	// Newest first on a page.
	for i, j := 0, len(es)-1; i < j; i, j = i+1, j-1 {
		es[i], es[j] = es[j], es[i]
	}
	p.Data = map[string]any{"Filter": filter, "Entries": es}
	return p, "audit", nil
}

// target reads the form's target: kind host, group or fleet, and name.
func target(r *http.Request) (fleet.Target, string, error) {
	kind, name := r.PostFormValue("kind"), strings.TrimSpace(r.PostFormValue("name"))
	switch kind {
	case "host":
		return fleet.Target{Host: name}, name, nil
	case "group":
		return fleet.Target{Group: name}, name, nil
	case "fleet":
		return fleet.Target{All: true}, "whole fleet", nil
	}
	return fleet.Target{}, "", fmt.Errorf("target kind %q: want host, group or fleet", kind)
}

// back is where a form returns to: the page it was on.
func back(r *http.Request) string { return safeNext(r.PostFormValue("back")) }

func (d *Dashboard) assign(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	t, _, err := target(r)
	if err != nil {
		return page{}, "", err
	}
	if _, err := d.f.Assign(who(ss), r.RemoteAddr, t, r.PostFormValue("image")); err != nil {
		return page{}, "", err
	}
	http.Redirect(w, r, back(r), http.StatusSeeOther)
	return page{}, "", nil
}

// revert is the big red button: the operator typed the target's name to
// confirm; afterwards the page of what was reverted and which hosts
// applied it.
func (d *Dashboard) revert(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	t, name, err := target(r)
	if err != nil {
		return page{}, "", err
	}
	if got := strings.TrimSpace(r.PostFormValue("confirm")); got != name {
		return page{}, "", fmt.Errorf("not reverted: type %q to confirm (you typed %q)", name, got)
	}
	since := d.opts.Now().UTC().Format(time.RFC3339Nano)
	if _, err := d.f.Revert(who(ss), r.RemoteAddr, t); err != nil {
		return page{}, "", err
	}
	http.Redirect(w, r, "/ui/reverted?"+url.Values{"since": {since}, "by": {who(ss)}, "target": {t.String()}}.Encode(), http.StatusSeeOther)
	return page{}, "", nil
}

// revertRow is one host of a revert and whether it applied it.
type revertRow struct {
	Host, MAC, ID, Pinned, State string
	Applied                      string // applied, pending, or superseded (a later revert is pending)
}

// reverted lists the reverts by one user since a time, each host with
// applied (it reported the revert ID) or pending.
func (d *Dashboard) reverted(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	p := d.base(ss, "Reverted", "", "")
	v := r.URL.Query()
	since, err := fleet.ParseSince(v.Get("since"), d.opts.Now())
	if err != nil {
		return p, "message", err
	}
	es, err := d.f.QueryAudit(fleet.AuditQuery{Who: v.Get("by"), Action: "revert", Since: since}, "")
	if err != nil {
		return p, "message", err
	}
	pending := map[string]string{} // MAC → pending revert ID
	state := map[string]string{}
	for _, h := range d.f.Status().Hosts {
		state[h.MAC] = h.State
		if h.RevertPending != nil {
			pending[h.MAC] = h.RevertPending.ID
		}
	}
	var rows []revertRow
	applied := 0
	for _, e := range es {
		// Detail: "revert ID[, assigned REF]".
		rest, _ := strings.CutPrefix(e.Detail, "revert ")
		id, pinned, _ := strings.Cut(rest, ", assigned ")
		rr := revertRow{Host: e.Host, MAC: e.MAC, ID: id, Pinned: pinned, State: state[e.MAC]}
		switch pending[e.MAC] {
		case "":
			rr.Applied = "applied"
			applied++
		case id:
			rr.Applied = "pending"
		default:
			rr.Applied = "superseded"
		}
		rows = append(rows, rr)
	}
	p.Data = map[string]any{"Rows": rows, "Applied": applied, "Target": v.Get("target"), "By": v.Get("by")}
	return p, "reverted", nil
}

func (d *Dashboard) rolloutAction(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	if _, err := d.f.RolloutAction(who(ss), r.RemoteAddr, r.PathValue("name"), r.PathValue("action"), r.PostFormValue("revert") == "on"); err != nil {
		return page{}, "", err
	}
	http.Redirect(w, r, "/ui/rollouts", http.StatusSeeOther)
	return page{}, "", nil
}

// events is the one server-sent event stream a page opens: an event
// "change" when the fleet changed (at most one a second, however many
// hosts check in), a comment every 25 s to keep proxies from closing it.
// The page then fetches itself again; nothing polls.
func (d *Dashboard) events(w http.ResponseWriter, r *http.Request, ss *session) (page, string, error) {
	fl, ok := w.(http.Flusher)
	if !ok {
		return page{}, "", errors.New("streaming unsupported")
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 3000\n\n")
	fl.Flush()
	ctx := r.Context()
	keep := time.NewTicker(25 * time.Second)
	defer keep.Stop()
	n := 0
	for {
		ch := d.f.Changed()
		select {
		case <-ctx.Done():
			return page{}, "", nil
		case <-keep.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case <-ch:
			n++
			fmt.Fprintf(w, "event: change\ndata: %d\n\n", n)
			fl.Flush()
			if d.ss.get(r) == nil { // logged out elsewhere: the stream ends too
				return page{}, "", nil
			}
			select { // coalesce a burst of check-ins
			case <-ctx.Done():
				return page{}, "", nil
			case <-time.After(time.Second):
			}
			continue
		}
		fl.Flush()
	}
}

func imageName(ii fleet.ImageInfo) string {
	if ii.Ref != "" {
		return ii.Ref
	}
	return shortDigest(ii.Digest)
}

func shortDigest(d string) string {
	if h, ok := strings.CutPrefix(d, "sha256:"); ok && len(h) > 12 {
		return "sha256:" + h[:12]
	}
	return d
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.UTC().Format("2006-01-02")
}

var funcs = template.FuncMap{
	"image": imageName,
	"short": shortDigest,
	"ago":   ago,
	"when":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"qwith": func(f hostFilter, k, v string) string { return f.with(k, v) },
	"labels": func(m map[string]string) string {
		var ks []string
		for k, v := range m {
			ks = append(ks, k+"="+v)
		}
		sort.Strings(ks)
		return strings.Join(ks, " ")
	},
	"pathesc": url.PathEscape,
	"list":    func(s ...string) []string { return s },
	"bytes":   func(n int64) string { return humanize.IBytes(uint64(max(n, 0))) },
}
