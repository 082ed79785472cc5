package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

const testStaleAfter = time.Minute

func testReplica(name, instance string) Replica {
	return Replica{Name: name, Instance: instance, AgentAddr: "10.0.0.1:8443", HTTPAddr: "10.0.0.1:8080", PeerAddr: "10.0.0.1:7946", Version: "v1.2.3"}
}

// replicaRow reads one replica's row.
func replicaRow(t *testing.T, s *Store, name string) Replica {
	t.Helper()
	rs, err := s.ListReplicas(context.Background())
	if err != nil {
		t.Fatalf("ListReplicas: %v", err)
	}
	for _, r := range rs {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no replica %q in %+v", name, rs)
	return Replica{}
}

// wantTaken checks err is a refusal naming holder.
func wantTaken(t *testing.T, err error, holder string) {
	t.Helper()
	var taken *ReplicaNameTakenError
	if !errors.As(err, &taken) || !errors.Is(err, ErrReplicaNameTaken) {
		t.Fatalf("err = %v, want a *ReplicaNameTakenError", err)
	}
	if taken.Holder.Instance != holder {
		t.Fatalf("refusal names instance %q, want %q: %v", taken.Holder.Instance, holder, err)
	}
}

func TestClaimReplica(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if err := s.ClaimReplica(ctx, testReplica("hub-0", "a"), testStaleAfter); err != nil {
		t.Fatalf("first claim: %v", err)
	}
	first := replicaRow(t, s, "hub-0")
	if first.Instance != "a" || first.PeerAddr != "10.0.0.1:7946" || first.Version != "v1.2.3" || first.Stopped || first.StartedAt.IsZero() || first.HeartbeatAt.IsZero() {
		t.Fatalf("row after claim: %+v", first)
	}

	t.Run("another live instance is refused and changes nothing", func(t *testing.T) {
		other := testReplica("hub-0", "b")
		other.AgentAddr = "10.0.0.2:8443"
		err := s.ClaimReplica(ctx, other, testStaleAfter)
		wantTaken(t, err, "a")
		var taken *ReplicaNameTakenError
		errors.As(err, &taken)
		if taken.Holder.AgentAddr != "10.0.0.1:8443" || taken.Age < 0 || taken.Age > testStaleAfter {
			t.Errorf("refusal holder %+v age %v", taken.Holder, taken.Age)
		}
		if got := replicaRow(t, s, "hub-0"); got != first {
			t.Errorf("row changed by a refused claim:\n got %+v\nwant %+v", got, first)
		}
	})

	t.Run("the same instance claims again", func(t *testing.T) {
		if err := s.ClaimReplica(ctx, testReplica("hub-0", "a"), testStaleAfter); err != nil {
			t.Fatalf("claim again: %v", err)
		}
	})

	t.Run("a stale row is taken over", func(t *testing.T) {
		if _, err := s.pool.Exec(ctx, `UPDATE hub_replicas SET heartbeat_at = now() - interval '2 minutes' WHERE name = 'hub-0'`); err != nil {
			t.Fatal(err)
		}
		if err := s.ClaimReplica(ctx, testReplica("hub-0", "b"), testStaleAfter); err != nil {
			t.Fatalf("claim of a stale row: %v", err)
		}
		// The process that lost the name learns it at its next heartbeat.
		wantTaken(t, s.ReplicaHeartbeat(ctx, "hub-0", "a"), "b")
		if err := s.ReplicaHeartbeat(ctx, "hub-0", "b"); err != nil {
			t.Fatalf("heartbeat of the new holder: %v", err)
		}
	})

	t.Run("a stopped row is taken over", func(t *testing.T) {
		if err := s.StopReplica(ctx, "hub-0", "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("stop by a process that lost the name: %v, want ErrNotFound", err)
		}
		if replicaRow(t, s, "hub-0").Stopped {
			t.Fatal("a process that lost the name stopped the new holder's row")
		}
		if err := s.StopReplica(ctx, "hub-0", "b"); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if !replicaRow(t, s, "hub-0").Stopped {
			t.Fatal("row not stopped")
		}
		wantTaken(t, s.ReplicaHeartbeat(ctx, "hub-0", "b"), "b")
		if err := s.ClaimReplica(ctx, testReplica("hub-0", "c"), testStaleAfter); err != nil {
			t.Fatalf("claim of a stopped row: %v", err)
		}
		if r := replicaRow(t, s, "hub-0"); r.Stopped || r.Instance != "c" {
			t.Fatalf("row after claim: %+v", r)
		}
	})

	t.Run("the same node restarted takes its live row over", func(t *testing.T) {
		crashed := testReplica("hub-1", "before-crash")
		crashed.NodeID = "node-1"
		if err := s.ClaimReplica(ctx, crashed, testStaleAfter); err != nil {
			t.Fatal(err)
		}
		stranger := testReplica("hub-1", "stranger")
		stranger.NodeID = "node-2"
		wantTaken(t, s.ClaimReplica(ctx, stranger, testStaleAfter), "before-crash")
		restarted := testReplica("hub-1", "after-crash")
		restarted.NodeID = "node-1"
		if err := s.ClaimReplica(ctx, restarted, testStaleAfter); err != nil {
			t.Fatalf("claim by the same node: %v", err)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, c := range []struct {
			r     Replica
			stale time.Duration
		}{{testReplica("", "x"), time.Minute}, {testReplica("hub-9", ""), time.Minute}, {testReplica("hub-9", "x"), 0}} {
			if err := s.ClaimReplica(ctx, c.r, c.stale); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("ClaimReplica(%+v, %v) = %v, want ErrInvalidArgument", c.r, c.stale, err)
			}
		}
		if rs, _ := s.ListReplicas(ctx); len(rs) != 2 {
			t.Errorf("replicas after bad input: %+v", rs)
		}
	})
}

// Of many processes claiming one new name at once, exactly one wins.
func TestClaimReplicaRace(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = s.ClaimReplica(ctx, testReplica("hub-0", fmt.Sprintf("i%d", i)), testStaleAfter)
		})
	}
	close(start)
	wg.Wait()
	winner := ""
	for i, err := range errs {
		switch {
		case err == nil && winner != "":
			t.Fatalf("two winners: %s and i%d", winner, i)
		case err == nil:
			winner = fmt.Sprintf("i%d", i)
		case !errors.Is(err, ErrReplicaNameTaken):
			t.Fatalf("claim i%d: %v", i, err)
		}
	}
	if winner == "" {
		t.Fatal("no claim won")
	}
	if got := replicaRow(t, s, "hub-0").Instance; got != winner {
		t.Fatalf("row is %s's, the winner was %s", got, winner)
	}
}

func TestListReplicasCountsStreams(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	for _, name := range []string{"hub-b", "hub-a"} {
		if err := s.ClaimReplica(ctx, testReplica(name, name+"-1"), testStaleAfter); err != nil {
			t.Fatal(err)
		}
	}
	registerClusters(t, s, nil, "c1", "c2", "c3")
	for c, replica := range map[string]string{"c1": "hub-b", "c2": "hub-b", "c3": "hub-a"} {
		if err := s.MarkConnected(ctx, c, replica, "192.0.2.1:1234", nil, testNow); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.MarkDisconnected(ctx, "c3", "hub-a", testNow, testNow.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	rs, err := s.ListReplicas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, fmt.Sprintf("%s:%d", r.Name, r.Streams))
	}
	if want := "[hub-a:0 hub-b:2]"; fmt.Sprint(got) != want {
		t.Fatalf("replicas %v, want %s", got, want)
	}
}
