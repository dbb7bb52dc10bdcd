package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/layout"
)

// MemoryFile is the agent's own state on hostpart.

type revertRecord struct {
	ID    string    `json:"id"`
	State string    `json:"state"` // written (system-revert dropped), applied
	Time  time.Time `json:"time"`
	Note  string    `json:"note,omitempty"`
}

type memory struct {
	Reverts      []revertRecord `json:"reverts,omitempty"`
	SeenBroken   string         `json:"seen_broken,omitempty"`   // inode:size:mtime of the hn-root-broken.img already recorded
	SeenRejected string         `json:"seen_rejected,omitempty"` // same for hn-root-new.img.rejected
	initReverts  map[string]bool
}

const maxReverts = 20

func loadMemory(dir string) (memory, error) {
	var m memory
	p := filepath.Join(dir, layout.AgentState)
	b, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return m, err
	}
	if err == nil {
		if err := json.Unmarshal(b, &m); err != nil {
			return m, fmt.Errorf("%s: %v; delete it (the agent rebuilds it)", p, err)
		}
	}
	// IDs the init applied from hn.revert= count as applied too.
	m.initReverts = map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, layout.Reverts)); err == nil {
		for _, l := range splitLines(string(b)) {
			m.initReverts[l] = true
		}
	}
	return m, nil
}

func (m *memory) applied(id string) bool {
	if m.initReverts[id] {
		return true
	}
	for _, r := range m.Reverts {
		if r.ID == id {
			return true
		}
	}
	return false
}

// lastApplied is the newest applied revert ID, for revert_applied.
func (m *memory) lastApplied() string {
	for i := len(m.Reverts) - 1; i >= 0; i-- {
		if m.Reverts[i].State == "applied" {
			return m.Reverts[i].ID
		}
	}
	return ""
}

func (m *memory) save(dir string) error {
	if len(m.Reverts) > maxReverts {
		m.Reverts = m.Reverts[len(m.Reverts)-maxReverts:]
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	old, _ := os.ReadFile(filepath.Join(dir, layout.AgentState))
	if string(old) == string(b)+"\n" {
		return nil
	}
	return durable.Root(dir).WriteFile(layout.AgentState, append(b, '\n'))
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
