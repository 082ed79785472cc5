package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// ChangesChannel is the PostgreSQL channel every hub replica LISTENs on
// for what another replica changed.
const ChangesChannel = "drover_changes"

// maxPayloadBytes: PostgreSQL refuses a NOTIFY payload of 8000 bytes or
// more (in its default build).
const maxPayloadBytes = 8000

// defaultSignalWindow is how long the store gathers high-rate signals
// (statuses, agent answers and connections, events) before it sends one
// notification of each kind: thousands of agents must not cost a notify
// each.
const defaultSignalWindow = 200 * time.Millisecond

// ChangeKind says what changed; with the Change's Name it says what a
// replica must read again from the store.
type ChangeKind string

// Kinds of change. The state changes (app, release, cluster, repo,
// rollout) are sent in the transaction of the write, so a replica that
// hears of one reads the committed write. The signals (statuses, agents,
// events) carry no name and are coalesced: they only say that something
// rollouts and dashboards observe moved.
const (
	// ChangeApp: an application was created, updated or deleted.
	ChangeApp ChangeKind = "app"
	// ChangeRelease: a release of the application Name was added.
	ChangeRelease ChangeKind = "release"
	// ChangeCluster: a cluster was registered, relabelled, revoked or
	// deleted.
	ChangeCluster ChangeKind = "cluster"
	// ChangeRepo: credentials of the repository URL Name were stored or
	// deleted.
	ChangeRepo ChangeKind = "repo"
	// ChangeRollout: the rollout state of the application Name was stored
	// or deleted.
	ChangeRollout ChangeKind = "rollout"
	// ChangeStatuses: application statuses were written or deleted.
	ChangeStatuses ChangeKind = "statuses"
	// ChangeAgents: an agent answered an assignment, connected or
	// disconnected.
	ChangeAgents ChangeKind = "agents"
	// ChangeEvents: events were recorded.
	ChangeEvents ChangeKind = "events"
	// ChangeResync: read everything again. Sent for a change that cannot
	// be named within a notification, and what a listener makes of a
	// notification it cannot read (a newer replica's kind).
	ChangeResync ChangeKind = "resync"
)

func (k ChangeKind) known() bool {
	switch k {
	case ChangeApp, ChangeRelease, ChangeCluster, ChangeRepo, ChangeRollout,
		ChangeStatuses, ChangeAgents, ChangeEvents, ChangeResync:
		return true
	}
	return false
}

// Change is one notification: what changed, never the data; a replica
// reads that from the store.
type Change struct {
	Kind ChangeKind
	// Name is the application, cluster or repository URL; "" for the
	// signals and ChangeResync.
	Name string
}

// payload is a notification on ChangesChannel.
type payload struct {
	// From is the sending store's instance ID: a replica skips its own
	// notifications, whose changes it applied already.
	From string     `json:"from"`
	Kind ChangeKind `json:"kind"`
	Name string     `json:"name,omitempty"`
}

// encodePayload is the notification of ch from instance. A name that does
// not fit (or is not text PostgreSQL can carry) becomes ChangeResync: a
// notification that fails would fail the write it goes with.
func encodePayload(instance string, ch Change) string {
	if utf8.ValidString(ch.Name) {
		// json.Marshal of strings and a string type cannot fail.
		b, _ := json.Marshal(payload{From: instance, Kind: ch.Kind, Name: ch.Name})
		if len(b) < maxPayloadBytes {
			return string(b)
		}
	}
	b, _ := json.Marshal(payload{From: instance, Kind: ChangeResync})
	return string(b)
}

// decodePayload reads a notification. One it cannot read (another
// version's) is ChangeResync from nobody: reading everything again is
// always right.
func decodePayload(s string) (from string, ch Change) {
	var p payload
	if err := json.Unmarshal([]byte(s), &p); err != nil || !p.Kind.known() {
		return "", Change{Kind: ChangeResync}
	}
	return p.From, Change{Kind: p.Kind, Name: p.Name}
}

// NewInstanceID returns a random ID for a running process: a store given
// none, a replica's membership, a lease holder.
func NewInstanceID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// InstanceID identifies this Store in the notifications it sends.
func (s *Store) InstanceID() string { return s.instance }

// notifyTx sends ch on ChangesChannel within the transaction (or the
// single statement's implicit one) of db: PostgreSQL delivers it when the
// write commits, and never when it rolls back. Identical notifications in
// one transaction are delivered once.
func (s *Store) notifyTx(ctx context.Context, db execer, ch Change) error {
	if _, err := db.Exec(ctx, `SELECT pg_notify($1, $2)`, ChangesChannel, encodePayload(s.instance, ch)); err != nil {
		return classify("notify "+string(ch.Kind), err)
	}
	return nil
}

// inTxNotify is inTx that also sends ch when fn succeeds, in the same
// transaction.
func (s *Store) inTxNotify(ctx context.Context, ch Change, fn func(tx pgx.Tx) error) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return s.notifyTx(ctx, tx, ch)
	})
}

// execOneNotify is execOne that also sends ch when the statement touched
// a row, in its transaction.
func (s *Store) execOneNotify(ctx context.Context, op string, ch Change, sql string, args ...any) error {
	err := s.inTxNotify(ctx, ch, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return pgx.ErrNoRows // nothing changed: nothing to tell
		}
		return nil
	})
	if err != nil {
		return classify(op, err)
	}
	return nil
}

// signaler coalesces the store's high-rate signals: a kind marked any
// number of times within its window is sent once, outside any
// transaction, when the window ends.
type signaler struct {
	window time.Duration
	send   func(ctx context.Context, kinds []ChangeKind)

	mu sync.Mutex // guards the fields below
	// pending are the kinds marked since the last send.
	pending map[ChangeKind]bool
	// timer ends the current window; nil when none is open.
	timer  *time.Timer
	closed bool
	// sending counts sends in flight, so close waits for them.
	sending sync.WaitGroup
}

func newSignaler(window time.Duration, send func(ctx context.Context, kinds []ChangeKind)) *signaler {
	return &signaler{window: window, send: send, pending: map[ChangeKind]bool{}}
}

// mark records that kind happened; it never blocks on the database.
func (g *signaler) mark(kind ChangeKind) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.pending[kind] = true
	if g.timer == nil {
		g.sending.Add(1)
		g.timer = time.AfterFunc(g.window, g.fire)
	}
}

// fire ends a window.
func (g *signaler) fire() {
	defer g.sending.Done()
	g.mu.Lock()
	g.timer = nil
	g.mu.Unlock()
	g.flush(context.Background())
}

// flush sends what is pending now, ending the window.
func (g *signaler) flush(ctx context.Context) {
	g.mu.Lock()
	kinds := make([]ChangeKind, 0, len(g.pending))
	for k := range g.pending {
		kinds = append(kinds, k)
	}
	clear(g.pending)
	if g.timer != nil && g.timer.Stop() {
		g.sending.Done() // its fire will not run
	}
	g.timer = nil
	g.mu.Unlock()
	if len(kinds) > 0 {
		g.send(ctx, kinds)
	}
}

// close sends what is pending and stops; marks after it are dropped.
func (g *signaler) close(ctx context.Context) {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.flush(ctx)
	g.sending.Wait()
}

// sendSignals notifies each kind once, in one statement. A failure is
// logged only: a signal is a hint, and every replica also steps its
// rollouts and refreshes its pages on a timer.
func (s *Store) sendSignals(ctx context.Context, kinds []ChangeKind) {
	payloads := make([]string, len(kinds))
	for i, k := range kinds {
		payloads[i] = encodePayload(s.instance, Change{Kind: k})
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p`, ChangesChannel, payloads); err != nil {
		s.log.Warn("notify other replicas", "kinds", len(kinds), "err", err)
	}
}

// signal marks a high-rate change for the next coalesced notification.
func (s *Store) signal(kind ChangeKind) { s.signals.mark(kind) }

// signalOnSuccess signals kind when err is nil, and returns err.
func (s *Store) signalOnSuccess(kind ChangeKind, err error) error {
	if err == nil {
		s.signal(kind)
	}
	return err
}
