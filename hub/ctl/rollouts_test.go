package ctl_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// rolloutApp is the web application moved by waves: a canary wave behind
// an approval, then the rest. The long offline timeout keeps the test's
// offline clusters pending instead of skipped, so the rollout stays
// running for as long as the test needs.
const rolloutApp = `apiVersion: drover.dev/v1
kind: Application
metadata:
  name: web
spec:
  source:
    repoURL: REPO
    ref: main
    path: web
  placement:
    selector:
      matchLabels:
        env: prod
  syncPolicy:
    automated: true
  rollout:
    offlineTimeout: 24h
    waves:
    - name: canary
      selector:
        matchLabels: {ring: canary}
      maxParallel: 1
      soak: 10m
      requireApproval: true
    - name: main
`

// plainApp is the web application's content without a rollout strategy.
const plainApp = `apiVersion: drover.dev/v1
kind: Application
metadata:
  name: plain
spec:
  source:
    repoURL: REPO
    ref: main
    path: web
  placement:
    selector:
      matchLabels:
        env: prod
  syncPolicy:
    automated: true
`

// wantRollout checks the waves ("canary:running main:pending") and the
// clusters ("prod-eu:updating@COMMIT") of an application's rollout.
func wantRollout(t *testing.T, h *testHub, app, waves, clusters string) {
	t.Helper()
	r, err := h.Controller().Rollout(context.Background(), app)
	if err != nil {
		t.Fatalf("rollout of %s: %v", app, err)
	}
	var ws, cs []string
	for _, w := range r.GetWaves() {
		ws = append(ws, w.GetName()+":"+w.GetPhase())
	}
	for _, c := range r.GetClusters() {
		cs = append(cs, c.GetName()+":"+c.GetPhase()+"@"+c.GetCommit())
	}
	if got := strings.Join(ws, " "); got != waves {
		t.Errorf("rollout of %s: waves %s, want %s", app, got, waves)
	}
	if got := strings.Join(cs, " "); got != clusters {
		t.Errorf("rollout of %s: clusters %s, want %s", app, got, clusters)
	}
}

// waitRollout waits until the application's rollout moves commit and is
// in phase: the engine steps in the background.
func (h *testHub) waitRollout(t *testing.T, app, commit, phase string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last string
	for {
		r, err := h.Controller().Rollout(ctx, app)
		if err == nil && r.GetCommit() == commit && r.GetPhase() == phase {
			return
		}
		last = r.GetPhase()
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("rollout of %s: not %s at %s after a minute (last: %s)", app, phase, commit, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestRollouts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startHub(t)
	repo := fleetRepo(t)
	// Agents that were seen ten minutes ago: offline for the hub, but
	// within the strategy's offline timeout, so their waves wait for them.
	seen := time.Now().Add(-10 * time.Minute)
	facts := &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "v0.1.0"}
	for name, ring := range map[string]string{"prod-canary": "canary", "prod-eu": "main"} {
		h.registerCluster(t, name, map[string]string{"env": "prod", "ring": ring})
		if err := h.Store().MarkConnected(ctx, name, "hub-test", "10.0.0.7:51234", facts, seen); err != nil {
			t.Fatal(err)
		}
	}
	s := newSession(t, h)
	s.replace(repo.URL, "http://GIT/fleet.git")
	s.login()

	s.must("", "apply", "-f", s.writeFile("web.yaml", strings.ReplaceAll(rolloutApp, "REPO", repo.URL)))
	h.waitRelease(t, "web")
	c1 := repo.Head(t)
	s.replace(c1, "<commit-1>", c1[:7], "<sha-1>")
	// The first release goes everywhere at once: there is nothing older
	// to hold clusters on.
	h.waitRollout(t, "web", c1, "completed")
	s.must("", "rollout", "status", "web")
	// Every cluster is pinned to the release, and none has reported it
	// yet: they update, and so do their waves.
	wantRollout(t, h, "web", "canary:running main:running", "prod-canary:updating@"+c1+" prod-eu:updating@"+c1)
	r := s.fails(1, "", "rollout", "rollback", "web")
	if !strings.Contains(r.stderr, "no previous good release") {
		t.Errorf("rollback of the first release:\n%s\nwant it to say there is no previous good release", r.stderr)
	}

	// The second release waits for the canary wave's approval.
	c2 := repo.Commit(t, "web v2", map[string]string{"web/config.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: \"2\"}\n"})
	s.replace(c2, "<commit-2>", c2[:7], "<sha-2>")
	s.must("", "app", "refresh", "web")
	h.waitRollout(t, "web", c2, "waiting-approval")
	s.must("", "rollout", "status", "web")
	s.must("", "rollout", "promote", "web")
	r = s.fails(1, "", "rollout", "promote", "web")
	if !strings.Contains(r.stderr, "not waiting for approval") {
		t.Errorf("promote of a running rollout:\n%s\nwant it to say it is not waiting for approval", r.stderr)
	}
	s.must("", "rollout", "pause", "web")
	s.fails(1, "", "rollout", "pause", "web")
	s.must("", "rollout", "status", "web", "-o", "wide")
	s.must("", "rollout", "resume", "web")
	s.fails(1, "", "rollout", "resume", "web")

	// -o json is the API's own message.
	r = s.must("", "rollout", "status", "web", "-o", "json")
	var got droverv1.GetRolloutResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("rollout status -o json does not parse: %v\n%s", err, r.stdout)
	}
	if ro := got.GetRollout(); ro.GetCommit() != c2 || ro.GetPreviousCommit() != c1 || ro.GetPhase() != "running" || len(ro.GetWaves()) != 2 {
		t.Errorf("rollout status -o json: commit %s, previous %s, phase %s, %d waves; want %s, %s, running, 2 waves",
			ro.GetCommit(), ro.GetPreviousCommit(), ro.GetPhase(), len(ro.GetWaves()), c2, c1)
	}

	s.must("", "rollout", "rollback", "web")
	s.must("", "rollout", "status", "web", "-o", "wide")
	// The canary wave ran and no longer does; the main wave was never
	// reached. Neither cluster had started, so both are still pending.
	wantRollout(t, h, "web", "canary:rolled-back main:pending", "prod-canary:pending@"+c1+" prod-eu:pending@"+c1)
	s.fails(1, "", "rollout", "abort", "web")
	s.fails(1, "", "rollout", "status", "nope")

	// Without a strategy the release goes to every cluster at once, and
	// the status shows where each cluster is with it: prod-eu reported
	// its Deployment stuck, prod-canary nothing yet.
	s.must("", "apply", "-f", s.writeFile("plain.yaml", strings.ReplaceAll(plainApp, "REPO", repo.URL)))
	h.waitRelease(t, "plain")
	if err := h.Store().WriteStatuses(ctx, []*droverv1.ApplicationStatus{{
		Cluster: "prod-eu", Application: "plain", Commit: c2,
		Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_DEGRADED,
		Message: "applied 2, unchanged 0, skipped 0, pruned 0",
		Resources: []*droverv1.ResourceStatus{
			{Version: "v1", Kind: "ConfigMap", Namespace: "web", Name: "web", Health: droverv1.Health_HEALTH_HEALTHY},
			{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "web", Name: "nginx", Health: droverv1.Health_HEALTH_DEGRADED,
				Message: `ProgressDeadlineExceeded: ReplicaSet "nginx-7c5d8" has timed out progressing.`},
		},
		ObservedAt: timestamppb.Now(),
	}}); err != nil {
		t.Fatal(err)
	}
	s.must("", "rollout", "status", "plain", "-o", "wide")
	wantRollout(t, h, "plain", "remaining:running", "prod-canary:updating@"+c2+" prod-eu:failed@"+c2)
	ro, err := h.Controller().Rollout(ctx, "plain")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ro.GetClusters() {
		if want := `Degraded: Deployment web/nginx: ProgressDeadlineExceeded: ReplicaSet "nginx-7c5d8" has timed out progressing.`; c.GetName() == "prod-eu" && c.GetMessage() != want {
			t.Errorf("plain on prod-eu: %q\nwant %q", c.GetMessage(), want)
		}
	}
	s.fails(1, "", "rollout", "pause", "plain")
	s.fails(2, "", "rollout", "status")
	s.fails(2, "", "rollout", "status", "web", "-o", "table")
	s.fails(2, "", "rollout", "promote", "web", "extra")
	s.fails(2, "", "rollout", "restart", "web")
	s.golden("rollouts")
}
