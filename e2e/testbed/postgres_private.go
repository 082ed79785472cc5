package testbed

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/drover-dev/drover/hub/pgserver"
	"github.com/drover-dev/drover/migrations"
)

// PrivatePostgresServer is a PostgreSQL server of one test's own, which
// the test may stop and start (to test what outlives a database restart);
// Postgres(t)'s shared server must never be stopped.
type PrivatePostgresServer struct {
	// URL is the hub's migrated database "drover", the same across
	// restarts (same port, same password). It carries the password: do
	// not log it.
	URL string

	opts pgserver.Options

	mu  sync.Mutex // guards the fields below
	srv *pgserver.Server
}

// PrivatePostgres starts a PostgreSQL server for t alone, with a database
// "drover" with the hub's migrations applied. It stops when t ends.
func PrivatePostgres(t testing.TB) *PrivatePostgresServer {
	t.Helper()
	requireMain(t)
	// Directly under os.TempDir with mode 0755: when the tests run as root,
	// PostgreSQL runs as nobody and must be able to reach its directory.
	parent, err := os.MkdirTemp("", "drover-testbed-pg-")
	if err != nil {
		t.Fatalf("testbed: private PostgreSQL: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatalf("testbed: private PostgreSQL: %v", err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("testbed: private PostgreSQL: %v", err)
	}
	p := &PrivatePostgresServer{opts: pgserver.Options{
		Dir: filepath.Join(parent, "pg"),
		// Fixed, so that the URL clients hold stays right across restarts.
		Port:        port,
		Ephemeral:   true,
		StopTimeout: 10 * time.Second,
	}}
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.srv != nil {
			_ = p.srv.Stop() // already stopped by the test: nothing to do
		}
	})
	p.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := p.server().EnsureDatabase(ctx, "drover"); err != nil {
		t.Fatalf("testbed: private PostgreSQL: %v", err)
	}
	p.URL = p.server().URL("drover")
	if err := migrations.UpURL(ctx, p.URL); err != nil {
		t.Fatalf("testbed: private PostgreSQL: migrate: %v", err)
	}
	return p
}

func (p *PrivatePostgresServer) server() *pgserver.Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.srv
}

// Stop shuts the server down (PostgreSQL's fast mode: open transactions
// are rolled back, clients are disconnected) and waits for its end.
func (p *PrivatePostgresServer) Stop(t testing.TB) {
	t.Helper()
	if err := p.server().Stop(); err != nil {
		t.Fatalf("testbed: stop private PostgreSQL: %v", err)
	}
}

// Start starts the server (again) on the same directory and port, and
// waits until it accepts connections.
func (p *PrivatePostgresServer) Start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgserver.Start(ctx, p.opts)
	if err != nil {
		t.Fatalf("testbed: start private PostgreSQL: %v", err)
	}
	p.mu.Lock()
	p.srv = srv
	p.mu.Unlock()
}
