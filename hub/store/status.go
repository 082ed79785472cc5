package store

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Bounds on status text from agents.
const (
	maxStatusMessageBytes   = 8192
	maxResourceMessageBytes = 4096
)

// statusKey identifies one status row.
type statusKey struct{ cluster, application string }

// statusColumns are a batch of statuses as column arrays, one element per
// row, sorted by (cluster, application).
type statusColumns struct {
	cluster, application, commit, message []string
	sync, health                          []int16
	// protojson arrays of ResourceStatus; pgx sends strings to jsonb as is.
	resources  []string
	observedAt []*time.Time
}

func (c *statusColumns) len() int { return len(c.cluster) }

// newStatusColumns dedupes sts (a later status of the same cluster and
// application wins), drops statuses without a cluster or application
// (there is no row to put them in), cleans agent text and encodes the
// resources.
func newStatusColumns(sts []*droverv1.ApplicationStatus) (*statusColumns, []error, error) {
	latest := make(map[statusKey]*droverv1.ApplicationStatus, len(sts))
	var dropped []error
	for i, st := range sts {
		switch {
		case st == nil:
			continue
		case st.GetCluster() == "" || len(st.GetCluster()) > maxShortTextBytes:
			dropped = append(dropped, invalid(fmt.Sprintf("statuses[%d].cluster", i), "must be 1 to %d bytes", maxShortTextBytes))
			continue
		case st.GetApplication() == "" || len(st.GetApplication()) > maxShortTextBytes:
			dropped = append(dropped, invalid(fmt.Sprintf("statuses[%d].application", i), "must be 1 to %d bytes", maxShortTextBytes))
			continue
		}
		// Keyed by the cleaned names: two raw names that clean to the
		// same row must dedupe here, or the upsert would touch a row twice.
		latest[statusKey{cleanText(st.GetCluster(), 0), cleanText(st.GetApplication(), 0)}] = st
	}
	keys := make([]statusKey, 0, len(latest))
	for k := range latest {
		keys = append(keys, k)
	}
	// Rows are written in key order, so concurrent batches that overlap
	// lock rows in the same order and cannot deadlock.
	slices.SortFunc(keys, func(a, b statusKey) int {
		return cmp.Or(cmp.Compare(a.cluster, b.cluster), cmp.Compare(a.application, b.application))
	})
	n := len(keys)
	c := &statusColumns{
		cluster: make([]string, n), application: make([]string, n), commit: make([]string, n),
		message: make([]string, n), sync: make([]int16, n), health: make([]int16, n),
		resources: make([]string, n), observedAt: make([]*time.Time, n),
	}
	var buf bytes.Buffer
	for i, k := range keys {
		st := latest[k]
		res, err := resourcesJSON(&buf, st.GetResources())
		if err != nil {
			return nil, nil, fmt.Errorf("encode resources of %s on %s: %w", k.application, k.cluster, err)
		}
		c.cluster[i], c.application[i] = k.cluster, k.application
		c.commit[i] = cleanText(st.GetCommit(), maxShortTextBytes)
		c.message[i] = cleanText(st.GetMessage(), maxStatusMessageBytes)
		c.sync[i] = int16(st.GetSync())
		c.health[i] = int16(st.GetHealth())
		c.resources[i] = res
		c.observedAt[i] = timeOpt(st.GetObservedAt())
	}
	return c, dropped, nil
}

// resourcesJSON encodes resources as one JSON array of protojson objects,
// using buf as scratch space.
func resourcesJSON(buf *bytes.Buffer, resources []*droverv1.ResourceStatus) (string, error) {
	buf.Reset()
	buf.WriteByte('[')
	var scratch []byte
	for i, r := range resources {
		if i > 0 {
			buf.WriteByte(',')
		}
		var err error
		scratch, err = marshalJSON.MarshalAppend(scratch[:0], cleanResource(r))
		if err != nil {
			return "", err
		}
		buf.Write(scratch)
	}
	buf.WriteByte(']')
	return buf.String(), nil
}

// cleanResource returns r with storable, bounded text, copying only when
// needed.
func cleanResource(r *droverv1.ResourceStatus) *droverv1.ResourceStatus {
	if r == nil {
		return &droverv1.ResourceStatus{}
	}
	dirty := len(r.GetMessage()) > maxResourceMessageBytes
	for _, s := range []string{r.GetGroup(), r.GetVersion(), r.GetKind(), r.GetNamespace(), r.GetName(), r.GetMessage()} {
		dirty = dirty || needsCleaning(s)
	}
	if !dirty {
		return r
	}
	c := proto.Clone(r).(*droverv1.ResourceStatus)
	c.Group, c.Version, c.Kind = cleanText(c.Group, 0), cleanText(c.Version, 0), cleanText(c.Kind, 0)
	c.Namespace, c.Name = cleanText(c.Namespace, 0), cleanText(c.Name, 0)
	c.Message = cleanText(c.Message, maxResourceMessageBytes)
	return c
}

// WriteStatuses upserts a batch of statuses in one statement: one row per
// (cluster, application), a later status in sts winning over an earlier
// one. Statuses of clusters that do not exist (deleted meanwhile) are
// skipped, as are statuses without a cluster or application name (logged).
// The row's updated_at is the database's now.
func (s *Store) WriteStatuses(ctx context.Context, sts []*droverv1.ApplicationStatus) error {
	cols, dropped, err := newStatusColumns(sts)
	if err != nil {
		return fmt.Errorf("write statuses: %w", err)
	}
	for _, d := range dropped {
		s.log.Warn("status dropped", "err", d)
	}
	if cols.len() == 0 {
		return nil
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	if err := writeStatusColumns(ctx, s.pool, cols); err != nil {
		return fmt.Errorf("write %d statuses: %w", cols.len(), err)
	}
	s.signal(ChangeStatuses)
	return nil
}

// writeStatusColumns sends the whole batch as arrays, one round trip: the
// server unnests them into rows. Measured against COPY into a temporary
// staging table plus INSERT ... SELECT (BenchmarkWriteStatuses/copy), it is
// as fast within the noise, and needs no per-connection temporary table,
// no transaction and no extra round trips, so it also works behind a
// transaction-pooling proxy.
func writeStatusColumns(ctx context.Context, db execer, c *statusColumns) error {
	_, err := db.Exec(ctx, `
		INSERT INTO app_status AS a
			(cluster, application, commit, sync, health, message, resources, observed_at, updated_at)
		SELECT u.cluster, u.application, u.commit, u.sync, u.health, u.message, u.resources, u.observed_at, now()
		FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::int2[], $6::text[], $7::jsonb[], $8::timestamptz[])
			AS u(cluster, application, commit, sync, health, message, resources, observed_at)
		WHERE EXISTS (SELECT 1 FROM clusters c WHERE c.name = u.cluster)
		ORDER BY u.cluster, u.application
		ON CONFLICT (cluster, application) DO UPDATE SET
			commit = EXCLUDED.commit, sync = EXCLUDED.sync, health = EXCLUDED.health,
			message = EXCLUDED.message, resources = EXCLUDED.resources,
			observed_at = EXCLUDED.observed_at, updated_at = EXCLUDED.updated_at`,
		c.cluster, c.application, c.commit, c.sync, c.health, c.message, c.resources, c.observedAt)
	return err
}

// DeleteStatuses deletes the statuses of cluster whose application is not
// in keep: after a full resync, what the agent no longer reports.
func (s *Store) DeleteStatuses(ctx context.Context, cluster string, keep []string) error {
	return s.PruneStatuses(ctx, map[string][]string{cluster: keep})
}

// PruneStatuses is DeleteStatuses for many clusters (cluster → the
// applications to keep) in one round trip.
func (s *Store) PruneStatuses(ctx context.Context, keep map[string][]string) error {
	_, err := s.perCluster(ctx, fmt.Sprintf("delete the statuses %d clusters no longer report", len(keep)),
		`DELETE FROM app_status WHERE cluster = $1 AND NOT (application = ANY($2::text[]))`, keep)
	return err
}

// RemoveStatuses deletes, per cluster, the statuses of the applications
// listed: those its agent confirmed it removed. The caller has checked
// that none of them is assigned to the cluster again.
func (s *Store) RemoveStatuses(ctx context.Context, removed map[string][]string) error {
	_, err := s.perCluster(ctx, fmt.Sprintf("delete the statuses of applications removed from %d clusters", len(removed)),
		`DELETE FROM app_status WHERE cluster = $1 AND application = ANY($2::text[])`, removed)
	return err
}

// MarkRemoving makes the removing mark of each given cluster's statuses
// follow its assignment (cluster → the applications assigned to it): a
// status of an application not assigned is removing, one of an assigned
// application is not. Rows already right are not written. It returns how
// many rows changed.
func (s *Store) MarkRemoving(ctx context.Context, assigned map[string][]string) (int64, error) {
	return s.perCluster(ctx, fmt.Sprintf("mark the statuses of applications that left %d clusters", len(assigned)), `
		UPDATE app_status SET removing = NOT (application = ANY($2::text[]))
		WHERE cluster = $1 AND removing IS DISTINCT FROM NOT (application = ANY($2::text[]))`, assigned)
}

// perCluster runs sql ($1 a cluster, $2 its applications) for every
// cluster of apps in one round trip, and returns how many rows it
// changed. Clusters go in name order, so concurrent calls lock rows in
// the same order and cannot deadlock.
func (s *Store) perCluster(ctx context.Context, op, sql string, apps map[string][]string) (int64, error) {
	if len(apps) == 0 {
		return 0, nil
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	clusters := slices.Sorted(maps.Keys(apps))
	b := &pgx.Batch{}
	for _, cluster := range clusters {
		names := apps[cluster]
		if names == nil {
			names = []string{}
		}
		b.Queue(sql, cluster, names)
	}
	br := s.pool.SendBatch(ctx, b)
	var n int64
	for range clusters {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return n, classify(op, err)
		}
		n += tag.RowsAffected()
	}
	if err := br.Close(); err != nil {
		return n, classify(op, err)
	}
	if n > 0 {
		s.signal(ChangeStatuses)
	}
	return n, nil
}

// Removing reports whether some status of the cluster is removing.
func (s *Store) Removing(ctx context.Context, cluster string) (bool, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	var found bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM app_status WHERE cluster = $1 AND removing)`, cluster).Scan(&found); err != nil {
		return false, classify(fmt.Sprintf("look for removing statuses of cluster %q", cluster), err)
	}
	return found, nil
}

const statusSelect = `SELECT cluster, application, commit, sync, health, message, resources, observed_at, removing FROM app_status`

// GetStatuses returns the statuses of one cluster, by application.
func (s *Store) GetStatuses(ctx context.Context, cluster string) ([]*droverv1.ApplicationStatus, error) {
	return s.queryStatuses(ctx, fmt.Sprintf("statuses of cluster %q", cluster),
		statusSelect+` WHERE cluster = $1 ORDER BY application`, cluster)
}

// StatusesForApplication returns the statuses of one application on every
// cluster, by cluster.
func (s *Store) StatusesForApplication(ctx context.Context, app string) ([]*droverv1.ApplicationStatus, error) {
	return s.queryStatuses(ctx, fmt.Sprintf("statuses of application %q", app),
		statusSelect+` WHERE application = $1 ORDER BY cluster`, app)
}

func (s *Store) queryStatuses(ctx context.Context, op, sql string, args ...any) ([]*droverv1.ApplicationStatus, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, classify(op, err)
	}
	var out []*droverv1.ApplicationStatus
	for rows.Next() {
		st, err := scanStatus(rows)
		if err != nil {
			return nil, classify(op, err)
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(op, err)
	}
	return out, nil
}

func scanStatus(row pgx.Row) (*droverv1.ApplicationStatus, error) {
	var (
		st           droverv1.ApplicationStatus
		sync, health int16
		resources    []byte
		observed     *time.Time
	)
	if err := row.Scan(&st.Cluster, &st.Application, &st.Commit, &sync, &health, &st.Message, &resources, &observed, &st.Removing); err != nil {
		return nil, err
	}
	st.Sync, st.Health = droverv1.SyncState(sync), droverv1.Health(health)
	st.ObservedAt = tsOpt(observed)
	var raw []json.RawMessage
	if err := json.Unmarshal(resources, &raw); err != nil {
		return nil, fmt.Errorf("status of %s on %s: decode resources: %w", st.Application, st.Cluster, err)
	}
	st.Resources = make([]*droverv1.ResourceStatus, len(raw))
	for i, r := range raw {
		st.Resources[i] = &droverv1.ResourceStatus{}
		if err := fromJSON(r, st.Resources[i]); err != nil {
			return nil, fmt.Errorf("status of %s on %s: decode resource %d: %w", st.Application, st.Cluster, i, err)
		}
	}
	return &st, nil
}

// StatusCounts counts statuses by health and by sync state.
type StatusCounts struct {
	Health map[droverv1.Health]int32
	Sync   map[droverv1.SyncState]int32
}

func (c *StatusCounts) add(health droverv1.Health, sync droverv1.SyncState, n int32) {
	c.Health[health] += n
	c.Sync[sync] += n
}

func newStatusCounts() *StatusCounts {
	return &StatusCounts{Health: map[droverv1.Health]int32{}, Sync: map[droverv1.SyncState]int32{}}
}

// ApplicationStatusCounts counts, per application, its statuses across the
// fleet by health and sync state; removing statuses count nowhere. Callers
// that count only placed clusters use StatusesForApplication instead.
func (s *Store) ApplicationStatusCounts(ctx context.Context) (map[string]*StatusCounts, error) {
	return s.statusCounts(ctx, "count statuses by application", `
		SELECT application, health, sync, count(*) FROM app_status WHERE NOT removing GROUP BY 1, 2, 3`)
}

// ClusterStatusCounts counts, per cluster in names, its statuses by health
// and sync state; removing statuses count nowhere. Clusters without
// statuses are absent.
func (s *Store) ClusterStatusCounts(ctx context.Context, names []string) (map[string]*StatusCounts, error) {
	if len(names) == 0 {
		return map[string]*StatusCounts{}, nil
	}
	return s.statusCounts(ctx, fmt.Sprintf("count statuses of %d clusters", len(names)), `
		SELECT cluster, health, sync, count(*) FROM app_status
		WHERE cluster = ANY($1::text[]) AND NOT removing GROUP BY 1, 2, 3`, names)
}

func (s *Store) statusCounts(ctx context.Context, op, sql string, args ...any) (map[string]*StatusCounts, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, classify(op, err)
	}
	out := map[string]*StatusCounts{}
	for rows.Next() {
		var (
			key          string
			health, sync int16
			n            int64
		)
		if err := rows.Scan(&key, &health, &sync, &n); err != nil {
			return nil, classify(op, err)
		}
		c := out[key]
		if c == nil {
			c = newStatusCounts()
			out[key] = c
		}
		c.add(droverv1.Health(health), droverv1.SyncState(sync), int32(n))
	}
	if err := rows.Err(); err != nil {
		return nil, classify(op, err)
	}
	return out, nil
}
