package store

import (
	"context"
	"testing"
	"time"
)

// TestRolloutInputsNacks reports a cluster's NACK with its version until
// the cluster ACKs again.
func TestRolloutInputsNacks(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	registerClusters(t, s, nil, "c1", "c2")
	if err := s.TouchLastSeen(ctx, []string{"c1", "c2"}, testNow); err != nil {
		t.Fatalf("TouchLastSeen: %v", err)
	}
	inputs := func() RolloutInputs {
		t.Helper()
		in, err := s.RolloutInputs(ctx, "web", []string{"c1", "c2"})
		if err != nil {
			t.Fatalf("RolloutInputs: %v", err)
		}
		return in
	}

	if err := s.RecordAck(ctx, "c1", "v1", "", testNow); err != nil {
		t.Fatalf("RecordAck: %v", err)
	}
	if in := inputs(); len(in.Nacks) != 0 {
		t.Fatalf("Nacks after an ACK = %v, want none", in.Nacks)
	}

	before := inputs().Now
	if err := s.RecordAck(ctx, "c1", "v2", "render web: bad yaml", testNow.Add(time.Second)); err != nil {
		t.Fatalf("RecordAck (nack): %v", err)
	}
	in := inputs()
	n, ok := in.Nacks["c1"]
	if !ok || n.Version != "v2" || n.Error != "render web: bad yaml" || n.At.Before(before) || n.At.After(in.Now) {
		t.Fatalf("Nacks = %v, want c1's NACK of v2 between %v and %v (the database's clock)", in.Nacks, before, in.Now)
	}
	if _, ok := in.Nacks["c2"]; ok {
		t.Fatalf("Nacks = %v, want none for c2", in.Nacks)
	}
	if c, _ := s.GetCluster(ctx, "c1"); c.GetAckedVersion() != "v1" {
		t.Fatalf("acked version after a NACK = %q, want v1 kept", c.GetAckedVersion())
	}

	if err := s.RecordAck(ctx, "c1", "v3", "", testNow.Add(2*time.Second)); err != nil {
		t.Fatalf("RecordAck: %v", err)
	}
	if in := inputs(); len(in.Nacks) != 0 {
		t.Fatalf("Nacks after a later ACK = %v, want none", in.Nacks)
	}
}
