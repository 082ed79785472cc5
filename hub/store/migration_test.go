package store

import (
	"context"
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
	tables := []string{"clusters", "join_tokens", "api_tokens", "repositories", "applications", "releases", "app_status", "events", "settings"}
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
