package replicas

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/drover-dev/drover/e2e/loadtest"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Simulated agents of TestRollingRestart: a canary ring and the rest, each
// spread over the three replicas.
const (
	rollingCanaries = 6
	rollingRest     = 54
	// rollingReportEvery is each simulated agent's status interval: the
	// reports numbered in it are what "no status lost" is checked with.
	rollingReportEvery = 2 * time.Second
)

// TestRollingRestart restarts all three replicas one at a time, with
// SIGTERM, while a fleet of simulated agents spread over them reports
// status and an application's rollout is between waves: an admin going
// round the replicas never finds all of them failing, no agent's last
// status is lost, no agent reconnects more than twice (once for its own
// replica and once for the one it moved to), the rollout completes, and
// each of its waves starts and completes exactly once.
func TestRollingRestart(t *testing.T) {
	db := testbed.Postgres(t)
	repo := testbed.GitServer(t).CreateRepo(t, "rolling")
	reps := testbed.StartReplicas(t, 3, testbed.HubOptions{
		DatabaseURL: db,
		Hostnames:   []string{"127.0.0.1"},
		Args:        []string{"--poll-interval", "5s", "--offline-timeout", offlineTimeout.String()},
	})
	hub0 := reps.Hubs[0]
	caPEM, err := os.ReadFile(reps.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	addrs := strings.Split(reps.AgentAddrs(), ",")

	c1 := repo.Commit(t, "web on nginx 1.23.0", testbed.ExampleApp("nginx:1.23.0"))
	app := webApplication(repo.URL)
	app.Spec.Rollout = &droverv1.RolloutStrategy{
		ProgressDeadline: within.String(),
		OfflineTimeout:   offlineTimeout.String(),
		Waves: []*droverv1.RolloutWave{
			{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}, Soak: "15s"},
			{Name: "rest", MaxParallel: structpb.NewStringValue("50%"), Soak: "15s"},
		},
	}

	beh := loadtest.Behaviour{Heartbeat: 5 * time.Second, ApplyLatency: 100 * time.Millisecond, StatusInterval: rollingReportEvery}
	var fleets []*loadtest.Fleet
	for _, g := range []struct {
		prefix string
		n      int
		labels map[string]string
	}{
		{"canary", rollingCanaries, map[string]string{"env": "prod", "ring": "canary"}},
		{"rest", rollingRest, map[string]string{"env": "prod"}},
	} {
		var tok droverv1.CreateJoinTokenResponse
		if err := hub0.API(t.Context(), http.MethodPost, "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Reusable: true, Ttl: "1h", Labels: g.labels}, &tok); err != nil {
			t.Fatal(err)
		}
		fl, err := loadtest.Start(t.Context(), loadtest.Config{
			HubAddrs: addrs, ServerName: "127.0.0.1", CAPEM: caPEM, JoinToken: tok.GetToken(),
			Agents: g.n, NamePrefix: g.prefix, Behaviour: beh,
		}, testlog.New(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(fl.Close)
		fleets = append(fleets, fl)
	}
	agents := func() []*loadtest.Agent {
		var out []*loadtest.Agent
		for _, fl := range fleets {
			out = append(out, fl.Agents()...)
		}
		return out
	}
	allConnected := func(what string) {
		t.Helper()
		testbed.Eventually(t, what, within, func() (bool, string) {
			for _, a := range agents() {
				if !a.Connected() {
					return false, a.Name() + " holds none"
				}
			}
			return true, ""
		})
	}
	allConnected("every agent holds a stream")

	if err := hub0.API(t.Context(), http.MethodPost, "/api/v1/applications", app, nil); err != nil {
		t.Fatal(err)
	}
	waitAnswered(t, agents(), c1)

	// The release whose rollout runs through the restarts.
	c2 := repo.Commit(t, "web on nginx 1.24.0", deploymentAt("nginx:1.24.0"))
	if err := reps.Hubs[1].API(t.Context(), http.MethodPost, "/api/v1/applications/web/refresh", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitWave(t, hub0, c2, "canary", "soaking")

	// An admin goes round the replicas throughout, moving on to the next
	// one when a request fails.
	adm := &roundAdmin{hubs: reps.Hubs}
	stopAdmin := make(chan struct{})
	var adminDone sync.WaitGroup
	adminDone.Add(1)
	go func() {
		defer adminDone.Done()
		adm.run(stopAdmin)
	}()

	// From the first replica to the last: the agents move in that order
	// too, the order in which moving on in turn would make them follow
	// the restarts round (hubclient.Successor). While one is down, its
	// agents are served by the others.
	for i := range reps.Hubs {
		t.Logf("restarting hub-%d", i)
		reps.Hubs[i].Stop(t)
		allConnected(fmt.Sprintf("every agent served while hub-%d is down", i))
		reps.Hubs[i].Restart(t)
	}
	close(stopAdmin)
	adminDone.Wait()
	if adm.requests.Load() == 0 {
		t.Fatal("the admin made no request during the restarts")
	}
	t.Logf("the admin made %d requests during the restarts", adm.requests.Load())
	if n := adm.failed.Load(); n > 0 {
		t.Errorf("%d of %d admin requests failed on every replica; last: %v", n, adm.requests.Load(), adm.lastErr())
	}

	waitPhase(t, reps.Hubs[2], "web", c2, "completed")
	waitAnswered(t, agents(), c2)

	// No status lost: once the agents stop reporting, what PostgreSQL
	// holds is each agent's last report.
	for _, fl := range fleets {
		fl.PauseReports(true)
	}
	conn, err := pgx.Connect(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	testbed.Eventually(t, "every agent's last report stored", within, func() (bool, string) {
		return lastReportsStored(t, conn, agents())
	})

	// Each agent reconnects for its own replica's restart and at most once
	// more, for the restart of the one it moved to. A replica that holds
	// more than its share also sheds agents to the others, a few at a
	// time (hub/server/rebalance.go): those reconnects were asked for, and
	// are counted apart.
	shed := 0
	for _, a := range agents() {
		st := a.State()
		shed += st.Deferred
		if n := st.Sessions - st.Deferred; n > 3 {
			t.Errorf("agent %s opened %d streams, %d after a shed (last on %s), want at most 3 otherwise: its own replica's restart and one more", a.Name(), st.Sessions, st.Deferred, st.Hub)
		}
	}
	t.Logf("%d agents' streams were shed to rebalance the replicas", shed)

	var evs droverv1.ListEventsResponse
	if err := hub0.API(t.Context(), http.MethodGet, "/api/v1/events?application=web&page_size=500", nil, &evs); err != nil {
		t.Fatal(err)
	}
	count := waveEvents(evs.GetEvents(), c2)
	for _, k := range []string{"rollout.wave.started canary", "rollout.wave.completed canary", "rollout.wave.started rest", "rollout.wave.completed rest"} {
		if count[k] != 1 {
			t.Errorf("%s: %d events, want 1", k, count[k])
		}
	}
	for k, n := range count {
		if n != 1 {
			t.Errorf("%s: %d events, want 1 (all: %v)", k, n, count)
		}
	}
}

// waitAnswered waits until every agent answered an assignment of the
// application web at commit.
func waitAnswered(t *testing.T, agents []*loadtest.Agent, commit string) {
	t.Helper()
	testbed.Eventually(t, fmt.Sprintf("every agent answered web at %.7s", commit), within, func() (bool, string) {
		for _, a := range agents {
			st := a.State()
			apps := st.Report.GetApplications()
			if len(apps) != 1 || apps[0].GetCommit() != commit || st.Applied != st.Answered {
				return false, fmt.Sprintf("%s last reported %v", a.Name(), st.Report)
			}
		}
		return true, ""
	})
}

// lastReportsStored tells whether the stored status of web on every agent
// carries the number of the last report the agent sent.
func lastReportsStored(t *testing.T, db *pgx.Conn, agents []*loadtest.Agent) (bool, string) {
	t.Helper()
	rows, err := db.Query(t.Context(), `SELECT cluster, message FROM app_status WHERE application = 'web'`)
	if err != nil {
		t.Fatalf("read statuses: %v", err)
	}
	stored := map[string]int{}
	for rows.Next() {
		var cluster, msg string
		if err := rows.Scan(&cluster, &msg); err != nil {
			t.Fatalf("read statuses: %v", err)
		}
		if n, ok := loadtest.ReportNumber(msg); ok {
			stored[cluster] = n
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read statuses: %v", err)
	}
	stale, example := 0, ""
	for _, a := range agents {
		st := a.State()
		sent, ok := loadtest.ReportNumber(st.Report.GetApplications()[0].GetMessage())
		if !ok {
			t.Fatalf("agent %s: report %v carries no number", a.Name(), st.Report)
		}
		if stored[a.Name()] != sent {
			stale++
			example = fmt.Sprintf("%s: stored report %d, last sent %d", a.Name(), stored[a.Name()], sent)
		}
	}
	return stale == 0, fmt.Sprintf("%d of %d agents' last reports not stored; e.g. %s", stale, len(agents), example)
}

// roundAdmin reads through the replicas' admin API in turn, as a client
// given every replica's address would, trying the next replica when one
// fails: a request counts as failed only when every replica failed it.
type roundAdmin struct {
	hubs     []*testbed.HubProcess
	requests atomic.Int64
	failed   atomic.Int64

	mu   sync.Mutex // guards last
	last error
}

func (r *roundAdmin) run(stop <-chan struct{}) {
	reads := []struct {
		path string
		out  func() proto.Message
	}{
		{"/api/v1/applications/web", func() proto.Message { return &droverv1.GetApplicationResponse{} }},
		{"/api/v1/applications/web/rollout", func() proto.Message { return &droverv1.GetRolloutResponse{} }},
		{"/api/v1/clusters", func() proto.Message { return &droverv1.ListClustersResponse{} }},
	}
	next := 0
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
		read := reads[i%len(reads)]
		r.requests.Add(1)
		var errs []error
		for range r.hubs {
			h := r.hubs[next]
			next = (next + 1) % len(r.hubs)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := h.API(ctx, http.MethodGet, read.path, nil, read.out())
			cancel()
			if err == nil {
				errs = nil
				break
			}
			errs = append(errs, err)
		}
		if errs != nil {
			r.failed.Add(1)
			r.mu.Lock()
			r.last = fmt.Errorf("%v", errs)
			r.mu.Unlock()
		}
	}
}

func (r *roundAdmin) lastErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}
