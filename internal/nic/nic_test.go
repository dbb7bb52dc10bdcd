package nic

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFirstEthernet(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, typ, mac string, hw bool) {
		p := filepath.Join(dir, name)
		os.MkdirAll(p, 0o755)
		os.WriteFile(filepath.Join(p, "type"), []byte(typ+"\n"), 0o644)
		os.WriteFile(filepath.Join(p, "address"), []byte(mac+"\n"), 0o644)
		if hw {
			os.MkdirAll(filepath.Join(p, "device"), 0o755)
		}
	}
	mk("lo", "772", "00:00:00:00:00:00", false)
	mk("wg0", "65534", "", false)
	mk("bond0", "1", "02:00:00:00:00:01", false)
	mk("lan9", "1", "02:00:00:00:00:09", true)
	name, mac, err := FirstEthernet(dir)
	if name != "lan9" || mac != "02:00:00:00:00:09" || err != nil {
		t.Errorf("FirstEthernet(no en*/eth*) = %q, %q, %v, want lan9 (hardware-backed)", name, mac, err)
	}
	mk("ens3", "1", "52:54:00:12:34:56", true)
	mk("eth0", "1", "52:54:00:00:00:00", true)
	name, mac, err = FirstEthernet(dir)
	if name != "ens3" || mac != "52:54:00:12:34:56" || err != nil {
		t.Errorf("FirstEthernet() = %q, %q, %v, want ens3, 52:54:00:12:34:56, nil", name, mac, err)
	}
	if _, _, err := FirstEthernet(filepath.Join(dir, "lo")); err == nil {
		t.Errorf("FirstEthernet(no interfaces) error = nil, want one")
	}
}

func TestFromBOOTIF(t *testing.T) {
	for in, want := range map[string]string{
		"01-52-54-00-12-34-56": "52:54:00:12:34:56",
		"01-AA-BB-CC-DD-EE-FF": "aa:bb:cc:dd:ee:ff",
		"52-54-00-12-34-56":    "",
		"01-52-54-00-12-34":    "",
		"":                     "",
	} {
		if got := FromBOOTIF(in); got != want {
			t.Errorf("FromBOOTIF(%q) = %q, want %q", in, got, want)
		}
	}
}
