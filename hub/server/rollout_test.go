package server_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// rolloutApp is webApp with a canary wave (one cluster, 2s soak) and a
// main wave behind an approval, rolled back on failure.
func rolloutApp(repoURL string) *droverv1.Application {
	a := webApp("web", repoURL, map[string]string{"app": "web"})
	a.Spec.Rollout = &droverv1.RolloutStrategy{
		OnFailure: "rollback",
		Waves: []*droverv1.RolloutWave{
			{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}, MaxParallel: structpb.NewNumberValue(1), Soak: "2s"},
			{Name: "main", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "main"}}, MaxParallel: structpb.NewStringValue("50%"), RequireApproval: true},
		},
	}
	return a
}

// commitOn is the application's commit in the cluster's assignment.
func commitOn(h *testHub, cluster string) string {
	for _, a := range h.Fleet().Assignment(cluster).GetApplications() {
		if a.GetName() == "web" {
			return a.GetCommit()
		}
	}
	return ""
}

func report(t *testing.T, h *testHub, s *stream, commit string, health droverv1.Health) {
	t.Helper()
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{
		{Application: "web", Commit: commit, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: health, ObservedAt: timestamppb.Now()},
	}}}})
}

func getRollout(t *testing.T, h *testHub) *droverv1.RolloutStatus {
	t.Helper()
	var r droverv1.GetRolloutResponse
	h.mustAPI(t, "GET", "/api/v1/applications/web/rollout", nil, &r)
	return r.GetRollout()
}

// drain keeps a stream's receive buffer from filling: the tests read
// assignments from the fleet.
func drain(s *stream) {
	go func() {
		for {
			select {
			case <-s.msgs:
			case <-s.errc:
				return
			}
		}
	}()
}

// TestRollout moves releases across five clusters: a canary, an approval
// gate, a main wave at most two at a time, a hub restart mid-rollout, and
// a bad release rolled back before any main cluster got it.
func TestRollout(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	h := startHub(t)

	canaryTok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"app": "web", "ring": "canary"}})
	mainTok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"app": "web", "ring": "main"}, Reusable: true})
	names := []string{"canary", "m1", "m2", "m3", "m4"}
	agents := map[string]*testAgent{"canary": h.mustRegister(t, canaryTok, "canary")}
	for _, n := range names[1:] {
		agents[n] = h.mustRegister(t, mainTok, n)
	}
	streams := map[string]*stream{}
	connectAll := func() {
		for _, n := range names {
			streams[n] = agents[n].connect(t, "")
			drain(streams[n])
		}
	}
	connectAll()
	eventually(t, "every cluster online", func() bool {
		var l droverv1.ListClustersResponse
		h.mustAPI(t, "GET", "/api/v1/clusters", nil, &l)
		online := 0
		for _, c := range l.GetClusters() {
			if c.GetOnline() {
				online++
			}
		}
		return online == len(names)
	})

	// The first release goes everywhere at once.
	h.mustAPI(t, "POST", "/api/v1/applications", rolloutApp(repo.URL), nil)
	eventually(t, "the first release everywhere", func() bool {
		for _, n := range names {
			if commitOn(h, n) != c1 {
				return false
			}
		}
		return true
	})
	eventually(t, "the first rollout completed", func() bool { return getRollout(t, h).GetPhase() == "completed" })
	if code, body := h.api(t, h.token, "POST", "/api/v1/applications/web/rollout/rollback", nil, nil); code != http.StatusBadRequest || !strings.Contains(body, "no previous good release") {
		t.Fatalf("rollback of the first release: HTTP %d %s, want 400 naming no previous good release", code, body)
	}

	// A new commit goes to the canary only.
	c2 := repo.Commit(t, "v2", map[string]string{"web/a.yaml": "kind: ConfigMap\nmetadata: {name: v2}\n"})
	h.mustAPI(t, "POST", "/api/v1/applications/web/refresh", nil, nil)
	eventually(t, "the canary on v2", func() bool { return commitOn(h, "canary") == c2 })
	if code, body := h.api(t, h.token, "POST", "/api/v1/applications/web/rollout/promote", nil, nil); code != http.StatusBadRequest || !strings.Contains(body, "not waiting for approval") {
		t.Fatalf("promote while running: HTTP %d %s, want 400 not waiting for approval", code, body)
	}
	report(t, h, streams["canary"], c2, droverv1.Health_HEALTH_HEALTHY)
	eventually(t, "the main wave waiting for approval", func() bool {
		_ = h.FlushStatuses(context.Background())
		return getRollout(t, h).GetPhase() == "waiting-approval"
	})
	r := getRollout(t, h)
	if !strings.Contains(r.GetWaiting(), "approval of wave main") {
		t.Fatalf("waiting = %q, want approval of wave main", r.GetWaiting())
	}
	for _, n := range names[1:] {
		if got := commitOn(h, n); got != c1 {
			t.Fatalf("%s on %s before approval, want %s", n, got, c1)
		}
	}

	// Restart the hub: the rollout resumes where it was.
	h.Close()
	h2, err := server.Start(context.Background(), h.cfg, testlog.New(t), io.Discard)
	if err != nil {
		t.Fatalf("restart hub: %v", err)
	}
	t.Cleanup(func() { h2.Close() })
	h = &testHub{Hub: h2, token: h.token, cfg: h.cfg}
	for _, n := range names {
		agents[n].hub = h
	}
	if got := commitOn(h, "canary"); got != c2 {
		t.Fatalf("canary on %s after restart, want %s", got, c2)
	}
	for _, n := range names[1:] {
		if got := commitOn(h, n); got != c1 {
			t.Fatalf("%s on %s after restart, want %s", n, got, c1)
		}
	}
	if p := getRollout(t, h).GetPhase(); p != "waiting-approval" {
		t.Fatalf("phase after restart = %s, want waiting-approval", p)
	}
	connectAll()

	// Promote: the main wave gets v2 at most two clusters at a time.
	h.mustAPI(t, "POST", "/api/v1/applications/web/rollout/promote", nil, nil)
	reported := map[string]bool{}
	eventually(t, "the rollout of v2 completed", func() bool {
		updating := 0
		for _, n := range names[1:] {
			if commitOn(h, n) == c2 && !reported[n] {
				updating++
			}
		}
		if updating > 2 {
			t.Fatalf("%d main clusters updating at once, want at most 2", updating)
		}
		for _, n := range names[1:] {
			if commitOn(h, n) == c2 && !reported[n] {
				report(t, h, streams[n], c2, droverv1.Health_HEALTH_HEALTHY)
				reported[n] = true
			}
		}
		_ = h.FlushStatuses(context.Background())
		return getRollout(t, h).GetPhase() == "completed"
	})

	// A bad release: the canary degrades, the rollout rolls back, and no
	// main cluster ever gets it.
	c3 := repo.Commit(t, "v3", map[string]string{"web/a.yaml": "kind: ConfigMap\nmetadata: {name: v3}\n"})
	h.mustAPI(t, "POST", "/api/v1/applications/web/refresh", nil, nil)
	eventually(t, "the canary on v3", func() bool { return commitOn(h, "canary") == c3 })
	report(t, h, streams["canary"], c3, droverv1.Health_HEALTH_DEGRADED)
	eventually(t, "the rollout of v3 rolled back", func() bool {
		for _, n := range names[1:] {
			if got := commitOn(h, n); got != c2 {
				t.Fatalf("%s on %s during the bad rollout, want %s", n, got, c2)
			}
		}
		_ = h.FlushStatuses(context.Background())
		return getRollout(t, h).GetPhase() == "rolled-back"
	})
	if got := commitOn(h, "canary"); got != c2 {
		t.Fatalf("canary on %s after rollback, want %s", got, c2)
	}
	if r := getRollout(t, h); r.GetPreviousCommit() != c2 || r.GetCommit() != c3 {
		t.Fatalf("rollout = %s from %s, want %s from %s", r.GetCommit(), r.GetPreviousCommit(), c3, c2)
	}
}

// TestRolloutBadInput refuses an invalid strategy naming the field, and
// changes nothing.
func TestRolloutBadInput(t *testing.T) {
	h := startHub(t)
	// Refused before any resolution; were it not, the hub would dial a
	// loopback port nobody listens on.
	a := rolloutApp("http://" + testbed.FreeAddr(t) + "/fleet.git")
	a.Spec.Rollout.Waves[1].MaxParallel = structpb.NewStringValue("150%")
	code, body := h.api(t, h.token, "POST", "/api/v1/applications", a, nil)
	if code != http.StatusBadRequest || !strings.Contains(body, "spec.rollout.waves[1].maxParallel") {
		t.Fatalf("create with maxParallel 150%%: HTTP %d %s, want 400 naming spec.rollout.waves[1].maxParallel", code, body)
	}
	if code, _ := h.api(t, h.token, "GET", "/api/v1/applications/web", nil, nil); code != http.StatusNotFound {
		t.Fatalf("GET after refused create: HTTP %d, want 404", code)
	}
	if code, body := h.api(t, h.token, "POST", "/api/v1/applications/web/rollout/launch", nil, nil); code != http.StatusBadRequest || !strings.Contains(body, "op") {
		t.Fatalf("unknown op: HTTP %d %s, want 400 naming op", code, body)
	}
}

// rolloutFleet starts a hub with the web application's rollout on a
// canary and two main clusters, and waits for the first release (c1)
// everywhere. The canary's stream is not drained: the test reads it.
func rolloutFleet(t *testing.T, app *droverv1.Application, c1 string) (*testHub, []string, map[string]*stream) {
	t.Helper()
	h := startHub(t)
	canaryTok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"app": "web", "ring": "canary"}})
	mainTok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"app": "web", "ring": "main"}, Reusable: true})
	names := []string{"canary", "m1", "m2"}
	streams := map[string]*stream{"canary": h.mustRegister(t, canaryTok, "canary").connect(t, "")}
	for _, n := range names[1:] {
		streams[n] = h.mustRegister(t, mainTok, n).connect(t, "")
		drain(streams[n])
	}
	h.mustAPI(t, "POST", "/api/v1/applications", app, nil)
	eventually(t, "the first release everywhere", func() bool {
		for _, n := range names {
			if commitOn(h, n) != c1 {
				return false
			}
		}
		return true
	})
	eventually(t, "the first rollout completed", func() bool { return getRollout(t, h).GetPhase() == "completed" })
	return h, names, streams
}

// TestRolloutNoOpRelease: a commit that changes nothing under the
// application's paths needs no rollout: no cluster moves (their
// assignments keep the earlier commit, whose content it has) and the
// completed rollout stays as it was. The next commit that does change
// them is rolled out again.
func TestRolloutNoOpRelease(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n", "other/b.yaml": "kind: ConfigMap\n"})
	h, names, streams := rolloutFleet(t, rolloutApp(repo.URL), c1)
	drain(streams["canary"])
	first := getRollout(t, h)

	c2 := repo.Commit(t, "another application's change", map[string]string{"other/b.yaml": "kind: ConfigMap\nmetadata: {name: b2}\n"})
	h.mustAPI(t, "POST", "/api/v1/applications/web/refresh", nil, nil)
	var app droverv1.GetApplicationResponse
	h.mustAPI(t, "GET", "/api/v1/applications/web", nil, &app)
	if rel := app.GetReleases()[0]; rel.GetCommit() != c2 || rel.GetContentCommit() != c1 || !rel.GetNoop() {
		t.Fatalf("release %v, want %s with the content of %s", rel, c2, c1)
	}
	// The engine takes one command at a time and steps every rollout
	// after each: once the second is answered, a step that began after
	// the release was stored has ended. A completed rollout refuses both.
	for range 2 {
		if code, body := h.api(t, h.token, "POST", "/api/v1/applications/web/rollout/promote", nil, nil); code != http.StatusBadRequest {
			t.Fatalf("promote a completed rollout: HTTP %d %s, want 400", code, body)
		}
	}
	for _, n := range names {
		if got := commitOn(h, n); got != c1 {
			t.Fatalf("%s on %s after a commit that changes nothing under the application's paths, want %s", n, got, c1)
		}
	}
	r := getRollout(t, h)
	if r.GetId() != first.GetId() || r.GetPhase() != "completed" || r.GetCommit() != c1 || len(r.GetWaves()) != len(first.GetWaves()) {
		t.Fatalf("rollout after a no-op release = %v, want rollout %d still completed, at %s", r, first.GetId(), c1)
	}
	for i, w := range r.GetWaves() {
		if w.GetPhase() != first.GetWaves()[i].GetPhase() {
			t.Fatalf("wave %s is %s after a no-op release, want %s", w.GetName(), w.GetPhase(), first.GetWaves()[i].GetPhase())
		}
	}

	// A change under the application's path is rolled out: the canary
	// first, the main clusters held where they were.
	c3 := repo.Commit(t, "v3", map[string]string{"web/a.yaml": "kind: ConfigMap\nmetadata: {name: v3}\n"})
	h.mustAPI(t, "POST", "/api/v1/applications/web/refresh", nil, nil)
	eventually(t, "the canary on v3", func() bool { return commitOn(h, "canary") == c3 })
	for _, n := range names[1:] {
		if got := commitOn(h, n); got != c1 {
			t.Fatalf("%s on %s while the canary tries v3, want %s", n, got, c1)
		}
	}
	if r := getRollout(t, h); r.GetId() == first.GetId() || r.GetCommit() != c3 || r.GetPreviousCommit() != c1 {
		t.Fatalf("rollout of v3 = %v, want a new rollout of %s from %s", r, c3, c1)
	}
}

// TestRolloutNack fails a cluster whose agent rejects the release at
// once, long before the progress deadline, and rolls the release back.
func TestRolloutNack(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	app := rolloutApp(repo.URL)
	// Far beyond the test's patience: only the NACK can fail the canary.
	app.Spec.Rollout.ProgressDeadline = "1h"
	h, names, streams := rolloutFleet(t, app, c1)

	c2 := repo.Commit(t, "v2", map[string]string{"web/a.yaml": "kind: ConfigMap\nmetadata: {name: v2}\n"})
	h.mustAPI(t, "POST", "/api/v1/applications/web/refresh", nil, nil)
	for {
		a := streams["canary"].nextAssignment(t)
		if slices.Contains(appNames(a), "web@"+c2) {
			streams["canary"].ack(t, a, "render web: bad yaml")
			break
		}
	}
	drain(streams["canary"])
	eventually(t, "the rollout of v2 rolled back", func() bool {
		for _, n := range names[1:] {
			if got := commitOn(h, n); got != c1 {
				t.Fatalf("%s on %s during the rejected rollout, want %s", n, got, c1)
			}
		}
		return getRollout(t, h).GetPhase() == "rolled-back"
	})
	r := getRollout(t, h)
	var canary *droverv1.RolloutClusterStatus
	for _, c := range r.GetClusters() {
		if c.GetName() == "canary" {
			canary = c
		}
	}
	if canary.GetPhase() != "failed" || !strings.Contains(canary.GetMessage(), "bad yaml") {
		t.Fatalf("canary in the rollout = %v, want failed naming the agent's error", canary)
	}
	if got := commitOn(h, "canary"); got != c1 {
		t.Fatalf("canary on %s after rollback, want %s", got, c1)
	}
}

// TestRolloutDegradedClusterSaysWhy fails the canary on a Deployment that
// exceeded its progress deadline: the rollout's failed cluster carries
// what the agent reported about the object, not only the application's
// summary, and after the rollback no wave reads as running.
func TestRolloutDegradedClusterSaysWhy(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	app := rolloutApp(repo.URL)
	// Far beyond the test's patience: only the report can fail the canary.
	app.Spec.Rollout.ProgressDeadline = "1h"
	h, names, streams := rolloutFleet(t, app, c1)
	drain(streams["canary"])

	c2 := repo.Commit(t, "v2", map[string]string{"web/a.yaml": "kind: ConfigMap\nmetadata: {name: v2}\n"})
	h.mustAPI(t, "POST", "/api/v1/applications/web/refresh", nil, nil)
	eventually(t, "the canary on v2", func() bool { return commitOn(h, "canary") == c2 })
	const why = `ProgressDeadlineExceeded: ReplicaSet "nginx-7c5d8" has timed out progressing.`
	streams["canary"].send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{{
		Application: "web", Commit: c2, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_DEGRADED,
		Message: "applied 2, unchanged 0, skipped 0, pruned 0",
		Resources: []*droverv1.ResourceStatus{
			{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "web", Name: "nginx", Health: droverv1.Health_HEALTH_DEGRADED, Message: why},
			{Version: "v1", Kind: "ConfigMap", Namespace: "web", Name: "v2", Health: droverv1.Health_HEALTH_HEALTHY, Message: "Resource is always ready"},
		},
		ObservedAt: timestamppb.Now(),
	}}}}})
	eventually(t, "the rollout of v2 rolled back", func() bool { return getRollout(t, h).GetPhase() == "rolled-back" })
	r := getRollout(t, h)
	for _, c := range r.GetClusters() {
		if c.GetName() != "canary" {
			continue
		}
		if want := "Degraded: Deployment web/nginx: " + why; c.GetPhase() != "failed" || c.GetMessage() != want {
			t.Errorf("canary in the rolled-back rollout: %s, %q\nwant failed, %q", c.GetPhase(), c.GetMessage(), want)
		}
	}
	// The canary wave ran and rolled back; the main wave was never
	// reached.
	var waves []string
	for _, w := range r.GetWaves() {
		waves = append(waves, w.GetName()+":"+w.GetPhase())
	}
	if want := []string{"canary:rolled-back", "main:pending"}; !slices.Equal(waves, want) {
		t.Errorf("waves after the rollback %v, want %v", waves, want)
	}
	for _, n := range names {
		if got := commitOn(h, n); got != c1 {
			t.Errorf("%s on %s after the rollback, want %s", n, got, c1)
		}
	}
}

// TestRolloutWithoutStrategy reports the release of an application
// without a rollout strategy as one that went to every cluster at once,
// each cluster by what it reported.
func TestRolloutWithoutStrategy(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	h := startHub(t)
	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"app": "web"}, Reusable: true})
	streams := map[string]*stream{}
	for _, n := range []string{"a", "b"} {
		streams[n] = h.mustRegister(t, tok, n).connect(t, "")
		drain(streams[n])
	}
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("web", repo.URL, map[string]string{"app": "web"}), nil)
	eventually(t, "the release everywhere", func() bool { return commitOn(h, "a") == c1 && commitOn(h, "b") == c1 })
	report(t, h, streams["a"], c1, droverv1.Health_HEALTH_HEALTHY)
	eventually(t, "a succeeded", func() bool {
		for _, c := range getRollout(t, h).GetClusters() {
			if c.GetName() == "a" {
				return c.GetPhase() == "succeeded"
			}
		}
		return false
	})
	r := getRollout(t, h)
	if r.GetId() != 0 || r.GetCommit() != c1 || r.GetPhase() != "completed" || !strings.Contains(r.GetReason(), "every cluster at once") {
		t.Errorf("rollout of an application without a strategy: id %d, commit %s, phase %s, reason %q\nwant id 0, %s, completed, going to every cluster at once",
			r.GetId(), r.GetCommit(), r.GetPhase(), r.GetReason(), c1)
	}
	var got []string
	for _, c := range r.GetClusters() {
		got = append(got, c.GetName()+":"+c.GetPhase()+"@"+c.GetCommit())
	}
	if want := []string{"a:succeeded@" + c1, "b:updating@" + c1}; !slices.Equal(got, want) {
		t.Errorf("clusters %v, want %v", got, want)
	}
	if len(r.GetWaves()) != 1 || r.GetWaves()[0].GetPhase() != "running" || r.GetWaves()[0].GetClusterPhases()["succeeded"] != 1 || r.GetWaves()[0].GetClusterPhases()["updating"] != 1 {
		t.Errorf("waves %v, want one running with 1 succeeded and 1 updating", r.GetWaves())
	}
}
