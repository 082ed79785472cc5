package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover-dev/drover/hub/rollout"
	"github.com/drover-dev/drover/internal/retry"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Rollout is an application's rollout state as stored, with the version
// of that write. Versions come from one sequence: a later write of any
// rollout has a higher version.
type Rollout struct {
	State   rollout.State
	Version int64
}

// ErrStale: a rollout state was written since the version a write was
// based on; the write changed nothing, and the writer reads the state
// again.
var ErrStale = errors.New("written meanwhile")

// GetRollout returns an application's rollout; ErrNotFound when the
// application has none yet.
func (s *Store) GetRollout(ctx context.Context, app string) (Rollout, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	return getRollout(ctx, s.pool, app, false)
}

// GetRolloutState returns an application's rollout state; ErrNotFound when
// the application has none yet.
func (s *Store) GetRolloutState(ctx context.Context, app string) (rollout.State, error) {
	r, err := s.GetRollout(ctx, app)
	return r.State, err
}

type queryRower interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func getRollout(ctx context.Context, db queryRower, app string, forUpdate bool) (Rollout, error) {
	op := fmt.Sprintf("rollout of application %q", app)
	q := `SELECT state, version FROM rollouts WHERE application = $1`
	if forUpdate {
		q += ` FOR UPDATE`
	}
	var (
		raw []byte
		r   Rollout
	)
	if err := db.QueryRow(ctx, q, app).Scan(&raw, &r.Version); err != nil {
		return Rollout{}, classify(op, err)
	}
	if err := json.Unmarshal(raw, &r.State); err != nil {
		return Rollout{}, fmt.Errorf("%s: decode state: %w", op, err)
	}
	return r, nil
}

// ListRollouts returns every application's rollout, by application.
func (s *Store) ListRollouts(ctx context.Context) (map[string]Rollout, error) {
	const op = "list rollouts"
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT application, state, version FROM rollouts`)
	if err != nil {
		return nil, classify(op, err)
	}
	defer rows.Close()
	out := map[string]Rollout{}
	for rows.Next() {
		var (
			app string
			raw []byte
			r   Rollout
		)
		if err := rows.Scan(&app, &raw, &r.Version); err != nil {
			return nil, classify(op, err)
		}
		if err := json.Unmarshal(raw, &r.State); err != nil {
			return nil, fmt.Errorf("%s: decode state of %q: %w", op, app, err)
		}
		out[app] = r
	}
	if err := rows.Err(); err != nil {
		return nil, classify(op, err)
	}
	return out, nil
}

// ListRolloutStates returns every application's rollout state, by
// application.
func (s *Store) ListRolloutStates(ctx context.Context) (map[string]rollout.State, error) {
	rs, err := s.ListRollouts(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]rollout.State, len(rs))
	for app, r := range rs {
		out[app] = r.State
	}
	return out, nil
}

// PutRolloutState stores an application's rollout state, replacing the
// one stored, unconditionally: for tools and tests. The hub's rollout
// engine writes with CommitRollout, operators' commands with
// UpdateRollout. ErrNotFound when the application does not exist.
func (s *Store) PutRolloutState(ctx context.Context, app string, st rollout.State) error {
	return s.inTxNotify(ctx, Change{Kind: ChangeRollout, Name: app}, func(tx pgx.Tx) error {
		_, err := putRollout(ctx, tx, app, -1, st)
		return err
	})
}

// CommitRollout stores the rollout state of app that one step of its
// owner made from the stored state at version (0: none was stored), with
// the step's events, in one transaction and only under lease: the events
// are recorded exactly when the state is. It returns the new version.
// ErrLeaseLost when the lease lapsed or moved, ErrStale when the state
// was written since version (an operator's command), ErrNotFound when the
// application is gone; each changes nothing.
func (s *Store) CommitRollout(ctx context.Context, lease Lease, app string, version int64, st rollout.State, events []*droverv1.Event) (int64, error) {
	var next int64
	err := s.underLease(ctx, fmt.Sprintf("store rollout of application %q", app), lease, func(tx pgx.Tx) error {
		var err error
		if next, err = putRollout(ctx, tx, app, version, st); err != nil {
			return err
		}
		if err := insertEvents(ctx, tx, events); err != nil {
			return err
		}
		return s.notifyTx(ctx, tx, Change{Kind: ChangeRollout, Name: app})
	})
	if err == nil && len(events) > 0 {
		s.signal(ChangeEvents)
	}
	return next, err
}

// UpdateRollout applies change to the stored rollout of app (the zero
// state at version 0 when none is stored) and stores what it returns with
// its events, in one transaction holding the row: an operator's command,
// taken by whichever replica the operator reached. The owner's next
// CommitRollout, based on the version before, fails with ErrStale and
// reads this one. An error from change stores nothing and is returned as
// is.
func (s *Store) UpdateRollout(ctx context.Context, app string, change func(Rollout) (rollout.State, []*droverv1.Event, error)) (Rollout, error) {
	var out Rollout
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := getRollout(ctx, tx, app, true)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		next, events, err := change(cur)
		if err != nil {
			return err
		}
		v, err := putRollout(ctx, tx, app, cur.Version, next)
		if err != nil {
			return err
		}
		out = Rollout{State: next, Version: v}
		if err := insertEvents(ctx, tx, events); err != nil {
			return err
		}
		return s.notifyTx(ctx, tx, Change{Kind: ChangeRollout, Name: app})
	})
	if err == nil {
		s.signal(ChangeEvents)
	}
	return out, err
}

// putRollout writes app's rollout state when the stored one is at version
// (0: none stored; -1: whatever is stored) and returns the new version.
func putRollout(ctx context.Context, db queryRower, app string, version int64, st rollout.State) (int64, error) {
	op := fmt.Sprintf("store rollout of application %q", app)
	raw, err := json.Marshal(st)
	if err != nil {
		return 0, fmt.Errorf("%s: encode state: %w", op, err)
	}
	var next int64
	err = db.QueryRow(ctx, `
		INSERT INTO rollouts AS r (application, state, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (application) DO UPDATE
		SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at, version = nextval('rollout_versions')
		WHERE $3 < 0 OR r.version = $3
		RETURNING version`,
		app, string(raw), version).Scan(&next)
	switch {
	case pgCode(err) == codeForeignKeyViolation:
		return 0, fmt.Errorf("%s: %w", op, ErrNotFound)
	case errors.Is(err, pgx.ErrNoRows):
		return 0, fmt.Errorf("%s: %w", op, retry.Permanent(ErrStale))
	case err != nil:
		return 0, classify(op, err)
	}
	return next, nil
}

// DeleteRolloutState forgets an application's rollout; deleting none is
// not an error. For tools and tests; the engine deletes with
// DeleteRollout.
func (s *Store) DeleteRolloutState(ctx context.Context, app string) error {
	return s.inTxNotify(ctx, Change{Kind: ChangeRollout, Name: app}, func(tx pgx.Tx) error {
		return deleteRollout(ctx, tx, app)
	})
}

// DeleteRollout forgets an application's rollout under lease (nothing
// when the lease is lost, with ErrLeaseLost).
func (s *Store) DeleteRollout(ctx context.Context, lease Lease, app string) error {
	return s.underLease(ctx, fmt.Sprintf("delete rollout of application %q", app), lease, func(tx pgx.Tx) error {
		if err := deleteRollout(ctx, tx, app); err != nil {
			return err
		}
		return s.notifyTx(ctx, tx, Change{Kind: ChangeRollout, Name: app})
	})
}

func deleteRollout(ctx context.Context, db execer, app string) error {
	if _, err := db.Exec(ctx, `DELETE FROM rollouts WHERE application = $1`, app); err != nil {
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
