package adminapi

import (
	"testing"
	"time"

	"github.com/drover-dev/drover/hub/replicas"
	"github.com/drover-dev/drover/hub/store"
)

// Every combination of heartbeat, gossip membership and stop has its
// state.
func TestReplicaState(t *testing.T) {
	fresh, stale := replicas.DefaultStaleAfter/4, replicas.DefaultStaleAfter*2
	for _, tc := range []struct {
		name    string
		age     time.Duration
		stopped bool
		member  bool
		want    string
	}{
		{"heartbeating, in the gossip", fresh, false, true, ReplicaAlive},
		{"heartbeating, cut off from the gossip", fresh, false, false, ReplicaSuspect},
		{"in the gossip, heartbeats not reaching the database", stale, false, true, ReplicaSuspect},
		{"silent and out of the gossip", stale, false, false, ReplicaGone},
		{"stopped", fresh, true, false, ReplicaGone},
		{"stopped, its name in the gossip again", fresh, true, true, ReplicaGone},
	} {
		v := store.ReplicaView{Replica: store.Replica{Name: "hub-a", Stopped: tc.stopped}, HeartbeatAge: tc.age}
		if got := ReplicaState(v, tc.member); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}
