// Package migrations holds the hub's PostgreSQL schema as numbered goose
// SQL files (NNNNN_name.sql, "-- +goose Up" / "-- +goose Down" sections),
// embedded into the hub, and runs them.
//
// Schema changes happen only here. The hub runs Up at start (and
// `drover-hub migrate` runs it alone); several replicas starting at once
// are serialised by a PostgreSQL advisory lock, so each migration runs
// once. Applied versions are recorded in goose's table, goose_db_version.
package migrations

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver Open uses
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// FS returns the embedded migration files.
func FS() fs.FS { return files }

// Checksum is a hex SHA-256 over the names and contents of all migration
// files: it changes whenever the schema the files describe changes. The
// test bed names its template databases with it.
func Checksum() string {
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		panic(err) // the pattern is valid
	}
	sort.Strings(names)
	h := sha256.New()
	for _, name := range names {
		b, err := files.ReadFile(name)
		if err != nil {
			panic(err) // embedded files are always readable
		}
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Option changes how Up runs.
type Option func(*config)

type config struct {
	log *slog.Logger
}

// WithLogger logs each migration applied.
func WithLogger(log *slog.Logger) Option {
	return func(c *config) { c.log = log }
}

// Up applies every migration db has not had yet, holding a session
// advisory lock so concurrent callers (hub replicas) take turns. A
// database with a newer schema than this binary knows is refused with a
// *NewerSchemaError, and nothing is changed.
func Up(ctx context.Context, db *sql.DB, opts ...Option) error {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	p, err := newProvider(db)
	if err != nil {
		return err
	}
	current, latest, err := versions(ctx, db, p)
	if err != nil {
		return err
	}
	if current > latest {
		return &NewerSchemaError{Current: current, Latest: latest}
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	if cfg.log != nil {
		for _, r := range results {
			cfg.log.Info("migration applied", "version", r.Source.Version, "file", r.Source.Path, "took", r.Duration)
		}
	}
	return nil
}

// NewerSchemaError is Up's refusal of a database whose schema is newer
// than this binary knows: a newer hub migrated it, and this one could
// misread or damage what it does not know.
type NewerSchemaError struct {
	// Current is the database's schema version, Latest the newest this
	// binary knows.
	Current, Latest int64
}

func (e *NewerSchemaError) Error() string {
	return fmt.Sprintf("the database's schema is at version %d, newer than this drover-hub knows (%d): a newer drover-hub migrated it; run that version or a later one (schemas are never migrated down by the hub)", e.Current, e.Latest)
}

// UpURL opens the database at url (a postgres:// URL or key=value DSN),
// applies the migrations as Up does, and closes it.
func UpURL(ctx context.Context, url string, opts ...Option) error {
	db, err := Open(url)
	if err != nil {
		return err
	}
	defer db.Close()
	return Up(ctx, db, opts...)
}

// Open returns a *sql.DB on pgx's database/sql driver, the kind Up takes.
func Open(url string) (*sql.DB, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	return db, nil
}

// Version returns the newest migration version applied to db (0: none,
// also when no migration ever ran there) and the newest one this binary
// knows.
func Version(ctx context.Context, db *sql.DB) (current, latest int64, err error) {
	p, err := newProvider(db)
	if err != nil {
		return 0, 0, err
	}
	return versions(ctx, db, p)
}

func versions(ctx context.Context, db *sql.DB, p *goose.Provider) (current, latest int64, err error) {
	sources := p.ListSources()
	latest = sources[len(sources)-1].Version
	var hasTable bool
	if err := db.QueryRowContext(ctx, "SELECT to_regclass($1) IS NOT NULL", goose.DefaultTablename).Scan(&hasTable); err != nil {
		return 0, 0, fmt.Errorf("look for the migration table: %w", err)
	}
	if !hasTable {
		return 0, latest, nil
	}
	current, err = p.GetDBVersion(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("read migration version: %w", err)
	}
	return current, latest, nil
}

// Status lists every known migration with whether db has it.
func Status(ctx context.Context, db *sql.DB) ([]*goose.MigrationStatus, error) {
	p, err := newProvider(db)
	if err != nil {
		return nil, err
	}
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("read migration status: %w", err)
	}
	return st, nil
}

func newProvider(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, fmt.Errorf("migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, files, goose.WithSessionLocker(locker))
	if err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return p, nil
}
