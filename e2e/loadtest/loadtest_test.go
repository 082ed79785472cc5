package loadtest_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/e2e/loadtest"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// patience bounds every wait of these tests, so that a lost assignment
// fails them instead of hanging. It is not a performance expectation.
const patience = 3 * time.Minute

// TestFleetGetsEveryVersionOnce runs 500 simulated agents against an
// in-process hub through one application's creation and one change. Every
// agent must receive each of its three assignment versions (empty, created,
// changed) exactly once, and the statuses the hub stores must be exactly
// the ones the agents sent last, resources included. Some applies fail, so
// NACKs and failed statuses take the same path.
func TestFleetGetsEveryVersionOnce(t *testing.T) {
	checkFleetGetsEveryVersionOnce(t, loadtest.Behaviour{
		ResourcesPerApp: 5, ApplyLatency: 5 * time.Millisecond, FailRate: 0.1, Heartbeat: 2 * time.Second,
	})
}

// TestMisbehavingAgentsDoNotHarmTheOthers is the same run with 5% of the
// agents playing every misbehaviour of the load tool (oversized and
// malformed messages, never answering, reconnecting in a tight loop,
// flooding status). The well-behaved 95% must still get every version
// exactly once without losing their streams, and their statuses must be
// stored as sent. And each misbehaviour must have happened and met the
// hub's answer to it (checkMisbehaved), or the 95% proved nothing.
func TestMisbehavingAgentsDoNotHarmTheOthers(t *testing.T) {
	fl, h := checkFleetGetsEveryVersionOnce(t, loadtest.Behaviour{
		ResourcesPerApp: 5, ApplyLatency: 5 * time.Millisecond, FailRate: 0.1, Heartbeat: 2 * time.Second,
		Misbehaving: 0.05,
	})
	if !t.Failed() {
		checkMisbehaved(t, h, fl)
	}
}

func checkFleetGetsEveryVersionOnce(t *testing.T, beh loadtest.Behaviour) (*loadtest.Fleet, *testHub) {
	const agents = 500
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	commit := repo.Commit(t, "web v1", map[string]string{"web/deploy.yaml": "kind: ConfigMap\n"})
	h := startHub(t)

	var tok droverv1.CreateJoinTokenResponse
	h.call(t, "POST", "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Reusable: true, Labels: map[string]string{"env": "load"}}, &tok)
	ctx := context.Background()
	fl, err := loadtest.Start(ctx, loadtest.Config{
		HubAddr: h.AgentAddr(), ServerName: "127.0.0.1", CAPEM: h.CACertPEM(), JoinToken: tok.GetToken(),
		Agents: agents, NamePrefix: "load", ConnectRate: 500, Behaviour: beh,
	}, testlog.New(t))
	if err != nil {
		t.Fatalf("start the fleet: %v", err)
	}
	t.Cleanup(fl.Close)
	good := loadtest.WellBehavedOnly(fl.Agents())
	if want := agents - int(float64(agents)*beh.Misbehaving); len(good) != want {
		t.Fatalf("%d well-behaved agents, want %d", len(good), want)
	}

	// Round 1: each cluster's first assignment is empty.
	awaitAnswered(t, h, good, 1)

	app := &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repo.URL, Ref: "main", Path: "web"},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "load"}}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true},
	}}
	h.call(t, "POST", "/api/v1/applications", app, nil)
	awaitAnswered(t, h, good, 2)

	app.Spec.SyncPolicy.Interval = "7m"
	h.call(t, "PUT", "/api/v1/applications/web", app, nil)
	awaitAnswered(t, h, good, 3)

	for _, a := range good {
		st := a.State()
		if len(st.Arrivals) != 3 {
			t.Errorf("agent %s received %d assignments %v, want 3: one per change", a.Name(), len(st.Arrivals), versions(st.Arrivals))
			continue
		}
		seen := make(map[string]bool)
		for _, arr := range st.Arrivals {
			if seen[arr.Version] {
				t.Errorf("agent %s received version %s twice: %v", a.Name(), arr.Version, versions(st.Arrivals))
			}
			seen[arr.Version] = true
			// A hub short of database time may refuse a new stream
			// ("try again"), but one that delivered must stay.
			if arr.Session != st.Arrivals[0].Session {
				t.Errorf("agent %s received version %s on stream %d, the first on stream %d: it lost its stream", a.Name(), arr.Version, arr.Session, st.Arrivals[0].Session)
			}
		}
		if got := []int{st.Arrivals[0].Applications, st.Arrivals[1].Applications, st.Arrivals[2].Applications}; !slices.Equal(got, []int{0, 1, 1}) {
			t.Errorf("agent %s: applications per assignment %v, want [0 1 1]", a.Name(), got)
		}
		as := h.Fleet().Assignment(a.Name())
		if apps := as.GetApplications(); len(apps) != 1 || apps[0].GetCommit() != commit || apps[0].GetSyncPolicy().GetInterval() != "7m" {
			t.Errorf("agent %s: hub's assignment %v, want web@%s every 7m", a.Name(), apps, commit)
		}
	}
	if t.Failed() {
		return fl, h
	}

	// The last report of every well-behaved agent must be what the store
	// holds. The hub writes statuses in batches; flush until they are all
	// there.
	want := make(map[string]*droverv1.ApplicationStatus, len(good))
	for _, a := range good {
		rep := a.State().Report
		if len(rep.GetApplications()) != 1 {
			t.Fatalf("agent %s last reported %v, want one application", a.Name(), rep)
		}
		want[a.Name()] = rep.GetApplications()[0]
	}
	var diff string
	deadline := time.Now().Add(patience)
	for {
		if err := h.FlushStatuses(ctx); err != nil {
			t.Fatalf("flush statuses: %v", err)
		}
		got, err := h.Store().StatusesForApplication(ctx, "web")
		if err != nil {
			t.Fatalf("read statuses: %v", err)
		}
		if diff = statusDiff(want, got); diff == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored statuses differ from the agents' last reports after %v:\n%s", patience, diff)
		}
		time.Sleep(100 * time.Millisecond)
	}

	sum := loadtest.Summarize(good)
	if sum.Duplicates != 0 || sum.Connected != len(good) {
		t.Errorf("summary %+v: want no duplicates, %d connected", sum, len(good))
	}
	return fl, h
}

// The hub's per-stream status admission (agentapi's defaults, which the
// in-process hub keeps): a burst, then a steady rate per second.
const (
	hubStatusBurst = 50
	hubStatusRate  = 20
)

// checkMisbehaved checks, once the well-behaved agents have settled, that
// every misbehaving agent did what its mode says and met the hub's
// answer: the oversized were refused for size, the malformed were cut off
// and nothing they claimed was recorded, the never-answering stay
// unacknowledged in the hub's records, the reconnect loops keep being
// served, and the flooders were slowed to the hub's status rate on a
// stream that stayed up.
func checkMisbehaved(t *testing.T, h *testHub, fl *loadtest.Fleet) {
	t.Helper()
	ctx := context.Background()
	settled := time.Now()
	byMode := make(map[loadtest.Mode][]*loadtest.Agent)
	for _, a := range fl.Agents() {
		if m := a.Mode(); m != loadtest.WellBehaved {
			byMode[m] = append(byMode[m], a)
		}
	}
	for _, m := range loadtest.Modes {
		if len(byMode[m]) == 0 {
			t.Errorf("no agent played %s", m)
		}
	}
	cluster := func(name string) *droverv1.Cluster {
		c, err := h.Store().GetCluster(ctx, name)
		if err != nil {
			t.Fatalf("read cluster %s: %v", name, err)
		}
		return c
	}
	// onlyEnds checks that every stream of a that the hub ended, it ended
	// with want. Unavailable, a connection lost or not made in time (on a
	// loaded machine, say), is no answer of the hub's to anything, and
	// failed dials are only counted: the agents keep trying.
	onlyEnds := func(a *loadtest.Agent, st loadtest.State, want codes.Code) {
		for c, n := range st.Ends {
			if c != want && c != codes.Unavailable {
				t.Errorf("%s agent %s: %d streams ended with %v (last error %v), want only %v", a.Mode(), a.Name(), n, c, st.LastErr, want)
			}
		}
	}

	// Oversized: every stream refused for its size, ResourceExhausted
	// without a retry delay (admission's refusals carry one).
	awaitAgents(t, byMode[loadtest.Oversized], "refused for an oversized message", func(_ *loadtest.Agent, st loadtest.State) bool {
		return st.Ends[codes.ResourceExhausted] > 0
	})
	for _, a := range byMode[loadtest.Oversized] {
		onlyEnds(a, a.State(), codes.ResourceExhausted)
	}

	// Malformed: every stream cut off at the bytes that are no protobuf;
	// the status of an application not assigned and the answer with a
	// wrong nonce before them were not recorded.
	awaitAgents(t, byMode[loadtest.Malformed], "cut off for an undecodable message", func(_ *loadtest.Agent, st loadtest.State) bool {
		return st.Ends[codes.Internal] > 0
	})
	for _, a := range byMode[loadtest.Malformed] {
		onlyEnds(a, a.State(), codes.Internal)
		if sts, err := h.Store().GetStatuses(ctx, a.Name()); err != nil || len(sts) != 0 {
			t.Errorf("malformed agent %s: stored statuses %v (%v), want none", a.Name(), sts, err)
		}
		if c := cluster(a.Name()); c.GetAckedVersion() != "" {
			t.Errorf("malformed agent %s: hub recorded an ACK of %q, want none", a.Name(), c.GetAckedVersion())
		}
	}

	// Never-ACK: the hub sent every change (the last arrival is its
	// current version), and its records show the cluster as not having
	// acknowledged it.
	for _, a := range byMode[loadtest.NeverAck] {
		st, current := a.State(), h.Fleet().Assignment(a.Name()).GetVersion()
		if n := len(st.Arrivals); n == 0 || st.Arrivals[n-1].Version != current || current == "" {
			t.Errorf("never-ack agent %s: received %v, want the hub's current version %q last", a.Name(), versions(st.Arrivals), current)
		}
		if st.Answered != "" {
			t.Errorf("never-ack agent %s answered %q", a.Name(), st.Answered)
		}
		if acked := cluster(a.Name()).GetAckedVersion(); acked == current {
			t.Errorf("never-ack agent %s: hub recorded an ACK of its current version %q", a.Name(), acked)
		}
	}

	// Reconnect loop: still going after everything else happened, each
	// new stream recorded by the hub and answered with the cluster's
	// current assignment (the loop's Hello claims nothing applied). A loop
	// that stopped, on a failed dial or otherwise, stays where it was.
	loops := byMode[loadtest.ReconnectLoop]
	before := make(map[string]int, len(loops))
	for _, a := range loops {
		before[a.Name()] = len(a.State().Arrivals)
	}
	awaitAgents(t, loops, "answered on two more streams after the fleet settled", func(a *loadtest.Agent, st loadtest.State) bool {
		return len(st.Arrivals) >= before[a.Name()]+2
	})
	for _, a := range loops {
		st, current := a.State(), h.Fleet().Assignment(a.Name()).GetVersion()
		for _, arr := range st.Arrivals[before[a.Name()]:] {
			if arr.Version != current {
				t.Errorf("reconnect-loop agent %s: stream %d brought %s, want the current %s", a.Name(), arr.Session, arr.Version, current)
			}
		}
		if since := cluster(a.Name()).GetConnectedSince(); !since.AsTime().After(settled) {
			t.Errorf("reconnect-loop agent %s: hub's last connection record %v, want one after %v", a.Name(), since.AsTime(), settled)
		}
		onlyEnds(a, st, codes.OK) // refusals asking for a later retry aside
	}

	// Status flood: slowed, not dropped. A flooder floods from the
	// arrival of its first application on; before it, it sent one report
	// per assignment answered. The number of the report the hub stored
	// last counts every report it read before it, and since that arrival
	// the hub reads at most its burst plus its rate per second. Wait until
	// each flooder has one stored.
	flooders := byMode[loadtest.StatusFlood]
	storedN := make(map[string]int)
	deadline := time.Now().Add(patience)
	for {
		if err := h.FlushStatuses(ctx); err != nil {
			t.Fatalf("flush statuses: %v", err)
		}
		stored, err := h.Store().StatusesForApplication(ctx, "web")
		if err != nil {
			t.Fatalf("read statuses: %v", err)
		}
		for _, st := range stored {
			if n, ok := loadtest.ReportNumber(st.GetMessage()); ok {
				storedN[st.GetCluster()] = n
			}
		}
		missing := ""
		for _, a := range flooders {
			if storedN[a.Name()] == 0 {
				missing = a.Name()
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status-flood agent %s: no numbered status stored after %v; %d reports sent", missing, patience, flooderState(flooders, missing).Reports)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, a := range flooders {
		st := a.State()
		first := slices.IndexFunc(st.Arrivals, func(arr loadtest.Arrival) bool { return arr.Applications > 0 })
		if first < 0 {
			t.Errorf("status-flood agent %s: never assigned an application; arrivals %v", a.Name(), st.Arrivals)
			continue
		}
		flooding := time.Since(st.Arrivals[first].At)
		bound := float64(first+hubStatusBurst) + hubStatusRate*flooding.Seconds()
		if n := storedN[a.Name()]; float64(n) > bound {
			t.Errorf("status-flood agent %s: the hub read report %d, %v after its first application, want at most %.0f (%d reports before, burst %d, %d/s): not throttled",
				a.Name(), n, flooding.Round(time.Millisecond), bound, first, hubStatusBurst, hubStatusRate)
		}
		if len(st.Arrivals) == 0 || st.Arrivals[len(st.Arrivals)-1].Session != st.Sessions || st.Sessions != st.Arrivals[0].Session {
			t.Errorf("status-flood agent %s: arrivals %v over %d streams (last error %v): its stream was dropped, want it slowed", a.Name(), st.Arrivals, st.Sessions, st.LastErr)
		}
		t.Logf("status-flood agent %s: %d reports handed to its stream, the hub read up to report %d within %v of its first application (at most %.0f)",
			a.Name(), st.Reports, storedN[a.Name()], flooding.Round(time.Millisecond), bound)
	}
	for _, m := range []loadtest.Mode{loadtest.Oversized, loadtest.Malformed, loadtest.ReconnectLoop} {
		for _, a := range byMode[m] {
			st := a.State()
			t.Logf("%s agent %s: %d streams, %d answered with an assignment, ends %v, %d refusals to retry later, %d failed dials",
				m, a.Name(), st.Sessions, len(st.Arrivals), st.Ends, st.Deferred, st.DialErrors)
		}
	}
}

func flooderState(agents []*loadtest.Agent, name string) loadtest.State {
	for _, a := range agents {
		if a.Name() == name {
			return a.State()
		}
	}
	return loadtest.State{}
}

// awaitAnswered waits until every agent has answered its round-th
// assignment and that assignment is the hub's current one for its cluster.
func awaitAnswered(t *testing.T, h *testHub, agents []*loadtest.Agent, round int) {
	t.Helper()
	awaitAgents(t, agents, fmt.Sprintf("answering assignment #%d", round), func(a *loadtest.Agent, st loadtest.State) bool {
		snap, _ := h.Fleet().Watch(a.Name())
		return len(st.Arrivals) >= round && snap != nil && st.Answered == snap.Version && st.Arrivals[len(st.Arrivals)-1].Version == snap.Version
	})
}

// awaitAgents waits until ok holds for every agent, at most patience.
func awaitAgents(t testing.TB, agents []*loadtest.Agent, what string, ok func(*loadtest.Agent, loadtest.State) bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		pending, example := 0, ""
		for _, a := range agents {
			if st := a.State(); !ok(a, st) {
				pending++
				if example == "" {
					last := -1
					if n := len(st.Arrivals); n > 0 {
						last = st.Arrivals[n-1].Applications
					}
					example = fmt.Sprintf("%s: connected %v, %d streams, arrivals %v (the last with %d applications), answered %q, last error %v",
						a.Name(), a.Connected(), st.Sessions, versions(st.Arrivals), last, st.Answered, st.LastErr)
				}
			}
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d agents not %s after %v; e.g. %s", pending, len(agents), what, patience, example)
		}
		// Polling 10,000 agents' records costs the load tool CPU time.
		time.Sleep(min(time.Duration(len(agents))*50*time.Microsecond+50*time.Millisecond, 500*time.Millisecond))
	}
}

func versions(arrs []loadtest.Arrival) []string {
	out := make([]string, len(arrs))
	for i, a := range arrs {
		out[i] = a.Version
	}
	return out
}

// statusDiff compares stored statuses of the clusters in want (others'
// are not asked about) with the reports, ignoring what the
// hub sets itself (cluster) and the timestamp, which PostgreSQL keeps to
// the microsecond.
func statusDiff(want map[string]*droverv1.ApplicationStatus, got []*droverv1.ApplicationStatus) string {
	var b strings.Builder
	byCluster := make(map[string]*droverv1.ApplicationStatus, len(got))
	for _, st := range got {
		if _, ok := want[st.GetCluster()]; ok {
			byCluster[st.GetCluster()] = st
		}
	}
	for cluster, w := range want {
		g, ok := byCluster[cluster]
		if !ok {
			fmt.Fprintf(&b, "%s: no stored status\n", cluster)
			continue
		}
		w2, g2 := proto.Clone(w).(*droverv1.ApplicationStatus), proto.Clone(g).(*droverv1.ApplicationStatus)
		w2.Cluster, w2.ObservedAt, g2.Cluster, g2.ObservedAt = "", nil, "", nil
		if !proto.Equal(w2, g2) {
			fmt.Fprintf(&b, "%s: stored %v, sent %v\n", cluster, g2, w2)
		}
		if !g.GetObservedAt().AsTime().Equal(w.GetObservedAt().AsTime().Truncate(time.Microsecond)) {
			fmt.Fprintf(&b, "%s: observed at %v, sent %v\n", cluster, g.GetObservedAt().AsTime(), w.GetObservedAt().AsTime())
		}
	}
	if len(byCluster) != len(want) {
		fmt.Fprintf(&b, "%d stored statuses, want %d\n", len(byCluster), len(want))
	}
	return b.String()
}

// testHub is a hub the tests reach: in process (Hub set) or a child
// process (Hub nil).
type testHub struct {
	*server.Hub
	token    string
	httpAddr string
}

// startHub starts an in-process hub on a fresh test bed database. It logs
// warnings and errors only: at info level 500 agents would bury a failure.
func startHub(t *testing.T) *testHub {
	t.Helper()
	dir := t.TempDir()
	cfg := server.DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.DatabaseURL = testbed.Postgres(t)
	cfg.AgentAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Hostnames = []string{"127.0.0.1", "localhost"}
	cfg.PollInterval = 5 * time.Second
	logger := testlog.NewAt(t, slog.LevelWarn)
	h, err := server.Start(context.Background(), cfg, logger, io.Discard)
	if err != nil {
		t.Fatalf("start hub: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin-token"))
	if err != nil {
		t.Fatalf("read admin token: %v", err)
	}
	return &testHub{Hub: h, token: strings.TrimSpace(string(tok)), httpAddr: h.HTTPAddr()}
}

// call calls the JSON admin API as the admin, fails t unless the reply is
// 2xx, and decodes it into out when out is not nil.
func (h *testHub) call(t testing.TB, method, path string, body, out proto.Message) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		j, err := protojson.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://"+h.httpAddr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read reply: %v", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := protojson.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
}
