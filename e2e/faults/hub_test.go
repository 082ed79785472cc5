package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/rollout"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestHubCrash kills the hub process with SIGKILL in the middle of a burst
// of status reports, while a rollout waits at an approval gate, and while a
// rollout's wave soaks, and each time restarts it on the same database.
func TestHubCrash(t *testing.T) {
	t.Parallel()
	b := newBed(t, testbed.Postgres(t), map[string]map[string]string{
		"canary": {"env": "prod", "ring": "canary"},
		"main-1": {"env": "prod", "ring": "main"},
		"main-2": {"env": "prod", "ring": "main"},
		"main-3": {"env": "prod", "ring": "main"},
	})
	// The burst goes first: its figure counts every status the hub holds,
	// so no other application may be reporting meanwhile.
	t.Run("during a burst of status reports", func(t *testing.T) { hubCrashDuringStatusBurst(t, b.with(t)) })
	t.Run("at an approval gate", func(t *testing.T) { hubCrashAtApprovalGate(t, b.with(t)) })
	t.Run("during a soak", func(t *testing.T) { hubCrashDuringSoak(t, b.with(t)) })
	t.Run("after an outage", func(t *testing.T) { hubOutage(t, b.with(t)) })
}

// hubOutage: the hub is down long enough for every agent to fail several
// reconnects, then serves again. Every agent's first attempt after that
// reaches it: no attempt started once the hub served failed. An agent
// whose gRPC channel still held its last dial's error would be told
// "connection refused" by a listening hub and wait a backoff more; this
// is what kept agents away for up to twice their backoff cap.
func hubOutage(t *testing.T, b *bed) {
	const failures = 3
	b.hub.Stop(t)
	stopped := time.Now().Round(0)
	for _, c := range b.names() {
		testbed.Eventually(t, fmt.Sprintf("%s failing %d reconnects to the stopped hub", c, failures), waitLong, func() (bool, string) {
			n := len(b.sessionEnds(c, stopped))
			return n >= failures, fmt.Sprintf("%d failed", n)
		})
	}
	b.hub.Restart(t)
	serving := time.Now().Round(0)
	b.waitConnectedAfter(serving)
	var delays []time.Duration
	for _, c := range b.names() {
		for _, e := range b.sessionEnds(c, serving) {
			t.Errorf("%s: an attempt started %v after the hub served again failed: %s", c, e.start.Sub(serving).Round(time.Millisecond), e.line)
		}
		delays = append(delays, b.connectedSince(c).Sub(serving).Round(time.Millisecond))
	}
	slices.Sort(delays)
	figure(t, "hub outage of %v: hub serving to each agent connected (backoff cap %s): %v",
		serving.Sub(stopped).Round(time.Second), agentBackoffMax, delays)
}

// sessionEnd is one "hub session ended" line of an agent's log.
type sessionEnd struct {
	start time.Time
	line  string
}

// sessionEnds lists the sessions of agent cluster that ended, in its log
// (all runs), among those started at since or later. A session's start is
// the line's time less how long it lasted, both as the agent logged them.
func (b *bed) sessionEnds(cluster string, since time.Time) []sessionEnd {
	b.t.Helper()
	data, err := os.ReadFile(b.agents[cluster].Process().LogPath())
	if err != nil {
		b.t.Fatalf("%s: read the agent's log: %v", cluster, err)
	}
	var out []sessionEnd
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, `msg="hub session ended; reconnecting"`) {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, logField(line, "time"))
		if err != nil {
			b.t.Fatalf("%s: no time in the agent's log line %q: %v", cluster, line, err)
		}
		lasted, err := time.ParseDuration(logField(line, "lasted"))
		if err != nil {
			b.t.Fatalf("%s: no duration in the agent's log line %q: %v", cluster, line, err)
		}
		if start := at.Add(-lasted); !start.Before(since) {
			out = append(out, sessionEnd{start: start, line: line})
		}
	}
	return out
}

// logField is the value of key in a line of slog's text format, for
// values slog writes unquoted (times, durations, numbers); "" if absent.
func logField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// mainClusters are the clusters of the bed's second wave.
var mainClusters = []string{"main-1", "main-2", "main-3"}

// canaryWave is the first wave of the rollout tests: the canary alone.
func canaryWave(soak string) *droverv1.RolloutWave {
	return &droverv1.RolloutWave{
		Name:        "canary",
		Selector:    &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}},
		MaxParallel: structpb.NewNumberValue(1),
		Soak:        soak,
	}
}

// hubCrashAtApprovalGate: the hub dies while a rollout waits for approval
// of its second wave. After its restart the gate still holds: the
// restarted hub takes in the canary's reports and gives the other clusters
// their assignments, and none of them gets the release. Once approved, the
// same rollout carries on, and every cluster's ReplicaSet history shows
// the release arrived only after its wave was released: the canary's after
// it was pinned, the others' after the approval.
func hubCrashAtApprovalGate(t *testing.T, b *bed) {
	const app = "gate"
	v1, v2 := "nginx:1.23.0", "nginx:1.24.0"
	c1 := b.createRolloutApp(app, v1, canaryWave(""), &droverv1.RolloutWave{Name: "main", RequireApproval: true})

	c2 := b.repo.Commit(t, app+" on "+v2, testbed.ExampleAppIn(app, v2))
	b.refresh(app)
	before := b.waitRollout(app, c2, string(rollout.PhaseWaitingApproval))
	stBefore := b.storedRollout(app)
	if c := stBefore.Clusters["canary"]; c.Phase != rollout.ClusterSucceeded {
		t.Fatalf("the rollout waits for approval with the canary %s: want succeeded", c.Phase)
	}

	killed, serving := b.crashHub()
	b.waitConnectedAfter(killed)
	// The restarted hub has stepped the rollout with what it heard since
	// the crash: the canary's status, resent in its new session, is taken
	// in (the stored state records when) ...
	testbed.Eventually(t, "the restarted hub taking in the canary's resent status", waitLong, func() (bool, string) {
		st, err := b.tryStoredRollout(app)
		if err != nil {
			return false, err.Error()
		}
		c := st.Clusters["canary"]
		return c.Observed.After(killed), fmt.Sprintf("canary's newest status taken in at %v, the hub was killed at %v", c.Observed, killed)
	})
	// It holds the gate: the same rollout waits for approval, the gated
	// wave's clusters are pinned to what they ran, and they run it.
	r, err := b.rollout(app)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetId() != before.GetId() || r.GetPhase() != string(rollout.PhaseWaitingApproval) {
		t.Fatalf("after the restart the hub runs rollout %d in phase %s: want rollout %d still waiting for approval", r.GetId(), r.GetPhase(), before.GetId())
	}
	held := b.storedRollout(app)
	for _, c := range mainClusters {
		if cs := held.Clusters[c]; cs.Phase != rollout.ClusterPending || cs.Commit != c1 {
			t.Errorf("after the restart %s is %s at %.7s: want pending at %.7s", c, cs.Phase, cs.Commit, c1)
		}
		if hist := b.revisions(app, c); len(hist) != 1 || hist[0].image != v1 {
			t.Errorf("%s went through %v before the gate was approved: want only %s", c, hist, v1)
		}
	}

	promoted := time.Now().Round(0) // wall clock only, as the hub and clusters record
	b.api(http.MethodPost, "/api/v1/applications/"+app+"/rollout/promote", nil, nil)
	after := b.waitRollout(app, c2, string(rollout.PhaseCompleted))
	figure(t, "hub crash at an approval gate: kill to serving again: %v; promote to rollout completed: %v",
		serving.Sub(killed).Round(time.Millisecond), time.Since(promoted).Round(time.Millisecond))
	if after.GetId() != before.GetId() {
		t.Errorf("the restarted hub ran rollout %d, want the one under way (%d) carried on", after.GetId(), before.GetId())
	}
	st := b.storedRollout(app)
	if got, was := st.Clusters["canary"].StartedAt, stBefore.Clusters["canary"].StartedAt; !got.Equal(was) {
		t.Errorf("the canary, done before the crash, was started again at %v (first at %v)", got, was)
	}
	approved := st.Waves[1].ApprovedAt
	if approved.Before(promoted) {
		t.Errorf("the hub records the gate approved at %v, before the test promoted it at %v", approved, promoted)
	}
	released := map[string]time.Time{"canary": stBefore.Clusters["canary"].StartedAt}
	for _, c := range mainClusters {
		released[c] = promoted
	}
	b.checkReleaseHistory(app, []string{v1, v2}, released, st)
}

// hubCrashDuringSoak: the hub dies while the canary's wave soaks, and is
// back before the soak ends. The soak is not cut short: the next wave's
// clusters were pinned to the release (in the stored rollout) and created
// its ReplicaSet (in their clusters) no earlier than the soak's end as the
// hub had it before the crash.
func hubCrashDuringSoak(t *testing.T, b *bed) {
	const app = "soak"
	// Long enough for the hub to be killed and serve again well inside it:
	// a restart takes seconds (the figure below). When a busy machine
	// makes it longer than the soak, the kill is tried again with a new
	// release, as agentCrashMidApply does.
	const soak = 15 * time.Second
	const attempts = 3
	images := []string{"nginx:1.23.0"}
	b.createRolloutApp(app, images[0], canaryWave(soak.String()), &droverv1.RolloutWave{Name: "main"})

	var (
		release         string
		before          *droverv1.RolloutStatus
		stBefore        rollout.State
		soakUntil       time.Time
		killed, serving time.Time
	)
	for attempt := 1; ; attempt++ {
		img := fmt.Sprintf("nginx:1.%d.0", 23+attempt)
		images = append(images, img)
		release = b.repo.Commit(t, app+" on "+img, testbed.ExampleAppIn(app, img))
		b.refresh(app)
		testbed.Eventually(t, "the canary's wave soaking", waitLong, func() (bool, string) {
			var err error
			if before, err = b.rollout(app); err != nil {
				return false, err.Error()
			}
			w := before.GetWaves()
			ok := before.GetCommit() == release && len(w) == 2 && w[0].GetPhase() == string(rollout.WaveSoaking) && w[0].GetSoakUntil() != nil
			return ok, fmt.Sprintf("rollout %v", before)
		})
		soakUntil = before.GetWaves()[0].GetSoakUntil().AsTime()
		stBefore = b.storedRollout(app)
		killed, serving = b.crashHub()
		if serving.Before(soakUntil) {
			break
		}
		t.Logf("attempt %d: the restarted hub served at %v, after the soak ended at %v", attempt, serving, soakUntil)
		b.waitConnectedAfter(killed)
		b.waitRollout(app, release, string(rollout.PhaseCompleted))
		if attempt == attempts {
			t.Fatalf("%d times the hub took longer to serve again than the %v soak: the test could not kill it mid-soak", attempt, soak)
		}
	}
	b.waitConnectedAfter(killed)
	after := b.waitRollout(app, release, string(rollout.PhaseCompleted))
	figure(t, "hub crash mid-soak: kill to serving again: %v, %v before the soak's end", serving.Sub(killed).Round(time.Millisecond), soakUntil.Sub(serving).Round(time.Millisecond))
	if after.GetId() != before.GetId() {
		t.Errorf("the restarted hub ran rollout %d, want the one under way (%d) carried on", after.GetId(), before.GetId())
	}
	st := b.storedRollout(app)
	if got, was := st.Clusters["canary"].StartedAt, stBefore.Clusters["canary"].StartedAt; !got.Equal(was) {
		t.Errorf("the canary, done before the crash, was started again at %v (first at %v)", got, was)
	}
	if done := st.Waves[0].DoneAt; done.Before(soakUntil) {
		t.Errorf("the hub records the canary's wave done at %v, before its soak ended at %v", done, soakUntil)
	}
	released := map[string]time.Time{"canary": stBefore.Clusters["canary"].StartedAt}
	for _, c := range mainClusters {
		released[c] = soakUntil
	}
	b.checkReleaseHistory(app, images, released, st)
}

// checkReleaseHistory checks, from what the clusters and the hub recorded,
// that every cluster went through images in order, each once, and got the
// last one no earlier than released says: in the stored rollout (st) the
// hub pinned it then or later, and its Deployment's ReplicaSet of the last
// image was created then or later. ReplicaSets' creation times have whole
// seconds, so they are compared with released's second.
func (b *bed) checkReleaseHistory(app string, images []string, released map[string]time.Time, st rollout.State) {
	b.t.Helper()
	last := images[len(images)-1]
	for _, c := range b.names() {
		hist := b.revisions(app, c)
		var got []string
		for _, r := range hist {
			got = append(got, r.image)
		}
		if !slices.Equal(got, images) {
			b.t.Errorf("%s went through %v: want %v, each once and in order", c, hist, images)
		}
		at, ok := released[c]
		if !ok {
			b.t.Fatalf("no release time for %s", c)
		}
		if pinned := st.Clusters[c].StartedAt; pinned.Before(at) {
			b.t.Errorf("the hub pinned %s to the release at %v, before its wave was released at %v", c, pinned, at)
		}
		for _, r := range hist {
			if r.image == last && r.created.Before(at.Truncate(time.Second)) {
				b.t.Errorf("%s created its ReplicaSet of %s at %v, before its wave was released at %v", c, last, r.created, at)
			}
		}
	}
}

// crashHub kills the hub with SIGKILL and starts it again with the same
// database, data directory and addresses; it returns when the kill had
// landed and when the new process served.
func (b *bed) crashHub() (killed, serving time.Time) {
	b.t.Helper()
	b.t.Logf("killing the hub (pid %d)", b.hub.Process().Pid())
	b.hub.Kill(b.t)
	killed = time.Now().Round(0)
	b.hub.Start(b.t)
	return killed, time.Now().Round(0)
}

// createRolloutApp creates application app, the nginx Deployment of
// deploymentApp, with a rollout of the given waves (pausing on failure),
// and waits until its first release, on image, completed everywhere; it
// returns that release.
func (b *bed) createRolloutApp(app, image string, waves ...*droverv1.RolloutWave) string {
	b.t.Helper()
	c1 := b.repo.Commit(b.t, app+" on "+image, testbed.ExampleAppIn(app, image))
	a := b.app(app, "apps/"+app)
	a.Spec.Rollout = &droverv1.RolloutStrategy{
		OnFailure:        "pause",
		ProgressDeadline: "3m",
		OfflineTimeout:   "5m",
		Waves:            waves,
	}
	b.createApp(a)
	for _, c := range b.names() {
		b.waitSynced(app, c, c1)
	}
	b.waitRollout(app, c1, string(rollout.PhaseCompleted))
	return c1
}

// hubCrashDuringStatusBurst: many applications change at once on every
// cluster and the hub dies holding their statuses: received from the
// agents, not written yet. To have it die at exactly that point, the
// test has PostgreSQL refuse every write to the status table (a trigger
// failing with lock_not_available, as a write that cannot get its lock in
// time does), so the hub keeps what it received in its backlog and retries.
// It kills the hub once its drover_hub_status_backlog metric says it holds
// a status of every application on every cluster, lets the writes through
// again and restarts it. After the restart every status in PostgreSQL is
// the clusters' real state, and is the very status the hub lost (observed
// before the kill), sent again by the agents in their new sessions.
func hubCrashDuringStatusBurst(t *testing.T, b *bed) {
	const apps = 16
	commit := b.repo.Commit(t, "burst generation 1", configMapApps("burst", apps, 1))
	b.createConfigMapApps("burst", apps)
	total := apps * len(b.clusters)
	db := connectDB(t, b.dbURL)
	testbed.Eventually(t, "every burst status at generation 1", waitLong, func() (bool, string) {
		n := countStatuses(t, db, commit)
		return n == total, fmt.Sprintf("%d of %d", n, total)
	})
	// From here on the backlog holds only what the new release makes the
	// agents report: one status per application and cluster (a ConfigMap
	// is healthy once applied).
	testbed.Eventually(t, "the hub's status backlog empty", waitLong, func() (bool, string) {
		v, err := b.hubMetric("drover_hub_status_backlog")
		return err == nil && v == 0, fmt.Sprintf("backlog %v, err %v", v, err)
	})

	allow := refuseStatusWrites(t, db)
	commit = b.repo.Commit(t, "burst generation 2", configMapApps("burst", apps, 2))
	b.refreshConfigMapApps("burst", apps)
	for _, c := range b.names() {
		testbed.Eventually(t, c+" applied generation 2 and acknowledged it", waitLong, func() (bool, string) {
			cl, err := b.cluster(c)
			if err != nil {
				return false, err.Error()
			}
			n := b.configMapsAt(c, "burst-", 2)
			acked := cl.GetAckedVersion() != "" && cl.GetAckedVersion() == cl.GetAssignmentVersion()
			return n == apps && acked, fmt.Sprintf("%d of %d ConfigMaps at generation 2; cluster %v", n, apps, cl)
		})
	}
	held, failures := b.waitBacklogHolds(total)
	b.hub.Kill(t)
	killed := time.Now().Round(0)
	allow()
	if n := countStatuses(t, db, commit); n != 0 {
		t.Fatalf("%d statuses of generation 2 were written despite the refusal: the test did not catch the hub holding them", n)
	}

	sessionsBefore := map[string]int{}
	for _, c := range b.names() {
		sessionsBefore[c] = b.sessions(c)
	}
	restarted := time.Now()
	b.hub.Start(t)
	var recovered int
	testbed.Eventually(t, "every burst status at generation 2", waitLong, func() (bool, string) {
		recovered = countStatuses(t, db, commit)
		return recovered == total, fmt.Sprintf("%d of %d written", recovered, total)
	})
	// They are the statuses the dead hub held, sent again by the agents,
	// not later observations.
	var after int
	if err := db.QueryRow(context.Background(),
		"SELECT count(*) FROM app_status WHERE application LIKE 'burst-%' AND observed_at >= $1", killed).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != 0 {
		t.Errorf("%d of the %d statuses in PostgreSQL were observed after the kill: not the ones the hub lost, resent", after, total)
	}
	figure(t, "hub crash mid-burst: %.0f statuses lost with the hub's memory (its backlog at the kill, %.0f failed writes); %d of %d current in PostgreSQL %v after the restart",
		held, failures, recovered, total, time.Since(restarted).Round(time.Millisecond))
	for _, c := range b.names() {
		n := b.sessions(c) - sessionsBefore[c]
		figure(t, "hub crash mid-burst: %s reconnects: %d", c, n)
		if n < 1 {
			t.Errorf("%s: no new session with the restarted hub", c)
		}
	}
	// What PostgreSQL says is what the clusters run.
	for _, c := range b.names() {
		if got := b.configMapsAt(c, "burst-", 2); got != apps {
			t.Errorf("%s runs %d of %d burst ConfigMaps at generation 2 while PostgreSQL says all", c, got, apps)
		}
	}
}

// refuseStatusWrites makes PostgreSQL refuse every write to app_status
// with a transient error until the returned function (or t's end) lets
// them through again.
func refuseStatusWrites(t *testing.T, db *pgx.Conn) (allow func()) {
	t.Helper()
	ctx := context.Background()
	if _, err := db.Exec(ctx, `
		CREATE FUNCTION faults_refuse_status_writes() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			RAISE EXCEPTION 'status writes refused by the fault test' USING ERRCODE = 'lock_not_available';
		END $$`); err != nil {
		t.Fatalf("refuse status writes: %v", err)
	}
	if _, err := db.Exec(ctx, `
		CREATE TRIGGER faults_refuse_status_writes BEFORE INSERT OR UPDATE OR DELETE ON app_status
		FOR EACH STATEMENT EXECUTE FUNCTION faults_refuse_status_writes()`); err != nil {
		t.Fatalf("refuse status writes: %v", err)
	}
	allowed := false
	allow = func() {
		if allowed {
			return
		}
		allowed = true
		if _, err := db.Exec(ctx, `
			DROP TRIGGER faults_refuse_status_writes ON app_status;
			DROP FUNCTION faults_refuse_status_writes()`); err != nil {
			t.Errorf("let status writes through again: %v", err)
		}
	}
	t.Cleanup(allow)
	return allow
}

// waitRollout waits until the rollout of app's commit reaches phase.
func (b *bed) waitRollout(app, commit, phase string) *droverv1.RolloutStatus {
	b.t.Helper()
	var r *droverv1.RolloutStatus
	testbed.Eventually(b.t, fmt.Sprintf("rollout of %.7s %s", commit, phase), waitLong, func() (bool, string) {
		var err error
		if r, err = b.rollout(app); err != nil {
			return false, err.Error()
		}
		return r.GetCommit() == commit && r.GetPhase() == phase, fmt.Sprintf("rollout %v", r)
	})
	return r
}

func (b *bed) rollout(app string) (*droverv1.RolloutStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return b.hub.Rollout(ctx, app)
}

// storedRollout is app's rollout as the hub stored it in PostgreSQL, with
// the times it recorded: when each wave started, was approved, soaked and
// completed, and when each cluster was pinned and last reported.
func (b *bed) storedRollout(app string) rollout.State {
	b.t.Helper()
	st, err := b.tryStoredRollout(app)
	if err != nil {
		b.t.Fatal(err)
	}
	return st
}

func (b *bed) tryStoredRollout(app string) (rollout.State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		return rollout.State{}, fmt.Errorf("read the stored rollout of %s: %w", app, err)
	}
	defer conn.Close(context.Background())
	var raw []byte
	if err := conn.QueryRow(ctx, "SELECT state FROM rollouts WHERE application = $1", app).Scan(&raw); err != nil {
		return rollout.State{}, fmt.Errorf("read the stored rollout of %s: %w", app, err)
	}
	var st rollout.State
	if err := json.Unmarshal(raw, &st); err != nil {
		return rollout.State{}, fmt.Errorf("read the stored rollout of %s: %w", app, err)
	}
	return st, nil
}

// revision is one template the nginx Deployment ran.
type revision struct {
	number  int
	image   string
	created time.Time
}

func (r revision) String() string {
	return fmt.Sprintf("#%d %s at %s", r.number, r.image, r.created.Format(time.TimeOnly))
}

// revisions is the history of the nginx Deployment in namespace ns on
// cluster, oldest first: one ReplicaSet per template, numbered by the
// Deployment controller in the order the templates were applied (a
// template applied again is renumbered, so going back shows as a release
// out of order).
func (b *bed) revisions(ns, cluster string) []revision {
	b.t.Helper()
	rss, err := b.clusters[cluster].Client(b.t).AppsV1().ReplicaSets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=nginx"})
	if err != nil {
		b.t.Fatalf("%s: list ReplicaSets: %v", cluster, err)
	}
	var out []revision
	for _, rs := range rss.Items {
		n, err := strconv.Atoi(rs.Annotations["deployment.kubernetes.io/revision"])
		if err != nil {
			b.t.Fatalf("%s: ReplicaSet %s has no revision: %v", cluster, rs.Name, err)
		}
		out = append(out, revision{number: n, image: rs.Spec.Template.Spec.Containers[0].Image, created: rs.CreationTimestamp.Time})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].number < out[j].number })
	return out
}

// connectDB opens a connection to the hub's database for t.
func connectDB(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to the hub's database: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// countStatuses counts the burst applications' statuses stored Synced and
// Healthy at commit.
func countStatuses(t *testing.T, db *pgx.Conn, commit string) int {
	t.Helper()
	var n int
	err := db.QueryRow(context.Background(),
		"SELECT count(*) FROM app_status WHERE application LIKE 'burst-%' AND commit = $1 AND sync = $2 AND health = $3",
		commit, int16(droverv1.SyncState_SYNC_STATE_SYNCED), int16(droverv1.Health_HEALTH_HEALTHY)).Scan(&n)
	if err != nil {
		t.Fatalf("count statuses: %v", err)
	}
	return n
}
