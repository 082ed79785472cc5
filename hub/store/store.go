// Package store is the hub's only access to PostgreSQL: clusters and their
// join tokens, applications and releases, repository credentials (sealed
// elsewhere), per-cluster application status, the event history, admin API
// tokens and hub settings. The schema lives in migrations/.
//
// The droverv1 proto types are the currency. Proto messages kept whole
// (cluster facts, application specs, resource statuses) are stored as
// protojson in jsonb columns.
//
// Every method takes a context and bounds each database call with the
// store's query timeout. Errors are wrapped; callers branch on ErrNotFound,
// ErrConflict, ErrTokenInvalid (*TokenError) and ErrInvalidArgument
// (*ValidationError) with errors.Is / errors.As, and on retry.IsTransient
// for whether to retry. Timestamps read back have PostgreSQL's microsecond
// precision.
//
// Status reports arrive from thousands of agents; StatusWriter coalesces
// and batches them into WriteStatuses.
//
// Several hub replicas share one database. Every write that changes what
// a replica holds in memory notifies ChangesChannel in its own transaction
// (a Change: a kind and a name, never the data), and a Listener on every
// replica hears what the others changed; high-rate changes are coalesced
// into one notification of each kind per signal window.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	defaultQueryTimeout = 10 * time.Second
	// defaultMaxConns bounds the pool: status batching keeps the hub's
	// write load to a few connections, and several replicas share one
	// server whose max_connections defaults to 100.
	defaultMaxConns = 16
	defaultMinConns = 2
)

// Store is the hub's PostgreSQL store. It is safe for concurrent use.
type Store struct {
	pool         *pgxpool.Pool
	log          *slog.Logger
	queryTimeout time.Duration
	// instance names this Store in the notifications it sends.
	instance string
	// signals coalesces the notifications of high-rate changes.
	signals *signaler
}

// Option changes how Open builds the Store.
type Option func(*options)

type options struct {
	queryTimeout time.Duration
	maxConns     int32
	replica      string
	instanceID   string
	signalWindow time.Duration
}

// WithReplica names the hub replica the store serves. Its connections
// carry application_name "drover-hub:NAME" (pg_stat_activity shows which
// replica holds each), and events recorded through them say which replica
// recorded them.
func WithReplica(name string) Option {
	return func(o *options) { o.replica = name }
}

// WithQueryTimeout bounds every database call (default 10 s). Calls whose
// context has an earlier deadline keep it.
func WithQueryTimeout(d time.Duration) Option {
	return func(o *options) { o.queryTimeout = d }
}

// WithMaxConns sets the pool's connection limit (default 16, or the URL's
// pool_max_conns when it sets one).
func WithMaxConns(n int) Option {
	return func(o *options) { o.maxConns = int32(n) }
}

// WithInstanceID names the Store in the change notifications it sends
// (default: random), so that its own Listener skips them. Two Stores of
// one hub process must not share it.
func WithInstanceID(id string) Option {
	return func(o *options) { o.instanceID = id }
}

// WithSignalWindow sets how long high-rate changes (statuses, agent
// answers and connections, events) are gathered into one notification of
// each kind (default 200 ms).
func WithSignalWindow(d time.Duration) Option {
	return func(o *options) { o.signalWindow = d }
}

// Open connects to the database at url (a postgres:// URL or key=value DSN)
// and checks it answers. The schema must have been migrated already
// (migrations.Up). The URL's password never appears in errors or logs.
func Open(ctx context.Context, url string, logger *slog.Logger, opts ...Option) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	o := options{queryTimeout: defaultQueryTimeout, signalWindow: defaultSignalWindow}
	for _, opt := range opts {
		opt(&o)
	}
	if o.queryTimeout <= 0 {
		return nil, invalid("query_timeout", "must be positive, got %v", o.queryTimeout)
	}
	if o.signalWindow <= 0 {
		return nil, invalid("signal_window", "must be positive, got %v", o.signalWindow)
	}
	if o.instanceID == "" {
		o.instanceID = NewInstanceID()
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgconn redacts the password from its parse errors.
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	// Pool settings in the URL (pool_max_conns=...) win over the defaults
	// below; WithMaxConns wins over both.
	switch {
	case o.maxConns > 0:
		cfg.MaxConns = o.maxConns
	case !strings.Contains(url, "pool_max_conns"):
		cfg.MaxConns = defaultMaxConns
	}
	if !strings.Contains(url, "pool_min_conns") && cfg.MaxConns >= defaultMinConns {
		cfg.MinConns = defaultMinConns
	}
	if !strings.Contains(url, "pool_max_conn_lifetime") {
		// Recycle connections so a failover or a changed DNS name is picked
		// up; pgxpool jitters the lifetime.
		cfg.MaxConnLifetime = 30 * time.Minute
	}
	if o.replica != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "drover-hub:" + o.replica
	}
	cfg.MaxConnIdleTime = 5 * time.Minute
	cfg.HealthCheckPeriod = 30 * time.Second

	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database %s: %w", describe(cfg), err)
	}
	// The first connection authenticates (SCRAM hashing, maybe TLS), which
	// is not what a short per-query timeout bounds.
	pingCtx, cancel := context.WithTimeout(ctx, max(o.queryTimeout, defaultQueryTimeout))
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database %s: ping database: %w", describe(cfg), err)
	}
	s := &Store{pool: pool, log: logger, queryTimeout: o.queryTimeout, instance: o.instanceID}
	s.signals = newSignaler(o.signalWindow, s.sendSignals)
	return s, nil
}

// describe names the database for errors without the password.
func describe(cfg *pgxpool.Config) string {
	c := cfg.ConnConfig
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

// Close sends the change notifications still gathered and closes every
// connection. Calls in flight finish first.
func (s *Store) Close() {
	// Bounded: with the database away, shutdown must not wait a query
	// timeout for a hint.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	s.signals.close(ctx)
	cancel()
	s.pool.Close()
}

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	return nil
}

// queryCtx bounds one database call.
func (s *Store) queryCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.queryTimeout)
}

// inTx runs fn in a transaction bounded by the query timeout, committing
// when fn returns nil and rolling back otherwise.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	// Rollback after Commit is a no-op; on the error paths it is the undo
	// (and with ctx done, pgx closes the connection instead).
	defer tx.Rollback(ctx) //nolint:errcheck
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// execOne runs one statement and returns ErrNotFound when it touched no row.
func (s *Store) execOne(ctx context.Context, op, sql string, args ...any) error {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	tag, err := s.pool.Exec(ctx, sql, args...)
	if err != nil {
		return classify(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	return nil
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}
