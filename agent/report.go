package agent

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/hostpart"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/stage"
)

// report is this round's check-in. stage.Failure, Verdict, hostpart.Boot and
// supervisor.ServiceStatus are the check-in's own types.
func (a *Agent) report(st hostpart.State, failed stage.Failed, mem memory, dec Decision, notes []string) *checkin.Checkin {
	cur := st.Slot(layout.SlotCurrent)
	r := &checkin.Checkin{
		MAC: a.MAC, Hostname: a.Hostname, Source: checkin.SourceAgent,
		Booted: cur.Digest,
		Trial:  st.Trial, TriesLeft: st.TriesLeft,
		Kernel: a.System.Kernel(), UptimeSeconds: a.System.Uptime(),
		Images: checkin.Slots{
			Current: cur.Digest, Old: st.Slot(layout.SlotOld).Digest,
			New: st.Slot(layout.SlotNew).Digest, Broken: st.Slot(layout.SlotBroken).Digest,
		},
		FailedDigests: failed.Digests(),
		RebootPolicy:  a.Policy.String(),
		Notes:         notes,
	}
	for _, d := range r.FailedDigests {
		r.Failures = append(r.Failures, failed[d])
	}
	r.SSHHostKeys, r.Fingerprints = a.System.HostKeys()
	if id := mem.lastApplied(); id != "" {
		r.RevertApplied = id
	}
	if len(st.Boots) > 0 {
		b := st.Boots[0]
		r.LastBoot = &b
	}
	r.Pending = append(r.Pending, dec.Pending...)
	a.mu.Lock()
	if a.staging != nil {
		s := *a.staging
		r.Staging = &s
	}
	if a.health != nil {
		h := *a.health
		r.Health = &h
	}
	a.mu.Unlock()
	if st.Trial && r.Health == nil {
		r.Health = &Verdict{State: HealthPending, Reason: "health checks not started"}
	}
	if a.Services != nil {
		r.Services = a.Services.Status()
	}
	return r
}

// System reads facts about the running system; Root is "/" outside tests.
type System struct {
	Root string
}

func (s System) path(p string) string { return filepath.Join(s.Root, p) }

// Kernel is the running kernel's release.
func (s System) Kernel() string {
	if b, err := os.ReadFile(s.path("/proc/sys/kernel/osrelease")); err == nil {
		return strings.TrimSpace(string(b))
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		return unix.ByteSliceToString(u.Release[:])
	}
	return ""
}

// Uptime is the seconds since boot.
func (s System) Uptime() int64 {
	b, err := os.ReadFile(s.path("/proc/uptime"))
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return int64(f)
}

// HostKeys reads /etc/ssh/*.pub: the public keys (authorized_keys format,
// comment dropped) and their SHA256 fingerprints.
func (s System) HostKeys() (keys, fps []string) {
	files, _ := filepath.Glob(s.path("/etc/ssh/*.pub"))
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pk, _, _, _, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			continue
		}
		keys = append(keys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))))
		fps = append(fps, ssh.FingerprintSHA256(pk))
	}
	return keys, fps
}
