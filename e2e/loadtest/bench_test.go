//go:build linux

// The benchmarks read the hub's memory and CPU time from /proc and raise
// the open-file limit with setrlimit: Linux, where the hub runs.

package loadtest_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover-dev/drover/e2e/loadtest"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// The fleet sizes and loads of BenchmarkHub: Drover's scale budgets are about
// these.
const (
	// fleetAgents is the fleet of every figure but Memory's smaller ones,
	// unless DROVER_BENCH_AGENTS asks for fewer (see benchAgents).
	fleetAgents = 10000
	// connectRate is new streams per second while a fleet connects: fast
	// enough to start 10,000 agents in half a minute, slow enough that
	// what is measured afterwards is the hub's steady state.
	connectRate = 400
	// cpuWindow is how long hub CPU time is sampled.
	cpuWindow = 60 * time.Second
	// Status ingest: every agent reports ingestResources resources every
	// ingestInterval, offering fleetAgents*ingestResources/ingestInterval
	// = 40,000 resource statuses/s, twice the budget, so the figure is
	// what the hub and PostgreSQL manage, not what was offered.
	ingestResources = 20
	ingestInterval  = 5 * time.Second
	ingestWindow    = 60 * time.Second
	// misbehaving is the share of agents that break the protocol in the
	// Misbehaving benchmarks.
	misbehaving = 0.05
	// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on
	// every Linux architecture Go supports.
	clockTicks = 100
)

// BenchmarkHub measures a drover-hub process under a fleet of simulated
// agents (package loadtest) in this process: each agent with its own
// identity, registered through a join token, and its own mutual-TLS
// stream. The hub runs as a separate process built from ./hub/cmd/drover-hub
// on the test bed's PostgreSQL, so the load tool's memory and CPU are not
// counted as the hub's. Registering 10,000 identities is slow, so one
// registered fleet serves every sub-benchmark; each sub-benchmark starts a
// fresh hub process on the same database and addresses and connects the
// agents it needs afresh, so no figure carries another's garbage.
//
// Sub-benchmarks and their figures (the budgets are in
// e2e/cmd/drover-benchtable):
//
//	Memory/N        hub RSS with N idle agents connected; KiB/agent over the
//	                hub's RSS before they connected
//	CPU             hub CPU, % of one core, over 60 s with 10,000 agents
//	                heartbeating every 30 s
//	Fanout          a new release of an all-at-once application placed on
//	                all 10,000 agents: time from the change until each
//	                agent received the new version, p50/p99/max
//	Ingest          while 10,000 agents report 20 resources every 5 s:
//	                resource statuses per second of the reports sent in
//	                60 s that PostgreSQL came to hold in them, by the
//	                report numbers it stores, beside those sent
//	ReconnectStorm  the hub SIGKILLed and restarted under 10,000 agents,
//	                each resending its statuses on its new stream as
//	                drover-agent does: time until every agent is
//	                reconnected, authenticated and current; assignments
//	                sent again or changed; agents whose ACKed version is
//	                the hub's current one by its API; resent statuses
//	                PostgreSQL holds out of those sent
//	Misbehaving/*   CPU and Fanout with 5% of the agents breaking the
//	                protocol; fan-out figures are the other 95%'s
//
// DROVER_BENCH_AGENTS=N runs every figure with N agents instead of
// 10,000 (and Memory only at sizes up to N): a quick check on a small
// machine, whose figures are not the budgets'. The table names the fleet
// size of the figures that depend on it.
func BenchmarkHub(b *testing.B) {
	env := newBenchEnv(b)
	b.Run("Memory", func(b *testing.B) {
		for _, n := range []int{1000, 5000, 10000} {
			if n <= env.agents {
				b.Run(strconv.Itoa(n), func(b *testing.B) { env.memory(b, n) })
			}
		}
	})
	b.Run("CPU", func(b *testing.B) { env.cpu(b, 0) })
	b.Run("Fanout", func(b *testing.B) { env.fanout(b, 0) })
	b.Run("Ingest", env.ingest)
	b.Run("ReconnectStorm", env.reconnectStorm)
	b.Run("Misbehaving", func(b *testing.B) {
		b.Run("CPU", func(b *testing.B) { env.cpu(b, misbehaving) })
		b.Run("Fanout", func(b *testing.B) { env.fanout(b, misbehaving) })
	})
}

// benchEnv is what the sub-benchmarks of BenchmarkHub share: the hub's
// binary, data directory, database and addresses, the join token, and the
// registered fleet. Only one sub-benchmark runs at a time.
type benchEnv struct {
	// agents is the fleet size: fleetAgents or DROVER_BENCH_AGENTS.
	agents                       int
	bin, dataDir, logPath, dbURL string
	// agentAddr is where every hub process serves agents: the fleet's
	// agents dial it, across restarts. httpAddr and debugAddr (pprof) are
	// the running hub's, new at each start (see startHub).
	agentAddr, httpAddr, debugAddr string
	// profileDir, from DROVER_BENCH_PROFILES, is where profiles are saved
	// (none if empty).
	profileDir string
	git        *testbed.Git
	token      string
	fleet      *loadtest.Fleet
	// hub is the running hub process, nil between sub-benchmarks.
	hub *hubProcess
}

func newBenchEnv(b *testing.B) *benchEnv {
	agents := benchAgents(b)
	testbed.RaiseOpenFileLimit(b, uint64(2*agents))
	dir := b.TempDir()
	env := &benchEnv{
		agents: agents,
		bin:    buildHub(b, dir), dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "hub.log"),
		dbURL: testbed.Postgres(b), agentAddr: testbed.FreeAddr(b), profileDir: os.Getenv("DROVER_BENCH_PROFILES"),
		git: testbed.GitServer(b),
	}
	b.Cleanup(func() {
		if env.fleet != nil {
			env.fleet.Close()
		}
		if env.hub != nil {
			env.hub.stop(b)
		}
		if b.Failed() {
			b.Logf("hub log (warnings and errors):\n%s", hubLog(env.logPath))
		}
	})
	h := env.startHub(b)
	defer env.stopHub(b)
	var tok droverv1.CreateJoinTokenResponse
	h.call(b, "POST", "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Reusable: true, Labels: map[string]string{"env": "load"}}, &tok)
	fl, err := loadtest.New(loadtest.Config{
		HubAddr: env.agentAddr, ServerName: "127.0.0.1", CAPEM: h.caPEM, JoinToken: tok.GetToken(),
		NamePrefix: "bench", ConnectRate: connectRate,
	}, testlog.NewAt(b, slog.LevelWarn))
	if err != nil {
		b.Fatalf("load tool: %v", err)
	}
	env.token, env.fleet = tok.GetToken(), fl
	return env
}

// benchAgents is the fleet size: fleetAgents, or fewer from
// DROVER_BENCH_AGENTS.
func benchAgents(b *testing.B) int {
	v := os.Getenv("DROVER_BENCH_AGENTS")
	if v == "" {
		return fleetAgents
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > fleetAgents {
		b.Fatalf("DROVER_BENCH_AGENTS=%q: want a number of agents from 1 to %d", v, fleetAgents)
	}
	b.Logf("DROVER_BENCH_AGENTS: %d agents instead of %d; the figures are not the budgets'", n, fleetAgents)
	return n
}

// ready makes sure n agents are registered and starts a fresh hub. The
// hub that registered them is restarted, so the churn of registration is
// not in any figure.
func (e *benchEnv) ready(b *testing.B, n int) *hubProcess {
	b.Helper()
	if e.fleet.Registered() < n {
		e.startHub(b)
		start := time.Now()
		if err := e.fleet.Register(context.Background(), n); err != nil {
			b.Fatalf("register %d agents: %v", n, err)
		}
		b.Logf("registered %d agents in %v", n, time.Since(start).Round(time.Millisecond))
		e.stopHub(b)
	}
	h := e.startHub(b)
	// Every sub-benchmark starts without applications, even after one
	// that failed before deleting its own.
	var apps droverv1.ListApplicationsResponse
	h.call(b, "GET", "/api/v1/applications", nil, &apps)
	for _, a := range apps.GetApplications() {
		h.call(b, "DELETE", "/api/v1/applications/"+a.GetApplication().GetName(), nil, nil)
	}
	return h
}

// connect connects the first n agents with beh and waits until every
// well-behaved one holds a stream and has answered the hub's assignment,
// including any application placed on it.
func (e *benchEnv) connect(b *testing.B, n int, beh loadtest.Behaviour, apps int) []*loadtest.Agent {
	b.Helper()
	start := time.Now()
	if err := e.fleet.Connect(context.Background(), n, beh); err != nil {
		b.Fatalf("connect %d agents: %v", n, err)
	}
	good := loadtest.WellBehavedOnly(e.fleet.Agents())
	awaitAgents(b, good, "connected and holding their assignment", func(a *loadtest.Agent, st loadtest.State) bool {
		last := len(st.Arrivals) - 1
		return a.Connected() && last >= 0 && st.Answered == st.Arrivals[last].Version && st.Arrivals[last].Applications == apps
	})
	b.Logf("%d agents (%d well-behaved) connected and settled in %v", n, len(good), time.Since(start).Round(time.Millisecond))
	return good
}

func (e *benchEnv) memory(b *testing.B, n int) {
	h := e.ready(b, n)
	defer e.stopHub(b)
	defer e.fleet.Disconnect()
	base := h.rssKiB(b)
	for b.Loop() {
		e.connect(b, n, loadtest.Behaviour{}, 0)
		// Idle means settled: let the connection burst's garbage go.
		time.Sleep(10 * time.Second)
		rss := h.rssKiB(b)
		b.ReportMetric(float64(rss), "rss-KiB")
		b.ReportMetric(float64(rss-base)/float64(n), "KiB/agent")
		b.Logf("hub RSS idle %d KiB, with %d agents %d KiB: %.1f KiB per agent", base, n, rss, float64(rss-base)/float64(n))
		e.profile(b, fmt.Sprintf("heap-%d.pb.gz", n), "heap")
	}
}

func (e *benchEnv) cpu(b *testing.B, share float64) {
	h := e.ready(b, e.agents)
	defer e.stopHub(b)
	defer e.fleet.Disconnect()
	for b.Loop() {
		e.connect(b, e.agents, loadtest.Behaviour{Heartbeat: 30 * time.Second, Misbehaving: share}, 0)
		// The agents' first heartbeats are spread over one interval from
		// their connection; after it every agent is in its steady rhythm.
		time.Sleep(30 * time.Second)
		hub0, self0, wall0 := h.cpuTicks(b), cpuTicks(b, os.Getpid()), time.Now()
		profiled := make(chan struct{})
		go func() {
			defer close(profiled)
			e.profile(b, fmt.Sprintf("cpu-misbehaving%g.pb.gz", share), fmt.Sprintf("profile?seconds=%d", int(cpuWindow.Seconds())-5))
		}()
		time.Sleep(cpuWindow)
		<-profiled
		hub1, self1, wall := h.cpuTicks(b), cpuTicks(b, os.Getpid()), time.Since(wall0)
		pct := func(ticks int64) float64 { return 100 * float64(ticks) / clockTicks / wall.Seconds() }
		b.ReportMetric(pct(hub1-hub0), "hub-cpu-%")
		b.ReportMetric(pct(self1-self0), "loadtool-cpu-%")
		b.ReportMetric(loadAverage(b), "loadavg-1m")
		connected := 0
		for _, a := range loadtest.WellBehavedOnly(e.fleet.Agents()) {
			if a.Connected() {
				connected++
			}
		}
		b.ReportMetric(float64(e.agents), "agents")
		b.ReportMetric(float64(connected), "well-behaved-connected")
		b.Logf("hub CPU %.1f%% of one core over %v; load tool %.1f%%", pct(hub1-hub0), wall.Round(time.Second), pct(self1-self0))
	}
}

// createApp creates an application placed on every agent, from a new
// repository; with no rollout strategy a release goes to all at once. The
// caller deletes it, so that later sub-benchmarks measure without it.
func (e *benchEnv) createApp(b *testing.B, h *hubProcess, name string) *testbed.Repo {
	b.Helper()
	repo := e.git.CreateRepo(b, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	repo.Commit(b, "v1", map[string]string{"app/deploy.yaml": "kind: ConfigMap\n"})
	h.call(b, "POST", "/api/v1/applications", &droverv1.Application{Name: name, Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repo.URL, Ref: "main", Path: "app"},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "load"}}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true},
	}}, nil)
	return repo
}

func (e *benchEnv) fanout(b *testing.B, share float64) {
	h := e.ready(b, e.agents)
	defer e.stopHub(b)
	defer e.fleet.Disconnect()
	repo := e.createApp(b, h, "fanout")
	defer h.call(b, "DELETE", "/api/v1/applications/fanout", nil, nil)
	good := e.connect(b, e.agents, loadtest.Behaviour{Heartbeat: 30 * time.Second, ApplyLatency: 100 * time.Millisecond, Misbehaving: share}, 1)
	before := make(map[string]int, len(good))
	for _, a := range good {
		before[a.Name()] = len(a.State().Arrivals)
	}
	for b.Loop() {
		repo.Commit(b, "v2", map[string]string{"app/deploy.yaml": "kind: ConfigMap\nmetadata: {name: v2}\n"})
		// The change is the release: a refresh makes the hub resolve the
		// ref now instead of at its next poll.
		profiled := make(chan struct{})
		go func() {
			defer close(profiled)
			e.profile(b, fmt.Sprintf("cpu-fanout-misbehaving%g.pb.gz", share), "profile?seconds=20")
		}()
		hub0, self0 := h.cpuTicks(b), cpuTicks(b, os.Getpid())
		changed := time.Now()
		h.call(b, "POST", "/api/v1/applications/fanout/refresh", nil, nil)
		awaitAgents(b, good, "holding the new release", func(a *loadtest.Agent, st loadtest.State) bool {
			return len(st.Arrivals) > before[a.Name()]
		})
		// Who was busy while it spread: the hub, or this process
		// receiving for 10,000 agents.
		took := time.Since(changed)
		pct := func(ticks int64) float64 { return 100 * float64(ticks) / clockTicks / took.Seconds() }
		b.ReportMetric(pct(h.cpuTicks(b)-hub0), "hub-cpu-%")
		b.ReportMetric(pct(cpuTicks(b, os.Getpid())-self0), "loadtool-cpu-%")
		b.ReportMetric(loadAverage(b), "loadavg-1m")
		<-profiled
		lat := make([]time.Duration, 0, len(good))
		extra := 0
		for _, a := range good {
			st := a.State()
			lat = append(lat, st.Arrivals[before[a.Name()]].At.Sub(changed))
			extra += len(st.Arrivals) - before[a.Name()] - 1
		}
		slices.Sort(lat)
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		b.ReportMetric(ms(loadtest.Percentile(lat, 0.50)), "p50-ms")
		b.ReportMetric(ms(loadtest.Percentile(lat, 0.99)), "p99-ms")
		b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
		b.ReportMetric(float64(len(good)), "agents")
		if sum := loadtest.Summarize(good); sum.Duplicates != 0 || extra != 0 {
			b.Errorf("%d versions received twice, %d assignments beyond the one release", sum.Duplicates, extra)
		}
		b.Logf("fan-out to %d agents: p50 %v p99 %v max %v", len(good), loadtest.Percentile(lat, 0.5), loadtest.Percentile(lat, 0.99), lat[len(lat)-1])
	}
}

func (e *benchEnv) ingest(b *testing.B) {
	h := e.ready(b, e.agents)
	defer e.stopHub(b)
	defer e.fleet.Disconnect()
	e.createApp(b, h, "ingest")
	defer h.call(b, "DELETE", "/api/v1/applications/ingest", nil, nil)
	db := e.db(b)
	// The fleet connects first: reports from the first agents must not
	// slow the connection of the last.
	e.fleet.PauseReports(true)
	defer e.fleet.PauseReports(false)
	good := e.connect(b, e.agents, loadtest.Behaviour{
		Heartbeat: 30 * time.Second, ResourcesPerApp: ingestResources, StatusInterval: ingestInterval,
	}, 1)
	e.fleet.PauseReports(false)
	for b.Loop() {
		// Let every agent's report rhythm start.
		time.Sleep(ingestInterval)
		// What PostgreSQL holds at each end of the window, by the numbers
		// of the reports stored: the reports an agent sent within the
		// window up to the one PostgreSQL holds at its end were made
		// current in it. One the hub's backlog replaced with the agent's
		// next before writing it is counted too (its successor stands for
		// it); one sent before the window, or not yet written when it
		// ends, is not, so the figure never exceeds what was sent.
		t0 := time.Now()
		stored0 := storedReports(b, db, "ingest")
		sent0 := reportsSent(good)
		time.Sleep(ingestWindow)
		window := time.Since(t0)
		stored1 := storedReports(b, db, "ingest")
		sent1 := reportsSent(good)
		var storedRes, sentRes, reports int64
		for _, a := range good {
			s1 := stored1[a.Name()]
			if from := max(stored0[a.Name()].number, sent0[a.Name()]); s1.number > from {
				reports += int64(s1.number - from)
				storedRes += int64(s1.number-from) * int64(s1.resources)
			}
			sentRes += int64(sent1[a.Name()]-sent0[a.Name()]) * ingestResources
		}
		rate, sentRate := float64(storedRes)/window.Seconds(), float64(sentRes)/window.Seconds()
		b.Logf("status ingest over %v: %d reports sent in it made current in PostgreSQL, %.0f resource statuses/s; agents sent %.0f/s",
			window.Round(time.Millisecond), reports, rate, sentRate)

		// Nothing lost: once the agents stop reporting, the hub catches
		// up until what PostgreSQL holds is every agent's last report.
		e.fleet.PauseReports(true)
		stopped := time.Now()
		lost := awaitStored(b, db, "ingest", good)
		b.ReportMetric(float64(len(good)), "agents")
		b.ReportMetric(rate, "resources-stored/s")
		b.ReportMetric(sentRate, "resources-sent/s")
		b.ReportMetric(float64(lost), "statuses-lost")
		b.ReportMetric(time.Since(stopped).Seconds(), "catch-up-s")
	}
}

// storedReport is what PostgreSQL holds of one agent's status: the number
// of the report and how many resources it stored.
type storedReport struct{ number, resources int }

// storedReports reads the stored status of app on every cluster.
func storedReports(b *testing.B, db *pgx.Conn, app string) map[string]storedReport {
	b.Helper()
	rows, err := db.Query(context.Background(),
		`SELECT cluster, message, jsonb_array_length(resources) FROM app_status WHERE application = $1`, app)
	if err != nil {
		b.Fatalf("read statuses: %v", err)
	}
	out := make(map[string]storedReport)
	for rows.Next() {
		var cluster, msg string
		var resources int
		if err := rows.Scan(&cluster, &msg, &resources); err != nil {
			b.Fatalf("read statuses: %v", err)
		}
		if n, ok := loadtest.ReportNumber(msg); ok {
			out[cluster] = storedReport{n, resources}
		}
	}
	if err := rows.Err(); err != nil {
		b.Fatalf("read statuses: %v", err)
	}
	return out
}

// reportsSent is how many reports each agent has handed to its stream.
func reportsSent(agents []*loadtest.Agent) map[string]int {
	out := make(map[string]int, len(agents))
	for _, a := range agents {
		out[a.Name()] = a.State().Reports
	}
	return out
}

// awaitStored waits until the stored status of app on every agent carries
// the number of the last report it sent, at most patience, and returns how
// many agents' last reports are not stored by then (logging an example).
func awaitStored(b *testing.B, db *pgx.Conn, app string, agents []*loadtest.Agent) (lost int) {
	b.Helper()
	want := make(map[string]int, len(agents))
	for _, a := range agents {
		st := a.State()
		if len(st.Report.GetApplications()) != 1 {
			b.Fatalf("agent %s last reported %v, want one application", a.Name(), st.Report)
		}
		n, ok := loadtest.ReportNumber(st.Report.GetApplications()[0].GetMessage())
		if !ok {
			b.Fatalf("agent %s: report %v carries no number", a.Name(), st.Report)
		}
		want[a.Name()] = n
	}
	deadline := time.Now().Add(patience)
	for {
		rows, err := db.Query(context.Background(), `SELECT cluster, message FROM app_status WHERE application = $1`, app)
		if err != nil {
			b.Fatalf("read statuses: %v", err)
		}
		got := make(map[string]int, len(want))
		for rows.Next() {
			var cluster, msg string
			if err := rows.Scan(&cluster, &msg); err != nil {
				b.Fatalf("read statuses: %v", err)
			}
			if n, ok := loadtest.ReportNumber(msg); ok {
				got[cluster] = n
			}
		}
		if err := rows.Err(); err != nil {
			b.Fatalf("read statuses: %v", err)
		}
		stale, example := 0, ""
		for name, n := range want {
			if got[name] != n {
				stale++
				example = fmt.Sprintf("%s: stored report %d, last sent %d", name, got[name], n)
			}
		}
		if stale == 0 {
			return 0
		}
		if time.Now().After(deadline) {
			b.Logf("%d of %d agents' last reports not stored after %v; e.g. %s", stale, len(want), patience, example)
			return stale
		}
		time.Sleep(time.Second)
	}
}

func (e *benchEnv) reconnectStorm(b *testing.B) {
	h := e.ready(b, e.agents)
	defer e.stopHub(b)
	defer e.fleet.Disconnect()
	e.createApp(b, h, "storm")
	defer func() { e.hub.call(b, "DELETE", "/api/v1/applications/storm", nil, nil) }()
	db := e.db(b)
	good := e.connect(b, e.agents, loadtest.Behaviour{Heartbeat: 30 * time.Second, ResourcesPerApp: 10}, 1)
	if lost := awaitStored(b, db, "storm", good); lost != 0 {
		b.Fatalf("%d agents' statuses not stored before the storm", lost)
	}
	type agentBefore struct {
		sessions, arrivals, resent int
		applied                    string
	}
	before := make(map[string]agentBefore, len(good))
	for _, a := range good {
		st := a.State()
		before[a.Name()] = agentBefore{st.Sessions, len(st.Arrivals), st.Resent, st.Applied}
	}
	for b.Loop() {
		killed := time.Now()
		e.hub.kill(b)
		e.startHub(b)
		started := time.Since(killed)
		// Resynced: the agent holds a new stream that the new hub process
		// authenticated and recorded (connected_since after the kill), and
		// on which it resent its statuses.
		var since map[string]time.Time
		awaitAgents(b, good, "reconnected to the restarted hub", func(a *loadtest.Agent, st loadtest.State) bool {
			if since == nil || a == good[0] {
				since = connectedSince(b, db)
			}
			bf := before[a.Name()]
			return a.Connected() && st.Sessions > bf.sessions && st.Resent > bf.resent && since[a.Name()].After(killed)
		})
		lat := make([]time.Duration, 0, len(good))
		resent, changed, resends := 0, 0, 0
		for _, a := range good {
			st := a.State()
			lat = append(lat, since[a.Name()].Sub(killed))
			for _, arr := range st.Arrivals[before[a.Name()].arrivals:] {
				if arr.Version == before[a.Name()].applied {
					resent++
				} else {
					changed++
				}
			}
			resends += st.Resent - before[a.Name()].resent
		}
		slices.Sort(lat)
		b.ReportMetric(started.Seconds(), "hub-restart-s")
		b.ReportMetric(loadtest.Percentile(lat, 0.5).Seconds(), "p50-s")
		b.ReportMetric(lat[len(lat)-1].Seconds(), "all-resynced-s")
		b.ReportMetric(float64(resent), "assignments-resent")
		b.ReportMetric(float64(changed), "assignments-changed")
		if resent != 0 || changed != 0 {
			b.Errorf("after the restart %d agents were sent the version they held and %d a different one; want none", resent, changed)
		}

		// Assignments: every agent runs, and the hub records it ACKed,
		// the version the restarted hub holds for its cluster.
		vers := clusterVersions(b, e.hub)
		current, example := 0, ""
		for _, a := range good {
			st, v := a.State(), vers[a.Name()]
			if v.current != "" && st.Applied == v.current && v.acked == v.current {
				current++
			} else if example == "" {
				example = fmt.Sprintf("%s: agent applied %q, hub's current %q, hub's record of its ACK %q", a.Name(), st.Applied, v.current, v.acked)
			}
		}
		b.ReportMetric(float64(len(good)), "agents")
		b.ReportMetric(float64(current), "acked-current")
		if current != len(good) {
			b.Errorf("%d of %d agents' ACKed version is not the restarted hub's current one; e.g. %s", len(good)-current, len(good), example)
		}

		// Statuses: each agent resent its statuses on its new stream
		// (more than once if a stream was refused); the last resend of
		// every agent must be what PostgreSQL holds.
		lost := awaitStored(b, db, "storm", good)
		b.ReportMetric(float64(len(good)), "statuses-sent")
		b.ReportMetric(float64(len(good)-lost), "statuses-stored")
		b.ReportMetric(float64(resends), "resends")
		if lost != 0 {
			b.Errorf("%d of %d agents' statuses resent after the restart are not stored", lost, len(good))
		}
		b.Logf("hub up %v after SIGKILL; all %d agents resynced %v after it (p50 %v); %d ACKed the hub's current version; %d of %d resent statuses stored (%d resends)",
			started.Round(time.Millisecond), len(good), lat[len(lat)-1].Round(time.Millisecond), loadtest.Percentile(lat, 0.5).Round(time.Millisecond),
			current, len(good)-lost, len(good), resends)
	}
}

// clusterVersion is what the hub's admin API says of a cluster's
// assignment: the version the hub holds for it now, and the version its
// store records the agent ACKed.
type clusterVersion struct{ current, acked string }

// clusterVersions lists every cluster through the admin API.
func clusterVersions(b *testing.B, h *hubProcess) map[string]clusterVersion {
	b.Helper()
	out := make(map[string]clusterVersion)
	token := ""
	for {
		var page droverv1.ListClustersResponse
		h.call(b, "GET", "/api/v1/clusters?page_size=1000&page_token="+url.QueryEscape(token), nil, &page)
		for _, c := range page.GetClusters() {
			out[c.GetName()] = clusterVersion{current: c.GetAssignmentVersion(), acked: c.GetAckedVersion()}
		}
		if token = page.GetNextPageToken(); token == "" {
			return out
		}
	}
}

// connectedSince reads when the hub last recorded each cluster connected.
func connectedSince(b *testing.B, db *pgx.Conn) map[string]time.Time {
	b.Helper()
	rows, err := db.Query(context.Background(), `SELECT name, connected_since FROM clusters WHERE connected_since IS NOT NULL`)
	if err != nil {
		b.Fatalf("read clusters: %v", err)
	}
	out := make(map[string]time.Time)
	for rows.Next() {
		var name string
		var at time.Time
		if err := rows.Scan(&name, &at); err != nil {
			b.Fatalf("read clusters: %v", err)
		}
		out[name] = at
	}
	if err := rows.Err(); err != nil {
		b.Fatalf("read clusters: %v", err)
	}
	return out
}

// profile saves the hub's pprof profile path (under /debug/pprof/) as
// name in the profile directory, when there is one.
func (e *benchEnv) profile(b *testing.B, name, path string) {
	if e.profileDir == "" {
		return
	}
	resp, err := http.Get("http://" + e.debugAddr + "/debug/pprof/" + path)
	if err != nil {
		b.Errorf("profile %s: %v", path, err)
		return
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, raw)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(e.profileDir, name), raw, 0o644)
	}
	if err != nil {
		b.Errorf("profile %s: %v", path, err)
	}
}

// db opens a connection to the hub's database for b, to read what the hub
// actually stored.
func (e *benchEnv) db(b *testing.B) *pgx.Conn {
	b.Helper()
	conn, err := pgx.Connect(context.Background(), e.dbURL)
	if err != nil {
		b.Fatalf("connect to the hub's database: %v", err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// hubProcess is drover-hub running as a child process.
type hubProcess struct {
	testHub
	cmd    *exec.Cmd
	exited chan struct{}
	caPEM  []byte
}

// buildHub builds drover-hub into dir.
func buildHub(b *testing.B, dir string) string {
	b.Helper()
	bin := filepath.Join(dir, "drover-hub")
	build := exec.Command("go", "build", "-o", bin, "./hub/cmd/drover-hub")
	build.Dir = filepath.Join("..", "..") // the module root, from e2e/loadtest
	build.Env = testbed.StaticBuildEnv()
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build drover-hub: %v\n%s", err, out)
	}
	return bin
}

// startHub starts drover-hub on the environment's data directory, database
// and agent address, logging warnings and errors only, and waits until it
// is healthy.
//
// The agent address stays the same across restarts, since the fleet dials
// it; the HTTP and profiling addresses are new at each start. Any of them
// can have been taken since it was picked (FreeAddr closes its probe), and
// the hub then exits at start: startHub tells that case from others by
// binding the addresses itself (EADDRINUSE), picks new HTTP and profiling
// addresses or waits until the agent address is free again, and tries
// once more. Healthy means the hub process itself listens on all three
// and answers /healthz, so a stranger on one of the ports is never taken
// for the hub.
func (e *benchEnv) startHub(b *testing.B) *hubProcess {
	b.Helper()
	if e.hub != nil {
		e.stopHub(b)
	}
	// Kept-alive connections to an earlier hub on the same address are
	// dead; a non-idempotent request on one would fail with EOF.
	http.DefaultClient.CloseIdleConnections()
	const attempts = 5
	for attempt := 1; ; attempt++ {
		e.httpAddr, e.debugAddr = testbed.FreeAddr(b), testbed.FreeAddr(b)
		if h, ok := e.tryStartHub(b); ok {
			return h
		}
		taken := addrsInUse(b, e.agentAddr, e.httpAddr, e.debugAddr)
		if len(taken) == 0 || attempt == attempts {
			b.Fatalf("drover-hub exited at start (attempt %d; addresses taken by others: %v); its log is %s:\n%s", attempt, taken, e.logPath, hubLog(e.logPath))
		}
		b.Logf("drover-hub could not bind %v, taken meanwhile; trying again", taken)
		if slices.Contains(taken, e.agentAddr) {
			awaitFree(b, e.agentAddr)
		}
	}
}

// tryStartHub starts one hub process and waits until it is healthy (true)
// or has exited (false).
func (e *benchEnv) tryStartHub(b *testing.B) (*hubProcess, bool) {
	b.Helper()
	logFile, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(e.bin,
		"--data-dir", e.dataDir, "--database-url", e.dbURL,
		"--agent-addr", e.agentAddr, "--http-addr", e.httpAddr, "--hostnames", "127.0.0.1,localhost",
		"--debug-addr", e.debugAddr, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The hub must not outlive a benchmark binary that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start drover-hub: %v", err)
	}
	h := &hubProcess{cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(h.exited) }()
	e.hub = h

	deadline := time.Now().Add(patience)
	for {
		select {
		case <-h.exited:
			e.hub = nil
			return nil, false
		default:
		}
		if listensOn(cmd.Process.Pid, e.agentAddr, e.httpAddr, e.debugAddr) {
			if resp, err := http.Get("http://" + e.httpAddr + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("drover-hub not healthy after %v; its log is %s", patience, e.logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(e.dataDir, "admin-token"))
	if err != nil {
		b.Fatalf("read admin token: %v", err)
	}
	if h.caPEM, err = os.ReadFile(filepath.Join(e.dataDir, "pki", "ca.crt")); err != nil {
		b.Fatalf("read the hub's CA: %v", err)
	}
	h.testHub = testHub{token: strings.TrimSpace(string(tok)), httpAddr: e.httpAddr}
	return h, true
}

// addrsInUse returns those of addrs that another socket listens on now.
func addrsInUse(b *testing.B, addrs ...string) []string {
	b.Helper()
	var taken []string
	for _, addr := range addrs {
		l, err := net.Listen("tcp", addr)
		switch {
		case err == nil:
			l.Close()
		case errors.Is(err, syscall.EADDRINUSE):
			taken = append(taken, addr)
		default:
			b.Fatalf("check whether %s is free: %v", addr, err)
		}
	}
	return taken
}

// awaitFree waits until nothing listens on addr, at most patience.
func awaitFree(b *testing.B, addr string) {
	b.Helper()
	deadline := time.Now().Add(patience)
	for len(addrsInUse(b, addr)) != 0 {
		if time.Now().After(deadline) {
			b.Fatalf("%s, the agents' hub address, still taken by another process after %v", addr, patience)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// listensOn tells whether process pid holds a listening TCP socket on each
// of addrs (IPv4 host:port), from /proc: the socket inodes of its file
// descriptors against the listeners of /proc/net/tcp.
func listensOn(pid int, addrs ...string) bool {
	raw, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false
	}
	// local_address is hex: the IPv4 address in host byte order (little
	// endian on every Linux machine Go's amd64 and arm64 builds run on),
	// then the port.
	want := make(map[string]string, len(addrs)) // local_address → addr
	for _, addr := range addrs {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || !ap.Addr().Is4() {
			return false
		}
		ip := ap.Addr().As4()
		want[fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())] = addr
	}
	inodes := make(map[string]string) // socket inode → addr
	for line := range strings.Lines(string(raw)) {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" { // 0A: TCP_LISTEN
			continue
		}
		if addr, ok := want[f[1]]; ok {
			inodes["socket:["+f[9]+"]"] = addr
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	held := make(map[string]bool)
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil {
			if addr, ok := inodes[target]; ok {
				held[addr] = true
			}
		}
	}
	return len(held) == len(want)
}

// hubLog returns the log records of the hub's log file: not the initial
// admin token, which the hub prints there on its first start.
func hubLog(path string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for line := range strings.Lines(string(raw)) {
		if strings.HasPrefix(line, "time=") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// stopHub ends the running hub, if any, as an operator would.
func (e *benchEnv) stopHub(b *testing.B) {
	if e.hub != nil {
		e.hub.stop(b)
		e.hub = nil
	}
}

func (h *hubProcess) stop(b *testing.B) {
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		b.Errorf("drover-hub did not stop within 30 s of SIGTERM; killed")
		h.kill(b)
	}
}

// kill ends the hub with SIGKILL, leaving it no chance to flush anything.
func (h *hubProcess) kill(b *testing.B) {
	if err := h.cmd.Process.Kill(); err != nil {
		b.Fatalf("kill drover-hub: %v", err)
	}
	<-h.exited
}

// rssKiB reads the hub's resident set size from /proc.
func (h *hubProcess) rssKiB(b *testing.B) int64 { return rssKiB(b, h.cmd.Process.Pid) }

// rssKiB is the resident memory of process pid.
func rssKiB(b *testing.B, pid int) int64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatalf("read the hub's memory: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kib
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

func (h *hubProcess) cpuTicks(b *testing.B) int64 { return cpuTicks(b, h.cmd.Process.Pid) }

// cpuTicks reads a process's user plus system CPU time, in clock ticks,
// from /proc/PID/stat.
func cpuTicks(b *testing.B, pid int) int64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("read CPU time: %v", err)
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15, the 12th and 13th after it.
	_, rest, ok := strings.Cut(string(raw), ") ")
	fields := strings.Fields(rest)
	if !ok || len(fields) < 13 {
		b.Fatalf("/proc/%d/stat: unexpected %q", pid, raw)
	}
	var total int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: CPU time %q: %v", pid, f, err)
		}
		total += n
	}
	return total
}

// loadAverage is the machine's one-minute load average, reported beside
// CPU figures: the hub shares two cores with the load tool and others.
func loadAverage(b *testing.B) float64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		b.Fatalf("read the load average: %v", err)
	}
	f, err := strconv.ParseFloat(strings.Fields(string(raw))[0], 64)
	if err != nil {
		b.Fatalf("/proc/loadavg %q: %v", raw, err)
	}
	return f
}
