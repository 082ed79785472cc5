package daemon

import (
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/drover-dev/drover/internal/version"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// agentMetrics reports the agent to Prometheus, read at scrape time from
// what the agent keeps anyway.
type agentMetrics struct {
	connected func() bool
	applied   func() string
	statuses  func() []*droverv1.ApplicationStatus
	// watchSyncs counts, per application, the syncs its watches asked for.
	watchSyncs func() map[string]int64

	hubConnected, assignment, sync, health, observed, build, watchSync *prometheus.Desc
}

func newAgentMetrics(connected func() bool, applied func() string, statuses func() []*droverv1.ApplicationStatus, watchSyncs func() map[string]int64) *agentMetrics {
	d := prometheus.NewDesc
	return &agentMetrics{
		connected: connected, applied: applied, statuses: statuses, watchSyncs: watchSyncs,
		hubConnected: d("drover_agent_hub_connected", "1 while a session with the hub is up; the agent keeps its cluster right either way.", nil, nil),
		assignment:   d("drover_agent_assignment_info", "The assignment version the agent applies.", []string{"version"}, nil),
		sync:         d("drover_agent_application_sync", "1 for each application's sync state.", []string{"application", "sync"}, nil),
		health:       d("drover_agent_application_health", "1 for each application's health.", []string{"application", "health"}, nil),
		observed:     d("drover_agent_application_observed_timestamp_seconds", "When each application's status was last observed.", []string{"application"}, nil),
		build:        d("drover_agent_build_info", "The agent's version.", []string{"version"}, nil),
		watchSync:    d("drover_agent_watch_syncs_total", "Syncs of each application asked for by the watches of its objects, because another writer changed or deleted one.", []string{"application"}, nil),
	}
}

func (m *agentMetrics) handler(log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)})
}

// Describe implements prometheus.Collector.
func (m *agentMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.hubConnected, m.assignment, m.sync, m.health, m.observed, m.build, m.watchSync} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *agentMetrics) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(m.build, 1, version.Version)
	connected := 0.0
	if m.connected() {
		connected = 1
	}
	gauge(m.hubConnected, connected)
	if v := m.applied(); v != "" {
		gauge(m.assignment, 1, v)
	}
	for _, st := range m.statuses() {
		app := st.GetApplication()
		gauge(m.sync, 1, app, word(st.GetSync().String(), "SYNC_STATE_"))
		gauge(m.health, 1, app, word(st.GetHealth().String(), "HEALTH_"))
		if t := st.GetObservedAt(); t != nil {
			gauge(m.observed, float64(t.AsTime().UnixMilli())/1000, app)
		}
	}
	for app, n := range m.watchSyncs() {
		ch <- prometheus.MustNewConstMetric(m.watchSync, prometheus.CounterValue, float64(n), app)
	}
}

// word turns an enum name such as HEALTH_PROGRESSING into "progressing".
func word(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}
