package store

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/drover-dev/drover/internal/backoff"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Defaults of NewStatusWriter.
const (
	DefaultStatusBatch        = 500
	DefaultStatusDelay        = 500 * time.Millisecond
	DefaultMaxPendingStatuses = 100_000
	statusRetryBase           = 500 * time.Millisecond
	statusRetryMax            = 30 * time.Second
	statusFlushRetryMax       = 5 * time.Second
)

// StatusWriter batches status reports into the store.
//
// Policy: Enqueue never blocks and never does I/O. Statuses are coalesced
// by (cluster, application): a newer one replaces the one still waiting, so
// the backlog holds at most one status per key, however often agents
// report and however long the database is away. Run writes the backlog in
// batches of up to maxBatch, maxDelay after the first status arrived (at
// once when a full batch is waiting). A batch that fails is put back (a
// newer status of the same key, enqueued meanwhile, wins) and retried with
// backoff, so a status Enqueue accepted is written once the database
// answers again. Only a status the database refuses as data (after the
// batch is retried row by row) is dropped, with an error log.
//
// The backlog is bounded by maxPending keys (default 100,000) against
// agents reporting statuses of applications without end: a status of a new
// key is refused (Enqueue returns false, counted in Stats) while the
// backlog is full. Agents send a full report periodically, which restores
// anything refused.
type StatusWriter struct {
	store      *Store
	log        *slog.Logger
	maxBatch   int
	maxDelay   time.Duration
	maxPending int

	// wake is signalled, never blocking, by every enqueue; Run looks at
	// the backlog's size to decide whether to write now or wait.
	wake chan struct{}

	// onWritten, when set, is called after every successful write.
	onWritten func()

	// flushMu serialises writes, so an older status of a key never
	// overwrites a newer one written by a concurrent flush.
	flushMu sync.Mutex

	mu      sync.Mutex // guards the fields below
	pending map[statusKey]pendingStatus
	// pendingApps indexes pending by cluster, so that a full report
	// touches only its own cluster's backlog, not every cluster's.
	pendingApps map[string]map[string]struct{}
	prunes      map[string]pendingPrune // by cluster
	// removals are statuses to delete on their agent's word that it
	// removed the application, with the seq of that word.
	removals map[statusKey]uint64
	seq      uint64 // numbers enqueues
	dropped  uint64
	failures int
	lastErr  error
}

type pendingStatus struct {
	st  *droverv1.ApplicationStatus
	seq uint64
}

// pendingPrune is a full report's instruction to delete the cluster's
// other statuses.
type pendingPrune struct {
	keep map[string]struct{}
	seq  uint64
}

// StatusWriterOption changes a StatusWriter.
type StatusWriterOption func(*StatusWriter)

// WithMaxPending bounds the backlog to n distinct (cluster, application)
// keys.
func WithMaxPending(n int) StatusWriterOption {
	return func(w *StatusWriter) {
		if n > 0 {
			w.maxPending = n
		}
	}
}

// WithOnWritten has the writer call fn after every successful write, on
// the writing goroutine; fn must return quickly. The hub's dashboard uses
// it to tell open pages that statuses changed.
func WithOnWritten(fn func()) StatusWriterOption {
	return func(w *StatusWriter) { w.onWritten = fn }
}

// NewStatusWriter returns a StatusWriter on store. maxBatch <= 0 means
// DefaultStatusBatch, maxDelay <= 0 DefaultStatusDelay. Call Run to write.
func NewStatusWriter(store *Store, logger *slog.Logger, maxBatch int, maxDelay time.Duration, opts ...StatusWriterOption) *StatusWriter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if maxBatch <= 0 {
		maxBatch = DefaultStatusBatch
	}
	if maxDelay <= 0 {
		maxDelay = DefaultStatusDelay
	}
	w := &StatusWriter{
		store:       store,
		log:         logger,
		maxBatch:    maxBatch,
		maxDelay:    maxDelay,
		maxPending:  DefaultMaxPendingStatuses,
		wake:        make(chan struct{}, 1),
		pending:     map[statusKey]pendingStatus{},
		pendingApps: map[string]map[string]struct{}{},
		prunes:      map[string]pendingPrune{},
		removals:    map[statusKey]uint64{},
	}
	for _, o := range opts {
		o(w)
	}
	return w
}

// Enqueue accepts st for writing and returns true, or returns false when
// the backlog is full (see the type's policy). The writer owns st from
// now on: the caller must not change it.
func (w *StatusWriter) Enqueue(st *droverv1.ApplicationStatus) bool {
	if st == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	ok := w.enqueueLocked(st)
	w.signalLocked()
	return ok
}

// EnqueueFull accepts a cluster's full report: sts are every status the
// agent has, and the cluster's statuses of applications neither in sts
// nor in also are deleted (before, in write order, anything enqueued after
// this call). Every status must name cluster. It returns false when some
// of sts were refused: by the backlog bound, or for naming another
// cluster.
func (w *StatusWriter) EnqueueFull(cluster string, sts []*droverv1.ApplicationStatus, also []string) bool {
	keep := make(map[string]struct{}, len(sts)+len(also))
	for _, app := range also {
		keep[app] = struct{}{}
	}
	for _, st := range sts {
		if st != nil && st.GetCluster() == cluster {
			keep[st.GetApplication()] = struct{}{}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	w.prunes[cluster] = pendingPrune{keep: keep, seq: w.seq}
	// What waits for other applications of the cluster is older than this
	// report; writing it after the prune would bring it back.
	for app := range w.pendingApps[cluster] {
		if _, kept := keep[app]; !kept {
			w.unpendLocked(statusKey{cluster, app})
		}
	}
	ok := true
	for _, st := range sts {
		if st == nil || st.GetCluster() != cluster {
			ok = false
			continue
		}
		ok = w.enqueueLocked(st) && ok
	}
	w.signalLocked()
	return ok
}

// EnqueueRemoved accepts an agent's word that it removed apps from
// cluster: their statuses there are deleted (before, in write order,
// anything enqueued after this call). The caller checked that none of
// apps is assigned to cluster.
func (w *StatusWriter) EnqueueRemoved(cluster string, apps []string) {
	if len(apps) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	for _, app := range apps {
		k := statusKey{cluster, app}
		// A status still waiting is older than the removal; written after
		// it, it would bring the row back.
		w.unpendLocked(k)
		w.removals[k] = w.seq
	}
	w.signalLocked()
}

func (w *StatusWriter) enqueueLocked(st *droverv1.ApplicationStatus) bool {
	k := statusKey{st.GetCluster(), st.GetApplication()}
	if _, ok := w.pending[k]; !ok && len(w.pending) >= w.maxPending {
		w.dropped++
		return false
	}
	w.seq++
	w.pendLocked(k, pendingStatus{st: st, seq: w.seq})
	return true
}

// pendLocked and unpendLocked change pending and its index together.
func (w *StatusWriter) pendLocked(k statusKey, p pendingStatus) {
	w.pending[k] = p
	apps := w.pendingApps[k.cluster]
	if apps == nil {
		apps = map[string]struct{}{}
		w.pendingApps[k.cluster] = apps
	}
	apps[k.application] = struct{}{}
}

func (w *StatusWriter) unpendLocked(k statusKey) {
	delete(w.pending, k)
	if apps := w.pendingApps[k.cluster]; apps != nil {
		delete(apps, k.application)
		if len(apps) == 0 {
			delete(w.pendingApps, k.cluster)
		}
	}
}

func (w *StatusWriter) signalLocked() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// StatusWriterStats describe a StatusWriter's backlog.
type StatusWriterStats struct {
	// Pending is the number of statuses waiting to be written.
	Pending int
	// Dropped counts statuses refused because the backlog was full, and
	// statuses the database refused as data.
	Dropped uint64
	// Failures counts consecutive failed writes; 0 after a success.
	Failures int
	// LastError is the error of the last failed write, nil after a success.
	LastError error
}

// Stats returns the writer's current state.
func (w *StatusWriter) Stats() StatusWriterStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return StatusWriterStats{Pending: len(w.pending), Dropped: w.dropped, Failures: w.failures, LastError: w.lastErr}
}

// Run writes the backlog until ctx ends. What is still waiting then stays
// in the writer: call Flush with a fresh deadline to write it on shutdown.
func (w *StatusWriter) Run(ctx context.Context) {
	b := backoff.New(statusRetryBase, statusRetryMax)
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		if !w.waitForBatch(ctx) {
			return
		}
		for w.hasWork() {
			err := w.flushOnce(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				w.log.Error("write statuses", "err", err, "pending", w.Stats().Pending, "attempt", b.Failures()+1)
				b.Wait(ctx, err)
				continue
			}
			b.Reset()
		}
	}
}

// waitForBatch waits maxDelay for a full batch to gather; false when ctx
// ended.
func (w *StatusWriter) waitForBatch(ctx context.Context) bool {
	t := time.NewTimer(w.maxDelay)
	defer t.Stop()
	for w.pendingLen() < w.maxBatch {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-w.wake:
		}
	}
	return true
}

func (w *StatusWriter) pendingLen() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

func (w *StatusWriter) hasWork() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending) > 0 || len(w.prunes) > 0 || len(w.removals) > 0
}

// Flush writes everything enqueued before it was called, retrying failed
// writes, and returns nil once that is written, or an error when ctx ends
// first. Enqueues made while Flush runs may be written too.
func (w *StatusWriter) Flush(ctx context.Context) error {
	w.mu.Lock()
	upTo := w.seq
	w.mu.Unlock()
	b := backoff.New(statusRetryBase, statusFlushRetryMax)
	for w.hasWorkUpTo(upTo) {
		err := w.flushOnce(ctx)
		if err == nil {
			b.Reset()
			continue
		}
		b.Wait(ctx, err)
		if ctx.Err() != nil {
			return fmt.Errorf("flush statuses: %w (last error: %w)", ctx.Err(), err)
		}
	}
	return nil
}

// hasWorkUpTo reports whether anything enqueued up to seq still waits.
func (w *StatusWriter) hasWorkUpTo(seq uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.prunes {
		if p.seq <= seq {
			return true
		}
	}
	for _, p := range w.pending {
		if p.seq <= seq {
			return true
		}
	}
	for _, rs := range w.removals {
		if rs <= seq {
			return true
		}
	}
	return false
}

// flushOnce writes the pending prunes and removals, then up to one batch
// of statuses. What fails to be written is put back.
func (w *StatusWriter) flushOnce(ctx context.Context) error {
	w.flushMu.Lock()
	defer w.flushMu.Unlock()

	w.mu.Lock()
	prunes := w.prunes
	w.prunes = map[string]pendingPrune{}
	removals := w.removals
	w.removals = map[statusKey]uint64{}
	batch := make([]statusKeyed, 0, min(len(w.pending), w.maxBatch))
	for k, p := range w.pending {
		if len(batch) == w.maxBatch {
			break
		}
		batch = append(batch, statusKeyed{k, p})
		w.unpendLocked(k)
	}
	w.mu.Unlock()

	if len(prunes) > 0 {
		keep := make(map[string][]string, len(prunes))
		for cluster, p := range prunes {
			keep[cluster] = slices.Collect(maps.Keys(p.keep))
		}
		if err := w.store.PruneStatuses(ctx, keep); err != nil {
			w.requeue(prunes, removals, batch)
			return w.failed(err)
		}
	}
	if len(removals) > 0 {
		byCluster := map[string][]string{}
		for k := range removals {
			byCluster[k.cluster] = append(byCluster[k.cluster], k.application)
		}
		if err := w.store.RemoveStatuses(ctx, byCluster); err != nil {
			// The prunes are written; putting them back would only repeat
			// them.
			w.requeue(nil, removals, batch)
			return w.failed(err)
		}
	}
	if len(batch) == 0 {
		return w.succeeded()
	}
	sts := make([]*droverv1.ApplicationStatus, len(batch))
	for i, b := range batch {
		sts[i] = b.st
	}
	err := w.store.WriteStatuses(ctx, sts)
	if err != nil && isPoison(err) && len(batch) > 1 {
		// One status the database refuses must not hold back the rest:
		// write them one by one and drop only the refused.
		w.log.Warn("status batch refused as data, writing it row by row", "statuses", len(batch), "err", err)
		return w.writeEach(ctx, batch)
	}
	if err != nil {
		if isPoison(err) {
			w.drop(batch[0], err)
			return w.succeeded()
		}
		w.requeue(nil, nil, batch)
		return w.failed(err)
	}
	return w.succeeded()
}

type statusKeyed struct {
	key statusKey
	pendingStatus
}

func (w *StatusWriter) writeEach(ctx context.Context, batch []statusKeyed) error {
	for i, b := range batch {
		err := w.store.WriteStatuses(ctx, []*droverv1.ApplicationStatus{b.st})
		switch {
		case err == nil:
		case isPoison(err):
			w.drop(b, err)
		default:
			w.requeue(nil, nil, batch[i:])
			return w.failed(err)
		}
	}
	return w.succeeded()
}

func (w *StatusWriter) drop(b statusKeyed, err error) {
	w.log.Error("status refused by the database, dropped", "cluster", b.key.cluster, "app", b.key.application, "err", err)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dropped++
}

// requeue puts back what a failed flush took, unless something newer took
// its place meanwhile: a newer status of the same key, or a newer full
// report of the cluster that no longer lists the application, or a newer
// removal of it.
func (w *StatusWriter) requeue(prunes map[string]pendingPrune, removals map[statusKey]uint64, batch []statusKeyed) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for cluster, p := range prunes {
		if cur, ok := w.prunes[cluster]; !ok || cur.seq < p.seq {
			w.prunes[cluster] = p
		}
	}
	for k, seq := range removals {
		// A status enqueued after the removal (the application placed on
		// the cluster again) must still be written after it, which the
		// flush order (removals before statuses) keeps.
		if cur, ok := w.removals[k]; !ok || cur < seq {
			w.removals[k] = seq
		}
	}
	for _, b := range batch {
		if _, newer := w.pending[b.key]; newer {
			continue
		}
		if seq, ok := w.removals[b.key]; ok && seq > b.seq {
			continue
		}
		if p, ok := w.prunes[b.key.cluster]; ok && p.seq > b.seq {
			if _, kept := p.keep[b.key.application]; !kept {
				continue
			}
		}
		// Accepted once already: the backlog bound does not apply again.
		w.pendLocked(b.key, b.pendingStatus)
	}
}

func (w *StatusWriter) failed(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failures++
	w.lastErr = err
	return err
}

func (w *StatusWriter) succeeded() error {
	w.mu.Lock()
	w.failures = 0
	w.lastErr = nil
	w.mu.Unlock()
	if w.onWritten != nil {
		w.onWritten()
	}
	return nil
}
