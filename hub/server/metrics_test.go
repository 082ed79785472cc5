package server_test

import (
	"context"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// value is the metric of family name whose labels include want; -1 when
// there is none.
func value(families map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	if v, ok := testbed.MetricValue(families, name, want); ok {
		return v
	}
	return -1
}

// scrape reads the hub's /metrics.
func (h *testHub) scrape(t *testing.T) map[string]*dto.MetricFamily {
	return testbed.Metrics(t, "http://"+h.HTTPAddr()+"/metrics")
}

func TestMetrics(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	h := startHub(t)
	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Reusable: true, Labels: map[string]string{"env": "prod"}})
	a := h.mustRegister(t, tok, "a")
	h.mustRegister(t, tok, "b") // registered, never connected: offline
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("web", repo.URL, map[string]string{"env": "prod"}), nil)

	s := a.connect(t, "")
	s.awaitApplications(t, "web@"+c1)
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{
		{Application: "web", Commit: c1, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY},
	}}}})

	want := []struct {
		name   string
		labels map[string]string
		value  float64
	}{
		{"drover_hub_agent_streams", nil, 1},
		{"drover_hub_database_up", nil, 1},
		{"drover_fleet_clusters", map[string]string{"state": "online"}, 1},
		{"drover_fleet_clusters", map[string]string{"state": "offline"}, 1},
		{"drover_fleet_clusters", map[string]string{"state": "revoked"}, 0},
		{"drover_application_clusters_by_health", map[string]string{"application": "web", "health": "healthy"}, 1},
		{"drover_application_clusters_by_sync", map[string]string{"application": "web", "sync": "synced"}, 1},
		{"drover_hub_status_backlog", nil, 0},
		{"drover_hub_statuses_dropped_total", nil, 0},
	}
	var families map[string]*dto.MetricFamily
	eventually(t, "the status in the metrics", func() bool {
		_ = h.FlushStatuses(context.Background())
		families = h.scrape(t)
		return value(families, "drover_application_clusters_by_health", map[string]string{"application": "web", "health": "healthy"}) == 1
	})
	for _, w := range want {
		if got := value(families, w.name, w.labels); got != w.value {
			t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.value)
		}
	}
	if families["go_goroutines"] == nil || families["process_resident_memory_bytes"] == nil {
		t.Errorf("the Go runtime's and the process's metrics are missing")
	}

	// Revoking b moves it from offline to revoked; the stream count follows
	// a closed stream.
	h.mustAPI(t, "POST", "/api/v1/clusters/b/revoke", struct{}{}, nil)
	s.cancel()
	eventually(t, "the revocation and the closed stream in the metrics", func() bool {
		f := h.scrape(t)
		return value(f, "drover_fleet_clusters", map[string]string{"state": "revoked"}) == 1 &&
			value(f, "drover_fleet_clusters", map[string]string{"state": "offline"}) == 0 &&
			value(f, "drover_hub_agent_streams", nil) == 0
	})
}
