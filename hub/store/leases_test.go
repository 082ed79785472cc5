package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/drover-dev/drover/hub/rollout"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

var (
	holderA = Holder{Replica: "hub-a", Instance: "a-1"}
	holderB = Holder{Replica: "hub-b", Instance: "b-1"}
)

// leaseOf acquires one job for h and fails unless it got it.
func leaseOf(t *testing.T, s *Store, h Holder, job string, ttl time.Duration) Lease {
	t.Helper()
	got, err := s.AcquireLeases(context.Background(), h, []string{job}, ttl)
	if err != nil {
		t.Fatalf("AcquireLeases(%s, %s): %v", h.Replica, job, err)
	}
	if len(got) != 1 {
		t.Fatalf("AcquireLeases(%s, %s) = %v, want the lease", h.Replica, job, got)
	}
	return got[0]
}

// lapse makes a lease expire now, as if its holder had stopped renewing
// it a ttl ago.
func lapse(t *testing.T, s *Store, job string) {
	t.Helper()
	if _, err := s.pool.Exec(context.Background(), `UPDATE job_leases SET expires_at = now() - interval '1 second' WHERE job = $1`, job); err != nil {
		t.Fatal(err)
	}
}

func TestLeasesHaveOneHolder(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	jobs := []string{"rollout/web", "git/r1", "retention"}

	a, err := s.AcquireLeases(ctx, holderA, jobs, time.Minute)
	if err != nil || len(a) != 3 {
		t.Fatalf("A acquires 3 free jobs: %v, %v", a, err)
	}
	for _, l := range a {
		if l.Epoch != 1 || l.Holder != holderA {
			t.Errorf("new lease %+v, want epoch 1 held by A", l)
		}
	}
	// B wants them too (a gossip split: both think they own them): it
	// gets none while A's leases run.
	if b, err := s.AcquireLeases(ctx, holderB, jobs, time.Minute); err != nil || len(b) != 0 {
		t.Fatalf("B acquires A's live leases: %v, %v; want none", b, err)
	}
	// A renews: same epochs.
	if again, err := s.AcquireLeases(ctx, holderA, jobs, time.Minute); err != nil || len(again) != 3 || again[0].Epoch != 1 {
		t.Fatalf("A renews: %v, %v; want 3 at epoch 1", again, err)
	}

	// One lapses (A stopped renewing it): B takes it at the next epoch.
	lapse(t, s, "git/r1")
	b := leaseOf(t, s, holderB, "git/r1", time.Minute)
	if b.Epoch != 2 {
		t.Errorf("taken-over lease at epoch %d, want 2", b.Epoch)
	}
	// A, back, renews only what it still holds.
	again, err := s.AcquireLeases(ctx, holderA, jobs, time.Minute)
	if err != nil || len(again) != 2 {
		t.Fatalf("A renews after losing git/r1: %v, %v; want its 2 others", again, err)
	}

	// A released lease is free at once.
	if err := s.ReleaseLeases(ctx, holderA, []string{"retention"}); err != nil {
		t.Fatal(err)
	}
	if r := leaseOf(t, s, holderB, "retention", time.Minute); r.Epoch != 2 {
		t.Errorf("released lease taken at epoch %d, want 2", r.Epoch)
	}

	// A replica restarted under its name is another instance: it waits
	// for its old leases like any other replica, then takes them over
	// at a new epoch.
	restarted := Holder{Replica: "hub-a", Instance: "a-2"}
	if got, err := s.AcquireLeases(ctx, restarted, []string{"rollout/web"}, time.Minute); err != nil || len(got) != 0 {
		t.Fatalf("restarted A acquires its old live lease: %v, %v; want none", got, err)
	}
	lapse(t, s, "rollout/web")
	if l := leaseOf(t, s, restarted, "rollout/web", time.Minute); l.Epoch != 2 {
		t.Errorf("restarted A's lease at epoch %d, want 2", l.Epoch)
	}

	all, err := s.ListLeases(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("ListLeases: %v, %v", all, err)
	}
	holders := map[string]string{}
	for _, l := range all {
		holders[l.Job] = l.Holder.Instance
	}
	want := map[string]string{"git/r1": "b-1", "retention": "b-1", "rollout/web": "a-2"}
	for job, inst := range want {
		if holders[job] != inst {
			t.Errorf("%s held by %q, want %q", job, holders[job], inst)
		}
	}
}

// TestRolloutWritesAreFenced: a rollout state and its events are written
// together, only under a live lease at its epoch, and only over the state
// the write was based on.
func TestRolloutWritesAreFenced(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if _, err := s.CreateApplication(ctx, testApp("web", "main"), "test"); err != nil {
		t.Fatal(err)
	}
	ev := func(msg string) []*droverv1.Event {
		return []*droverv1.Event{{Kind: "rollout.wave_started", Actor: "hub", Application: "web", Message: msg}}
	}
	st := func(release string) rollout.State {
		return rollout.State{ID: 1, Release: release, Phase: rollout.PhaseRunning}
	}
	countEvents := func() int {
		evs, _, err := s.ListEvents(ctx, EventFilter{Application: "web", KindPrefix: "rollout."}, 100, "")
		if err != nil {
			t.Fatal(err)
		}
		return len(evs)
	}

	a := leaseOf(t, s, holderA, "rollout/web", time.Minute)
	v1, err := s.CommitRollout(ctx, a, "web", 0, st("c1"), ev("first"))
	if err != nil {
		t.Fatalf("CommitRollout under a live lease: %v", err)
	}

	// A's lease lapses and B takes it over: A, unaware (paused, or cut
	// off from the others), writes nothing, not even its events.
	lapse(t, s, "rollout/web")
	b := leaseOf(t, s, holderB, "rollout/web", time.Minute)
	if _, err := s.CommitRollout(ctx, a, "web", v1, st("stale"), ev("from the old owner")); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("CommitRollout under a lost lease: %v, want ErrLeaseLost", err)
	}
	if got, _ := s.GetRollout(ctx, "web"); got.State.Release != "c1" || got.Version != v1 {
		t.Errorf("after the old owner's write: %+v, want c1 at version %d", got, v1)
	}
	if n := countEvents(); n != 1 {
		t.Errorf("%d rollout events, want 1: the old owner's step recorded events", n)
	}

	// An operator's command through any replica moves the version: the
	// owner's step based on the version before is stale and changes
	// nothing.
	cmd, err := s.UpdateRollout(ctx, "web", func(cur Rollout) (rollout.State, []*droverv1.Event, error) {
		next := cur.State
		next.Phase = rollout.PhasePaused
		return next, ev("paused"), nil
	})
	if err != nil || cmd.Version <= v1 || cmd.State.Phase != rollout.PhasePaused {
		t.Fatalf("UpdateRollout: %+v, %v", cmd, err)
	}
	if _, err := s.CommitRollout(ctx, b, "web", v1, st("c2"), ev("stale step")); !errors.Is(err, ErrStale) {
		t.Fatalf("CommitRollout from an older version: %v, want ErrStale", err)
	}
	v3, err := s.CommitRollout(ctx, b, "web", cmd.Version, st("c2"), ev("second"))
	if err != nil || v3 <= cmd.Version {
		t.Fatalf("CommitRollout from the current version: %d, %v", v3, err)
	}
	if n := countEvents(); n != 3 {
		t.Errorf("%d rollout events, want 3 (first, paused, second)", n)
	}

	// A failed command stores nothing.
	boom := errors.New("refused")
	if _, err := s.UpdateRollout(ctx, "web", func(Rollout) (rollout.State, []*droverv1.Event, error) { return rollout.State{}, nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("UpdateRollout's refusal: %v", err)
	}
	if got, _ := s.GetRollout(ctx, "web"); got.Version != v3 {
		t.Errorf("version %d after a refused command, want %d", got.Version, v3)
	}

	// Deleting under a lost lease deletes nothing.
	if err := s.DeleteRollout(ctx, a, "web"); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("DeleteRollout under a lost lease: %v", err)
	}
	if err := s.DeleteRollout(ctx, b, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetRollout(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetRollout after delete: %v", err)
	}
}
