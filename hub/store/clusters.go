package store

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Page sizes of the List methods that page.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Bounds on text an agent sends, so one agent cannot bloat a row.
const (
	maxNackErrorBytes = 4096
	maxShortTextBytes = 256
)

const clusterColumns = `name, labels, facts, created_at, last_seen, connected_since, hub_replica,
	peer_address, revoked, assignment_version, acked_version, acked_at, nack_error`

// scanCluster reads one row of clusterColumns. Online and HealthCounts are
// left to the caller: they depend on the hub's offline timeout and on
// placement.
func scanCluster(row pgx.Row) (*droverv1.Cluster, error) {
	var (
		c                                 droverv1.Cluster
		labelsJSON, factsJSON             []byte
		created                           time.Time
		lastSeen, connectedSince, ackedAt *time.Time
	)
	if err := row.Scan(&c.Name, &labelsJSON, &factsJSON, &created, &lastSeen, &connectedSince, &c.HubReplica,
		&c.PeerAddress, &c.Revoked, &c.AssignmentVersion, &c.AckedVersion, &ackedAt, &c.NackError); err != nil {
		return nil, err
	}
	var err error
	if c.Labels, err = labelsFromJSON(labelsJSON); err != nil {
		return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	if factsJSON != nil {
		c.Facts = &droverv1.ClusterFacts{}
		if err := fromJSON(factsJSON, c.Facts); err != nil {
			return nil, fmt.Errorf("cluster %q: decode facts: %w", c.Name, err)
		}
	}
	c.CreatedAt = ts(created)
	c.LastSeen, c.ConnectedSince, c.AckedAt = tsOpt(lastSeen), tsOpt(connectedSince), tsOpt(ackedAt)
	return &c, nil
}

// GetCluster returns one cluster.
func (s *Store) GetCluster(ctx context.Context, name string) (*droverv1.Cluster, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	c, err := scanCluster(s.pool.QueryRow(ctx, `SELECT `+clusterColumns+` FROM clusters WHERE name = $1`, name))
	if err != nil {
		return nil, classify(fmt.Sprintf("get cluster %q", name), err)
	}
	return c, nil
}

// ListClusters returns one page of the clusters selector matches, by name.
// pageSize 0 means DefaultPageSize; pageToken is "" for the first page and
// then the nextPageToken of the page before, which is "" after the last
// page. A nil selector matches every cluster.
//
// Equality, set and existence requirements are evaluated in SQL (on the
// labels GIN index); every row is then checked against the whole selector
// in Go, which also decides the requirements SQL cannot express (gt, lt).
func (s *Store) ListClusters(ctx context.Context, selector labels.Selector, pageSize int, pageToken string) ([]*droverv1.Cluster, string, error) {
	if selector == nil {
		selector = labels.Everything()
	}
	pageSize, err := checkPageSize(pageSize)
	if err != nil {
		return nil, "", err
	}
	after := ""
	if pageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || len(b) == 0 {
			return nil, "", invalid("page_token", "not a token this list returned")
		}
		after = string(b)
	}
	reqs, selectable := selector.Requirements()
	if !selectable {
		return nil, "", nil
	}
	where, args := selectorSQL(reqs)

	// Fetch pageSize+1 matches to know whether a next page exists; when the
	// Go check drops rows SQL let through, fetch on from the last row seen.
	fetch := pageSize + 1
	var out []*droverv1.Cluster
	for {
		batch, err := s.clusterRange(ctx, after, fetch, where, args)
		if err != nil {
			return nil, "", err
		}
		for _, c := range batch {
			if selector.Matches(labels.Set(c.Labels)) {
				out = append(out, c)
			}
		}
		if len(out) > pageSize || len(batch) < fetch {
			break
		}
		after = batch[len(batch)-1].Name
	}
	if len(out) <= pageSize {
		return out, "", nil
	}
	out = out[:pageSize]
	return out, base64.RawURLEncoding.EncodeToString([]byte(out[pageSize-1].Name)), nil
}

func (s *Store) clusterRange(ctx context.Context, after string, limit int, where []string, args []any) ([]*droverv1.Cluster, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	// $1 and $2 are the cursor and the limit; the selector's parameters
	// start at $3.
	q := `SELECT ` + clusterColumns + ` FROM clusters WHERE name > $1`
	for _, w := range where {
		q += " AND " + w
	}
	q += ` ORDER BY name LIMIT $2`
	rows, err := s.pool.Query(ctx, q, append([]any{after, limit}, args...)...)
	if err != nil {
		return nil, classify("list clusters", err)
	}
	var out []*droverv1.Cluster
	for rows.Next() {
		c, err := scanCluster(rows)
		if err != nil {
			return nil, classify("list clusters", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, classify("list clusters", err)
	}
	return out, nil
}

// selectorSQL turns the requirements SQL can decide into conditions on
// labels, with parameters numbered from $3. Requirements it cannot express
// are left to the Go check.
func selectorSQL(reqs labels.Requirements) (where []string, args []any) {
	param := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args)+2)
	}
	contains := func(key, value string) string {
		// json.Marshal of a map[string]string cannot fail.
		b, _ := labelsJSON(map[string]string{key: value})
		return "labels @> " + param(string(b)) + "::jsonb"
	}
	for _, r := range reqs {
		key := r.Key()
		values := r.ValuesUnsorted()
		slices.Sort(values) // stable SQL text, so plans are reused
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			terms := make([]string, len(values))
			for i, v := range values {
				terms[i] = contains(key, v)
			}
			where = append(where, "("+strings.Join(terms, " OR ")+")")
		case selection.NotEquals, selection.NotIn:
			for _, v := range values {
				where = append(where, "NOT "+contains(key, v))
			}
		case selection.Exists:
			where = append(where, "labels ? "+param(key))
		case selection.DoesNotExist:
			where = append(where, "NOT labels ? "+param(key))
		case selection.GreaterThan, selection.LessThan:
			// The comparison itself is the Go check's.
			where = append(where, "labels ? "+param(key))
		}
	}
	return where, args
}

func checkPageSize(n int) (int, error) {
	switch {
	case n == 0:
		return DefaultPageSize, nil
	case n < 0 || n > MaxPageSize:
		return 0, invalid("page_size", "must be between 0 and %d, got %d", MaxPageSize, n)
	}
	return n, nil
}

// ClusterInfo is what the hub's in-memory fleet keeps of every cluster.
type ClusterInfo struct {
	Name       string
	Labels     map[string]string
	CertSerial string
	Revoked    bool
}

// ListAllClusters returns every cluster's name, labels and certificate
// state, by name: the fleet's starting point.
func (s *Store) ListAllClusters(ctx context.Context) ([]ClusterInfo, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT name, labels, cert_serial, revoked FROM clusters ORDER BY name`)
	if err != nil {
		return nil, classify("list all clusters", err)
	}
	var out []ClusterInfo
	for rows.Next() {
		var (
			c          ClusterInfo
			labelsJSON []byte
		)
		if err := rows.Scan(&c.Name, &labelsJSON, &c.CertSerial, &c.Revoked); err != nil {
			return nil, classify("list all clusters", err)
		}
		if c.Labels, err = labelsFromJSON(labelsJSON); err != nil {
			return nil, fmt.Errorf("list all clusters: %s: %w", c.Name, err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, classify("list all clusters", err)
	}
	return out, nil
}

// UpdateClusterLabels sets and removes labels of one cluster in one
// statement and returns the cluster as it is now. A key may not be both set
// and removed.
func (s *Store) UpdateClusterLabels(ctx context.Context, name string, set map[string]string, remove []string) (*droverv1.Cluster, error) {
	if err := validateLabels("set", set); err != nil {
		return nil, err
	}
	for i, k := range remove {
		if errs := content.IsLabelKey(k); len(errs) > 0 {
			return nil, invalid(fmt.Sprintf("remove[%d]", i), "key %q: %s", k, strings.Join(errs, "; "))
		}
		if _, ok := set[k]; ok {
			return nil, invalid(fmt.Sprintf("remove[%d]", i), "label %q is also in set", k)
		}
	}
	setJSON, err := labelsJSON(set)
	if err != nil {
		return nil, fmt.Errorf("update labels of cluster %q: %w", name, err)
	}
	if remove == nil {
		remove = []string{}
	}
	return s.updateCluster(ctx, fmt.Sprintf("update labels of cluster %q", name), name, `
		UPDATE clusters SET labels = (labels || $2::jsonb) - $3::text[]
		WHERE name = $1 RETURNING `+clusterColumns, name, setJSON, remove)
}

// updateCluster runs sql, which updates the cluster name and returns its
// clusterColumns, and tells the other replicas, in one transaction.
func (s *Store) updateCluster(ctx context.Context, op, name, sql string, args ...any) (*droverv1.Cluster, error) {
	var c *droverv1.Cluster
	err := s.inTxNotify(ctx, Change{Kind: ChangeCluster, Name: name}, func(tx pgx.Tx) error {
		var err error
		c, err = scanCluster(tx.QueryRow(ctx, sql, args...))
		return err
	})
	if err != nil {
		return nil, classify(op, err)
	}
	return c, nil
}

// RevokeCluster marks the cluster's certificate revoked and returns the
// cluster. Revoking twice is not an error.
func (s *Store) RevokeCluster(ctx context.Context, name string) (*droverv1.Cluster, error) {
	return s.updateCluster(ctx, fmt.Sprintf("revoke cluster %q", name), name, `
		UPDATE clusters SET revoked = true WHERE name = $1 RETURNING `+clusterColumns, name)
}

// DeleteCluster deletes a cluster and its statuses. Its name is free to
// register again.
func (s *Store) DeleteCluster(ctx context.Context, name string) error {
	return s.execOneNotify(ctx, fmt.Sprintf("delete cluster %q", name), Change{Kind: ChangeCluster, Name: name},
		`DELETE FROM clusters WHERE name = $1`, name)
}

// ClusterCertSerial returns the serial of the cluster's current certificate
// and whether it is revoked.
func (s *Store) ClusterCertSerial(ctx context.Context, name string) (serial string, revoked bool, err error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	err = s.pool.QueryRow(ctx, `SELECT cert_serial, revoked FROM clusters WHERE name = $1`, name).Scan(&serial, &revoked)
	if err != nil {
		return "", false, classify(fmt.Sprintf("cluster %q certificate", name), err)
	}
	return serial, revoked, nil
}

// Session bookkeeping.

// MarkConnected records the start of a cluster's session on replica: the
// facts its agent reported, where it connected from, and now as both
// connected_since and last_seen.
func (s *Store) MarkConnected(ctx context.Context, name, replica, peerAddr string, facts *droverv1.ClusterFacts, now time.Time) error {
	var factsJSON []byte
	if facts != nil {
		f := cleanFacts(facts)
		var err error
		if factsJSON, err = toJSON(f); err != nil {
			return fmt.Errorf("mark cluster %q connected: encode facts: %w", name, err)
		}
	}
	return s.signalOnSuccess(ChangeAgents, s.execOne(ctx, fmt.Sprintf("mark cluster %q connected", name), `
		UPDATE clusters
		SET hub_replica = $2, peer_address = $3, facts = COALESCE($4::jsonb, facts),
		    connected_since = $5, last_seen = GREATEST(last_seen, $5)
		WHERE name = $1`,
		name, cleanText(replica, maxShortTextBytes), cleanText(peerAddr, maxShortTextBytes), factsJSON, now))
}

// MarkDisconnected records the end of the session that replica started at
// connectedSince: last_seen becomes now and hub_replica is cleared. When
// the cluster has reconnected since (to any replica) the newer session's
// record stays, and MarkDisconnected changes nothing and returns nil.
func (s *Store) MarkDisconnected(ctx context.Context, name, replica string, connectedSince, now time.Time) error {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	// connected_since was stored with microsecond precision.
	_, err := s.pool.Exec(ctx, `
		UPDATE clusters SET hub_replica = '', last_seen = GREATEST(last_seen, $4)
		WHERE name = $1 AND hub_replica = $2 AND connected_since = $3`,
		name, cleanText(replica, maxShortTextBytes), connectedSince.Truncate(time.Microsecond), now)
	if err != nil {
		return classify(fmt.Sprintf("mark cluster %q disconnected", name), err)
	}
	s.signal(ChangeAgents)
	return nil
}

// TouchLastSeen sets last_seen of many clusters to now in one statement
// (never moving it backwards). Unknown names are ignored.
func (s *Store) TouchLastSeen(ctx context.Context, names []string, now time.Time) error {
	if len(names) == 0 {
		return nil
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	// Rows are locked in name order, as every multi-row update of clusters
	// here does, so two such updates cannot deadlock. NO KEY UPDATE does
	// not block status inserts checking their foreign key.
	_, err := s.pool.Exec(ctx, `
		WITH target AS (
			SELECT name FROM clusters
			WHERE name = ANY($1::text[]) AND (last_seen IS NULL OR last_seen < $2)
			ORDER BY name FOR NO KEY UPDATE
		)
		UPDATE clusters c SET last_seen = $2 FROM target t WHERE c.name = t.name`,
		slices.Compact(sorted), now)
	if err != nil {
		return classify(fmt.Sprintf("touch last seen of %d clusters", len(names)), err)
	}
	return nil
}

// RecordAck records a cluster's answer to an assignment: an ACK of version
// when nackErr is empty, otherwise a NACK, which keeps the last ACKed
// version and stores the error (cut to 4 KiB) with the NACKed version and
// time; an ACK clears them. The NACK's time is the database's clock, the
// one the rollout engine compares it with (RolloutInputs.Now).
func (s *Store) RecordAck(ctx context.Context, name, version, nackErr string, now time.Time) error {
	op := fmt.Sprintf("record ack of cluster %q", name)
	if nackErr != "" {
		return s.signalOnSuccess(ChangeAgents, s.execOne(ctx, op, `
			UPDATE clusters SET nack_error = $2, nacked_version = $3, nacked_at = now() WHERE name = $1`,
			name, cleanText(nackErr, maxNackErrorBytes), cleanText(version, maxShortTextBytes)))
	}
	return s.signalOnSuccess(ChangeAgents, s.execOne(ctx, op, `
		UPDATE clusters SET acked_version = $2, acked_at = $3, nack_error = '', nacked_version = '', nacked_at = NULL
		WHERE name = $1`,
		name, cleanText(version, maxShortTextBytes), now))
}

// SetAssignmentVersions records the assignment version the hub wants each
// cluster to run, for many clusters in one statement. Unknown names are
// ignored.
func (s *Store) SetAssignmentVersions(ctx context.Context, versions map[string]string) error {
	if len(versions) == 0 {
		return nil
	}
	names := make([]string, 0, len(versions))
	for n := range versions {
		names = append(names, n)
	}
	slices.Sort(names)
	vs := make([]string, len(names))
	for i, n := range names {
		vs[i] = versions[n]
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	_, err := s.pool.Exec(ctx, `
		WITH v AS (
			SELECT * FROM unnest($1::text[], $2::text[]) AS v(name, version)
		), target AS (
			SELECT c.name, v.version FROM clusters c JOIN v ON v.name = c.name
			WHERE c.assignment_version <> v.version
			ORDER BY c.name FOR NO KEY UPDATE OF c
		)
		UPDATE clusters c SET assignment_version = t.version FROM target t WHERE c.name = t.name`,
		names, vs)
	if err != nil {
		return classify(fmt.Sprintf("set assignment versions of %d clusters", len(names)), err)
	}
	return nil
}

// cleanFacts returns facts with storable text, copying only when needed.
func cleanFacts(f *droverv1.ClusterFacts) *droverv1.ClusterFacts {
	if !needsCleaning(f.GetKubernetesVersion()) && !needsCleaning(f.GetAgentVersion()) &&
		len(f.GetKubernetesVersion()) <= maxShortTextBytes && len(f.GetAgentVersion()) <= maxShortTextBytes {
		return f
	}
	c := proto.Clone(f).(*droverv1.ClusterFacts)
	c.KubernetesVersion = cleanText(c.KubernetesVersion, maxShortTextBytes)
	c.AgentVersion = cleanText(c.AgentVersion, maxShortTextBytes)
	return c
}
