package control_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/rollout"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// release is web's current release.
func (s *setup) release(t *testing.T) *droverv1.Release {
	t.Helper()
	rels, err := s.store.ListReleases(context.Background(), "web", 1)
	if err != nil || len(rels) != 1 {
		t.Fatalf("releases %v, %v", rels, err)
	}
	return rels[0]
}

// refresh resolves web's ref and wants a new release at commit.
func (s *setup) refresh(t *testing.T, commit string) {
	t.Helper()
	got, created, err := s.ctl.Refresh(context.Background(), "web")
	if err != nil || got != commit || !created {
		t.Fatalf("refresh: %s, new release %v, %v; want a new release at %s", got, created, err, commit)
	}
}

// versions are the assignment versions of clusters.
func (s *setup) versions(clusters ...string) string {
	var b strings.Builder
	for _, c := range clusters {
		fmt.Fprintf(&b, "%s=%s ", c, s.ctl.AssignmentVersion(c))
	}
	return b.String()
}

// saidWhy checks that the newest release event says why.
func (s *setup) saidWhy(t *testing.T, why string) {
	t.Helper()
	if evs := events(t, s.store, "release.created"); len(evs) == 0 || !strings.Contains(evs[0].GetMessage(), why) {
		t.Errorf("newest release event %v does not say %q", evs, why)
	}
}

// sameAfterRestart checks that a hub started again over the database at
// dsn builds the assignment versions before of clusters from the store.
func sameAfterRestart(t *testing.T, dsn, before string, clusters ...string) {
	t.Helper()
	if got := startOn(t, dsn).versions(clusters...); got != before {
		t.Errorf("assignments after a restart %s, were %s", got, before)
	}
}

// flakyGit is a proxy in front of a Git server that can refuse fetches
// while it still answers ref listings (ls-remote): a server that fails the
// hub's compare of two commits but not its poll.
func flakyGit(t *testing.T, target string) (proxyURL string, failFetches *atomic.Bool) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	failFetches = new(atomic.Bool)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failFetches.Load() && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/git-upload-pack") {
			http.Error(w, "the test refuses fetches now", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, failFetches
}

// TestUnrelatedCommitMovesNoCluster checks, for an application without a
// rollout, that a commit changing nothing under the application's paths
// makes a release whose content is the previous one's: no cluster's
// assignment changes (so no agent fetches), and a restarted hub builds the
// same assignments. A commit under its paths moves the clusters; so does
// one the hub could not compare.
func TestUnrelatedCommitMovesNoCluster(t *testing.T) {
	ctx := context.Background()
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n", "base/b.yaml": "kind: ConfigMap\n"})
	proxyURL, failFetches := flakyGit(t, git.URL)
	repoURL := proxyURL + strings.TrimPrefix(repo.URL, git.URL)
	dsn := testbed.Postgres(t)
	s := startOn(t, dsn)
	s.register(t, "prod-1", map[string]string{"env": "prod"})
	s.register(t, "prod-2", map[string]string{"env": "prod"})
	app := webApp(repoURL)
	app.Spec.Source.ExtraPaths = []string{"base"}
	stored, err := s.store.CreateApplication(ctx, app, "test")
	if err != nil {
		t.Fatal(err)
	}
	s.ctl.ApplicationStored(ctx, stored)
	testbed.Eventually(t, "the first release on prod-1", 30*time.Second, func() (bool, string) {
		return s.commitOn("prod-1") == c1, fmt.Sprintf("prod-1 runs %q", s.commitOn("prod-1"))
	})
	before := s.versions("prod-1", "prod-2")

	// Commits outside web/ and base/: releases, but nothing moves.
	for i := range 3 {
		c := repo.Commit(t, fmt.Sprintf("other %d", i), map[string]string{"other/c.yaml": fmt.Sprintf("n: %d\n", i)})
		s.refresh(t, c)
		rel := s.release(t)
		if rel.GetCommit() != c || rel.GetContentCommit() != c1 || !rel.GetNoop() {
			t.Fatalf("release after unrelated commit %d: commit %s content %s noop %v; want %s with the content of %s",
				i, rel.GetCommit(), rel.GetContentCommit(), rel.GetNoop(), c, c1)
		}
		if got := s.versions("prod-1", "prod-2"); got != before {
			t.Fatalf("assignments moved on an unrelated commit: %s, were %s", got, before)
		}
		if got := s.commitOn("prod-2"); got != c1 {
			t.Fatalf("prod-2 pinned to %s after an unrelated commit, want %s", got, c1)
		}
	}
	s.saidWhy(t, "nothing changed under the application's paths since "+c1+", so the clusters keep its content and no cluster moves")
	sameAfterRestart(t, dsn, before, "prod-1", "prod-2")

	// A change under an extra path moves every cluster.
	c2 := repo.Commit(t, "base", map[string]string{"base/b.yaml": "kind: ConfigMap\nmetadata: {name: b2}\n"})
	s.refresh(t, c2)
	if rel := s.release(t); rel.GetContentCommit() != c2 || rel.GetNoop() {
		t.Fatalf("release after a change under base/: content %s noop %v, want its own %s", rel.GetContentCommit(), rel.GetNoop(), c2)
	}
	if a, b := s.commitOn("prod-1"), s.commitOn("prod-2"); a != c2 || b != c2 {
		t.Fatalf("prod-1 runs %s and prod-2 %s after a change under base/, want %s", a, b, c2)
	}

	// A commit the hub cannot compare counts as changed.
	failFetches.Store(true)
	c3 := repo.Commit(t, "other again", map[string]string{"other/c.yaml": "n: last\n"})
	s.refresh(t, c3)
	if rel := s.release(t); rel.GetContentCommit() != c3 {
		t.Fatalf("release after a failed compare has content %s, want its own %s", rel.GetContentCommit(), c3)
	}
	if got := s.commitOn("prod-1"); got != c3 {
		t.Fatalf("prod-1 runs %s after a commit the hub could not compare, want %s", got, c3)
	}
}

// engineStepped returns once the rollout engine has stepped every rollout
// since the call: the engine takes one command at a time and steps every
// rollout after each, so the second of two commands is taken after a step
// that began after the first. Both commands are refused by a completed
// rollout and change nothing.
func (s *setup) engineStepped(t *testing.T) {
	t.Helper()
	for range 2 {
		var ce *rollout.ControlError
		if _, err := s.ctl.ControlRollout(context.Background(), "web", rollout.OpPause, "test"); err != nil && !errors.As(err, &ce) {
			t.Fatalf("pause: %v", err)
		}
	}
}

// TestUnrelatedCommitNeedsNoRollout checks, for an application with a
// rollout, that a commit changing nothing under its paths starts no
// rollout and moves no cluster, that a restarted hub builds the same
// assignments, and that the next commit under its paths is rolled out as
// usual.
func TestUnrelatedCommitNeedsNoRollout(t *testing.T) {
	ctx := context.Background()
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	dsn := testbed.Postgres(t)
	s := startOn(t, dsn)
	s.register(t, "canary-1", map[string]string{"env": "prod", "ring": "canary"})
	s.register(t, "prod-1", map[string]string{"env": "prod"})
	app := webApp(repo.URL)
	app.Spec.Rollout = &droverv1.RolloutStrategy{Waves: []*droverv1.RolloutWave{
		{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}},
		{Name: "rest"},
	}}
	stored, err := s.store.CreateApplication(ctx, app, "test")
	if err != nil {
		t.Fatal(err)
	}
	s.ctl.ApplicationStored(ctx, stored)
	var first *droverv1.RolloutStatus
	testbed.Eventually(t, "the first release completed", 30*time.Second, func() (bool, string) {
		first, err = s.ctl.Rollout(ctx, "web")
		return err == nil && first.GetCommit() == c1 && first.GetPhase() == string(rollout.PhaseCompleted), fmt.Sprintf("%v, %v", first, err)
	})
	before := s.versions("canary-1", "prod-1")

	c2 := repo.Commit(t, "other", map[string]string{"other/c.yaml": "n: 1\n"})
	s.refresh(t, c2)
	s.engineStepped(t)
	ro, err := s.ctl.Rollout(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if ro.GetId() != first.GetId() || ro.GetCommit() != c1 || ro.GetPhase() != string(rollout.PhaseCompleted) {
		t.Fatalf("after an unrelated commit the rollout is #%d of %s, %s; want #%d of %s, completed",
			ro.GetId(), ro.GetCommit(), ro.GetPhase(), first.GetId(), c1)
	}
	if got := s.versions("canary-1", "prod-1"); got != before {
		t.Fatalf("assignments moved on an unrelated commit: %s, were %s", got, before)
	}
	if rel := s.release(t); rel.GetCommit() != c2 || rel.GetContentCommit() != c1 {
		t.Fatalf("release %s with content %s, want %s with %s's", rel.GetCommit(), rel.GetContentCommit(), c2, c1)
	}
	if evs := events(t, s.store, "rollout.started"); len(evs) != 1 {
		t.Fatalf("%d rollouts started, want only the first release's: %v", len(evs), evs)
	}
	s.saidWhy(t, "nothing changed under the application's paths since "+c1+", so the clusters keep its content and no cluster moves")
	sameAfterRestart(t, dsn, before, "canary-1", "prod-1")

	c3 := repo.Commit(t, "v3", map[string]string{"web/a.yaml": "kind: ConfigMap\nmetadata: {name: v3}\n"})
	s.refresh(t, c3)
	// The clusters never reported (no agent runs here): the rollout skips
	// them, and they get the release once it completes.
	testbed.Eventually(t, "the new release rolled out", 30*time.Second, func() (bool, string) {
		ro, err = s.ctl.Rollout(ctx, "web")
		return err == nil && ro.GetId() == first.GetId()+1 && ro.GetCommit() == c3 && ro.GetPhase() == string(rollout.PhaseCompleted) &&
				s.commitOn("prod-1") == c3 && s.commitOn("canary-1") == c3,
			fmt.Sprintf("rollout %v, %v; prod-1 runs %s", ro, err, s.commitOn("prod-1"))
	})
}
