package dashboard

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Role is what a dashboard user may do.
type Role string

const (
	// RoleViewer reads every page and presses nothing.
	RoleViewer Role = "viewer"
	// RoleOperator also assigns, starts, pauses and aborts rollouts, and
	// reverts. An admin token logs in as an operator.
	RoleOperator Role = "operator"
)

// User is one line of the users file.
type User struct {
	Name string
	Role Role
	hash []byte // bcrypt
}

// ReadUsers reads a users file: "NAME ROLE BCRYPT-HASH" a line, '#'
// starts a comment. The hashes are bcrypt ($2a$, $2b$ or $2y$, as
// `imaged passwd` or `htpasswd -nB` make them): bcrypt is slow on
// purpose and salted, so a stolen file costs an attacker per guess, and
// it is the one password hash that Debian's tools, Go's x/crypto and
// every operator's htpasswd agree on.
func ReadUsers(path string) (map[string]User, error) {
	users := map[string]User{}
	if path == "" {
		return users, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dashboard: users file: %w", err)
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
		fs := strings.Fields(s)
		if len(fs) != 3 {
			return nil, fmt.Errorf("dashboard: %s:%d: want NAME ROLE BCRYPT-HASH", path, line)
		}
		role := Role(fs[1])
		if role != RoleViewer && role != RoleOperator {
			return nil, fmt.Errorf("dashboard: %s:%d: role %q: want viewer or operator", path, line, fs[1])
		}
		if _, err := bcrypt.Cost([]byte(fs[2])); err != nil {
			return nil, fmt.Errorf("dashboard: %s:%d: %s's hash is not bcrypt (make one with imaged passwd): %v", path, line, fs[0], err)
		}
		if _, dup := users[fs[0]]; dup {
			return nil, fmt.Errorf("dashboard: %s:%d: %s is there twice", path, line, fs[0])
		}
		users[fs[0]] = User{Name: fs[0], Role: role, hash: []byte(fs[2])}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dashboard: %s: %w", path, err)
	}
	return users, nil
}

// HashPassword is a users file's hash of pw.
func HashPassword(pw string) (string, error) {
	b, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	return string(b), err
}

// dummyHash is compared against when the user does not exist, so a
// wrong name takes as long as a wrong password.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("no such user"), bcrypt.MinCost+6)

func (u User) check(pw string) bool {
	return bcrypt.CompareHashAndPassword(u.hash, []byte(pw)) == nil
}

// session is one logged-in browser.
type session struct {
	User    string
	Role    Role
	CSRF    string
	Expires time.Time
}

// sessions are kept in memory: a restart of imaged logs everyone out,
// which is the safe way round.
type sessions struct {
	mu  sync.Mutex
	m   map[[32]byte]*session // by the SHA-256 of the cookie's value
	ttl time.Duration
	now func() time.Time
}

const cookieName = "hnboot_session"

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session and returns its cookie value.
func (s *sessions) create(user string, role Role) (string, *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for k, v := range s.m { // expired ones go now and then
		if now.After(v.Expires) {
			delete(s.m, k)
		}
	}
	id := randomToken()
	ss := &session{User: user, Role: role, CSRF: randomToken(), Expires: now.Add(s.ttl)}
	s.m[sha256.Sum256([]byte(id))] = ss
	return id, ss
}

// get returns the live session of r's cookie, or nil.
func (s *sessions) get(r *http.Request) *session {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return nil
	}
	k := sha256.Sum256([]byte(c.Value))
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.m[k]
	if ss == nil {
		return nil
	}
	if s.now().After(ss.Expires) {
		delete(s.m, k)
		return nil
	}
	return ss
}

// end removes r's session on the server: its cookie is worthless after.
func (s *sessions) end(r *http.Request) {
	if c, err := r.Cookie(cookieName); err == nil {
		s.mu.Lock()
		delete(s.m, sha256.Sum256([]byte(c.Value)))
		s.mu.Unlock()
	}
}

// cookie is the session cookie: HttpOnly (no script reads it),
// SameSite=Strict (no other site's page sends it), Secure under TLS,
// scoped to /ui/.
func cookie(r *http.Request, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: cookieName, Value: value, Path: "/ui/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: maxAge}
}

// csrfOK checks the form's CSRF token against the session's.
func csrfOK(r *http.Request, ss *session) bool {
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(ss.CSRF)) == 1
}
