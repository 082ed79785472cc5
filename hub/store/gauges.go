package store

import (
	"context"
	"time"
)

// FleetGauges is the fleet as a whole, as the hub's /metrics reports it.
type FleetGauges struct {
	// Clusters counts registered clusters; Revoked those whose identity
	// was revoked; Online the others seen within the offline timeout (by
	// the database's clock, as rollouts judge it).
	Clusters, Online, Revoked int
	// Statuses counts, per application, its statuses by health and sync.
	Statuses map[string]*StatusCounts
	// Rollouts maps each application with a rollout to its phase.
	Rollouts map[string]string
}

// FleetGauges reads FleetGauges in three small aggregate queries; nothing
// per cluster leaves the database.
func (s *Store) FleetGauges(ctx context.Context, offlineTimeout time.Duration) (FleetGauges, error) {
	g := FleetGauges{Rollouts: map[string]string{}}
	qctx, cancel := s.queryCtx(ctx)
	defer cancel()
	if err := s.pool.QueryRow(qctx, `
		SELECT count(*),
		       count(*) FILTER (WHERE NOT revoked AND last_seen > now() - make_interval(secs => $1)),
		       count(*) FILTER (WHERE revoked)
		FROM clusters`, offlineTimeout.Seconds()).Scan(&g.Clusters, &g.Online, &g.Revoked); err != nil {
		return g, classify("count clusters", err)
	}
	rows, err := s.pool.Query(qctx, `SELECT application, state->>'phase' FROM rollouts`)
	if err != nil {
		return g, classify("list rollout phases", err)
	}
	for rows.Next() {
		var app, phase string
		if err := rows.Scan(&app, &phase); err != nil {
			return g, classify("list rollout phases", err)
		}
		g.Rollouts[app] = phase
	}
	if err := rows.Err(); err != nil {
		return g, classify("list rollout phases", err)
	}
	if g.Statuses, err = s.ApplicationStatusCounts(ctx); err != nil {
		return g, err
	}
	return g, nil
}
