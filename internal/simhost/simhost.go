// Package simhost is a simulated host for tests and benchmarks of the
// fleet server: a goroutine that speaks the real HTTP API as an agent on a
// host would (GET /api/hosts/{mac}/desired, POST /api/checkin), with the
// image slots, trial and failure memory of a real host kept in memory,
// and no QEMU. Staging, rebooting and confirming take one round each.
package simhost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
)

// Behaviour of a host once it boots an image on trial.
const (
	Healthy   = ""          // confirms the trial
	Unhealthy = "unhealthy" // reports its health checks failed (and stays on trial)
	Reverts   = "reverts"   // the trial is reverted: the image is broken and remembered as failed
)

// Host is one simulated host. Fill the fields, then Run.
type Host struct {
	MAC    string
	Server string       // base URL of imaged serve
	Client *http.Client // nil: http.DefaultClient
	Every  time.Duration
	// Fail, if set, says how the host takes a given image digest.
	Fail func(digest string) string

	mu       sync.Mutex
	slots    checkin.Slots
	trial    bool
	health   *checkin.Health
	failed   []string
	failures []checkin.Failure
	applied  string
	staging  *checkin.Staging
	boots    int
}

// New is a host running current, confirmed.
func New(mac, server, current string, every time.Duration) *Host {
	return &Host{MAC: mac, Server: server, Every: every, slots: checkin.Slots{Current: current}}
}

// Current is the digest the host runs and whether it is on trial.
func (h *Host) Current() (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.slots.Current, h.trial
}

// Boots counts the host's reboots.
func (h *Host) Boots() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.boots
}

type desired struct {
	Image struct {
		Digest string `json:"digest"`
	} `json:"image"`
	Revert string `json:"revert"`
}

// Run checks in, acts on what the server wants, and checks in again
// every Every, until ctx ends.
func (h *Host) Run(ctx context.Context) error {
	if h.Client == nil {
		h.Client = http.DefaultClient
	}
	t := time.NewTicker(h.Every)
	defer t.Stop()
	for {
		if err := h.Round(ctx); err != nil && ctx.Err() == nil {
			// A refused check-in or a busy server: the next round
			// tries again, as the agent does.
			_ = err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Round is one round: ask, act one step, report.
func (h *Host) Round(ctx context.Context) error {
	var d desired
	if err := h.get(ctx, "/api/hosts/"+h.MAC+"/desired", &d); err != nil {
		return err
	}
	h.step(d)
	return h.post(ctx, "/api/checkin", h.report())
}

// step moves the host one step towards what the server wants: a revert,
// else stage, else reboot into the staged image, else end the trial.
func (h *Host) step(d desired) {
	h.mu.Lock()
	defer h.mu.Unlock()
	want := d.Image.Digest
	switch {
	case d.Revert != "" && d.Revert != h.applied:
		h.applied = d.Revert
		if h.slots.Old != "" {
			h.slots = checkin.Slots{Current: h.slots.Old, Broken: h.slots.Current}
			h.trial, h.health = false, nil
			h.boots++
		}
	case h.trial:
		switch h.fail(h.slots.Current) {
		case Unhealthy:
			h.health = &checkin.Health{State: "failed", Reason: "command app-ok: exit status 1"}
		case Reverts:
			bad := h.slots.Current
			h.slots = checkin.Slots{Current: h.slots.Old, Broken: bad}
			h.failed = append(h.failed, bad)
			h.failures = append(h.failures, checkin.Failure{Digest: bad, Time: time.Now(), Reason: "reverted (found as hn-root-broken.img)"})
			h.trial, h.health = false, nil
			h.boots++
		default:
			h.trial, h.health = false, &checkin.Health{State: "passed", Reason: "every check passed"}
		}
	case want == "" || want == h.slots.Current || slices.Contains(h.failed, want):
		if want == h.slots.Current {
			h.slots.New = ""
		}
	case h.slots.New == want:
		h.slots = checkin.Slots{Current: want, Old: h.slots.Current}
		h.trial, h.staging = true, nil
		h.health = &checkin.Health{State: "pending", Reason: "health checks running"}
		h.boots++
	default:
		h.slots.New = want
		h.staging = &checkin.Staging{Digest: want, State: "staged", Done: 1 << 20, Total: 1 << 20}
	}
}

func (h *Host) fail(d string) string {
	if h.Fail == nil {
		return Healthy
	}
	return h.Fail(d)
}

func (h *Host) report() *checkin.Checkin {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := &checkin.Checkin{MAC: h.MAC, Source: checkin.SourceAgent, Booted: h.slots.Current, Images: h.slots, Trial: h.trial,
		FailedDigests: append([]string(nil), h.failed...), Failures: append([]checkin.Failure(nil), h.failures...), RevertApplied: h.applied}
	if h.trial {
		c.TriesLeft = 2
	}
	if h.health != nil {
		x := *h.health
		c.Health = &x
	}
	if h.staging != nil {
		x := *h.staging
		c.Staging = &x
	}
	return c
}

func (h *Host) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.Server+path, nil)
	if err != nil {
		return err
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return json.Unmarshal(b, v)
}

func (h *Host) post(ctx context.Context, path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.Server+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s: %s", path, resp.Status, out)
	}
	return nil
}
