package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/drover-dev/drover/hub/pgserver"
	"github.com/drover-dev/drover/migrations"
)

// DatabaseURLEnv names an existing PostgreSQL server for Postgres to use
// instead of starting one, as a URL of a role that may create databases
// (PostgreSQL 13 or newer), e.g.
// postgres://postgres:secret@127.0.0.1:5432/postgres?sslmode=disable.
// Its database is used only to create and drop the tests' databases.
const DatabaseURLEnv = "DROVER_TEST_DATABASE_URL"

// A pgCluster is a server Postgres makes databases on: the shared local
// one or the one DatabaseURLEnv names.
type pgCluster struct {
	admin    *pgxpool.Pool // on the server's admin database
	base     *url.URL      // admin URL; a test database's URL differs in the path
	template string        // database with the migrations applied, cloned per test
}

// pgInit makes a pgCluster once; a failure is kept and reported to every
// test that asks, rather than retried by each.
type pgInit struct {
	once    sync.Once
	cluster *pgCluster
	err     error
}

var pgClusters struct {
	mu    sync.Mutex         // guards byURL
	byURL map[string]*pgInit // "" is the shared local server
}

// Postgres returns the URL of a new, empty database for t with the hub's
// migrations applied; it is dropped when t ends. The URL carries the
// password: do not log it.
//
// The server is DatabaseURLEnv's when set, otherwise one PostgreSQL server
// started from the machine's binaries for the whole test binary (the first
// call takes a few seconds; later ones clone a template database).
// Safe for parallel tests.
func Postgres(t testing.TB) string {
	t.Helper()
	requireMain(t)
	c, setup, err := clusterFor(os.Getenv(DatabaseURLEnv))
	if err != nil {
		t.Fatalf("testbed: PostgreSQL: %v", err)
	}
	if setup > 0 {
		t.Logf("testbed: PostgreSQL server and template %s ready in %s", c.template, setup)
	}

	name := "drover_test_" + randomHex(6)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	create := fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{c.template}.Sanitize())
	if _, err := c.admin.Exec(ctx, create); err != nil {
		t.Fatalf("testbed: create database %s on %s: %v", name, c.base.Redacted(), err)
	}
	t.Logf("testbed: database %s ready in %s", name, since(start))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// FORCE ends connections the test left open, e.g. a hub's pool.
		if _, err := c.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("testbed: drop database %s: %v", name, err)
		}
	})
	return c.databaseURL(name)
}

// clusterFor returns the cluster for envURL ("" = the shared local one),
// making it on first use; setup is how long that took for the caller that
// made it, else 0.
func clusterFor(envURL string) (c *pgCluster, setup time.Duration, err error) {
	pgClusters.mu.Lock()
	if pgClusters.byURL == nil {
		pgClusters.byURL = make(map[string]*pgInit)
	}
	in := pgClusters.byURL[envURL]
	if in == nil {
		in = &pgInit{}
		pgClusters.byURL[envURL] = in
	}
	pgClusters.mu.Unlock()

	in.once.Do(func() {
		start := time.Now()
		if envURL == "" {
			in.cluster, in.err = startSharedCluster()
		} else {
			in.cluster, in.err = openCluster(envURL)
		}
		setup = since(start)
	})
	return in.cluster, setup, in.err
}

// startSharedCluster starts the test binary's own PostgreSQL server, which
// Main stops.
func startSharedCluster() (*pgCluster, error) {
	// Directly under os.TempDir with mode 0755: when the tests run as root,
	// PostgreSQL runs as nobody and must be able to reach its directory.
	parent, err := os.MkdirTemp("", "drover-testbed-pg-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	if err := os.Chmod(parent, 0o755); err != nil {
		os.RemoveAll(parent)
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgserver.Start(ctx, pgserver.Options{
		Dir:         filepath.Join(parent, "pg"),
		Ephemeral:   true,
		Settings:    map[string]string{"max_connections": "300"},
		StopTimeout: 10 * time.Second,
	})
	if err != nil {
		os.RemoveAll(parent)
		return nil, err
	}
	atExit(func() {
		if err := srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testbed: stop PostgreSQL: %v\n", err)
		}
		os.RemoveAll(parent)
	})
	return openCluster(srv.URL("postgres"))
}

// openCluster connects to the server at adminURL and makes sure it has a
// template database for the current migrations.
func openCluster(adminURL string) (*pgCluster, error) {
	base, err := url.Parse(adminURL)
	if err != nil || (base.Scheme != "postgres" && base.Scheme != "postgresql") {
		// The text may hold a password: do not echo it.
		return nil, fmt.Errorf("%s is not a postgres:// URL", DatabaseURLEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := pgxpool.New(ctx, adminURL)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", base.Redacted(), err)
	}
	c := &pgCluster{
		admin: admin,
		base:  base,
		// Named for the migrations' content, so test binaries sharing one
		// server share a template, and a change to the migrations makes
		// a new one rather than reusing a stale one.
		template: "drover_template_" + migrations.Checksum()[:16],
	}
	if err := c.ensureTemplate(ctx); err != nil {
		admin.Close()
		return nil, err
	}
	atExit(admin.Close)
	return c, nil
}

// ensureTemplate creates the template database with the migrations applied
// unless a finished one exists. An advisory lock keeps other test binaries
// on the same server from doing the same at the same time.
func (c *pgCluster) ensureTemplate(ctx context.Context) error {
	// A connection of its own: closing it releases the lock whatever happens.
	conn, err := pgx.Connect(ctx, c.base.String())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", c.base.Redacted(), err)
	}
	defer conn.Close(context.Background())
	const lockKey = 0x64726f7665722d74 // "drover-t"
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(lockKey)); err != nil {
		return fmt.Errorf("lock for the template database: %w", err)
	}

	ident := pgx.Identifier{c.template}.Sanitize()
	var isTemplate bool
	err = conn.QueryRow(ctx, "SELECT datistemplate FROM pg_database WHERE datname = $1", c.template).Scan(&isTemplate)
	switch {
	case err == nil && isTemplate:
		return nil
	case err == nil:
		// Left half made by a test binary that died; start over.
		if _, err := conn.Exec(ctx, "DROP DATABASE "+ident+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop unfinished template database %s: %w", c.template, err)
		}
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("look up template database %s: %w", c.template, err)
	}

	if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident+" TEMPLATE template0 ENCODING 'UTF8'"); err != nil {
		return fmt.Errorf("create template database %s: %w", c.template, err)
	}
	if err := migrations.UpURL(ctx, c.databaseURL(c.template)); err != nil {
		return fmt.Errorf("migrate template database %s: %w", c.template, err)
	}
	// No connections: a connection to a template blocks cloning it.
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("mark template database %s: %w", c.template, err)
	}
	return nil
}

func (c *pgCluster) databaseURL(name string) string {
	u := *c.base
	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
}

func randomHex(nBytes int) string {
	b := make([]byte, nBytes)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
