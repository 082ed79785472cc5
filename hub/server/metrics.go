package server

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/version"
)

// metricsTimeout bounds the database queries of one scrape; a scrape that
// cannot reach the database still reports the hub's own figures.
const metricsTimeout = 5 * time.Second

// hubMetrics reports the hub and its fleet to Prometheus. Everything is read
// at scrape time — counters the hub keeps anyway and three aggregate
// queries — so serving agents costs nothing extra between scrapes.
type hubMetrics struct {
	streams        func() int
	statuses       func() store.StatusWriterStats
	db             fleetReader
	offlineTimeout time.Duration
	log            *slog.Logger
	replica        replicaFigures

	agentStreams, statusBacklog, statusDropped, statusFailures *prometheus.Desc
	databaseUp, clusters, appHealth, appSync, rollout, build   *prometheus.Desc
	replicas, jobs, notifications, shed                        *prometheus.Desc
}

// replicaFigures are what the metrics read of this replica's place among
// the others.
type replicaFigures struct {
	// members names the replicas in this replica's gossip.
	members func() []string
	// jobsHeld counts the background jobs whose leases it holds.
	jobsHeld func() int
	// listener reports the other replicas' change notifications heard.
	listener func() store.ListenerStats
	// agentsShed counts the agents it asked to go to another replica.
	agentsShed func() int64
}

// fleetReader is what the metrics read from the store.
type fleetReader interface {
	Ping(ctx context.Context) error
	FleetGauges(ctx context.Context, offlineTimeout time.Duration) (store.FleetGauges, error)
	ReplicaViews(ctx context.Context, name string) ([]store.ReplicaView, error)
}

func newHubMetrics(streams func() int, statuses func() store.StatusWriterStats, db fleetReader, replica replicaFigures, offlineTimeout time.Duration, log *slog.Logger) *hubMetrics {
	d := prometheus.NewDesc
	return &hubMetrics{
		streams: streams, statuses: statuses, db: db, replica: replica, offlineTimeout: offlineTimeout, log: log,
		agentStreams:   d("drover_hub_agent_streams", "Agent streams open on this hub replica.", nil, nil),
		statusBacklog:  d("drover_hub_status_backlog", "Application statuses received and not yet written to PostgreSQL.", nil, nil),
		statusDropped:  d("drover_hub_statuses_dropped_total", "Statuses dropped: the backlog was full, or PostgreSQL refused them as data.", nil, nil),
		statusFailures: d("drover_hub_status_write_failures", "Consecutive failed status writes; 0 after a success.", nil, nil),
		databaseUp:     d("drover_hub_database_up", "1 if PostgreSQL answered this scrape.", nil, nil),
		clusters:       d("drover_fleet_clusters", "Registered clusters by connection state.", []string{"state"}, nil),
		appHealth:      d("drover_application_clusters_by_health", "Clusters reporting an application, by the application's health there.", []string{"application", "health"}, nil),
		appSync:        d("drover_application_clusters_by_sync", "Clusters reporting an application, by its sync state there.", []string{"application", "sync"}, nil),
		rollout:        d("drover_rollout_phase", "1 for the phase of each application's current rollout.", []string{"application", "phase"}, nil),
		build:          d("drover_hub_build_info", "The hub's version.", []string{"version"}, nil),
		replicas:       d("drover_hub_replicas", "Hub replicas recorded in PostgreSQL, by state as this replica sees them: alive (heartbeating and in its gossip), suspect (one of the two), gone.", []string{"state"}, nil),
		jobs:           d("drover_hub_jobs_held", "Background jobs (rollouts, Git polling, event retention) whose lease this replica holds.", nil, nil),
		notifications:  d("drover_hub_notifications_received_total", "Change notifications from other replicas heard over PostgreSQL LISTEN.", nil, nil),
		shed:           d("drover_hub_agents_shed_total", "Agent streams this replica ended, asking the agents to go to another replica, to spread the load.", nil, nil),
	}
}

// handler serves the hub's metrics with the Go runtime's and the process's.
func (m *hubMetrics) handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelWarn)})
}

// Describe implements prometheus.Collector.
func (m *hubMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.agentStreams, m.statusBacklog, m.statusDropped, m.statusFailures, m.databaseUp, m.clusters, m.appHealth, m.appSync, m.rollout, m.build, m.replicas, m.jobs, m.notifications, m.shed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *hubMetrics) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(m.build, 1, version.Version)
	gauge(m.agentStreams, float64(m.streams()))
	gauge(m.jobs, float64(m.replica.jobsHeld()))
	ch <- prometheus.MustNewConstMetric(m.notifications, prometheus.CounterValue, float64(m.replica.listener().Received))
	ch <- prometheus.MustNewConstMetric(m.shed, prometheus.CounterValue, float64(m.replica.agentsShed()))
	st := m.statuses()
	gauge(m.statusBacklog, float64(st.Pending))
	gauge(m.statusFailures, float64(st.Failures))
	ch <- prometheus.MustNewConstMetric(m.statusDropped, prometheus.CounterValue, float64(st.Dropped))

	ctx, cancel := context.WithTimeout(context.Background(), metricsTimeout)
	defer cancel()
	g, err := m.db.FleetGauges(ctx, m.offlineTimeout)
	if err != nil {
		// The fleet figures are left out rather than reported as zeros,
		// which would look like a fleet that vanished.
		m.log.Warn("metrics: read the fleet", "err", err)
		gauge(m.databaseUp, 0)
		return
	}
	gauge(m.databaseUp, 1)
	gauge(m.clusters, float64(g.Online), "online")
	gauge(m.clusters, float64(g.Clusters-g.Online-g.Revoked), "offline")
	gauge(m.clusters, float64(g.Revoked), "revoked")
	for app, c := range g.Statuses {
		for h, n := range c.Health {
			gauge(m.appHealth, float64(n), app, word(h.String(), "HEALTH_"))
		}
		for s, n := range c.Sync {
			gauge(m.appSync, float64(n), app, word(s.String(), "SYNC_STATE_"))
		}
	}
	for app, phase := range g.Rollouts {
		gauge(m.rollout, 1, app, phase)
	}
	m.collectReplicas(ctx, gauge)
}

// collectReplicas counts the replicas by state, every state reported (0
// included) so that an alert on "suspect > 0" has a series to watch.
func (m *hubMetrics) collectReplicas(ctx context.Context, gauge func(d *prometheus.Desc, v float64, labels ...string)) {
	views, err := m.db.ReplicaViews(ctx, "")
	if err != nil {
		m.log.Warn("metrics: read the hub replicas", "err", err)
		return
	}
	members := make(map[string]bool)
	for _, name := range m.replica.members() {
		members[name] = true
	}
	byState := map[string]int{adminapi.ReplicaAlive: 0, adminapi.ReplicaSuspect: 0, adminapi.ReplicaGone: 0}
	for _, v := range views {
		byState[adminapi.ReplicaState(v, members[v.Name])]++
	}
	for state, n := range byState {
		gauge(m.replicas, float64(n), state)
	}
}

// word turns an enum name such as HEALTH_PROGRESSING into "progressing".
func word(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}
