package dashboard

import (
	"fmt"
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	type step struct {
		op     string // "fail", "ok", "wait"
		client string
		sec    int
		want   time.Duration // for "wait"
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"under the limit", []step{{"fail", "a", 0, 0}, {"fail", "a", 1, 0}, {"wait", "a", 2, 0}}},
		{"at the limit: until the oldest failure leaves the window", []step{
			{"fail", "a", 0, 0}, {"fail", "a", 10, 0}, {"fail", "a", 20, 0},
			{"wait", "a", 30, 30 * time.Second}, {"wait", "a", 59, time.Second}, {"wait", "a", 60, 0}}},
		{"another client is not slowed", []step{
			{"fail", "a", 0, 0}, {"fail", "a", 1, 0}, {"fail", "a", 2, 0}, {"wait", "b", 3, 0}}},
		{"a success forgets", []step{
			{"fail", "a", 0, 0}, {"fail", "a", 1, 0}, {"ok", "a", 2, 0}, {"fail", "a", 3, 0}, {"wait", "a", 4, 0}}},
		{"failures while refused keep the newest", []step{
			{"fail", "a", 0, 0}, {"fail", "a", 1, 0}, {"fail", "a", 2, 0}, {"fail", "a", 50, 0},
			{"wait", "a", 55, 6 * time.Second}}},
	} {
		th := newThrottle(3, time.Minute)
		for i, s := range tc.steps {
			switch s.op {
			case "fail":
				th.failed(s.client, at(s.sec))
			case "ok":
				th.succeeded(s.client)
			case "wait":
				if got := th.wait(s.client, at(s.sec)); got != s.want {
					t.Errorf("%s: step %d: wait(%s, +%ds) = %v, want %v", tc.name, i, s.client, s.sec, got, s.want)
				}
			}
		}
	}
}

func TestThrottleForgetsExpired(t *testing.T) {
	th := newThrottle(3, time.Minute)
	t0 := time.Now()
	for i := 0; i < loginClients; i++ {
		th.failed(fmt.Sprint("192.0.2.", i), t0)
	}
	th.failed("late", t0.Add(2*time.Minute)) // all others expired: forgotten, late kept
	if len(th.fails) != 1 || th.fails["late"] == nil {
		t.Errorf("after expiry the throttle remembers %d clients, want only the new one", len(th.fails))
	}
}

func TestClientAddr(t *testing.T) {
	for in, want := range map[string]string{"192.0.2.1:5555": "192.0.2.1", "[2001:db8::1]:80": "2001:db8::1", "weird": "weird"} {
		if got := clientAddr(in); got != want {
			t.Errorf("clientAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
