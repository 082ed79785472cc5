package faults

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestHubCrash kills the hub process with SIGKILL in the middle of a
// rollout and in the middle of a burst of status reports, and restarts it
// on the same database.
func TestHubCrash(t *testing.T) {
	t.Parallel()
	dbURL := testbed.Postgres(t)
	b := newBed(t, dbURL, map[string]map[string]string{
		"canary": {"env": "prod", "ring": "canary"},
		"main-1": {"env": "prod", "ring": "main"},
		"main-2": {"env": "prod", "ring": "main"},
		"main-3": {"env": "prod", "ring": "main"},
	})
	t.Run("during a rollout", func(t *testing.T) { hubCrashDuringRollout(t, b.with(t)) })
	t.Run("during a burst of status reports", func(t *testing.T) { hubCrashDuringStatusBurst(t, b.with(t), dbURL) })
}

// hubCrashDuringRollout: the hub dies while the second wave is under way.
// After its restart every agent reconnects; the same rollout carries on
// (clusters that had succeeded are not updated again, the canary's gate is
// not skipped); the statuses on the hub equal the clusters' state; and each
// cluster's Deployment went through the releases in order, each once.
func hubCrashDuringRollout(t *testing.T, b *bed) {
	v1, v2 := "nginx:1.23.0", "nginx:1.24.0"
	c1 := b.repo.Commit(t, "web on "+v1, testbed.ExampleApp(v1))
	app := b.app("web", "apps/web")
	app.Spec.Rollout = &droverv1.RolloutStrategy{
		OnFailure:        "pause",
		ProgressDeadline: "3m",
		OfflineTimeout:   "5m",
		Waves: []*droverv1.RolloutWave{
			{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}, MaxParallel: structpb.NewNumberValue(1), Soak: "3s"},
			// One at a time, so the crash lands with some of the wave done.
			{Name: "main", MaxParallel: structpb.NewNumberValue(1)},
		},
	}
	b.createApp(app)
	for _, c := range b.names() {
		b.waitSynced("web", c, c1)
	}
	b.waitRollout("web", c1, "completed")

	c2 := b.repo.Commit(t, "web on "+v2, map[string]string{"apps/web/deployment.yaml": testbed.ExampleApp(v2)["apps/web/deployment.yaml"]})
	b.refresh("web")
	// Kill once the canary passed its gate and the main wave is part way.
	var before *droverv1.RolloutStatus
	testbed.Eventually(t, "the main wave part way", waitLong, func() (bool, string) {
		r, err := b.rollout("web")
		if err != nil {
			return false, err.Error()
		}
		phases := clusterPhases(r)
		done := 0
		for _, c := range []string{"main-1", "main-2", "main-3"} {
			if phases[c] == "succeeded" {
				done++
			}
		}
		if r.GetCommit() == c2 && r.GetPhase() == "completed" {
			t.Fatalf("the rollout of %.7s completed before the test could kill the hub mid-way: %v", c2, r)
		}
		before = r
		return r.GetCommit() == c2 && phases["canary"] == "succeeded" && done >= 1 && done < 3, fmt.Sprintf("rollout %v", r)
	})
	succeededBefore := map[string]bool{}
	for c, p := range clusterPhases(before) {
		succeededBefore[c] = p == "succeeded"
	}
	sessionsBefore := map[string]int{}
	for _, c := range b.names() {
		sessionsBefore[c] = b.sessions(c)
	}
	t.Logf("killing the hub (pid %d) with the rollout at %v", b.hub.Process().Pid(), clusterPhases(before))
	b.hub.Kill(t)
	restarted := time.Now()
	b.hub.Start(t)
	b.waitConnectedAfter(restarted)
	after := b.waitRollout("web", c2, "completed")
	figure(t, "hub crash mid-rollout: restart to rollout completed: %v", time.Since(restarted).Round(time.Millisecond))
	for _, c := range b.names() {
		figure(t, "hub crash mid-rollout: %s reconnects: %d", c, b.sessions(c)-sessionsBefore[c])
		if b.sessions(c) <= sessionsBefore[c] {
			t.Errorf("%s: no new session with the restarted hub", c)
		}
	}

	if after.GetId() != before.GetId() {
		t.Errorf("the restarted hub ran rollout %d, want the one under way (%d) carried on", after.GetId(), before.GetId())
	}
	for _, c := range b.names() {
		s := b.waitSynced("web", c, c2)
		d, err := b.deployment(c)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if img := d.Spec.Template.Spec.Containers[0].Image; img != v2 {
			t.Errorf("%s runs %s while the hub says %v: want %s", c, img, s, v2)
		}
		// Each cluster got v1, then v2, each once: its Deployment's
		// revisions (one ReplicaSet per template) are exactly that.
		hist := b.revisions(c)
		if len(hist) != 2 || hist[0].image != v1 || hist[1].image != v2 {
			t.Errorf("%s went through %v: want %s then %s", c, hist, v1, v2)
		}
	}
	// The gate held across the crash: no main cluster got v2 before the
	// canary had it, and what had succeeded stayed so.
	canaryV2 := b.revisions("canary")[1].created
	for _, c := range []string{"main-1", "main-2", "main-3"} {
		if hist := b.revisions(c); len(hist) == 2 && hist[1].created.Before(canaryV2) {
			t.Errorf("%s got %s at %v, before the canary (%v)", c, v2, hist[1].created, canaryV2)
		}
	}
	for c, p := range clusterPhases(after) {
		if succeededBefore[c] && p != "succeeded" {
			t.Errorf("%s had succeeded before the crash and is %s after it", c, p)
		}
	}
}

// hubCrashDuringStatusBurst: many applications change at once on every
// cluster and the hub dies holding their statuses: received from the
// agents, not written yet. To have it die at exactly that point, the test
// holds a lock on the status table, so the hub's writes wait; it kills the
// hub once the agents have applied and reported the release, ends the dead
// hub's database sessions (as PostgreSQL does for a client that is gone)
// and releases the lock. After the restart every status in PostgreSQL is
// the clusters' real state: none is lost with the dead hub's memory.
func hubCrashDuringStatusBurst(t *testing.T, b *bed, dbURL string) {
	const apps = 16
	commit := b.repo.Commit(t, "burst generation 1", configMapApps("burst", apps, 1))
	b.createConfigMapApps("burst", apps)
	total := apps * len(b.clusters)
	db := connectDB(t, dbURL)
	testbed.Eventually(t, "every burst status at generation 1", waitLong, func() (bool, string) {
		n := countStatuses(t, db, commit)
		return n == total, fmt.Sprintf("%d of %d", n, total)
	})

	ctx := context.Background()
	locker := connectDB(t, dbURL)
	lock, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// SHARE: readers go on, the hub's status writes wait.
	if _, err := lock.Exec(ctx, "LOCK TABLE app_status IN SHARE MODE"); err != nil {
		t.Fatal(err)
	}
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
	testbed.Eventually(t, "the hub's status write waiting for the lock", waitLong, func() (bool, string) {
		var n int
		err := db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE '%app_status%'`).Scan(&n)
		return err == nil && n > 0, fmt.Sprintf("%d waiting, err %v", n, err)
	})
	// Agents send changed statuses every second: two rounds and the
	// statuses of the release are with the hub.
	time.Sleep(2 * time.Second)
	b.hub.Kill(t)
	if _, err := db.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> $1`, int32(locker.PgConn().PID())); err != nil {
		t.Fatalf("end the dead hub's sessions: %v", err)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countStatuses(t, db, commit); n != 0 {
		t.Fatalf("%d statuses of generation 2 were written past the lock: the test did not catch the hub holding them", n)
	}

	sessionsBefore := map[string]int{}
	for _, c := range b.names() {
		sessionsBefore[c] = b.sessions(c)
	}
	restarted := time.Now()
	b.hub.Start(t)
	testbed.Eventually(t, "every burst status at generation 2", waitLong, func() (bool, string) {
		n := countStatuses(t, db, commit)
		return n == total, fmt.Sprintf("%d of %d written", n, total)
	})
	figure(t, "hub crash mid-burst: %d statuses lost with the hub's memory; restart to all %d current in PostgreSQL: %v",
		total, total, time.Since(restarted).Round(time.Millisecond))
	for _, c := range b.names() {
		figure(t, "hub crash mid-burst: %s reconnects: %d", c, b.sessions(c)-sessionsBefore[c])
	}
	// What PostgreSQL says is what the clusters run.
	for _, c := range b.names() {
		if got := b.configMapsAt(c, "burst-", 2); got != apps {
			t.Errorf("%s runs %d of %d burst ConfigMaps at generation 2 while PostgreSQL says all", c, got, apps)
		}
	}
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

// clusterPhases maps the rollout's clusters to their phases.
func clusterPhases(r *droverv1.RolloutStatus) map[string]string {
	m := map[string]string{}
	for _, c := range r.GetClusters() {
		m[c.GetName()] = c.GetPhase()
	}
	return m
}

// revision is one template the web Deployment ran.
type revision struct {
	number  int
	image   string
	created time.Time
}

func (r revision) String() string { return fmt.Sprintf("#%d %s", r.number, r.image) }

// revisions is the web Deployment's history on cluster, oldest first: one
// ReplicaSet per template, numbered by the Deployment controller in the
// order the templates were applied (a template applied again is
// renumbered, so going back shows as a release out of order).
func (b *bed) revisions(cluster string) []revision {
	b.t.Helper()
	rss, err := b.clusters[cluster].Client(b.t).AppsV1().ReplicaSets("web").List(context.Background(), metav1.ListOptions{LabelSelector: "app=nginx"})
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
