package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestPostJSON(t *testing.T) {
	var gotBody, gotType, gotMethod, gotPath string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotBody, gotType, gotMethod, gotPath = string(b), r.Header.Get("Content-Type"), r.Method, r.URL.Path
		if strings.Contains(gotBody, "refuse") {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	code, err := postJSON(ctx, srv.URL+"/checkin", []byte(`{"mac":"52:54:00:12:34:56"}`))
	if err != nil || code != http.StatusNoContent {
		t.Fatalf("postJSON = %d, %v; want 204, nil", code, err)
	}
	if gotMethod != "POST" || gotPath != "/checkin" || gotType != "application/json" || gotBody != `{"mac":"52:54:00:12:34:56"}` {
		t.Errorf("server saw %s %s %q %q", gotMethod, gotPath, gotType, gotBody)
	}
	if code, err := postJSON(ctx, srv.URL+"/checkin", []byte(`"refuse"`)); err != nil || code != http.StatusForbidden {
		t.Errorf("postJSON(refused) = %d, %v; want 403, nil", code, err)
	}
	if _, err := postJSON(ctx, "https://example.invalid/checkin", nil); err == nil || !strings.Contains(err.Error(), "plain http") {
		t.Errorf("postJSON(https) = %v, want an error saying plain http only", err)
	}
	srv.Close()
	if _, err := postJSON(ctx, srv.URL+"/checkin", nil); err == nil {
		t.Errorf("postJSON to a closed server succeeded")
	}
}

// A 503 (the server's fleet database is away: nothing was stored) is
// retried while the budget lasts; other answers are final.
func TestPostCheckinRetries503(t *testing.T) {
	for _, c := range []struct {
		name     string
		refusals int           // 503s before the server stores it
		budget   time.Duration // the check-in's budget
		want     int
		posts    int // at least
	}{
		{"stored after two 503s", 2, 5 * time.Second, http.StatusNoContent, 3},
		{"budget ends first", 100, 1200 * time.Millisecond, http.StatusServiceUnavailable, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			posts := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				posts++
				if posts <= c.refusals {
					http.Error(w, "fleet database unavailable", http.StatusServiceUnavailable)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), c.budget)
			defer cancel()
			code, err := postCheckin(ctx, srv.URL+"/checkin", []byte(`{}`), slog.New(slog.DiscardHandler))
			if err != nil || code != c.want || posts < c.posts {
				t.Errorf("postCheckin = %d, %v after %d posts, want %d after at least %d", code, err, posts, c.want, c.posts)
			}
		})
	}
}
