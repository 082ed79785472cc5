package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestStatusWriterCoalescesAndFlushes(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	registerClusters(t, s, nil, "c1", "c2")
	// A batch size below the key count makes Flush write several batches.
	w := NewStatusWriter(s, testlog.New(t), 3, time.Hour)

	for gen := 1; gen <= 10; gen++ {
		for _, c := range []string{"c1", "c2"} {
			for _, app := range []string{"a", "b", "c", "d"} {
				if !w.Enqueue(makeStatus(c, app, 2, gen)) {
					t.Fatalf("Enqueue refused")
				}
			}
		}
	}
	if got := w.Stats().Pending; got != 8 {
		t.Errorf("pending = %d, want 8 (one per cluster and application)", got)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if st := w.Stats(); st.Pending != 0 || st.Dropped != 0 || st.LastError != nil {
		t.Errorf("after Flush: %+v", st)
	}
	checkStatuses(t, s, map[string][]*droverv1.ApplicationStatus{
		"c1": {makeStatus("c1", "a", 2, 10), makeStatus("c1", "b", 2, 10), makeStatus("c1", "c", 2, 10), makeStatus("c1", "d", 2, 10)},
		"c2": {makeStatus("c2", "a", 2, 10), makeStatus("c2", "b", 2, 10), makeStatus("c2", "c", 2, 10), makeStatus("c2", "d", 2, 10)},
	})
}

func TestStatusWriterRun(t *testing.T) {
	s := newStore(t)
	registerClusters(t, s, nil, "c1")
	w := NewStatusWriter(s, testlog.New(t), 100, 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	for i := 0; i < 250; i++ {
		w.Enqueue(makeStatus("c1", fmt.Sprintf("app-%03d", i), 1, 1))
	}
	waitFor(t, "Run to write 250 statuses", func() bool {
		sts, err := s.GetStatuses(context.Background(), "c1")
		return err == nil && len(sts) == 250
	})
	if st := w.Stats(); st.Pending != 0 || st.Failures != 0 {
		t.Errorf("after Run wrote everything: %+v", st)
	}
}

func TestStatusWriterFullReport(t *testing.T) {
	s := storeWithStatuses(t, makeStatus("c1", "old", 0, 1), makeStatus("c1", "web", 0, 1), makeStatus("c2", "old", 0, 1))
	ctx := context.Background()
	w := NewStatusWriter(s, testlog.New(t), 10, time.Hour)
	// A delta for an application the full report below no longer lists:
	// older than the report, it must not come back.
	w.Enqueue(makeStatus("c1", "gone", 0, 1))
	if !w.EnqueueFull("c1", []*droverv1.ApplicationStatus{makeStatus("c1", "web", 0, 2), makeStatus("c1", "api", 0, 2)}, nil) {
		t.Fatal("EnqueueFull refused")
	}
	// A delta after the report is newer than it.
	w.Enqueue(makeStatus("c1", "new", 0, 3))
	if w.EnqueueFull("c2", []*droverv1.ApplicationStatus{makeStatus("c1", "web", 0, 2)}, nil) {
		t.Error("EnqueueFull took a status of another cluster")
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	checkStatuses(t, s, map[string][]*droverv1.ApplicationStatus{
		"c1": {makeStatus("c1", "api", 0, 2), makeStatus("c1", "new", 0, 3), makeStatus("c1", "web", 0, 2)},
		"c2": nil,
	})
}

// The agent's word that it removed an application deletes that status of
// that cluster only, and a full report deletes no status of an
// application still assigned, listed or not.
func TestStatusWriterRemovals(t *testing.T) {
	s := storeWithStatuses(t, makeStatus("c1", "old", 0, 1), makeStatus("c1", "web", 0, 1), makeStatus("c1", "api", 0, 1), makeStatus("c2", "old", 0, 1))
	ctx := context.Background()
	w := NewStatusWriter(s, testlog.New(t), 10, time.Hour)
	// Older than the removal: must not bring the row back.
	w.Enqueue(makeStatus("c1", "old", 0, 2))
	w.EnqueueRemoved("c1", []string{"old"})
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	checkStatuses(t, s, map[string][]*droverv1.ApplicationStatus{
		"c1": {makeStatus("c1", "api", 0, 1), makeStatus("c1", "web", 0, 1)},
		"c2": {makeStatus("c2", "old", 0, 1)},
	})

	// Placed again after the removal: its new status is written after it.
	w.EnqueueRemoved("c2", []string{"old"})
	w.Enqueue(makeStatus("c2", "old", 0, 3))
	// api is assigned but not reconciled yet since the agent started.
	if !w.EnqueueFull("c1", []*droverv1.ApplicationStatus{makeStatus("c1", "web", 0, 2)}, []string{"web", "api"}) {
		t.Fatal("EnqueueFull refused")
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	checkStatuses(t, s, map[string][]*droverv1.ApplicationStatus{
		"c1": {makeStatus("c1", "api", 0, 1), makeStatus("c1", "web", 0, 2)},
		"c2": {makeStatus("c2", "old", 0, 3)},
	})
}

func TestStatusWriterBacklogBound(t *testing.T) {
	s := newStore(t)
	registerClusters(t, s, nil, "c1")
	w := NewStatusWriter(s, testlog.New(t), 10, time.Hour, WithMaxPending(3))
	for i, app := range []string{"a", "b", "c"} {
		if !w.Enqueue(makeStatus("c1", app, 0, i)) {
			t.Fatalf("Enqueue(%s) refused below the bound", app)
		}
	}
	if w.Enqueue(makeStatus("c1", "d", 0, 1)) {
		t.Error("Enqueue of a new key accepted beyond the bound")
	}
	if !w.Enqueue(makeStatus("c1", "a", 0, 9)) {
		t.Error("Enqueue of a waiting key refused")
	}
	if st := w.Stats(); st.Pending != 3 || st.Dropped != 1 {
		t.Errorf("stats = %+v, want 3 pending, 1 dropped", st)
	}
	if err := w.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if !w.Enqueue(makeStatus("c1", "d", 0, 1)) {
		t.Error("Enqueue refused after the backlog drained")
	}
}

// TestStatusWriterOutage makes the database unavailable for status writes
// (a lock held on the table, writes time out) and checks that what was
// enqueued survives the outage, newest wins, and is written once the
// database is back.
func TestStatusWriterOutage(t *testing.T) {
	url := testbed.Postgres(t)
	s := openStore(t, url)
	registerClusters(t, s, nil, "c1")
	locker := openStore(t, url)
	// The writer's store gives up on a write quickly, so the lock below
	// makes writes fail rather than wait.
	ws := openStore(t, url, WithQueryTimeout(300*time.Millisecond))

	ctx := context.Background()
	lockTx, err := locker.pool.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer lockTx.Rollback(ctx) //nolint:errcheck
	if _, err := lockTx.Exec(ctx, `LOCK TABLE app_status IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatalf("lock: %v", err)
	}

	w := NewStatusWriter(ws, testlog.New(t), 10, time.Millisecond)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(runCtx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	w.Enqueue(makeStatus("c1", "web", 1, 1))
	w.Enqueue(makeStatus("c1", "api", 1, 1))
	waitFor(t, "a failed write", func() bool { return w.Stats().Failures > 0 })
	w.Enqueue(makeStatus("c1", "web", 1, 2)) // during the outage: newest wins

	if err := lockTx.Commit(ctx); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	flushCtx, flushCancel := context.WithTimeout(ctx, time.Minute)
	defer flushCancel()
	if err := w.Flush(flushCtx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	checkStatuses(t, s, map[string][]*droverv1.ApplicationStatus{
		"c1": {makeStatus("c1", "api", 1, 1), makeStatus("c1", "web", 1, 2)},
	})
	if st := w.Stats(); st.Pending != 0 || st.Dropped != 0 {
		t.Errorf("after the outage: %+v", st)
	}
}

// waitFor polls cond until it holds, failing the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
