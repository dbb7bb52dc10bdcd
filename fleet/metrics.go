package fleet

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
)

// metricsWriter writes the Prometheus text exposition format (0.0.4).
type metricsWriter struct{ b strings.Builder }

func (m *metricsWriter) family(name, typ, help string) {
	fmt.Fprintf(&m.b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// sample writes one sample; labels are name, value pairs.
func (m *metricsWriter) sample(name string, v float64, labels ...string) {
	m.b.WriteString(name)
	if len(labels) > 0 {
		m.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				m.b.WriteByte(',')
			}
			m.b.WriteString(labels[i] + `="` + escapeLabel(labels[i+1]) + `"`)
		}
		m.b.WriteByte('}')
	}
	m.b.WriteString(" " + strconv.FormatFloat(v, 'g', -1, 64) + "\n")
}

func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Metrics renders the fleet's metrics.
func (f *Fleet) Metrics() []byte {
	st := f.Status()
	m := &metricsWriter{}

	byState := map[string]int{}
	for _, s := range []string{StateOK, StateTrial, StateStaged, StateOutdated, StateFailed, StateNeverSeen, StateRevertPending} {
		byState[s] = 0
	}
	pending := 0
	for _, h := range st.Hosts {
		byState[h.State]++
		if h.RevertPending != nil {
			pending++
		}
	}
	m.family("hnboot_fleet_hosts", "gauge", "Hosts in the desired state, by state (desired image against the last check-in).")
	for _, s := range sortedKeys(byState) {
		m.sample("hnboot_fleet_hosts", float64(byState[s]), "state", s)
	}
	m.family("hnboot_fleet_unknown_checkins", "gauge", "MACs that checked in but are not in the hosts files.")
	m.sample("hnboot_fleet_unknown_checkins", float64(len(st.Unknown)))
	m.family("hnboot_fleet_reverts_pending", "gauge", "Hosts being sent hn.revert until they report it applied.")
	m.sample("hnboot_fleet_reverts_pending", float64(pending))
	m.family("hnboot_fleet_images", "gauge", "Images declared in the fleet directory.")
	m.sample("hnboot_fleet_images", float64(len(f.Images())))

	f.mu.Lock()
	reloads := map[string]uint64{"ok": f.reloads["ok"], "error": f.reloads["error"]}
	f.mu.Unlock()
	m.family("hnboot_fleet_config_valid", "gauge", "1 if the fleet directory as it is now on disk loaded; 0 if the last reload failed and the last good state is served.")
	m.sample("hnboot_fleet_config_valid", b2f(st.ConfigError == ""))
	m.family("hnboot_fleet_config_last_good_reload_timestamp_seconds", "gauge", "When the fleet directory last loaded without error.")
	m.sample("hnboot_fleet_config_last_good_reload_timestamp_seconds", float64(st.LastGoodReload.Unix()))
	m.family("hnboot_fleet_config_reloads_total", "counter", "Reloads of the fleet directory, by result.")
	for _, r := range sortedKeys(reloads) {
		m.sample("hnboot_fleet_config_reloads_total", float64(reloads[r]), "result", r)
	}
	m.family("hnboot_fleet_warnings", "gauge", "Overrides or rollouts that no longer match the fleet directory.")
	m.sample("hnboot_fleet_warnings", float64(len(st.Warnings)))

	m.family("hnboot_boot_events_total", "counter", "Boot ledger events, by kind.")
	counts := f.led.Counts()
	for _, k := range []string{"dhcp", "dhcp-ignored", "tftp", "http", "checkin"} {
		if _, ok := counts[k]; !ok {
			counts[k] = 0
		}
	}
	for _, k := range sortedKeys(counts) {
		m.sample("hnboot_boot_events_total", float64(counts[k]), "kind", k)
	}
	m.family("hnboot_checkins_total", "counter", "Host check-ins, by result.")
	m.sample("hnboot_checkins_total", float64(f.checkins["error"].Load()), "result", "error")
	m.sample("hnboot_checkins_total", float64(f.checkins["ok"].Load()), "result", "ok")

	codes := map[string]uint64{}
	f.apiCodes.Range(func(k, v any) bool {
		codes[strconv.Itoa(k.(int))] = v.(*atomic.Uint64).Load()
		return true
	})
	m.family("hnboot_api_requests_total", "counter", "Admin API responses, by HTTP status code.")
	for _, c := range sortedKeys(codes) {
		m.sample("hnboot_api_requests_total", float64(codes[c]), "code", c)
	}

	if len(st.Services) > 0 {
		m.family("hnboot_service_up", "gauge", "1 if the supervised service is running.")
		for _, s := range st.Services {
			m.sample("hnboot_service_up", b2f(s.State == "running"), "service", s.Name)
		}
		m.family("hnboot_service_restarts_total", "counter", "Restarts of a supervised service.")
		for _, s := range st.Services {
			m.sample("hnboot_service_restarts_total", float64(s.Restarts), "service", s.Name)
		}
	}
	return []byte(m.b.String())
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
