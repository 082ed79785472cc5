package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Replica is one hub replica's row: who runs under a replica name, where,
// and whether it still heartbeats. Times are the database's clock.
type Replica struct {
	Name string
	// Instance is a random id of the running process.
	Instance string
	// NodeID is a stable id kept in the replica's data directory, or "":
	// a claim with the same NodeID is this replica started again after a
	// crash, and takes the row over at once.
	NodeID                        string
	AgentAddr, HTTPAddr, PeerAddr string
	Version                       string
	StartedAt, HeartbeatAt        time.Time
	Stopped                       bool
	// Streams is the number of clusters whose agent stream this replica
	// holds (clusters.hub_replica); filled by ListReplicas.
	Streams int
}

// ErrReplicaNameTaken: a replica name is held by another running process.
// The concrete error is a *ReplicaNameTakenError naming it.
var ErrReplicaNameTaken = errors.New("replica name taken")

// ReplicaNameTakenError says which process holds a replica name: another
// instance whose row is not stopped, with a heartbeat newer than the
// staleness bound when a claim was refused, or any other instance when a
// heartbeat found the row no longer this process's.
type ReplicaNameTakenError struct {
	// Holder is the row as it was read after the refusal.
	Holder Replica
	// Age is how long ago Holder last heartbeat, by the database's clock.
	Age time.Duration
}

func (e *ReplicaNameTakenError) Error() string {
	h := e.Holder
	state := fmt.Sprintf("last heartbeat %s ago", e.Age.Round(time.Millisecond))
	if h.Stopped {
		state = "stopped"
	}
	return fmt.Sprintf("replica name %q is held by another hub process (instance %s, agent address %q, HTTP address %q, gossip address %q, %s)",
		h.Name, h.Instance, h.AgentAddr, h.HTTPAddr, h.PeerAddr, state)
}

// Is makes errors.Is(err, ErrReplicaNameTaken) hold.
func (e *ReplicaNameTakenError) Is(target error) bool { return target == ErrReplicaNameTaken }

// ClaimReplica records that r.Instance runs as replica r.Name, starting
// now (the database's clock; r's times are ignored). It takes the row over
// when the row is r.Instance's or r.NodeID's (the same replica restarted),
// stopped, or has not heartbeat for staleAfter; otherwise it changes
// nothing and returns a *ReplicaNameTakenError. It is one statement, so of
// two processes claiming one name at once exactly one wins.
func (s *Store) ClaimReplica(ctx context.Context, r Replica, staleAfter time.Duration) error {
	if r.Name == "" || r.Instance == "" {
		return invalid("replica", "name and instance are required")
	}
	if staleAfter <= 0 {
		return invalid("stale_after", "must be positive, got %v", staleAfter)
	}
	op := fmt.Sprintf("claim replica name %q", r.Name)
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	// ON CONFLICT DO UPDATE checks its WHERE against the latest committed
	// row, waiting for a concurrent claim's transaction, so a second claim
	// sees the first's instance and fresh heartbeat and updates nothing.
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO hub_replicas AS r (name, instance, node_id, agent_addr, http_addr, peer_addr, version, started_at, heartbeat_at, stopped_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, now(), now(), NULL)
		ON CONFLICT (name) DO UPDATE
		SET instance = excluded.instance, node_id = excluded.node_id,
		    agent_addr = excluded.agent_addr, http_addr = excluded.http_addr,
		    peer_addr = excluded.peer_addr, version = excluded.version,
		    started_at = now(), heartbeat_at = now(), stopped_at = NULL
		WHERE r.instance = excluded.instance
		   OR (r.node_id <> '' AND r.node_id = excluded.node_id)
		   OR r.stopped_at IS NOT NULL
		   OR r.heartbeat_at < now() - $8::bigint * interval '1 microsecond'`,
		r.Name, r.Instance, cleanText(r.NodeID, maxShortTextBytes),
		cleanText(r.AgentAddr, maxShortTextBytes), cleanText(r.HTTPAddr, maxShortTextBytes),
		cleanText(r.PeerAddr, maxShortTextBytes), cleanText(r.Version, maxShortTextBytes),
		staleAfter.Microseconds())
	if err != nil {
		return classify(op, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	return s.nameTaken(ctx, op, r.Name)
}

// ReplicaHeartbeat records that instance still runs as replica name. When
// the row has become another instance's (this process was taken for dead
// and its name claimed), it returns a *ReplicaNameTakenError: this process
// lost its name.
func (s *Store) ReplicaHeartbeat(ctx context.Context, name, instance string) error {
	op := fmt.Sprintf("heartbeat of replica %q", name)
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	tag, err := s.pool.Exec(ctx, `
		UPDATE hub_replicas SET heartbeat_at = now()
		WHERE name = $1 AND instance = $2 AND stopped_at IS NULL`, name, instance)
	if err != nil {
		return classify(op, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	return s.nameTaken(ctx, op, name)
}

// StopReplica records that instance stopped running as replica name, so
// the name is free at once. A row that is no longer instance's is left
// alone (ErrNotFound).
func (s *Store) StopReplica(ctx context.Context, name, instance string) error {
	return s.execOne(ctx, fmt.Sprintf("stop replica %q", name), `
		UPDATE hub_replicas SET stopped_at = now()
		WHERE name = $1 AND instance = $2 AND stopped_at IS NULL`, name, instance)
}

// ListReplicas returns every replica row, stopped ones too, sorted by name,
// each with the number of agent streams it holds.
func (s *Store) ListReplicas(ctx context.Context) ([]Replica, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `
		SELECT `+replicaColumns+`,
		       (SELECT count(*) FROM clusters c WHERE c.hub_replica = r.name)
		FROM hub_replicas r ORDER BY r.name`)
	if err != nil {
		return nil, classify("list replicas", err)
	}
	defer rows.Close()
	var out []Replica
	for rows.Next() {
		var streams int64
		r, err := scanReplica(rows, &streams)
		if err != nil {
			return nil, classify("list replicas", err)
		}
		r.Streams = int(streams)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, classify("list replicas", err)
	}
	return out, nil
}

const replicaColumns = `r.name, r.instance, r.node_id, r.agent_addr, r.http_addr, r.peer_addr, r.version,
	r.started_at, r.heartbeat_at, r.stopped_at IS NOT NULL`

func scanReplica(row pgx.Row, after ...any) (Replica, error) {
	var r Replica
	dest := append([]any{&r.Name, &r.Instance, &r.NodeID, &r.AgentAddr, &r.HTTPAddr, &r.PeerAddr, &r.Version,
		&r.StartedAt, &r.HeartbeatAt, &r.Stopped}, after...)
	err := row.Scan(dest...)
	return r, err
}

// nameTaken builds the error for a claim or heartbeat that found the row
// of name held by another instance (or gone: ErrNotFound).
func (s *Store) nameTaken(ctx context.Context, op, name string) error {
	var ageMicros int64
	holder, err := scanReplica(s.pool.QueryRow(ctx, `
		SELECT `+replicaColumns+`, (extract(epoch FROM now() - r.heartbeat_at) * 1000000)::bigint
		FROM hub_replicas r WHERE r.name = $1`, name), &ageMicros)
	if err != nil {
		return classify(op, err)
	}
	return fmt.Errorf("%s: %w", op, &ReplicaNameTakenError{Holder: holder, Age: time.Duration(ageMicros) * time.Microsecond})
}
