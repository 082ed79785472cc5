package control_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/rollout"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// listen runs a Listener that hands what other replicas change to s's
// Controller, until stop is called or the test ends, and returns once it
// listens.
func (s *setup) listen(t *testing.T) (stop func()) {
	t.Helper()
	lis := s.store.NewListener(s.ctl)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lis.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Listener.Run: %v", err)
		}
	}
	t.Cleanup(stop)
	testbed.Eventually(t, "the listener to listen", 30*time.Second, func() (bool, string) {
		return lis.Stats().Resyncs > 0, "no resync yet"
	})
	return stop
}

// versions is every cluster's assignment version in f.
func versions(f *fleet.Fleet) map[string]string {
	out := map[string]string{}
	for _, c := range f.Clusters() {
		out[c.Name] = f.Assignment(c.Name).GetVersion()
	}
	return out
}

// TestReplicasFollowEachOther runs two Controllers on one database, as two
// hub replicas: what one changes and tells its own Controller about
// reaches the other's fleet through the store's notifications, and a
// resync after notifications were missed brings the other's fleet to the
// first's.
func TestReplicasFollowEachOther(t *testing.T) {
	ctx := context.Background()
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	dsn := testbed.Postgres(t)
	a, b := startOn(t, dsn), startOn(t, dsn)
	stopB := b.listen(t)

	a.register(t, "prod-1", map[string]string{"env": "prod"})
	a.register(t, "dev-1", map[string]string{"env": "dev"})
	stored, err := a.store.CreateApplication(ctx, webApp(repo.URL), "test")
	if err != nil {
		t.Fatal(err)
	}
	a.ctl.ApplicationStored(ctx, stored)
	testbed.Eventually(t, "the first release on b's prod-1", 30*time.Second, func() (bool, string) {
		return b.commitOn("prod-1") == c1, fmt.Sprintf("prod-1 runs %q on b", b.commitOn("prod-1"))
	})
	if got := b.commitOn("dev-1"); got != "" {
		t.Fatalf("dev-1 runs web at %s on b, want nothing", got)
	}

	// Relabelled into the placement.
	if _, err := a.store.UpdateClusterLabels(ctx, "dev-1", map[string]string{"env": "prod"}, nil); err != nil {
		t.Fatal(err)
	}
	a.ctl.ClusterChanged(ctx, "dev-1")
	testbed.Eventually(t, "dev-1 relabelled on b", 30*time.Second, func() (bool, string) {
		return b.commitOn("dev-1") == c1, fmt.Sprintf("dev-1 runs %q on b", b.commitOn("dev-1"))
	})

	// Revoked: out of b's fleet.
	if _, err := a.store.RevokeCluster(ctx, "prod-1"); err != nil {
		t.Fatal(err)
	}
	a.ctl.ClusterChanged(ctx, "prod-1")
	testbed.Eventually(t, "prod-1 revoked on b", 30*time.Second, func() (bool, string) {
		got := b.ctl.PlacedClusters("web")
		return slices.Equal(got, []string{"dev-1"}) && b.fleet.Assignment("prod-1") == nil, fmt.Sprintf("web placed on %v on b", got)
	})

	// Deleted: out of b's assignments and Git watcher.
	if err := a.store.DeleteApplication(ctx, "web", "test"); err != nil {
		t.Fatal(err)
	}
	a.ctl.ApplicationDeleted(ctx, "web")
	testbed.Eventually(t, "web deleted on b", 30*time.Second, func() (bool, string) {
		return b.commitOn("dev-1") == "" && len(b.ctl.Targets()) == 0, fmt.Sprintf("dev-1 runs %q on b, b polls %v", b.commitOn("dev-1"), b.ctl.Targets())
	})

	// Changes b does not hear of: it falls behind until it listens
	// again, which resyncs it.
	stopB()
	stored, err = a.store.CreateApplication(ctx, webApp(repo.URL), "test")
	if err != nil {
		t.Fatal(err)
	}
	a.ctl.ApplicationStored(ctx, stored)
	a.register(t, "stage-1", map[string]string{"env": "prod"})
	if err := a.store.DeleteCluster(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	a.ctl.ClusterChanged(ctx, "dev-1")
	testbed.Eventually(t, "web's release on a's stage-1", 30*time.Second, func() (bool, string) {
		return a.commitOn("stage-1") == c1, fmt.Sprintf("stage-1 runs %q on a", a.commitOn("stage-1"))
	})
	if got := b.fleet.Assignment("stage-1"); got != nil {
		t.Fatalf("b has stage-1 without listening: %v", got)
	}
	b.listen(t)
	want := versions(a.fleet)
	testbed.Eventually(t, "b's fleet to be a's", 30*time.Second, func() (bool, string) {
		got := versions(b.fleet)
		return maps.Equal(got, want), fmt.Sprintf("b's assignments %v, a's %v", got, want)
	})
	if got := b.ctl.Targets(); len(got) != 1 || got[0].App != "web" {
		t.Fatalf("b polls %v after the resync, want web", got)
	}
}

// TestRolloutStateReload: a rollout state another replica stored reaches
// the fleet's pins when its change is told, and a deleted one unpins.
// (That a state older than the engine's is never taken is the versions'
// business: store.TestRolloutWritesAreFenced.)
func TestRolloutStateReload(t *testing.T) {
	ctx := context.Background()
	const (
		good = "1111111111111111111111111111111111111111"
		next = "2222222222222222222222222222222222222222"
	)
	dsn := testbed.Postgres(t)
	writer := newSetup(t, dsn, nil)
	writer.register(t, "c1", map[string]string{"env": "prod"})
	writer.register(t, "c2", map[string]string{"env": "prod"})
	app := webApp("https://git.example/fleet.git")
	app.Spec.Rollout = &droverv1.RolloutStrategy{Waves: []*droverv1.RolloutWave{{Name: "all", MaxParallel: structpb.NewNumberValue(1)}}}
	if _, err := writer.store.CreateApplication(ctx, app, "test"); err != nil {
		t.Fatal(err)
	}
	for _, commit := range []string{good, next} {
		if _, err := writer.store.AddRelease(ctx, "web", commit, "main", "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	// c1 is moving to next; c2 holds the last good release.
	running := rollout.State{ID: 1, Release: next, Good: good, Phase: rollout.PhaseRunning,
		Clusters: map[string]rollout.ClusterState{"c1": {Wave: "all", Phase: rollout.ClusterUpdating, Commit: next}}}
	if err := writer.store.PutRolloutState(ctx, "web", running); err != nil {
		t.Fatal(err)
	}

	follower := newSetup(t, dsn, nil)
	for _, s := range []*setup{follower} { // loaded as the writer left it
		if c1, c2 := s.commitOn("c1"), s.commitOn("c2"); c1 != next || c2 != good {
			t.Fatalf("loaded with c1 at %s and c2 at %s, want %s and %s", c1, c2, next, good)
		}
	}

	done := running
	done.Phase = rollout.PhaseCompleted
	done.Clusters = map[string]rollout.ClusterState{
		"c1": {Wave: "all", Phase: rollout.ClusterSucceeded, Commit: next},
		"c2": {Wave: "all", Phase: rollout.ClusterSucceeded, Commit: next},
	}
	if err := writer.store.PutRolloutState(ctx, "web", done); err != nil {
		t.Fatal(err)
	}
	follower.ctl.Changed(ctx, []store.Change{{Kind: store.ChangeRollout, Name: "web"}})
	if got := follower.commitOn("c2"); got != next {
		t.Errorf("the follower has c2 at %s after the rollout completed, want %s", got, next)
	}

	// Deleted: the follower unpins and runs the release everywhere.
	if err := writer.store.DeleteRolloutState(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	follower.ctl.Changed(ctx, []store.Change{{Kind: store.ChangeRollout, Name: "web"}})
	if c1, c2 := follower.commitOn("c1"), follower.commitOn("c2"); c1 != next || c2 != next {
		t.Errorf("after the rollout was deleted c1 runs %s and c2 %s, want %s", c1, c2, next)
	}
}
