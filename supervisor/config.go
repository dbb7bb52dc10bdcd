// Package supervisor starts and keeps alive a few long-running services:
// restart policy with capped exponential back-off that resets after a
// stable run, stdout/stderr captured to a ring buffer and a log file,
// graceful stop (SIGTERM to the process group, SIGKILL after a deadline),
// every child waited for. Used by `imaged serve` and `imaged agent`.
package supervisor

import (
	"fmt"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Restart policies.
const (
	RestartAlways    = "always"     // restart whatever the exit status
	RestartOnFailure = "on-failure" // restart after a non-zero exit, a signal or a failed start (default)
	RestartNever     = "never"
)

// Service describes one supervised program. In YAML, under `services:`:
//
//	services:
//	  - name: node-exporter
//	    command: /usr/bin/prometheus-node-exporter
//	    args: ["--web.listen-address=:9100"]
//	    env: ["GOMAXPROCS=1"]        # added to imaged's environment
//	    dir: /var/lib/node-exporter
//	    restart: always              # always | on-failure (default) | never
//	    backoff: 1s                  # first restart delay, doubled each time (default 1s)
//	    backoff_max: 1m              # cap (default 1m)
//	    stable_after: 30s            # a run this long resets the back-off (default 30s)
//	    stop_timeout: 10s            # SIGTERM → SIGKILL deadline (default 10s)
type Service struct {
	Name        string        `json:"name"`
	Command     string        `json:"command"`
	Args        []string      `json:"args,omitempty"`
	Env         []string      `json:"env,omitempty"`
	Dir         string        `json:"dir,omitempty"`
	Restart     string        `json:"restart"`
	Backoff     time.Duration `json:"backoff"`
	BackoffMax  time.Duration `json:"backoff_max"`
	StableAfter time.Duration `json:"stable_after"`
	StopTimeout time.Duration `json:"stop_timeout"`
}

func (s *Service) defaults() {
	if s.Restart == "" {
		s.Restart = RestartOnFailure
	}
	if s.Backoff <= 0 {
		s.Backoff = time.Second
	}
	if s.BackoffMax <= 0 {
		s.BackoffMax = time.Minute
	}
	if s.BackoffMax < s.Backoff {
		s.BackoffMax = s.Backoff
	}
	if s.StableAfter <= 0 {
		s.StableAfter = 30 * time.Second
	}
	if s.StopTimeout <= 0 {
		s.StopTimeout = 10 * time.Second
	}
}

func (s *Service) validate() error {
	switch {
	case s.Name == "" || strings.ContainsAny(s.Name, "/ \t"):
		return fmt.Errorf("service name %q: want a non-empty name without '/' or spaces", s.Name)
	case s.Command == "":
		return fmt.Errorf("service %s: command missing", s.Name)
	case s.Restart != RestartAlways && s.Restart != RestartOnFailure && s.Restart != RestartNever:
		return fmt.Errorf("service %s: restart %q: want always, on-failure or never", s.Name, s.Restart)
	}
	for _, e := range s.Env {
		if !strings.Contains(e, "=") {
			return fmt.Errorf("service %s: env %q: want KEY=VALUE", s.Name, e)
		}
	}
	return nil
}

// LoadFile reads the `services:` list of a YAML file; other top-level keys
// are left to their owners. Errors name the file and line.
func LoadFile(path string) ([]Service, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	return Parse(path, b)
}

// Parse is LoadFile on bytes; name is used in errors.
func Parse(name string, b []byte) ([]Service, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: want a mapping at the top", name, root.Line)
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "services" {
			list = root.Content[i+1]
		}
	}
	if list == nil {
		return nil, nil
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s:%d: services: want a list", name, list.Line)
	}
	var out []Service
	seen := map[string]int{}
	for _, n := range list.Content {
		s, err := parseService(name, n)
		if err != nil {
			return nil, err
		}
		if first, dup := seen[s.Name]; dup {
			return nil, fmt.Errorf("%s:%d: duplicate service %s (first at line %d)", name, n.Line, s.Name, first)
		}
		seen[s.Name] = n.Line
		out = append(out, s)
	}
	return out, nil
}

func parseService(file string, n *yaml.Node) (Service, error) {
	var s Service
	at := func(n *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", file, n.Line, fmt.Sprintf(format, args...))
	}
	if n.Kind != yaml.MappingNode {
		return s, at(n, "service: want a mapping")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var err error
		switch k.Value {
		case "name":
			err = v.Decode(&s.Name)
		case "command":
			err = v.Decode(&s.Command)
		case "args":
			err = v.Decode(&s.Args)
		case "env":
			err = v.Decode(&s.Env)
		case "dir":
			err = v.Decode(&s.Dir)
		case "restart":
			err = v.Decode(&s.Restart)
		case "backoff", "backoff_max", "stable_after", "stop_timeout":
			var d time.Duration
			if d, err = time.ParseDuration(v.Value); err == nil && d < 0 {
				err = fmt.Errorf("negative")
			}
			switch k.Value {
			case "backoff":
				s.Backoff = d
			case "backoff_max":
				s.BackoffMax = d
			case "stable_after":
				s.StableAfter = d
			case "stop_timeout":
				s.StopTimeout = d
			}
		default:
			return s, at(k, "unknown key %q in service (allowed: name, command, args, env, dir, restart, backoff, backoff_max, stable_after, stop_timeout)", k.Value)
		}
		if err != nil {
			return s, at(v, "%s: %v", k.Value, err)
		}
	}
	s.defaults()
	if err := s.validate(); err != nil {
		return s, at(n, "%v", err)
	}
	return s, nil
}
