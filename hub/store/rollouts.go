package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/drover-dev/drover/hub/rollout"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// GetRolloutState returns an application's rollout state; ErrNotFound when
// the application has none yet.
func (s *Store) GetRolloutState(ctx context.Context, app string) (rollout.State, error) {
	op := fmt.Sprintf("rollout of application %q", app)
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	var raw []byte
	if err := s.pool.QueryRow(ctx, `SELECT state FROM rollouts WHERE application = $1`, app).Scan(&raw); err != nil {
		return rollout.State{}, classify(op, err)
	}
	var st rollout.State
	if err := json.Unmarshal(raw, &st); err != nil {
		return rollout.State{}, fmt.Errorf("%s: decode state: %w", op, err)
	}
	return st, nil
}

// ListRolloutStates returns every application's rollout state, by
// application.
func (s *Store) ListRolloutStates(ctx context.Context) (map[string]rollout.State, error) {
	const op = "list rollouts"
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT application, state FROM rollouts`)
	if err != nil {
		return nil, classify(op, err)
	}
	defer rows.Close()
	out := map[string]rollout.State{}
	for rows.Next() {
		var (
			app string
			raw []byte
		)
		if err := rows.Scan(&app, &raw); err != nil {
			return nil, classify(op, err)
		}
		var st rollout.State
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, fmt.Errorf("%s: decode state of %q: %w", op, app, err)
		}
		out[app] = st
	}
	if err := rows.Err(); err != nil {
		return nil, classify(op, err)
	}
	return out, nil
}

// PutRolloutState stores an application's rollout state, replacing the
// one stored. ErrNotFound when the application does not exist (deleted
// meanwhile).
func (s *Store) PutRolloutState(ctx context.Context, app string, st rollout.State) error {
	op := fmt.Sprintf("store rollout of application %q", app)
	raw, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("%s: encode state: %w", op, err)
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	_, err = s.pool.Exec(ctx, `
		INSERT INTO rollouts (application, state, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (application) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at`,
		app, string(raw))
	if pgCode(err) == codeForeignKeyViolation {
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	if err != nil {
		return classify(op, err)
	}
	return nil
}

// DeleteRolloutState forgets an application's rollout; deleting none is
// not an error.
func (s *Store) DeleteRolloutState(ctx context.Context, app string) error {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	if _, err := s.pool.Exec(ctx, `DELETE FROM rollouts WHERE application = $1`, app); err != nil {
		return classify(fmt.Sprintf("delete rollout of application %q", app), err)
	}
	return nil
}

// RolloutStatus is one cluster's status of an application as a rollout
// judges it. ReceivedAt is when the hub wrote it, on the database's clock,
// never the agent's.
type RolloutStatus struct {
	Commit     string
	Sync       droverv1.SyncState
	Health     droverv1.Health
	Message    string
	ReceivedAt time.Time
}

// RolloutInputs is what the store knows about an application's clusters
// for one step of its rollout, read at one moment.
type RolloutInputs struct {
	// Now is the database's clock, the one ReceivedAt is on.
	Now time.Time
	// Statuses by cluster.
	Statuses map[string]RolloutStatus
	// LastSeen by cluster; absent for a cluster never seen.
	LastSeen map[string]time.Time
	// Nacks by cluster: its answer to the newest assignment it answered
	// was a NACK. Absent when that answer was an ACK.
	Nacks map[string]Nack
}

// Nack is a cluster's rejection of an assignment version.
type Nack struct {
	Version string
	Error   string
	// At is on the database's clock.
	At time.Time
}

// RolloutInputs reads the statuses of app and the last_seen and NACKs of
// clusters, with the database's clock.
func (s *Store) RolloutInputs(ctx context.Context, app string, clusters []string) (RolloutInputs, error) {
	op := fmt.Sprintf("rollout inputs of application %q", app)
	if clusters == nil {
		clusters = []string{}
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	in := RolloutInputs{Statuses: map[string]RolloutStatus{}, LastSeen: map[string]time.Time{}, Nacks: map[string]Nack{}}
	rows, err := s.pool.Query(ctx, `
		SELECT name, last_seen, nacked_version, nack_error, nacked_at, now()
		FROM clusters WHERE name = ANY($1::text[]) AND last_seen IS NOT NULL`, clusters)
	if err != nil {
		return in, classify(op, err)
	}
	for rows.Next() {
		var (
			name     string
			seen     time.Time
			n        Nack
			nackedAt *time.Time
		)
		if err := rows.Scan(&name, &seen, &n.Version, &n.Error, &nackedAt, &in.Now); err != nil {
			rows.Close()
			return in, classify(op, err)
		}
		in.LastSeen[name] = seen
		if nackedAt != nil && n.Version != "" {
			n.At = *nackedAt
			in.Nacks[name] = n
		}
	}
	if err := rows.Err(); err != nil {
		return in, classify(op, err)
	}
	if in.Now.IsZero() {
		if err := s.pool.QueryRow(ctx, `SELECT now()`).Scan(&in.Now); err != nil {
			return in, classify(op, err)
		}
	}
	rows, err = s.pool.Query(ctx, `
		SELECT cluster, commit, sync, health, message, updated_at
		FROM app_status WHERE application = $1 AND cluster = ANY($2::text[])`, app, clusters)
	if err != nil {
		return in, classify(op, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			cluster      string
			st           RolloutStatus
			sync, health int16
		)
		if err := rows.Scan(&cluster, &st.Commit, &sync, &health, &st.Message, &st.ReceivedAt); err != nil {
			return in, classify(op, err)
		}
		st.Sync, st.Health = droverv1.SyncState(sync), droverv1.Health(health)
		in.Statuses[cluster] = st
	}
	if err := rows.Err(); err != nil {
		return in, classify(op, err)
	}
	return in, nil
}
