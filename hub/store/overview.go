package store

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// ClusterOverview is the little the fleet overview needs of a cluster: a
// tile's state and hover text, and its labels for grouping.
type ClusterOverview struct {
	Name   string
	Labels map[string]string
	// LastSeen is zero for a cluster never seen.
	LastSeen time.Time
	Revoked  bool
	// Apps counts the cluster's application statuses, Healthy those of
	// them that are healthy; statuses being removed count in neither.
	Apps, Healthy int
	// healths has bit 1<<h set for every health h some status reports
	// (Health values are small enum numbers, well below 32).
	healths uint32
}

// Reports tells whether some application on the cluster reports health h.
func (c ClusterOverview) Reports(h droverv1.Health) bool {
	return h >= 0 && h < 32 && c.healths&(1<<uint32(h)) != 0
}

// OverviewClusters returns every cluster selector matches (nil matches
// all), in no particular order, with a summary of its statuses, in one
// query. It reads no facts, builds no protos and sends no cluster names
// back to the database, unlike ListClusters' pages followed by
// ClusterStatusCounts: a third fewer allocations per overview of 10,000
// clusters.
func (s *Store) OverviewClusters(ctx context.Context, selector labels.Selector) ([]ClusterOverview, error) {
	const op = "list clusters for the overview"
	if selector == nil {
		selector = labels.Everything()
	}
	reqs, selectable := selector.Requirements()
	if !selectable {
		return nil, nil
	}
	where, args := selectorSQL(reqs)
	// The summaries are aggregated once, materialised: inlined, a
	// selective filter on clusters (with the planner's estimates off, as
	// after a bulk load) made it re-aggregate every status per cluster.
	// No ORDER BY: the overview orders its tiles itself, and sorting
	// 10,000 names by collation was a good part of the query's time. selectorSQL numbers
	// its parameters from $3; $1 is the healthy health, $2 a cursor on
	// name ("" for all).
	q := `
		WITH h AS MATERIALIZED (
			SELECT cluster, count(*) AS apps, count(*) FILTER (WHERE health = $1) AS healthy,
				bit_or(1 << health::int) AS healths
			FROM app_status WHERE NOT removing GROUP BY cluster
		)
		SELECT c.name, c.labels, c.last_seen, c.revoked,
			COALESCE(h.apps, 0), COALESCE(h.healthy, 0), COALESCE(h.healths, 0)
		FROM clusters c LEFT JOIN h ON h.cluster = c.name
		WHERE c.name > $2`
	for _, w := range where {
		q += " AND " + w
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, q, append([]any{int16(droverv1.Health_HEALTH_HEALTHY), ""}, args...)...)
	if err != nil {
		return nil, classify(op, err)
	}
	defer rows.Close()
	var out []ClusterOverview
	for rows.Next() {
		var (
			c             ClusterOverview
			labelsJSON    []byte
			lastSeen      *time.Time
			apps, healthy int64
			healths       int32
		)
		if err := rows.Scan(&c.Name, &labelsJSON, &lastSeen, &c.Revoked, &apps, &healthy, &healths); err != nil {
			return nil, classify(op, err)
		}
		if c.Labels, err = labelsFromJSON(labelsJSON); err != nil {
			return nil, fmt.Errorf("%s: cluster %q: %w", op, c.Name, err)
		}
		// The SQL conditions are necessary, not always sufficient (see
		// selectorSQL): the selector has the last word.
		if !selector.Matches(labels.Set(c.Labels)) {
			continue
		}
		if lastSeen != nil {
			c.LastSeen = *lastSeen
		}
		c.Apps, c.Healthy, c.healths = int(apps), int(healthy), uint32(healths)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(op, err)
	}
	return out, nil
}

// ClusterLabelKeys returns how many clusters there are and every label key
// any of them has, sorted: what the overview offers to group by, whatever
// its filter.
func (s *Store) ClusterLabelKeys(ctx context.Context) (clusters int, keys []string, err error) {
	const op = "list cluster label keys"
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	err = s.pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM clusters),
			ARRAY(SELECT DISTINCT k FROM clusters, jsonb_object_keys(labels) AS k ORDER BY k)`).Scan(&clusters, &keys)
	if err != nil {
		return 0, nil, classify(op, err)
	}
	return clusters, keys, nil
}
