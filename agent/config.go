package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hnboot/hnboot/supervisor"
)

// DefaultConfigFile is where `imaged agent` looks without --config.
const DefaultConfigFile = "/etc/hnboot/agent.yaml"

// Config is the agent's configuration file (YAML):
//
//	server: http://imaged.example:8080   # the fleet server (--server wins)
//	token_file: /etc/hnboot/agent.token  # optional bearer token for the server
//	interval: 60s                        # check-in period
//	reboot: never                        # never | immediate | window [Sat,Sun] 02:00-04:00
//	reboot_command: [systemctl, reboot]  # optional
//	hostpart: /hostpart                  # optional; found by itself otherwise
//	mac: 52:54:00:12:34:56               # optional; first Ethernet NIC otherwise
//	public_key: /etc/hnboot/fleet.key.pub # staged images must be signed by it (or
//	trusted_keys: [/etc/hnboot/old.pub]   # one of these); a KEY.pub file or its line.
//	                                      # hostpart/.hnboot/trusted.pub counts too
//	health:                              # checks before a trial boot is confirmed
//	  units: [sshd.service]
//	  commands: [{name: app, command: [/usr/local/bin/app-ok], timeout: 10s}]
//	  settle: 30s
//	  deadline: 10m
//	lldp_listen: 35s                     # listen for the switch's LLDP frames (0: don't)
//	services:                            # local fleet services (package supervisor)
//	  - name: node-exporter
//	    command: /usr/bin/prometheus-node-exporter
type Config struct {
	Server        string        `yaml:"server"`
	TokenFile     string        `yaml:"token_file"`
	Interval      time.Duration `yaml:"interval"`
	Reboot        string        `yaml:"reboot"`
	RebootCommand []string      `yaml:"reboot_command"`
	Hostpart      string        `yaml:"hostpart"`
	MAC           string        `yaml:"mac"`
	PublicKey     string        `yaml:"public_key"`
	TrustedKeys   []string      `yaml:"trusted_keys"`
	Health        Checks        `yaml:"health"`
	LogDir        string        `yaml:"log_dir"` // services' logs; default /var/log/hnboot
	// LLDPListen is how long the agent listens for LLDP frames on each
	// NIC when it reads the host's facts (at start, then hourly); unset:
	// DefaultLLDPListen, 0: not at all.
	LLDPListen *time.Duration `yaml:"lldp_listen"`

	Services []supervisor.Service `yaml:"-"`
	// ServicesYAML keeps the key known to the strict decoder; the list is
	// parsed by package supervisor.
	ServicesYAML yaml.Node `yaml:"services"`
}

// LoadConfig reads path; a missing file at the default path is an empty
// configuration, at any other path an error.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && path == DefaultConfigFile {
		c.defaults()
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("agent config: %w", err)
	}
	return ParseConfig(path, b)
}

// ParseConfig parses a configuration; name is used in errors.
func ParseConfig(name string, b []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("%s: %v", name, err)
	}
	svcs, err := supervisor.Parse(name, b)
	if err != nil {
		return c, err
	}
	c.Services = svcs
	if _, err := ParsePolicy(c.Reboot); err != nil {
		return c, fmt.Errorf("%s: %v", name, err)
	}
	for i, cc := range c.Health.Commands {
		if len(cc.Command) == 0 {
			return c, fmt.Errorf("%s: health.commands[%d]: command is empty; want an argv list like [/usr/bin/true]", name, i)
		}
	}
	c.defaults()
	return c, nil
}

func (c *Config) lldpListen() time.Duration {
	if c.LLDPListen == nil {
		return DefaultLLDPListen
	}
	return *c.LLDPListen
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = time.Minute
	}
	if c.LogDir == "" {
		c.LogDir = "/var/log/hnboot"
	}
	c.Health.defaults()
}
