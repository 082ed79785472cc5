package ctl_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

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

// waitRollout waits until the application's rollout moves commit and is
// in phase: the engine steps in the background.
func (h *testHub) waitRollout(t *testing.T, app, commit, phase string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last string
	for {
		r, err := h.Rollout(ctx, app)
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
	s.fails(1, "", "rollout", "abort", "web")
	s.fails(1, "", "rollout", "status", "nope")
	s.fails(2, "", "rollout", "status")
	s.fails(2, "", "rollout", "status", "web", "-o", "table")
	s.fails(2, "", "rollout", "promote", "web", "extra")
	s.fails(2, "", "rollout", "restart", "web")
	s.golden("rollouts")
}
