package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Bounds on event text: events record agents' errors, which can be long.
const (
	maxEventMessageBytes = 8192
	maxEventKindBytes    = 128
)

// execer is the pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// eventRow is one event's columns, cleaned for storing.
type eventRow struct {
	time                                       *time.Time
	kind, actor, cluster, application, message string
}

func newEventRow(ev *droverv1.Event) (eventRow, error) {
	if ev.GetKind() == "" {
		return eventRow{}, invalid("kind", "must not be empty")
	}
	return eventRow{
		time:        timeOpt(ev.GetTime()),
		kind:        cleanText(ev.GetKind(), maxEventKindBytes),
		actor:       cleanText(ev.GetActor(), maxShortTextBytes),
		cluster:     cleanText(ev.GetCluster(), maxShortTextBytes),
		application: cleanText(ev.GetApplication(), maxShortTextBytes),
		message:     cleanText(ev.GetMessage(), maxEventMessageBytes),
	}, nil
}

// AddEvent appends one event. Its Id is ignored (the store numbers events);
// a missing Time means the database's now. Message is cut to 8 KiB.
func (s *Store) AddEvent(ctx context.Context, ev *droverv1.Event) error {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	return s.signalOnSuccess(ChangeEvents, insertEvent(ctx, s.pool, ev))
}

func insertEvent(ctx context.Context, db execer, ev *droverv1.Event) error {
	r, err := newEventRow(ev)
	if err != nil {
		return err
	}
	_, err = db.Exec(ctx, `
		INSERT INTO events (time, kind, actor, cluster, application, message)
		VALUES (COALESCE($1, now()), $2, $3, $4, $5, $6)`,
		r.time, r.kind, r.actor, r.cluster, r.application, r.message)
	if err != nil {
		return classify(fmt.Sprintf("add event %s", r.kind), err)
	}
	return nil
}

// AddEvents appends events in one statement, in order (ids increase in
// slice order).
func (s *Store) AddEvents(ctx context.Context, evs []*droverv1.Event) error {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	if len(evs) == 0 {
		return nil
	}
	return s.signalOnSuccess(ChangeEvents, insertEvents(ctx, s.pool, evs))
}

func insertEvents(ctx context.Context, db execer, evs []*droverv1.Event) error {
	if len(evs) == 0 {
		return nil
	}
	var (
		times                                   = make([]*time.Time, len(evs))
		kinds, actors, clusters, apps, messages = make([]string, len(evs)), make([]string, len(evs)),
			make([]string, len(evs)), make([]string, len(evs)), make([]string, len(evs))
	)
	for i, ev := range evs {
		r, err := newEventRow(ev)
		if err != nil {
			var ve *ValidationError
			if errors.As(err, &ve) {
				ve.Field = fmt.Sprintf("events[%d].%s", i, ve.Field)
			}
			return err
		}
		times[i], kinds[i], actors[i], clusters[i], apps[i], messages[i] = r.time, r.kind, r.actor, r.cluster, r.application, r.message
	}
	// WITH ORDINALITY keeps slice order in the ids.
	_, err := db.Exec(ctx, `
		INSERT INTO events (time, kind, actor, cluster, application, message)
		SELECT COALESCE(t, now()), k, a, c, ap, m
		FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
			WITH ORDINALITY AS e(t, k, a, c, ap, m, n)
		ORDER BY n`,
		times, kinds, actors, clusters, apps, messages)
	if err != nil {
		return classify(fmt.Sprintf("add %d events", len(evs)), err)
	}
	return nil
}

// PruneEvents deletes up to limit of the oldest events recorded before
// before, under lease (the event-retention job's), and returns how many it
// deleted: fewer than limit when none older are left.
func (s *Store) PruneEvents(ctx context.Context, lease Lease, before time.Time, limit int) (int64, error) {
	var n int64
	err := s.underLease(ctx, "prune events", lease, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			DELETE FROM events WHERE id IN (
				SELECT id FROM events WHERE time < $1 ORDER BY time LIMIT $2)`,
			before, limit)
		if err != nil {
			return classify("prune events", err)
		}
		n = tag.RowsAffected()
		return nil
	})
	return n, err
}

// EventFilter narrows ListEvents; empty fields match everything.
type EventFilter struct {
	Cluster     string
	Application string
	// KindPrefix matches kinds starting with it, e.g. "cluster." or
	// "application.updated".
	KindPrefix string
}

// ListEvents returns one page of the events filter matches, newest first.
// pageSize 0 means DefaultPageSize; pageToken is "" for the first page and
// then the nextPageToken of the page before, which is "" after the last
// page. Events added while paging appear on a new first page, never in the
// middle.
func (s *Store) ListEvents(ctx context.Context, filter EventFilter, pageSize int, pageToken string) ([]*droverv1.Event, string, error) {
	pageSize, err := checkPageSize(pageSize)
	if err != nil {
		return nil, "", err
	}
	var before int64
	if pageToken != "" {
		before, err = strconv.ParseInt(pageToken, 10, 64)
		if err != nil || before <= 0 {
			return nil, "", invalid("page_token", "not a token this list returned")
		}
	}
	var (
		where []string
		args  []any
	)
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if before > 0 {
		add("id < $%d", before)
	}
	if filter.Cluster != "" {
		add("cluster = $%d", filter.Cluster)
	}
	if filter.Application != "" {
		add("application = $%d", filter.Application)
	}
	if filter.KindPrefix != "" {
		add(`kind LIKE $%d ESCAPE '\'`, escapeLike(filter.KindPrefix)+"%")
	}
	q := `SELECT id, time, kind, actor, cluster, application, message, replica FROM events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, pageSize+1)
	q += fmt.Sprintf(" ORDER BY id DESC LIMIT $%d", len(args))

	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", classify("list events", err)
	}
	var out []*droverv1.Event
	for rows.Next() {
		var (
			ev droverv1.Event
			t  time.Time
		)
		if err := rows.Scan(&ev.Id, &t, &ev.Kind, &ev.Actor, &ev.Cluster, &ev.Application, &ev.Message, &ev.HubReplica); err != nil {
			return nil, "", classify("list events", err)
		}
		ev.Time = ts(t)
		out = append(out, &ev)
	}
	if err := rows.Err(); err != nil {
		return nil, "", classify("list events", err)
	}
	if len(out) <= pageSize {
		return out, "", nil
	}
	out = out[:pageSize]
	return out, strconv.FormatInt(out[pageSize-1].Id, 10), nil
}

// escapeLike makes s match itself literally in a LIKE pattern.
func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}
