package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// recorder is a ChangeHandler that keeps what it is told. With gate set,
// its first Changed call waits until gate is closed.
type recorder struct {
	gate chan struct{}

	mu      sync.Mutex // guards the fields below
	calls   [][]Change
	resyncs int
}

func (r *recorder) Changed(ctx context.Context, changes []Change) {
	r.mu.Lock()
	r.calls = append(r.calls, changes)
	first := len(r.calls) == 1
	r.mu.Unlock()
	if first && r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
		}
	}
}

func (r *recorder) Resync(context.Context) {
	r.mu.Lock()
	r.resyncs++
	r.mu.Unlock()
}

// changes returns every change told so far, in order.
func (r *recorder) changes() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Change
	for _, c := range r.calls {
		out = append(out, c...)
	}
	return out
}

func (r *recorder) has(ch Change) bool {
	for _, c := range r.changes() {
		if c == ch {
			return true
		}
	}
	return false
}

func (r *recorder) callCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// replica is a Store with its Listener running until the test ends.
type replica struct {
	*Store
	rec *recorder
	lis *Listener
}

// replicas opens n Stores on one fresh database, each with a running
// Listener that has started listening.
func replicas(t *testing.T, recs []*recorder, opts ...Option) []*replica {
	t.Helper()
	url := testbed.Postgres(t)
	out := make([]*replica, len(recs))
	for i, rec := range recs {
		s := openStore(t, url, append([]Option{WithInstanceID(fmt.Sprintf("replica-%d", i))}, opts...)...)
		lis := s.NewListener(rec)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- lis.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Listener.Run: %v", err)
			}
		})
		// Listening once the first Resync was handed over.
		waitFor(t, "the listener to listen", func() bool { return lis.Stats().Resyncs > 0 })
		out[i] = &replica{Store: s, rec: rec, lis: lis}
	}
	return out
}

// TestListenerHearsOtherReplicas: a write through one store reaches the
// other store's listener once committed, and its own listener skips it; a
// transaction that rolls back notifies nobody.
func TestListenerHearsOtherReplicas(t *testing.T) {
	ctx := context.Background()
	rs := replicas(t, []*recorder{{}, {}})
	a, b := rs[0], rs[1]

	if _, err := a.CreateApplication(ctx, testApp("web", "main"), "test"); err != nil {
		t.Fatal(err)
	}
	// A write that rolls back takes its notification with it.
	rolledBack := errors.New("roll back")
	if err := a.inTx(ctx, func(tx pgx.Tx) error {
		if err := a.notifyTx(ctx, tx, Change{Kind: ChangeApp, Name: "ghost"}); err != nil {
			return err
		}
		return rolledBack
	}); !errors.Is(err, rolledBack) {
		t.Fatalf("rolled back transaction: %v", err)
	}
	if _, err := a.CreateApplication(ctx, testApp("api", "main"), "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "api's change on b", func() bool { return b.rec.has(Change{Kind: ChangeApp, Name: "api"}) })
	want := []Change{{ChangeApp, "web"}, {ChangeApp, "api"}}
	if got := b.rec.changes(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("b was told %v, want %v", got, want)
	}
	waitFor(t, "a to hear its own notifications", func() bool { return a.lis.Stats().Own >= 2 })
	if n := a.rec.callCount(); n != 0 {
		t.Errorf("a's own listener was called %d times with %v", n, a.rec.changes())
	}
	if st := b.lis.Stats(); st.Own != 0 || st.Received != 2 {
		t.Errorf("b's listener: %+v, want 2 received and none own", st)
	}
}

// TestListenerCoalesces: a burst of writes reaches a busy listener as one
// call, each change once.
func TestListenerCoalesces(t *testing.T) {
	ctx := context.Background()
	gate := make(chan struct{})
	rs := replicas(t, []*recorder{{}, {gate: gate}})
	a, b := rs[0], rs[1]

	const n = 50
	for i := range n {
		if _, err := a.CreateApplication(ctx, testApp(fmt.Sprintf("app-%d", i), "main"), "test"); err != nil {
			t.Fatal(err)
		}
	}
	// The same application written again and again is one change.
	for i := range n {
		app := testApp("app-0", fmt.Sprintf("branch-%d", i))
		if _, err := a.UpdateApplication(ctx, app, "test"); err != nil {
			t.Fatal(err)
		}
	}
	// The first call waits at the gate meanwhile: everything else
	// gathers.
	waitFor(t, "b to receive every notification", func() bool { return b.lis.Stats().Received == 2*n })
	close(gate)
	waitFor(t, "every application on b", func() bool {
		return b.rec.has(Change{Kind: ChangeApp, Name: fmt.Sprintf("app-%d", n-1)})
	})
	if calls := b.rec.callCount(); calls > 2 {
		t.Errorf("%d writes made %d calls, want at most 2", 2*n, calls)
	}
	b.rec.mu.Lock()
	defer b.rec.mu.Unlock()
	seen := map[Change]int{}
	for _, call := range b.rec.calls {
		for _, c := range call {
			if seen[c]++; seen[c] > 1 && c.Name != "app-0" {
				t.Errorf("%v told twice", c)
			}
		}
		if got := len(call); got > n {
			t.Errorf("one call has %d changes, want each of the %d applications at most once", got, n)
		}
	}
	if len(seen) != n {
		t.Errorf("b was told of %d applications, want %d", len(seen), n)
	}
}

// TestListenerReconnects: a listening connection that is terminated is
// replaced; the handler is told to resync (what was sent meanwhile is
// lost) and later changes arrive again.
func TestListenerReconnects(t *testing.T) {
	ctx := context.Background()
	rs := replicas(t, []*recorder{{}, {}})
	a, b := rs[0], rs[1]
	registerClusters(t, a.Store, nil, "c1")
	waitFor(t, "c1's registration on b", func() bool { return b.rec.has(Change{Kind: ChangeCluster, Name: "c1"}) })

	var terminated int
	if err := a.pool.QueryRow(ctx, `
		SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t`,
		listenerAppName(b.InstanceID())).Scan(&terminated); err != nil {
		t.Fatal(err)
	}
	if terminated != 1 {
		t.Fatalf("terminated %d listening connections of b, want 1", terminated)
	}
	waitFor(t, "b to resync after reconnecting", func() bool { return b.lis.Stats().Resyncs >= 2 })

	before := b.rec.callCount()
	if _, err := a.UpdateClusterLabels(ctx, "c1", map[string]string{"env": "prod"}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c1's change after the reconnect", func() bool { return b.rec.callCount() > before })
	b.rec.mu.Lock()
	got := b.rec.calls[before]
	b.rec.mu.Unlock()
	if want := []Change{{ChangeCluster, "c1"}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the reconnect b was told %v, want %v", got, want)
	}
}

// TestSignalsCoalesce: statuses, agent answers and events written many
// times within a signal window are one notification of each kind.
func TestSignalsCoalesce(t *testing.T) {
	ctx := context.Background()
	// The window never ends by itself here: the test flushes.
	rs := replicas(t, []*recorder{{}, {}}, WithSignalWindow(1<<62))
	a, b := rs[0], rs[1]
	registerClusters(t, a.Store, nil, "c1")
	for i := range 20 {
		if err := a.RecordAck(ctx, "c1", fmt.Sprintf("v%d", i), "", testNow); err != nil {
			t.Fatal(err)
		}
		if err := a.MarkConnected(ctx, "c1", "a", "127.0.0.1:1", nil, testNow); err != nil {
			t.Fatal(err)
		}
		if err := a.AddEvent(ctx, &droverv1.Event{Kind: "test", Message: "m"}); err != nil {
			t.Fatal(err)
		}
		if err := a.WriteStatuses(ctx, []*droverv1.ApplicationStatus{makeStatus("c1", "web", 1, i)}); err != nil {
			t.Fatal(err)
		}
	}
	// A write that fails signals nothing.
	if err := a.RecordAck(ctx, "gone", "v1", "", testNow); err == nil {
		t.Fatal("RecordAck of an unknown cluster: no error")
	}
	a.signals.flush(ctx)
	signals := []Change{{Kind: ChangeAgents}, {Kind: ChangeEvents}, {Kind: ChangeStatuses}}
	waitFor(t, "the signals on b", func() bool {
		for _, s := range signals {
			if !b.rec.has(s) {
				return false
			}
		}
		return true
	})
	// The registration and one of each signal.
	if st := b.lis.Stats(); st.Received != 4 {
		t.Errorf("b received %d notifications, want 4 (the registration and one per signal kind)", st.Received)
	}
}

// TestNotifyTooLong: a change whose name does not fit in a notification
// still commits, and the other replicas resync rather than miss it.
func TestNotifyTooLong(t *testing.T) {
	ctx := context.Background()
	rs := replicas(t, []*recorder{{}, {}})
	a, b := rs[0], rs[1]
	before := b.lis.Stats().Resyncs
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		return a.notifyTx(ctx, tx, Change{Kind: ChangeRepo, Name: "https://git.example/" + strings.Repeat("x", maxPayloadBytes)})
	})
	if err != nil {
		t.Fatalf("notify a long name: %v", err)
	}
	waitFor(t, "b to resync", func() bool { return b.lis.Stats().Resyncs > before })
	if n := b.rec.callCount(); n != 0 {
		t.Errorf("b was told %v, want a resync only", b.rec.changes())
	}
}

func TestPayload(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Change
		want Change
	}{
		{"named", Change{ChangeCluster, "c1"}, Change{ChangeCluster, "c1"}},
		{"signal", Change{Kind: ChangeStatuses}, Change{Kind: ChangeStatuses}},
		{"fits", Change{ChangeRepo, strings.Repeat("x", maxRepoURLBytes)}, Change{ChangeRepo, strings.Repeat("x", maxRepoURLBytes)}},
		{"too long", Change{ChangeRepo, strings.Repeat("x", maxPayloadBytes)}, Change{Kind: ChangeResync}},
		{"escapes past the limit", Change{ChangeRepo, strings.Repeat("\x01", maxPayloadBytes/4)}, Change{Kind: ChangeResync}},
		{"not UTF-8", Change{ChangeApp, "a\xffb"}, Change{Kind: ChangeResync}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := encodePayload("me", tc.in)
			if len(p) >= maxPayloadBytes {
				t.Fatalf("payload of %d bytes", len(p))
			}
			from, got := decodePayload(p)
			if from != "me" || got != tc.want {
				t.Errorf("decoded from %q: %v, want from me: %v", from, got, tc.want)
			}
		})
	}
	for _, raw := range []string{"", "not json", `{"from":"x","kind":"newer"}`} {
		if from, got := decodePayload(raw); from != "" || got != (Change{Kind: ChangeResync}) {
			t.Errorf("decodePayload(%q) = %q, %v; want a resync from nobody", raw, from, got)
		}
	}
}
