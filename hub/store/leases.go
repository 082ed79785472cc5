package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover-dev/drover/internal/retry"
)

// Holder is a running hub replica as leases know it: its name, and the
// random id of this process, so that a replica restarted under the same
// name takes its old leases over with a new epoch rather than carrying on
// as if it had never lost them.
type Holder struct {
	Replica  string
	Instance string
}

// Lease is a holder's hold on one background job at one epoch.
type Lease struct {
	Job    string
	Holder Holder
	// Epoch grows by one each time the job changes hands.
	Epoch int64
	// Expires is when the lease lapses unless renewed, on the database's
	// clock.
	Expires time.Time
}

// ErrLeaseLost: a write under a lease found it lapsed or taken over; the
// write changed nothing.
var ErrLeaseLost = errors.New("lease lost")

// AcquireLeases takes or renews, for h and for ttl, every one of jobs whose
// lease is free, lapsed, or h's own already, and returns h's leases among
// jobs after it; a job another holder keeps is absent. A lease taken from
// another holder (or from h's replica in an earlier process) has a new
// epoch; a renewed one keeps its epoch.
func (s *Store) AcquireLeases(ctx context.Context, h Holder, jobs []string, ttl time.Duration) ([]Lease, error) {
	const op = "acquire job leases"
	if h.Replica == "" || h.Instance == "" {
		return nil, fmt.Errorf("%s: holder needs a replica and an instance", op)
	}
	if len(jobs) == 0 {
		return nil, nil
	}
	// One order for every replica, so two acquiring overlapping sets
	// lock their rows in the same order and never deadlock.
	jobs = slices.Sorted(slices.Values(jobs))
	jobs = slices.Compact(jobs)
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `
		INSERT INTO job_leases AS l (job, replica, instance, epoch, acquired_at, expires_at)
		SELECT j, $2, $3, 1, now(), now() + $4 * interval '1 millisecond'
		FROM unnest($1::text[]) WITH ORDINALITY AS u(j, n)
		ORDER BY n
		ON CONFLICT (job) DO UPDATE SET
			replica     = EXCLUDED.replica,
			instance    = EXCLUDED.instance,
			epoch       = CASE WHEN l.instance = EXCLUDED.instance THEN l.epoch ELSE l.epoch + 1 END,
			acquired_at = CASE WHEN l.instance = EXCLUDED.instance THEN l.acquired_at ELSE now() END,
			expires_at  = EXCLUDED.expires_at
		WHERE l.instance = EXCLUDED.instance OR l.expires_at <= now()
		RETURNING job, epoch, expires_at`,
		jobs, h.Replica, h.Instance, ttl.Milliseconds())
	if err != nil {
		return nil, classify(op, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Lease, error) {
		l := Lease{Holder: h}
		err := row.Scan(&l.Job, &l.Epoch, &l.Expires)
		return l, err
	})
	if err != nil {
		return nil, classify(op, err)
	}
	slices.SortFunc(out, func(a, b Lease) int { return strings.Compare(a.Job, b.Job) })
	return out, nil
}

// ReleaseLeases lets h's leases on jobs lapse now, so that their new owners
// need not wait for them to expire; nil jobs means all of h's leases.
func (s *Store) ReleaseLeases(ctx context.Context, h Holder, jobs []string) error {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	_, err := s.pool.Exec(ctx, `
		UPDATE job_leases SET expires_at = now()
		WHERE instance = $1 AND expires_at > now() AND ($2::text[] IS NULL OR job = ANY($2))`,
		h.Instance, jobs)
	if err != nil {
		return classify("release job leases", err)
	}
	return nil
}

// ListLeases returns every job's lease, lapsed ones too, by job.
func (s *Store) ListLeases(ctx context.Context) ([]Lease, error) {
	const op = "list job leases"
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT job, replica, instance, epoch, expires_at FROM job_leases ORDER BY job`)
	if err != nil {
		return nil, classify(op, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Lease, error) {
		var l Lease
		err := row.Scan(&l.Job, &l.Holder.Replica, &l.Holder.Instance, &l.Epoch, &l.Expires)
		return l, err
	})
	if err != nil {
		return nil, classify(op, err)
	}
	return out, nil
}

// underLease runs fn in a transaction that first checks that l is still
// held: ErrLeaseLost when it lapsed or changed hands, and fn does not run.
// The check holds a share lock on the lease's row until the transaction
// ends, so no other replica can take the lease over in between: what fn
// writes is written under the lease or not at all, however long this
// replica was paused or cut off before.
func (s *Store) underLease(ctx context.Context, op string, l Lease, fn func(tx pgx.Tx) error) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		var held bool
		err := tx.QueryRow(ctx, `
			SELECT true FROM job_leases
			WHERE job = $1 AND instance = $2 AND epoch = $3 AND expires_at > now()
			FOR SHARE`,
			l.Job, l.Holder.Instance, l.Epoch).Scan(&held)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%s: %s at epoch %d: %w", op, l.Job, l.Epoch, retry.Permanent(ErrLeaseLost))
		}
		if err != nil {
			return classify(op, err)
		}
		return fn(tx)
	})
}
