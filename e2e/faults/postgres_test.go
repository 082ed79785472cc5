package faults

import (
	"context"
	"fmt"
	"math"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestPostgresRestart stops the hub's PostgreSQL while three agents apply
// a release of twelve applications each and report it, and starts it
// again. The load while the database is down: 36 statuses and 3
// acknowledgements, amid the agents' heartbeats and the hub's failing
// writes. The hub process stays up, no agent reconnects (every cluster's
// session on the hub started when it did before the outage), and every
// status and acknowledgement sent while the database was down is stored
// afterwards: for every application on every cluster the status the agent
// last observed, with its very observation time, and for every cluster
// its acknowledgement of the new assignment, received during the outage.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	const apps = 12
	pg := testbed.PrivatePostgres(t)
	b := newBed(t, pg.URL, map[string]map[string]string{
		"pg-1": {"env": "prod"},
		"pg-2": {"env": "prod"},
		"pg-3": {"env": "prod"},
	})
	total := apps * len(b.clusters)
	commit := b.repo.Commit(t, "load generation 1", configMapApps("load", apps, 1))
	b.createConfigMapApps("load", apps)
	b.waitAllSynced(apps, commit)
	hubPid := b.hub.Process().Pid()
	connectedBefore := map[string]time.Time{}
	sessionsBefore := map[string]int{}
	for _, c := range b.names() {
		connectedBefore[c] = b.connectedSince(c)
		sessionsBefore[c] = b.sessions(c)
	}
	writeFailures := func() int { return logCount(t, b.hub.Process(), `msg="write statuses"`) }
	failuresBefore := writeFailures()

	// The release is made while the database is up; the agents, frozen
	// meanwhile, apply it and report it while it is down.
	for _, c := range b.names() {
		if err := b.agents[c].Process().Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	commit = b.repo.Commit(t, "load generation 2", configMapApps("load", apps, 2))
	b.refreshConfigMapApps("load", apps)
	for _, c := range b.names() {
		testbed.Eventually(t, "the hub giving "+c+" a new assignment", waitLong, func() (bool, string) {
			cl, err := b.cluster(c)
			if err != nil {
				return false, err.Error()
			}
			return cl.GetAssignmentVersion() != cl.GetAckedVersion(), fmt.Sprintf("cluster %v", cl)
		})
	}
	pg.Stop(t)
	stopped := time.Now().Round(0)
	for _, c := range b.names() {
		if err := b.agents[c].Process().Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	t.Log("PostgreSQL stopped")

	// While it is down: every agent applies the release and says so, and
	// the hub holds one status of every application on every cluster (all
	// of generation 1 was written; a ConfigMap is healthy once applied, so
	// generation 2 is one status per application).
	observed := map[[2]string]time.Time{}
	applied := map[string]string{}
	for _, c := range b.names() {
		testbed.Eventually(t, "generation 2 applied on "+c+" with the database down", waitLong, func() (bool, string) {
			n := b.configMapsAt(c, "load-", 2)
			if n != apps {
				return false, fmt.Sprintf("%d of %d ConfigMaps at generation 2", n, apps)
			}
			obs, version, err := b.agentStatuses(c)
			if err != nil {
				return false, err.Error()
			}
			fresh := 0
			for app, at := range obs {
				if at.After(stopped) {
					fresh++
					observed[[2]string{c, app}] = at
				}
			}
			applied[c] = version
			return fresh == apps, fmt.Sprintf("the agent has %d of %d applications Synced and Healthy, observed since the database stopped", fresh, apps)
		})
	}
	held, _ := b.waitBacklogHolds(total)
	if p := b.hub.Process(); p.Exited() {
		t.Fatalf("the hub exited with its database down: %v", p.ExitError())
	}

	pg.Start(t)
	restarted := time.Now().Round(0)
	t.Logf("PostgreSQL started again after %v", restarted.Sub(stopped).Round(time.Millisecond))
	// The hub writes what it held: its backlog drains and its last write
	// succeeded.
	testbed.Eventually(t, "the hub writing every status it held", waitLong, func() (bool, string) {
		backlog, err := b.hubMetric("drover_hub_status_backlog")
		if err != nil {
			return false, err.Error()
		}
		failing, err := b.hubMetric("drover_hub_status_write_failures")
		if err != nil {
			return false, err.Error()
		}
		return backlog == 0 && failing == 0, fmt.Sprintf("backlog %v, %v failed writes in a row", backlog, failing)
	})
	figure(t, "PostgreSQL restart: outage %v with %d statuses held by the hub; database back to every status written: %v; failed status writes retried: %d",
		restarted.Sub(stopped).Round(time.Millisecond), int(held), time.Since(restarted).Round(time.Millisecond), writeFailures()-failuresBefore)

	// Every status sent while the database was down is stored, as sent.
	stored := b.loadStatuses(pg.URL)
	matched := 0
	for key, at := range observed {
		s, ok := stored[key]
		switch {
		case !ok:
			t.Errorf("%s on %s: no status stored", key[1], key[0])
		case s.GetCommit() != commit || s.GetSync() != droverv1.SyncState_SYNC_STATE_SYNCED || s.GetHealth() != droverv1.Health_HEALTH_HEALTHY:
			t.Errorf("%s on %s: stored %v, want Synced and Healthy at %.7s", key[1], key[0], s, commit)
		case s.GetObservedAt().AsTime().UnixMilli() != at.UnixMilli():
			t.Errorf("%s on %s: stored the status observed at %v, the agent sent the one observed at %v", key[1], key[0], s.GetObservedAt().AsTime(), at)
		default:
			matched++
		}
	}
	figure(t, "PostgreSQL restart: %d of %d statuses sent during the outage stored as sent", matched, total)
	if len(observed) != total || len(stored) != total {
		t.Errorf("%d statuses sent during the outage and %d stored, want %d each", len(observed), len(stored), total)
	}
	// So is every acknowledgement: of the version the agent applied, with
	// the time the hub received it, inside the outage. (Held answers are
	// written apart from statuses: wait for them.)
	acks := 0
	for _, c := range b.names() {
		var cl *droverv1.Cluster
		testbed.Eventually(t, c+"'s ACK stored", waitLong, func() (bool, string) {
			var err error
			if cl, err = b.cluster(c); err != nil {
				return false, err.Error()
			}
			return cl.GetAckedVersion() == applied[c], fmt.Sprintf("the agent applied %q; cluster %v", applied[c], cl)
		})
		at := cl.GetAckedAt().AsTime()
		if cl.GetAckedVersion() != cl.GetAssignmentVersion() || !at.After(stopped) || !at.Before(restarted) {
			t.Errorf("%s: stored ACK of %q received at %v; want the ACK of its current assignment %q received during the outage (%v to %v)",
				c, cl.GetAckedVersion(), at, cl.GetAssignmentVersion(), stopped, restarted)
			continue
		}
		acks++
	}
	figure(t, "PostgreSQL restart: %d of %d ACKs sent during the outage stored", acks, len(b.clusters))
	// And the hub says so.
	b.waitAllSynced(apps, commit)

	if p := b.hub.Process(); p.Exited() || p.Pid() != hubPid {
		t.Errorf("the hub did not stay up through the database restart")
	}
	for _, c := range b.names() {
		since := b.connectedSince(c)
		n := b.sessions(c) - sessionsBefore[c]
		figure(t, "PostgreSQL restart: %s reconnects: %d", c, n)
		if !since.Equal(connectedBefore[c]) || n != 0 {
			t.Errorf("%s: session started at %v (before the outage: %v), %d new sessions in its log: its session did not survive the database restart",
				c, since, connectedBefore[c], n)
		}
	}
}

// waitAllSynced waits until the hub has every load application Synced and
// Healthy at commit on every cluster.
func (b *bed) waitAllSynced(apps int, commit string) {
	b.t.Helper()
	for i := range apps {
		for _, c := range b.names() {
			b.waitSynced(fmt.Sprintf("load-%02d", i), c, commit)
		}
	}
}

// agentStatuses reads cluster's agent's metrics: when it observed each
// application it has Synced and Healthy, and the assignment version it
// applied.
func (b *bed) agentStatuses(cluster string) (observed map[string]time.Time, applied string, err error) {
	fams, err := testbed.ScrapeMetrics("http://" + b.agentMetrics[cluster] + "/metrics")
	if err != nil {
		return nil, "", err
	}
	synced := map[string]bool{}
	for _, m := range fams["drover_agent_application_sync"].GetMetric() {
		l := labelMap(m.GetLabel())
		if l["sync"] == "synced" {
			synced[l["application"]] = true
		}
	}
	healthy := map[string]bool{}
	for _, m := range fams["drover_agent_application_health"].GetMetric() {
		l := labelMap(m.GetLabel())
		if l["health"] == "healthy" {
			healthy[l["application"]] = true
		}
	}
	observed = map[string]time.Time{}
	for _, m := range fams["drover_agent_application_observed_timestamp_seconds"].GetMetric() {
		app := labelMap(m.GetLabel())["application"]
		if synced[app] && healthy[app] {
			observed[app] = time.UnixMilli(int64(math.Round(m.GetGauge().GetValue() * 1000)))
		}
	}
	for _, m := range fams["drover_agent_assignment_info"].GetMetric() {
		applied = labelMap(m.GetLabel())["version"]
	}
	return observed, applied, nil
}

func labelMap(ls []*dto.LabelPair) map[string]string {
	out := make(map[string]string, len(ls))
	for _, l := range ls {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// loadStatuses reads the load applications' statuses from PostgreSQL, by
// cluster and application.
func (b *bed) loadStatuses(dbURL string) map[[2]string]*droverv1.ApplicationStatus {
	b.t.Helper()
	db := connectDB(b.t, dbURL)
	rows, err := db.Query(context.Background(),
		"SELECT cluster, application, commit, sync, health, observed_at FROM app_status WHERE application LIKE 'load-%'")
	if err != nil {
		b.t.Fatalf("read statuses: %v", err)
	}
	defer rows.Close()
	out := map[[2]string]*droverv1.ApplicationStatus{}
	for rows.Next() {
		var (
			s            droverv1.ApplicationStatus
			sync, health int16
			at           time.Time
		)
		if err := rows.Scan(&s.Cluster, &s.Application, &s.Commit, &sync, &health, &at); err != nil {
			b.t.Fatalf("read statuses: %v", err)
		}
		s.Sync, s.Health = droverv1.SyncState(sync), droverv1.Health(health)
		s.ObservedAt = timestamppb.New(at)
		out[[2]string{s.Cluster, s.Application}] = &s
	}
	if err := rows.Err(); err != nil {
		b.t.Fatalf("read statuses: %v", err)
	}
	return out
}
