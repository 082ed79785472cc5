package store

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pressly/goose/v3"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/migrations"
)

// TestMigrationDownUp checks the store's migration is reversible: down to
// the version before it leaves none of its tables, and up again works.
func TestMigrationDownUp(t *testing.T) {
	ctx := context.Background()
	db, err := migrations.Open(testbed.Postgres(t))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS())
	if err != nil {
		t.Fatalf("goose: %v", err)
	}
	tables := []string{"clusters", "join_tokens", "api_tokens", "repositories", "applications", "releases", "app_status", "events", "settings", "hub_replicas", "job_leases"}
	count := func() int {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY($1)`, tables).Scan(&n); err != nil {
			t.Fatalf("count tables: %v", err)
		}
		return n
	}
	if n := count(); n != len(tables) {
		t.Fatalf("%d of the store's tables after Up, want %d", n, len(tables))
	}
	if _, err := p.DownTo(ctx, 1); err != nil {
		t.Fatalf("down to 1: %v", err)
	}
	if n := count(); n != 0 {
		t.Errorf("%d of the store's tables left after Down", n)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if n := count(); n != len(tables) {
		t.Errorf("%d of the store's tables after Up again, want %d", n, len(tables))
	}
}

// A hub refuses a database that a newer hub migrated, saying so, and
// changes nothing there.
func TestNewerSchemaIsRefused(t *testing.T) {
	ctx := context.Background()
	db, err := migrations.Open(testbed.Postgres(t))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer db.Close()
	current, latest, err := migrations.Version(ctx, db)
	if err != nil || current != latest {
		t.Fatalf("a migrated database is at version %d of %d (err %v), want the latest", current, latest, err)
	}
	newer := latest + 1
	if _, err := db.ExecContext(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)`, newer); err != nil {
		t.Fatalf("record a newer migration: %v", err)
	}
	rows := func() int {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM goose_db_version`).Scan(&n); err != nil {
			t.Fatalf("count applied migrations: %v", err)
		}
		return n
	}
	before := rows()
	err = migrations.Up(ctx, db)
	var newerErr *migrations.NewerSchemaError
	if !errors.As(err, &newerErr) || newerErr.Current != newer || newerErr.Latest != latest {
		t.Fatalf("Up on a database at version %d: %v, want a NewerSchemaError naming %d and %d", newer, err, newer, latest)
	}
	if msg := err.Error(); !strings.Contains(msg, "newer than this drover-hub knows") {
		t.Errorf("the refusal says %q: want it to say the schema is newer than the hub knows", msg)
	}
	if after := rows(); after != before {
		t.Errorf("%d applied migrations recorded after the refusal, %d before", after, before)
	}
}
