package ownership

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/testlog"
	"github.com/drover-dev/drover/migrations"
)

func TestMain(m *testing.M) { testbed.Main(m) }

func TestOwnerSpreadsJobsAndMovesFewWhenAMemberLeaves(t *testing.T) {
	members := []string{"hub-0", "hub-1", "hub-2"}
	const jobs = 9000
	before := map[string]string{}
	share := map[string]int{}
	for i := range jobs {
		job := fmt.Sprintf("rollout/app-%d", i)
		o := Owner(job, members)
		before[job] = o
		share[o]++
	}
	for _, m := range members {
		// A fair share is 3000; allow 10%.
		if share[m] < 2700 || share[m] > 3300 {
			t.Errorf("%s owns %d of %d jobs, want about %d", m, share[m], jobs, jobs/len(members))
		}
	}
	// The member order does not matter.
	if o := Owner("rollout/app-1", []string{"hub-2", "hub-0", "hub-1"}); o != before["rollout/app-1"] {
		t.Errorf("owner depends on member order: %s vs %s", o, before["rollout/app-1"])
	}
	// hub-1 leaves: only its jobs move.
	moved := 0
	for job, o := range before {
		now := Owner(job, []string{"hub-0", "hub-2"})
		if o != "hub-1" && now != o {
			t.Fatalf("%s moved from %s to %s when hub-1 left", job, o, now)
		}
		if o == "hub-1" {
			moved++
		}
	}
	if moved != share["hub-1"] {
		t.Errorf("%d jobs moved, want hub-1's %d", moved, share["hub-1"])
	}
	if Owner("x", nil) != "" {
		t.Error("owner among no members is not empty")
	}
}

// view is a membership as one replica sees it; tests change it to join,
// lose or cut off replicas.
type view struct {
	mu      sync.Mutex
	members []string
	changes chan struct{}
}

func newView(members ...string) *view {
	return &view{members: members, changes: make(chan struct{}, 1)}
}

func (v *view) Members() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.members)
}

func (v *view) Changes() <-chan struct{} { return v.changes }

func (v *view) set(members ...string) {
	v.mu.Lock()
	v.members = members
	v.mu.Unlock()
	signal(v.changes)
}

type replica struct {
	name   string
	view   *view
	keeper *Keeper
	stop   context.CancelFunc
	done   chan struct{}
}

func startReplica(t *testing.T, st *store.Store, name string, v *view, jobs []string) *replica {
	t.Helper()
	k := New(Config{
		Holder:  store.Holder{Replica: name, Instance: name + "-" + fmt.Sprint(time.Now().UnixNano())},
		Members: v, Store: st, TTL: 2 * time.Second, Renew: 100 * time.Millisecond,
		Logger: testlog.New(t).With("replica", name),
	})
	k.SetJobs(jobs)
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, view: v, keeper: k, stop: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); _ = k.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// TestKeepersShareJobsAndNeverHoldOneTwice runs three keepers on one
// database through a join, a clean stop and a gossip split, and checks,
// from the database and from what each keeper trusts, that no job is ever
// held by two replicas, and that ownership converges to the hash's.
func TestKeepersShareJobsAndNeverHoldOneTwice(t *testing.T) {
	ctx := context.Background()
	url := testbed.Postgres(t)
	if err := migrations.UpURL(ctx, url); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, url, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close) // after the keepers stop: cleanups run last first
	var jobs []string
	for i := range 30 {
		jobs = append(jobs, RolloutJob(fmt.Sprintf("app-%d", i)))
	}
	all := []string{"hub-0", "hub-1", "hub-2"}
	rs := []*replica{
		startReplica(t, st, "hub-0", newView(all...), jobs),
		startReplica(t, st, "hub-1", newView(all...), jobs),
		startReplica(t, st, "hub-2", newView(all...), jobs),
	}

	// checkDisjoint fails when two live keepers trust a lease on one job.
	checkDisjoint := func() {
		t.Helper()
		seen := map[string]string{}
		for _, r := range rs {
			select {
			case <-r.done:
				continue
			default:
			}
			for _, job := range r.keeper.Held() {
				if _, ok := r.keeper.Lease(job); !ok {
					continue
				}
				if other, ok := seen[job]; ok {
					t.Fatalf("%s held by %s and %s at once", job, other, r.name)
				}
				seen[job] = r.name
			}
		}
	}
	// converged reports whether every job is held, by the member the hash
	// names among members.
	converged := func(members []string) bool {
		checkDisjoint()
		byName := map[string]*replica{}
		for _, r := range rs {
			byName[r.name] = r
		}
		for _, job := range jobs {
			if _, ok := byName[Owner(job, members)].keeper.Lease(job); !ok {
				return false
			}
		}
		return true
	}
	waitUntil(t, "three replicas share the jobs as the hash says", func() bool { return converged(all) })

	// hub-2 stops cleanly: it releases its leases, and the others take
	// its jobs without waiting for them to lapse.
	rs[2].stop()
	<-rs[2].done
	rs[0].view.set("hub-0", "hub-1")
	rs[1].view.set("hub-0", "hub-1")
	waitUntil(t, "hub-2's jobs move to hub-0 and hub-1", func() bool { return converged([]string{"hub-0", "hub-1"}) })

	// A gossip split: each of hub-0 and hub-1 sees only itself and wants
	// every job. Neither takes one the other holds.
	rs[0].view.set("hub-0")
	rs[1].view.set("hub-1")
	for range 20 {
		checkDisjoint()
		leases, err := st.ListLeases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range leases {
			if l.Holder.Replica == "hub-2" && l.Expires.After(time.Now().Add(time.Minute)) {
				t.Fatalf("stopped hub-2 still holds %s", l.Job)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Healed: ownership converges again, nothing held twice on the way.
	rs[0].view.set("hub-0", "hub-1")
	rs[1].view.set("hub-0", "hub-1")
	waitUntil(t, "ownership converges after the split heals", func() bool { return converged([]string{"hub-0", "hub-1"}) })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
