package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReplicaView is a replica's row as operators see it: the row, how long
// ago it last heartbeat, and the background jobs it holds.
type ReplicaView struct {
	Replica
	// HeartbeatAge is how long ago the replica last heartbeat, measured
	// on the database's clock, so replicas whose clocks differ agree on
	// it.
	HeartbeatAge time.Duration
	// Jobs are the background jobs whose lease the replica's running
	// process holds and has not let lapse, sorted. A lease left by an
	// earlier process under the same name is not counted: that process
	// no longer runs the job.
	Jobs []string
}

// ReplicaViews returns every replica row, stopped ones too, sorted by
// name, with its stream count, heartbeat age and held jobs; name, when not
// empty, returns that replica only (none when there is no such row).
func (s *Store) ReplicaViews(ctx context.Context, name string) ([]ReplicaView, error) {
	const op = "list replicas with their jobs"
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `
		SELECT `+replicaColumns+`,
		       (SELECT count(*) FROM clusters c WHERE c.hub_replica = r.name),
		       (extract(epoch FROM now() - r.heartbeat_at) * 1000000)::bigint,
		       array(SELECT l.job FROM job_leases l
		             WHERE l.replica = r.name AND l.instance = r.instance AND l.expires_at > now()
		             ORDER BY l.job)
		FROM hub_replicas r
		WHERE $1 = '' OR r.name = $1
		ORDER BY r.name`, name)
	if err != nil {
		return nil, classify(op, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ReplicaView, error) {
		var streams, ageMicros int64
		var jobs []string
		r, err := scanReplica(row, &streams, &ageMicros, &jobs)
		r.Streams = int(streams)
		return ReplicaView{Replica: r, HeartbeatAge: time.Duration(ageMicros) * time.Microsecond, Jobs: jobs}, err
	})
	if err != nil {
		return nil, classify(op, err)
	}
	return out, nil
}

// ReplicaClusters returns the names of the clusters whose agent stream
// replica holds (clusters.hub_replica), sorted.
func (s *Store) ReplicaClusters(ctx context.Context, replica string) ([]string, error) {
	op := fmt.Sprintf("list the clusters held by replica %q", replica)
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT name FROM clusters WHERE hub_replica = $1 ORDER BY name`, replica)
	if err != nil {
		return nil, classify(op, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, classify(op, err)
	}
	return names, nil
}
