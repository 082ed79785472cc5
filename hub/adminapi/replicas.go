package adminapi

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/hub/replicas"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// ReplicaStore is what ListReplicas reads.
type ReplicaStore interface {
	ReplicaViews(ctx context.Context, name string) ([]store.ReplicaView, error)
	ReplicaClusters(ctx context.Context, replica string) ([]string, error)
}

// Replica states, as ListReplicas reports them.
const (
	ReplicaAlive   = "alive"
	ReplicaSuspect = "suspect"
	ReplicaGone    = "gone"
)

// ReplicaState decides a replica's state from its row and whether the
// answering replica sees it in the gossip. A heartbeat is fresh while
// younger than the bound after which another process may take the name
// over (replicas.DefaultStaleAfter, which every hub uses).
func ReplicaState(v store.ReplicaView, member bool) string {
	fresh := !v.Stopped && v.HeartbeatAge < replicas.DefaultStaleAfter
	switch {
	case v.Stopped:
		// A stopped replica left the gossip too; a member under its name
		// would be a new process that has not claimed the row yet.
		return ReplicaGone
	case fresh && member:
		return ReplicaAlive
	case fresh || member:
		return ReplicaSuspect
	}
	return ReplicaGone
}

// ListReplicas lists the hub replicas from the database; this replica's
// gossip view refines which are alive.
func (s *Server) ListReplicas(ctx context.Context, req *droverv1.ListReplicasRequest) (*droverv1.ListReplicasResponse, error) {
	const op = "list replicas"
	views, err := s.store.ReplicaViews(ctx, req.GetName())
	if err != nil {
		return nil, s.toStatus(op, err)
	}
	if req.GetName() != "" && len(views) == 0 {
		return nil, status.Errorf(codes.NotFound, "replica %q: not found", req.GetName())
	}
	members := map[string]bool{}
	for _, m := range s.hub.Members() {
		members[m] = true
	}
	resp := &droverv1.ListReplicasResponse{AnsweredBy: s.hub.Replica(), Replicas: make([]*droverv1.Replica, 0, len(views))}
	for _, v := range views {
		r := &droverv1.Replica{
			Name: v.Name, AgentAddr: v.AgentAddr, HttpAddr: v.HTTPAddr, PeerAddr: v.PeerAddr, Version: v.Version,
			StartedAt: stamp(v.StartedAt), HeartbeatAt: stamp(v.HeartbeatAt),
			State: ReplicaState(v, members[v.Name]), Streams: int32(v.Streams), Jobs: v.Jobs,
		}
		if req.GetName() != "" {
			if r.Clusters, err = s.store.ReplicaClusters(ctx, v.Name); err != nil {
				return nil, s.toStatus(op, err)
			}
		}
		resp.Replicas = append(resp.Replicas, r)
	}
	return resp, nil
}

func stamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
