package fleet

import (
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The fleet's metrics are derived at scrape time from what Status, the
// ledger and the fleet's counters already hold, so a collector computes
// them on Collect instead of keeping a second copy of the state in
// gauges that could drift from it.
var (
	descHosts = prometheus.NewDesc("hnboot_fleet_hosts",
		"Hosts in the desired state, by state (desired image against the last check-in).", []string{"state"}, nil)
	descUnknown = prometheus.NewDesc("hnboot_fleet_unknown_checkins",
		"MACs that checked in but are not in the hosts files.", nil, nil)
	descRevertsPending = prometheus.NewDesc("hnboot_fleet_reverts_pending",
		"Hosts being sent hn.revert until they report it applied.", nil, nil)
	descImages = prometheus.NewDesc("hnboot_fleet_images",
		"Images declared in the fleet directory.", nil, nil)
	descConfigValid = prometheus.NewDesc("hnboot_fleet_config_valid",
		"1 if the fleet directory as it is now on disk loaded; 0 if the last reload failed and the last good state is served.", nil, nil)
	descLastGoodReload = prometheus.NewDesc("hnboot_fleet_config_last_good_reload_timestamp_seconds",
		"When the fleet directory last loaded without error.", nil, nil)
	descReloads = prometheus.NewDesc("hnboot_fleet_config_reloads_total",
		"Reloads of the fleet directory, by result.", []string{"result"}, nil)
	descWarnings = prometheus.NewDesc("hnboot_fleet_warnings",
		"Overrides or rollouts that no longer match the fleet directory.", nil, nil)
	descBootEvents = prometheus.NewDesc("hnboot_boot_events_total",
		"Boot ledger events, by kind.", []string{"kind"}, nil)
	descCheckins = prometheus.NewDesc("hnboot_checkins_total",
		"Host check-ins, by result.", []string{"result"}, nil)
	descAPIRequests = prometheus.NewDesc("hnboot_api_requests_total",
		"Admin API responses, by HTTP status code.", []string{"code"}, nil)
	descServiceUp = prometheus.NewDesc("hnboot_service_up",
		"1 if the supervised service is running.", []string{"service"}, nil)
	descServiceRestarts = prometheus.NewDesc("hnboot_service_restarts_total",
		"Restarts of a supervised service.", []string{"service"}, nil)
)

// hostStates are always exported, at 0 when no host is in them, so a
// dashboard's series exist before the first host gets there.
var hostStates = []string{StateOK, StateTrial, StateStaged, StateOutdated, StateFailed, StateNeverSeen, StateRevertPending}

// bootEventKinds likewise.
var bootEventKinds = []string{"dhcp", "dhcp-ignored", "tftp", "http", "checkin"}

// collector is the fleet's prometheus.Collector.
type collector struct{ f *Fleet }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHosts, descUnknown, descRevertsPending, descImages,
		descConfigValid, descLastGoodReload, descReloads, descWarnings, descBootEvents,
		descCheckins, descAPIRequests, descServiceUp, descServiceRestarts} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	f := c.f
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	st := f.Status()

	byState := map[string]int{}
	pending := 0
	for _, h := range st.Hosts {
		byState[h.State]++
		if h.RevertPending != nil {
			pending++
		}
	}
	for _, s := range hostStates {
		gauge(descHosts, float64(byState[s]), s)
		delete(byState, s)
	}
	for s, n := range byState { // a state this list does not know yet
		gauge(descHosts, float64(n), s)
	}
	gauge(descUnknown, float64(len(st.Unknown)))
	gauge(descRevertsPending, float64(pending))
	gauge(descImages, float64(len(f.Images())))

	f.mu.Lock()
	reloadsOK, reloadsErr := f.reloads["ok"], f.reloads["error"]
	f.mu.Unlock()
	gauge(descConfigValid, b2f(st.ConfigError == ""))
	gauge(descLastGoodReload, float64(st.LastGoodReload.Unix()))
	counter(descReloads, reloadsOK, "ok")
	counter(descReloads, reloadsErr, "error")
	gauge(descWarnings, float64(len(st.Warnings)))

	counts := f.led.Counts()
	for _, k := range bootEventKinds {
		counter(descBootEvents, counts[k], k)
		delete(counts, k)
	}
	for k, n := range counts {
		counter(descBootEvents, n, k)
	}
	counter(descCheckins, f.checkins["ok"].Load(), "ok")
	counter(descCheckins, f.checkins["error"].Load(), "error")

	f.apiCodes.Range(func(k, v any) bool {
		counter(descAPIRequests, v.(*atomic.Uint64).Load(), strconv.Itoa(k.(int)))
		return true
	})

	for _, s := range st.Services {
		gauge(descServiceUp, b2f(s.State == "running"), s.Name)
		counter(descServiceRestarts, uint64(s.Restarts), s.Name)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// registry is the fleet's own registry (not prometheus.DefaultRegisterer,
// which is process-wide state a library must not touch): the fleet's
// metrics and those of the Go runtime and the process it runs in.
func (f *Fleet) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collector{f},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// metricsHandler serves the registry in the format the scraper asks for
// (text by default).
func (f *Fleet) metricsHandler() http.Handler {
	reg := f.registry()
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
