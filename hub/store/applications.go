package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/internal/artifact"
	"github.com/drover-dev/drover/internal/gitremote"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Kinds of the events the store records itself, in the same transaction as
// the change they describe.
const (
	EventApplicationCreated = "application.created"
	EventApplicationUpdated = "application.updated"
	EventApplicationDeleted = "application.deleted"
)

const applicationColumns = `name, spec, generation, created_at, updated_at`

func scanApplication(row pgx.Row) (*droverv1.Application, error) {
	var (
		a                droverv1.Application
		spec             []byte
		created, updated time.Time
	)
	if err := row.Scan(&a.Name, &spec, &a.Generation, &created, &updated); err != nil {
		return nil, err
	}
	a.Spec = &droverv1.ApplicationSpec{}
	if err := fromJSON(spec, a.Spec); err != nil {
		return nil, fmt.Errorf("application %q: decode spec: %w", a.Name, err)
	}
	a.CreatedAt, a.UpdatedAt = ts(created), ts(updated)
	return &a, nil
}

// validateApplication checks what the store relies on: the name, and that
// there is a spec. Whether the spec makes sense (a source, a valid
// selector) is the admin API's to check.
func validateApplication(app *droverv1.Application) error {
	if app == nil {
		return invalid("application", "missing")
	}
	if err := validateName("application.name", app.GetName()); err != nil {
		return err
	}
	if app.GetSpec() == nil {
		return invalid("application.spec", "missing")
	}
	return nil
}

// CreateApplication stores a new application at generation 1 and records
// an application.created event by actor, in one transaction. A taken name
// is ErrConflict. Only Name and Spec of app are read.
func (s *Store) CreateApplication(ctx context.Context, app *droverv1.Application, actor string) (*droverv1.Application, error) {
	if err := validateApplication(app); err != nil {
		return nil, err
	}
	spec, err := toJSON(app.GetSpec())
	if err != nil {
		return nil, fmt.Errorf("create application %q: encode spec: %w", app.GetName(), err)
	}
	var out *droverv1.Application
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = scanApplication(tx.QueryRow(ctx, `
			INSERT INTO applications (name, spec, generation, created_at, updated_at)
			VALUES ($1, $2, 1, now(), now())
			RETURNING `+applicationColumns, app.GetName(), spec))
		if err != nil {
			return classify("insert", err)
		}
		if err := s.notifyTx(ctx, tx, Change{Kind: ChangeApp, Name: out.Name}); err != nil {
			return err
		}
		return insertEvent(ctx, tx, &droverv1.Event{
			Time: out.CreatedAt, Kind: EventApplicationCreated, Actor: actor, Application: out.Name,
			Message: fmt.Sprintf("application %s created", out.Name),
		})
	})
	if err != nil {
		return nil, fmt.Errorf("create application %q: %w", app.GetName(), err)
	}
	return out, nil
}

// UpdateApplication replaces an application's spec. When the spec changes,
// the generation goes up by one and an application.updated event by actor
// is recorded, in one transaction; an equal spec changes nothing (applying
// the same file twice is not a change). When the spec reads its content from
// other paths (repoURL, path or extraPaths changed), the current release's
// clusters get its own commit again: an earlier commit's content was the
// same only under the old paths. Only Name and Spec of app are read.
func (s *Store) UpdateApplication(ctx context.Context, app *droverv1.Application, actor string) (*droverv1.Application, error) {
	if err := validateApplication(app); err != nil {
		return nil, err
	}
	spec, err := toJSON(app.GetSpec())
	if err != nil {
		return nil, fmt.Errorf("update application %q: encode spec: %w", app.GetName(), err)
	}
	var out *droverv1.Application
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := scanApplication(tx.QueryRow(ctx,
			`SELECT `+applicationColumns+` FROM applications WHERE name = $1 FOR UPDATE`, app.GetName()))
		if err != nil {
			return classify("read", err)
		}
		if proto.Equal(cur.GetSpec(), app.GetSpec()) {
			out = cur
			return nil
		}
		out, err = scanApplication(tx.QueryRow(ctx, `
			UPDATE applications SET spec = $2, generation = generation + 1, updated_at = now()
			WHERE name = $1 RETURNING `+applicationColumns, app.GetName(), spec))
		if err != nil {
			return classify("update", err)
		}
		if !samePaths(cur.GetSpec().GetSource(), app.GetSpec().GetSource()) {
			if _, err := tx.Exec(ctx, `
				UPDATE releases SET content_commit = '', noop = false
				WHERE id = (SELECT max(id) FROM releases WHERE application = $1) AND content_commit <> ''`,
				app.GetName()); err != nil {
				return classify("reset release content", err)
			}
		}
		if err := s.notifyTx(ctx, tx, Change{Kind: ChangeApp, Name: out.Name}); err != nil {
			return err
		}
		return insertEvent(ctx, tx, &droverv1.Event{
			Time: out.UpdatedAt, Kind: EventApplicationUpdated, Actor: actor, Application: out.Name,
			Message: fmt.Sprintf("application %s updated to generation %d", out.Name, out.Generation),
		})
	})
	if err != nil {
		return nil, fmt.Errorf("update application %q: %w", app.GetName(), err)
	}
	return out, nil
}

// GetApplication returns one application.
func (s *Store) GetApplication(ctx context.Context, name string) (*droverv1.Application, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	a, err := scanApplication(s.pool.QueryRow(ctx, `SELECT `+applicationColumns+` FROM applications WHERE name = $1`, name))
	if err != nil {
		return nil, classify(fmt.Sprintf("get application %q", name), err)
	}
	return a, nil
}

// ListApplications returns every application, by name.
func (s *Store) ListApplications(ctx context.Context) ([]*droverv1.Application, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT `+applicationColumns+` FROM applications ORDER BY name`)
	if err != nil {
		return nil, classify("list applications", err)
	}
	var out []*droverv1.Application
	for rows.Next() {
		a, err := scanApplication(rows)
		if err != nil {
			return nil, classify("list applications", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, classify("list applications", err)
	}
	return out, nil
}

// DeleteApplication deletes an application with its releases and its
// statuses on every cluster, and records an application.deleted event by
// actor, in one transaction. Statuses agents report for it afterwards are
// stored again until their next full resync; readers filter by the
// applications that exist.
func (s *Store) DeleteApplication(ctx context.Context, name, actor string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM applications WHERE name = $1`, name)
		if err != nil {
			return classify("delete", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		// app_status.application is not a foreign key (see the migration).
		if _, err := tx.Exec(ctx, `DELETE FROM app_status WHERE application = $1`, name); err != nil {
			return classify("delete statuses", err)
		}
		if err := s.notifyTx(ctx, tx, Change{Kind: ChangeApp, Name: name}); err != nil {
			return err
		}
		return insertEvent(ctx, tx, &droverv1.Event{
			Kind: EventApplicationDeleted, Actor: actor, Application: name,
			Message: fmt.Sprintf("application %s deleted", name),
		})
	})
	if err != nil {
		return fmt.Errorf("delete application %q: %w", name, err)
	}
	return nil
}

// Releases.

// samePaths reports whether two sources read the same paths of the same
// repository: what a release's content commit was found under.
func samePaths(a, b *droverv1.Source) bool {
	return a.GetRepoUrl() == b.GetRepoUrl() && a.GetPath() == b.GetPath() && slices.Equal(a.GetExtraPaths(), b.GetExtraPaths())
}

// validateCommit accepts what every agent accepts: a full Git commit SHA
// (gitremote.CheckCommit) in lower case, or a Helm or OCI revision
// VERSION@sha256:HEX (artifact.ParseRevision). Releases pin commits, never
// refs, ranges or abbreviations.
func validateCommit(field, commit string) error {
	if artifact.IsRevision(commit) {
		return nil
	}
	if sha, err := gitremote.CheckCommit(commit); err != nil || sha != commit {
		return invalid(field, "%q is neither a full commit SHA in lower-case hex nor a revision VERSION@sha256:HEX", commit)
	}
	return nil
}

// AddRelease makes commit the application's current release, whose
// clusters get the tree of content: commit itself ("" says the same), or
// an earlier commit with the same content under the application's paths
// (the release is then a no-op). created is true when that changed
// anything: a new release, or an older release of the same commit made
// current again (a branch reset or reverted by force push), which then
// counts as the newest with ref, content and now. created is false when
// commit is the current release already, so calling again is harmless. An
// unknown application is ErrNotFound.
func (s *Store) AddRelease(ctx context.Context, app, commit, ref, content string, now time.Time) (created bool, err error) {
	if err := validateCommit("commit", commit); err != nil {
		return false, err
	}
	if content == "" {
		content = commit
	}
	if err := validateCommit("content", content); err != nil {
		return false, err
	}
	noop := content != commit
	if !noop {
		content = "" // the rows before content commits mean the same
	}
	// The current release is the row with the highest id; an older row
	// made current again takes a fresh id.
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var id int64
		err := tx.QueryRow(ctx, `
			INSERT INTO releases AS r (application, commit, ref, noop, content_commit, created_at)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (application, commit) DO UPDATE
			SET id = nextval(pg_get_serial_sequence('releases', 'id')),
			    ref = EXCLUDED.ref, noop = EXCLUDED.noop, content_commit = EXCLUDED.content_commit,
			    created_at = EXCLUDED.created_at
			WHERE r.id <> (SELECT max(id) FROM releases WHERE application = EXCLUDED.application)
			RETURNING r.id`,
			app, commit, cleanText(ref, maxShortTextBytes), noop, content, now).Scan(&id)
		if err != nil {
			return err
		}
		created = true
		return s.notifyTx(ctx, tx, Change{Kind: ChangeRelease, Name: app})
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil // already current
	case pgCode(err) == codeForeignKeyViolation:
		return false, fmt.Errorf("add release of application %q: %w", app, ErrNotFound)
	case err != nil:
		return false, classify(fmt.Sprintf("add release of application %q", app), err)
	}
	return created, nil
}

// ListReleases returns up to limit releases of an application, newest
// (current) first. limit 0 means DefaultPageSize.
func (s *Store) ListReleases(ctx context.Context, app string, limit int) ([]*droverv1.Release, error) {
	limit, err := checkPageSize(limit)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `
		SELECT commit, ref, noop, content_commit, created_at FROM releases
		WHERE application = $1 ORDER BY id DESC LIMIT $2`, app, limit)
	if err != nil {
		return nil, classify(fmt.Sprintf("list releases of application %q", app), err)
	}
	var out []*droverv1.Release
	for rows.Next() {
		r, err := scanRelease(rows)
		if err != nil {
			return nil, classify(fmt.Sprintf("list releases of application %q", app), err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(fmt.Sprintf("list releases of application %q", app), err)
	}
	return out, nil
}

// CurrentReleases returns every application's current release, by
// application name. Applications without a release yet are absent.
func (s *Store) CurrentReleases(ctx context.Context) (map[string]*droverv1.Release, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `
		SELECT DISTINCT ON (application) application, commit, ref, noop, content_commit, created_at
		FROM releases ORDER BY application, id DESC`)
	if err != nil {
		return nil, classify("current releases", err)
	}
	out := map[string]*droverv1.Release{}
	for rows.Next() {
		var app string
		r, err := scanRelease(rows, &app)
		if err != nil {
			return nil, classify("current releases", err)
		}
		out[app] = r
	}
	if err := rows.Err(); err != nil {
		return nil, classify("current releases", err)
	}
	return out, nil
}

// scanRelease reads the release columns, after the ones in before.
func scanRelease(row pgx.Row, before ...any) (*droverv1.Release, error) {
	var (
		r       droverv1.Release
		created time.Time
	)
	if err := row.Scan(append(before, &r.Commit, &r.Ref, &r.Noop, &r.ContentCommit, &created)...); err != nil {
		return nil, err
	}
	if r.ContentCommit == "" {
		r.ContentCommit = r.Commit
	}
	r.CreatedAt = ts(created)
	return &r, nil
}
