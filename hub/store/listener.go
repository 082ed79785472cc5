package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/drover-dev/drover/internal/backoff"
)

const (
	// listenWindow: changes that arrive within it of the first are handed
	// over in one call, each once. A burst of writes on another replica
	// then costs one reload of each thing it changed.
	listenWindow = 50 * time.Millisecond
	// maxPendingChanges bounds what a Listener gathers while its handler
	// is busy; beyond it, reading everything again is cheaper.
	maxPendingChanges = 1024
	// listenPingInterval: a listening connection that has heard nothing
	// for this long is pinged, so one whose server vanished without a
	// word (a partition, a failover) is noticed and replaced.
	listenPingInterval = 30 * time.Second
	listenRetryBase    = 100 * time.Millisecond
	listenRetryMax     = 10 * time.Second
)

// ChangeHandler is told what other replicas changed. A Listener calls its
// methods from one goroutine, one call at a time; a slow call delays the
// next, whose changes gather meanwhile.
type ChangeHandler interface {
	// Changed gets changes that other replicas committed, each once, in
	// the order they arrived.
	Changed(ctx context.Context, changes []Change)
	// Resync says that changes may have been missed (the Listener was not
	// listening for a while, or could not keep up): everything must be
	// read again.
	Resync(ctx context.Context)
}

// ListenerStats counts what a Listener heard, for metrics.
type ListenerStats struct {
	// Received counts the notifications of other replicas.
	Received uint64
	// Own counts this Store's own notifications, skipped.
	Own uint64
	// Resyncs counts the handler's Resync calls.
	Resyncs uint64
}

// Listener hears the changes other replicas commit, on a connection of its
// own that LISTENs on ChangesChannel, and hands them to a ChangeHandler.
// PostgreSQL keeps no notification for a session that is not listening,
// so after every (re)connect the handler is told to Resync.
type Listener struct {
	store   *Store
	handler ChangeHandler

	received, own, resyncs atomic.Uint64

	// wake says that pending or resync changed.
	wake chan struct{}

	mu sync.Mutex // guards the fields below
	// pending are the changes heard since the handler was last called,
	// in arrival order; seen holds them as a set.
	pending []Change
	seen    map[Change]bool
	// resync is set when the handler must read everything again; it
	// makes pending moot.
	resync bool
}

// NewListener returns a Listener of s's database that tells h what other
// replicas change. Run starts it.
func (s *Store) NewListener(h ChangeHandler) *Listener {
	return &Listener{store: s, handler: h, wake: make(chan struct{}, 1), seen: map[Change]bool{}}
}

// Stats reports what the Listener heard so far.
func (l *Listener) Stats() ListenerStats {
	return ListenerStats{Received: l.received.Load(), Own: l.own.Load(), Resyncs: l.resyncs.Load()}
}

// Run listens and calls the handler until ctx ends. A lost connection is
// replaced, with backoff, for as long as it runs.
func (l *Listener) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { l.listen(ctx); return nil })
	g.Go(func() error { l.dispatch(ctx); return nil })
	return g.Wait()
}

// listen keeps a listening session up.
func (l *Listener) listen(ctx context.Context) {
	retry := backoff.New(listenRetryBase, listenRetryMax)
	for {
		listened, err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if listened {
			retry.Reset()
		}
		l.store.log.Warn("listen for other replicas' changes; reconnecting", "err", err)
		retry.Wait(ctx, err)
	}
}

// session connects, listens and receives until the connection fails.
// listened reports whether it got as far as listening.
func (l *Listener) session(ctx context.Context) (listened bool, err error) {
	cfg := l.store.pool.Config().ConnConfig
	// Which replica listens, for whoever reads pg_stat_activity.
	cfg.RuntimeParams["application_name"] = listenerAppName(l.store.instance)
	connectCtx, cancel := context.WithTimeout(ctx, max(l.store.queryTimeout, defaultQueryTimeout))
	conn, err := pgx.ConnectConfig(connectCtx, cfg)
	cancel()
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = conn.Close(closeCtx)
		cancel()
	}()
	qctx, cancel := l.store.queryCtx(ctx)
	_, err = conn.Exec(qctx, "LISTEN "+pgx.Identifier{ChangesChannel}.Sanitize())
	cancel()
	if err != nil {
		return false, fmt.Errorf("listen: %w", err)
	}
	// Whatever was committed before now was not heard.
	l.requestResync()
	for {
		waitCtx, cancel := context.WithTimeout(ctx, backoff.Jitter(listenPingInterval, 0.1))
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return true, ctx.Err()
		case err == nil:
			l.receive(n.Payload)
			continue
		case waitCtx.Err() == nil:
			return true, fmt.Errorf("wait for notifications: %w", err)
		}
		// Quiet for a while: check the server is still there. A timed
		// out wait leaves the connection usable.
		pctx, cancel := l.store.queryCtx(ctx)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return true, fmt.Errorf("ping: %w", err)
		}
	}
}

// listenerAppName is the application_name of a Store's listening
// connection.
func listenerAppName(instance string) string { return "drover-hub listener " + instance }

// receive takes in one notification.
func (l *Listener) receive(raw string) {
	from, ch := decodePayload(raw)
	if from == l.store.instance {
		l.own.Add(1)
		return
	}
	l.mu.Lock()
	switch {
	case l.resync:
	case ch.Kind == ChangeResync || len(l.pending) >= maxPendingChanges:
		l.setResyncLocked()
	case !l.seen[ch]:
		l.seen[ch] = true
		l.pending = append(l.pending, ch)
	}
	l.mu.Unlock()
	// Counted once gathered: a count that includes a change means it
	// is pending or handed over.
	l.received.Add(1)
	l.signal()
}

func (l *Listener) requestResync() {
	l.mu.Lock()
	l.setResyncLocked()
	l.mu.Unlock()
	l.signal()
}

func (l *Listener) setResyncLocked() {
	l.resync = true
	l.pending = nil
	clear(l.seen)
}

func (l *Listener) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// take returns what gathered and starts gathering anew.
func (l *Listener) take() (changes []Change, resync bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	changes, resync = l.pending, l.resync
	l.pending, l.resync = nil, false
	clear(l.seen)
	return changes, resync
}

// dispatch calls the handler with what gathered, a window after the first
// of it arrived.
func (l *Listener) dispatch(ctx context.Context) {
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		}
		t.Reset(listenWindow)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changes, resync := l.take()
		switch {
		case resync:
			// Reading everything covers what gathered with it.
			l.resyncs.Add(1)
			l.handler.Resync(ctx)
		case len(changes) > 0:
			l.handler.Changed(ctx, changes)
		}
	}
}
