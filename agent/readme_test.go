package agent

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/readme"
)

// The README's agent.yaml parses, and its key table names every key the
// configuration has.
func TestReadmeAgentConfig(t *testing.T) {
	md, err := readme.Read()
	if err != nil {
		t.Fatal(err)
	}
	b, err := readme.Block(md, "# /etc/hnboot/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig("agent.yaml", []byte(b))
	if err != nil {
		t.Fatalf("ParseConfig(README's agent.yaml) = %v", err)
	}
	p, _ := ParsePolicy(c.Reboot)
	for _, x := range []struct{ name, got, want string }{
		{"server", c.Server, "http://imaged.example:8080"},
		{"reboot", p.String(), "window Sat,Sun 02:00-04:00"},
		{"health.units", strings.Join(c.Health.Units, ","), "ssh.service"},
		{"health.commands[0].name", c.Health.Commands[0].Name, "app"},
		{"services[0].name", c.Services[0].Name, "node-exporter"},
		{"log_dir (default)", c.LogDir, "/var/log/hnboot"},
		{"health.interval (default)", c.Health.Interval.String(), (5 * time.Second).String()},
	} {
		if x.got != x.want {
			t.Errorf("README's agent.yaml: %s = %q, want %q", x.name, x.got, x.want)
		}
	}

	rows, err := readme.Table(md, "| key | default | meaning |")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, r := range rows {
		documented[strings.Trim(r[0], "`")] = true
	}
	keys := func(typ reflect.Type, prefix string) (out []string) {
		for i := range typ.NumField() {
			if k, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ","); k != "" && k != "-" {
				out = append(out, prefix+k)
			}
		}
		return out
	}
	all := append(keys(reflect.TypeOf(Config{}), ""), keys(reflect.TypeOf(Checks{}), "health.")...)
	for _, k := range all {
		if k != "health" && !documented[k] {
			t.Errorf("agent.yaml key %s is missing from the README's table", k)
		}
	}
	for k := range documented {
		found := false
		for _, a := range all {
			found = found || a == k
		}
		if !found {
			t.Errorf("the README documents agent.yaml key %s, which Config does not have", k)
		}
	}
}
