package server_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/pgserver"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestDatabaseLostWhileRunning stops the hub's PostgreSQL under a
// connected agent: the stream stays up, the hub reports itself degraded,
// and a status sent meanwhile is written once the database is back.
func TestDatabaseLostWhileRunning(t *testing.T) {
	dir, err := os.MkdirTemp("", "drover-dbloss-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := pgserver.Options{Dir: filepath.Join(dir, "pg"), Ephemeral: true, Logger: testlog.New(t)}
	pg, err := pgserver.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	if err := pg.EnsureDatabase(context.Background(), "drover"); err != nil {
		t.Fatal(err)
	}
	opts.Port = pg.Port() // the hub keeps its URL; the server must come back on it

	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	h := startHub(t, func(c *server.Config) { c.DatabaseURL = pg.URL("drover") })
	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"env": "prod"}})
	a := h.mustRegister(t, tok, "edge")
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("web", repo.URL, map[string]string{"env": "prod"}), nil)
	s := a.connect(t, "")
	s.awaitApplications(t, "web@"+c1)

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	var health string
	eventually(t, "the hub to report itself degraded", func() bool {
		resp, err := http.Get("http://" + h.HTTPAddr() + "/healthz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		health = string(body)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(health, "database unreachable")
	})
	// /healthz answers anyone: nothing of the driver's error, which can
	// name the database's user, host and port.
	if want := "degraded\ndatabase unreachable\n"; health != want {
		t.Errorf("/healthz says %q, want %q and nothing of the driver's error", health, want)
	}
	// Not ready either: a new agent or API client is better served by a
	// replica that reaches the database.
	if code, body := probe(t, h.Hub, "/readyz"); code != http.StatusServiceUnavailable || body != "not ready: database unreachable\n" {
		t.Errorf("/readyz with the database away: %d %q", code, body)
	}
	// The agent's stream is still served while the database is away.
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Heartbeat{Heartbeat: &droverv1.Heartbeat{SentAt: timestamppb.Now()}}})
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{
		{Application: "web", Commit: c1, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY},
	}}}})

	pg2, err := pgserver.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg2.Stop() })
	eventually(t, "the status written after the database returned", func() bool {
		s.checkOpen(t)
		var app droverv1.GetApplicationResponse
		if code, _ := h.api(t, h.token, "GET", "/api/v1/applications/web", nil, &app); code != http.StatusOK {
			return false
		}
		return len(app.GetStatuses()) == 1 && app.GetStatuses()[0].GetHealth() == droverv1.Health_HEALTH_HEALTHY
	})
	// The stream that carried it is the one from before the outage, and
	// it is still served: the next status on it is stored too.
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{
		{Application: "web", Commit: c1, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_DEGRADED},
	}}}})
	eventually(t, "the next status on the same stream written", func() bool {
		s.checkOpen(t)
		_ = h.FlushStatuses(context.Background())
		var app droverv1.GetApplicationResponse
		h.mustAPI(t, "GET", "/api/v1/applications/web", nil, &app)
		return len(app.GetStatuses()) == 1 && app.GetStatuses()[0].GetHealth() == droverv1.Health_HEALTH_DEGRADED
	})
	s.checkOpen(t)
	resp, err := http.Get("http://" + h.HTTPAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz after recovery: HTTP %d", resp.StatusCode)
	}
}

// checkOpen fails t if the stream has ended.
func (s *stream) checkOpen(t *testing.T) {
	t.Helper()
	select {
	case err := <-s.errc:
		t.Fatalf("the agent stream ended: %v", err)
	default:
	}
}
