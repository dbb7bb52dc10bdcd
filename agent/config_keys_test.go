package agent

import (
	"strings"
	"testing"
)

func TestConfigKeys(t *testing.T) {
	c, err := ParseConfig("agent.yaml", []byte("server: http://imaged:8080\npublic_key: /etc/hnboot/fleet.key.pub\ntrusted_keys: [/etc/hnboot/old.pub, \"hnboot-ed25519-public AAAA\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.PublicKey+" "+strings.Join(c.TrustedKeys, ","), "/etc/hnboot/fleet.key.pub /etc/hnboot/old.pub,hnboot-ed25519-public AAAA"; got != want {
		t.Errorf("ParseConfig keys = %q, want %q", got, want)
	}
}
