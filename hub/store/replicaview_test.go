package store

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// ReplicaViews counts only the leases a replica's running process holds:
// not lapsed ones, and not those its earlier process left behind when it
// was restarted under the same name. ReplicaClusters lists its streams.
func TestReplicaViews(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	for _, name := range []string{"hub-a", "hub-b"} {
		if err := s.ClaimReplica(ctx, testReplica(name, name+"-1"), testStaleAfter); err != nil {
			t.Fatal(err)
		}
	}
	a1, b1 := Holder{Replica: "hub-a", Instance: "hub-a-1"}, Holder{Replica: "hub-b", Instance: "hub-b-1"}
	if _, err := s.AcquireLeases(ctx, a1, []string{"retention", "git/r1"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcquireLeases(ctx, b1, []string{"rollout/web", "rollout/old"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLeases(ctx, b1, []string{"rollout/old"}); err != nil {
		t.Fatal(err)
	}
	registerClusters(t, s, nil, "c1", "c2")
	for _, c := range []string{"c2", "c1"} {
		if err := s.MarkConnected(ctx, c, "hub-b", "192.0.2.1:1234", nil, testNow); err != nil {
			t.Fatal(err)
		}
	}

	show := func(vs []ReplicaView) string {
		var out []string
		for _, v := range vs {
			out = append(out, fmt.Sprintf("%s streams=%d jobs=%v fresh=%t", v.Name, v.Streams, v.Jobs, v.HeartbeatAge < testStaleAfter))
		}
		return fmt.Sprint(out)
	}
	vs, err := s.ReplicaViews(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := show(vs), "[hub-a streams=0 jobs=[git/r1 retention] fresh=true hub-b streams=2 jobs=[rollout/web] fresh=true]"; got != want {
		t.Errorf("ReplicaViews:\n got %s\nwant %s", got, want)
	}

	// hub-a restarted as a new process: the old process's leases are not
	// the new one's until it takes them over.
	if err := s.StopReplica(ctx, "hub-a", "hub-a-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.ClaimReplica(ctx, testReplica("hub-a", "hub-a-2"), testStaleAfter); err != nil {
		t.Fatal(err)
	}
	vs, err = s.ReplicaViews(ctx, "hub-a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := show(vs), "[hub-a streams=0 jobs=[] fresh=true]"; got != want {
		t.Errorf("ReplicaViews(hub-a) after its restart:\n got %s\nwant %s", got, want)
	}
	if vs, err := s.ReplicaViews(ctx, "hub-z"); err != nil || len(vs) != 0 {
		t.Errorf("ReplicaViews(hub-z) = %v, %v; want none", vs, err)
	}

	cls, err := s.ReplicaClusters(ctx, "hub-b")
	if err != nil || !slices.Equal(cls, []string{"c1", "c2"}) {
		t.Errorf("ReplicaClusters(hub-b) = %v, %v; want [c1 c2]", cls, err)
	}
	if cls, err := s.ReplicaClusters(ctx, "hub-a"); err != nil || len(cls) != 0 {
		t.Errorf("ReplicaClusters(hub-a) = %v, %v; want none", cls, err)
	}
}
