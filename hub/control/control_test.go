package control_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/control"
	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/gitwatch"
	"github.com/drover-dev/drover/hub/secrets"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// setup is a Controller over the test bed's PostgreSQL, running until the
// test ends, with the store and the fleet it keeps.
type setup struct {
	ctl   *control.Controller
	store *store.Store
	fleet *fleet.Fleet
}

func start(t *testing.T) *setup {
	t.Helper()
	return startOn(t, testbed.Postgres(t))
}

// startOn is start over the database at dsn: a second one over the same
// database is a hub that restarted.
func startOn(t *testing.T, dsn string) *setup {
	t.Helper()
	return startWith(t, dsn, nil)
}

// startWith is startOn with a Config that change changes.
func startWith(t *testing.T, dsn string, change func(*control.Config)) *setup {
	t.Helper()
	s := newSetup(t, dsn, change)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ctl.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

// newSetup is a Controller over the database at dsn, with a Config that
// change (unless nil) changes, that does not run: neither Git polls nor
// rollout steps move anything.
func newSetup(t *testing.T, dsn string, change func(*control.Config)) *setup {
	t.Helper()
	ctx := context.Background()
	logger := testlog.New(t)
	st, err := store.Open(ctx, dsn, logger)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(st.Close)
	dir := t.TempDir()
	box, err := secrets.LoadOrCreateKey(filepath.Join(dir, "secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	fl := fleet.New(logger)
	cfg := control.Config{
		Store: st, Fleet: fl, Secrets: box,
		Resolver:       gitwatch.NewResolver(filepath.Join(dir, "git-cache"), logger),
		OfflineTimeout: time.Minute, Logger: logger,
	}
	if change != nil {
		change(&cfg)
	}
	ctl, err := control.New(ctx, cfg)
	if err != nil {
		t.Fatalf("control.New: %v", err)
	}
	return &setup{ctl: ctl, store: st, fleet: fl}
}

// register stores a cluster as the agent endpoint's Register does and
// tells the Controller, as Register does.
func (s *setup) register(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	tok, _, err := s.store.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{Labels: labels}, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.CreateClusterWithJoinToken(ctx, tok, name, "serial-"+name, time.Now()); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	s.ctl.ClusterChanged(ctx, name)
}

func webApp(repoURL string) *droverv1.Application {
	return &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
		Source:    &droverv1.Source{RepoUrl: repoURL, Ref: "main", Path: "web"},
		Placement: &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
	}}
}

// commitOn is web's commit in the cluster's assignment, "" when it has none.
func (s *setup) commitOn(cluster string) string {
	for _, a := range s.fleet.Assignment(cluster).GetApplications() {
		if a.GetName() == "web" {
			return a.GetCommit()
		}
	}
	return ""
}

// TestControllerFollowsTheStore changes clusters and an application in the
// store, tells the Controller as the agent endpoint and the admin API do,
// and checks that the fleet follows: a new application's ref is resolved
// at once and its release goes to the clusters it is placed on; relabels,
// deletions and revocations take effect.
func TestControllerFollowsTheStore(t *testing.T) {
	ctx := context.Background()
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	s := start(t)
	s.register(t, "prod-1", map[string]string{"env": "prod"})
	s.register(t, "dev-1", map[string]string{"env": "dev"})

	stored, err := s.store.CreateApplication(ctx, webApp(repo.URL), "test")
	if err != nil {
		t.Fatal(err)
	}
	s.ctl.ApplicationStored(ctx, stored)
	testbed.Eventually(t, "the first release on prod-1", 30*time.Second, func() (bool, string) {
		return s.commitOn("prod-1") == c1, fmt.Sprintf("prod-1 runs %q", s.commitOn("prod-1"))
	})
	if got := s.ctl.PlacedClusters("web"); !slices.Equal(got, []string{"prod-1"}) {
		t.Fatalf("placed on %v, want [prod-1]", got)
	}
	rels, err := s.store.ListReleases(ctx, "web", 10)
	if err != nil || len(rels) != 1 || rels[0].GetCommit() != c1 {
		t.Fatalf("releases %v, %v; want one at %s", rels, err, c1)
	}

	// A new commit makes a release; the same commit again makes none.
	// Refresh polls through the Git watcher, after any poll under way.
	c2 := repo.Commit(t, "v2", map[string]string{"web/a.yaml": "kind: ConfigMap\nmetadata: {name: v2}\n"})
	for i, wantNew := range []bool{true, false} {
		commit, created, err := s.ctl.Refresh(ctx, "web")
		if err != nil || commit != c2 || created != wantNew {
			t.Fatalf("refresh %d: %s, new release %v, %v; want %s, %v", i+1, commit, created, err, c2, wantNew)
		}
	}
	if got := s.commitOn("prod-1"); got != c2 {
		t.Fatalf("prod-1 runs %s after a new commit, want %s", got, c2)
	}
	if rels, err := s.store.ListReleases(ctx, "web", 10); err != nil || len(rels) != 2 {
		t.Fatalf("releases %v, %v; want two", rels, err)
	}

	// Relabelled into the placement.
	if _, err := s.store.UpdateClusterLabels(ctx, "dev-1", map[string]string{"env": "prod"}, nil); err != nil {
		t.Fatal(err)
	}
	s.ctl.ClusterChanged(ctx, "dev-1")
	if got := s.commitOn("dev-1"); got != c2 {
		t.Fatalf("dev-1 runs %q after joining prod, want %s", got, c2)
	}

	// Revoked: out of the fleet.
	if _, err := s.store.RevokeCluster(ctx, "prod-1"); err != nil {
		t.Fatal(err)
	}
	s.ctl.ClusterChanged(ctx, "prod-1")
	if got := s.ctl.PlacedClusters("web"); !slices.Equal(got, []string{"dev-1"}) {
		t.Fatalf("placed on %v after prod-1 was revoked, want [dev-1]", got)
	}

	// Deleted: out of every assignment and of the Git watcher's targets.
	if err := s.store.DeleteApplication(ctx, "web", "test"); err != nil {
		t.Fatal(err)
	}
	s.ctl.ApplicationDeleted(ctx, "web")
	if got := s.commitOn("dev-1"); got != "" {
		t.Fatalf("dev-1 still runs web at %s after it was deleted", got)
	}
	if got := s.ctl.Targets(); len(got) != 0 {
		t.Fatalf("the Git watcher still polls %v", got)
	}
}

// TestControllerSourceErrors checks that a source that cannot be resolved
// is reported once, with an event, and that its recovery is recorded.
func TestControllerSourceErrors(t *testing.T) {
	ctx := context.Background()
	s := start(t)
	// Nothing listens there: every attempt is refused alike.
	app := webApp("http://" + testbed.FreeAddr(t) + "/fleet.git")
	stored, err := s.store.CreateApplication(ctx, app, "test")
	if err != nil {
		t.Fatal(err)
	}
	s.ctl.ApplicationStored(ctx, stored)
	testbed.Eventually(t, "the source error", 30*time.Second, func() (bool, string) {
		return s.ctl.SourceError("web") != "", "no source error yet"
	})
	// The same error again is no news.
	s.ctl.OnError(ctx, "web", fmt.Errorf("%s", s.ctl.SourceError("web")))
	failed := events(t, s.store, "application.source_failed")
	if len(failed) != 1 {
		t.Fatalf("%d source_failed events, want 1: %v", len(failed), failed)
	}

	const commit = "0123456789abcdef0123456789abcdef01234567"
	s.ctl.OnResolved(ctx, "web", "main", commit)
	if got := s.ctl.SourceError("web"); got != "" {
		t.Fatalf("source error %q after the source resolved", got)
	}
	if got := events(t, s.store, "application.source_recovered"); len(got) != 1 {
		t.Fatalf("%d source_recovered events, want 1: %v", len(got), got)
	}
}

func events(t *testing.T, st *store.Store, kind string) []*droverv1.Event {
	t.Helper()
	evs, _, err := st.ListEvents(context.Background(), store.EventFilter{Application: "web", KindPrefix: kind}, 100, "")
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestControllerDeletesOldEvents: the holder of the retention job deletes
// events older than the retention and keeps the others.
func TestControllerDeletesOldEvents(t *testing.T) {
	ctx := context.Background()
	dsn := testbed.Postgres(t)
	st, err := store.Open(ctx, dsn, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	now := time.Now()
	for i, age := range []time.Duration{3 * time.Hour, 2 * time.Hour, 30 * time.Minute, time.Minute} {
		if err := st.AddEvent(ctx, &droverv1.Event{Time: timestamppb.New(now.Add(-age)), Kind: "test.aged", Actor: "test", Message: fmt.Sprintf("event %d, %v old", i, age)}); err != nil {
			t.Fatal(err)
		}
	}
	startWith(t, dsn, func(c *control.Config) { c.EventRetention = time.Hour })
	var left []string
	testbed.Eventually(t, "events older than an hour deleted", time.Minute, func() (bool, string) {
		evs, _, err := st.ListEvents(ctx, store.EventFilter{KindPrefix: "test."}, 10, "")
		if err != nil {
			return false, err.Error()
		}
		left = left[:0]
		for _, e := range evs {
			left = append(left, e.GetMessage())
		}
		return len(evs) == 2, fmt.Sprint(left)
	})
	slices.Sort(left)
	if want := []string{"event 2, 30m0s old", "event 3, 1m0s old"}; !slices.Equal(left, want) {
		t.Errorf("events left %q, want %q", left, want)
	}
}
