package testbed

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover-dev/drover/migrations"
)

func pgConnect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// checkMigrated checks that goose's version table has the newest migration.
func checkMigrated(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	var version int64
	if err := conn.QueryRow(t.Context(), "SELECT max(version_id) FROM goose_db_version WHERE is_applied").Scan(&version); err != nil {
		t.Fatalf("read goose_db_version: %v", err)
	}
	db, err := migrations.Open(conn.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	current, latest, err := migrations.Version(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	if version < 1 || version != latest || current != latest {
		t.Fatalf("migration version in table %d, by migrations.Version %d; newest migration %d", version, current, latest)
	}
}

func TestPostgresMigrated(t *testing.T) {
	t.Parallel()
	checkMigrated(t, pgConnect(t, Postgres(t)))
}

func TestPostgresIndependentDatabases(t *testing.T) {
	t.Parallel()
	a := pgConnect(t, Postgres(t))
	b := pgConnect(t, Postgres(t))
	if _, err := a.Exec(t.Context(), "CREATE TABLE only_in_a (id int)"); err != nil {
		t.Fatal(err)
	}
	var inA, inB bool
	const q = "SELECT to_regclass('only_in_a') IS NOT NULL"
	if err := a.QueryRow(t.Context(), q).Scan(&inA); err != nil {
		t.Fatal(err)
	}
	if err := b.QueryRow(t.Context(), q).Scan(&inB); err != nil {
		t.Fatal(err)
	}
	if !inA || inB {
		t.Fatalf("table made in database a: present in a=%v, in b=%v", inA, inB)
	}
}

// TestPostgresTimePerDatabase measures what a test pays for its database
// once the server and template exist.
func TestPostgresTimePerDatabase(t *testing.T) {
	Postgres(t) // the server and template, if no test made them yet
	const n = 5
	var total time.Duration
	for range n {
		start := time.Now()
		Postgres(t)
		total += time.Since(start)
	}
	avg := total / n
	t.Logf("testbed: %d databases, %s each on average", n, avg.Round(time.Millisecond))
	// The target is well under 2s (0.1-0.5s on an idle 2-core machine,
	// about 1.2s with a load average of 20); fail only far above it, where
	// something is wrong rather than busy.
	if avg > 5*time.Second {
		t.Errorf("a database takes %s, want under 2s", avg)
	}
}

func TestPostgresDatabaseURLEnv(t *testing.T) {
	// Point the variable at a database of the shared server, as a
	// developer would at their own server.
	adminURL := Postgres(t)
	t.Setenv(DatabaseURLEnv, adminURL)

	dbURL := Postgres(t)
	admin, err := url.Parse(adminURL)
	if err != nil {
		t.Fatal(err)
	}
	got, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if got.Host != admin.Host || got.Path == admin.Path {
		t.Fatalf("database on %s%s, want a new one on %s", got.Host, got.Path, admin.Host)
	}
	checkMigrated(t, pgConnect(t, dbURL))
}

func TestPostgresDatabaseDropped(t *testing.T) {
	var name string
	t.Run("uses", func(t *testing.T) {
		u, err := url.Parse(Postgres(t))
		if err != nil {
			t.Fatal(err)
		}
		name = u.Path[1:]
	})
	var exists bool
	conn := pgConnect(t, Postgres(t))
	if err := conn.QueryRow(t.Context(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatalf("database %s still exists after its test ended", name)
	}
}
