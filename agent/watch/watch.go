// Package watch tells the agent, within seconds, that an object it applied
// was changed by someone else, so that self-heal does not wait for the
// sync interval.
//
// A Watcher keeps one metadata-only watch per kind that some application
// holds (apply.ObjectRef), across applications, cluster-wide and selected
// by apply.LabelApplication, so that nothing else in the cluster is cached.
// A watch starts when an application first holds an object of its kind
// and stops when no application holds one any more.
//
// An event is a possible drift (see changed) when an object held was
// deleted, or a write touched what Drover applied. Writes that cannot
// have — a status update, a controller's own annotations on an object
// with a generation — are ignored, or every Deployment rollout would loop.
// Possible drift is debounced per application and handed to the agent's
// reconciler, whose sync decides, against the inventory, what really
// drifted: with selfHeal it re-applies, without it reports OutOfSync.
// The sync interval stays as a backstop for anything a watch missed.
//
// The agent's own applies are recognised by their managed fields (the
// newest write is Drover's) and ask for nothing. A Deployment's controller
// writing its revision annotation after a new template moves its
// generation, which costs one sync that finds nothing and writes nothing,
// so it settles. An application whose objects keep changing under it (a
// controller fighting Drover over a field) is synced ever less often, up
// to once a minute, until its objects stay quiet.
package watch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"github.com/drover-dev/drover/agent/apply"
)

// Resources maps a kind to the resource that serves it
// (apply.Applier.ResourceFor).
type Resources interface {
	ResourceFor(gvk schema.GroupVersionKind) (schema.GroupVersionResource, error)
}

// Config tunes a Watcher.
type Config struct {
	// Quiet is how long an application's objects must stay unchanged
	// before it is synced: a kubectl edit of several objects, or a
	// rollout's burst of writes, makes one sync. 0 means 1s.
	Quiet time.Duration
	// MaxDelay bounds the wait from the first change to the sync, however
	// busy the objects are. 0 means 3s.
	MaxDelay time.Duration
	// Settle is how soon after a sync a change counts as the same
	// episode: syncs that keep following each other closer than it are
	// spaced ever further apart, up to MaxBackoff. 0 means 5s.
	Settle time.Duration
	// MaxBackoff bounds that spacing. 0 means 1m.
	MaxBackoff time.Duration
}

func (c *Config) setDefaults() {
	if c.Quiet <= 0 {
		c.Quiet = time.Second
	}
	if c.MaxDelay < c.Quiet {
		c.MaxDelay = max(3*time.Second, c.Quiet)
	}
	if c.Settle <= 0 {
		c.Settle = 5 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Minute
	}
}

// Watcher watches the objects applications hold. Its methods are safe for
// concurrent use.
type Watcher struct {
	cfg       Config
	log       *slog.Logger
	client    metadata.Interface
	resources Resources
	// current says whether an application is still one to watch for.
	// Hold calls it with w.mu held, so that a Prune made after an
	// application left always comes after that Hold: current must not
	// call back into the Watcher. drift is called when an application's
	// objects possibly drifted, on a timer's goroutine without w.mu held;
	// it must not block for long.
	current func(app string) bool
	drift   func(app string)

	mu sync.Mutex // guards the fields below
	// held: per application, the objects it holds by key; owners the
	// reverse.
	held   map[string]map[string]bool
	owners map[string]string
	kinds  map[schema.GroupKind]*kindWatch
	// pending are the applications waiting out their debounce.
	pending map[string]*pending
	// last is when each application was last handed to drift, and
	// streak how many of those came each within Settle of the one before.
	last   map[string]time.Time
	streak map[string]int
	// syncs counts, per application, the syncs asked for.
	syncs  map[string]int64
	closed bool
}

// kindWatch is the watch of one kind.
type kindWatch struct {
	gvr    schema.GroupVersionResource
	synced cache.InformerSynced
	holds  int // objects held of this kind, across applications
	cancel context.CancelFunc
	done   chan struct{}
}

// pending is an application waiting out its debounce.
type pending struct {
	// first is when the wait began (after any backoff); notBefore is
	// when the backoff ends.
	first, notBefore time.Time
	// continues: the first change came within Settle of the last sync
	// asked for, so this sync continues its streak.
	continues bool
	timer     *time.Timer
}

// New returns a Watcher that reads through client. current reports
// whether an application is still in the agent's assignment; drift is
// called when an application's objects possibly drifted.
func New(cfg Config, client metadata.Interface, resources Resources, current func(app string) bool, drift func(app string), logger *slog.Logger) *Watcher {
	cfg.setDefaults()
	return &Watcher{
		cfg: cfg, log: logger, client: client, resources: resources, current: current, drift: drift,
		held: map[string]map[string]bool{}, owners: map[string]string{},
		kinds:   map[schema.GroupKind]*kindWatch{},
		pending: map[string]*pending{}, last: map[string]time.Time{}, streak: map[string]int{},
		syncs: map[string]int64{},
	}
}

// Hold makes objs the objects app holds, replacing those it held: for
// each of their kinds a watch runs. An application current no longer
// accepts is released instead.
func (w *Watcher) Hold(app string, objs []apply.ObjectRef) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if !w.current(app) {
		w.releaseLocked(app)
		return
	}
	next := make(map[string]bool, len(objs))
	byKey := make(map[string]apply.ObjectRef, len(objs))
	for _, o := range objs {
		k := key(schema.GroupKind{Group: o.Group, Kind: o.Kind}, o.Namespace, o.Name)
		if owner, ok := w.owners[k]; ok && owner != app {
			// apply never lets two applications hold one object.
			continue
		}
		next[k] = true
		byKey[k] = o
	}
	prev := w.held[app]
	for k := range prev {
		if !next[k] {
			w.dropLocked(k)
		}
	}
	for k, o := range byKey {
		if prev[k] {
			continue
		}
		gvk := schema.GroupVersionKind{Group: o.Group, Version: o.Version, Kind: o.Kind}
		if !w.watchLocked(gvk) {
			// Not watched: the interval will do. Not held either, so
			// that the next Hold tries again.
			delete(next, k)
			continue
		}
		w.owners[k] = app
	}
	w.held[app] = next
}

// Release forgets app's objects, stopping watches nothing else needs.
func (w *Watcher) Release(app string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.releaseLocked(app)
}

// Prune releases every application current no longer accepts: for the
// agent to call after its assignment changed.
func (w *Watcher) Prune() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for app := range w.held {
		if !w.current(app) {
			w.releaseLocked(app)
		}
	}
}

// Syncs returns, per application held, how many syncs the watches asked
// for.
func (w *Watcher) Syncs() map[string]int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]int64, len(w.held))
	for app := range w.held {
		out[app] = w.syncs[app]
	}
	return out
}

// Kinds returns the kinds watched, for logs and tests.
func (w *Watcher) Kinds() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.kinds))
	for gk := range w.kinds {
		out = append(out, gk.String())
	}
	sort.Strings(out)
	return out
}

// HasSynced reports whether every watch has listed its objects: from
// then on, a change to them is seen.
func (w *Watcher) HasSynced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, kw := range w.kinds {
		if !kw.synced() {
			return false
		}
	}
	return true
}

// Close stops every watch and waits for them.
func (w *Watcher) Close() {
	w.mu.Lock()
	w.closed = true
	var done []chan struct{}
	for gk, kw := range w.kinds {
		kw.cancel()
		done = append(done, kw.done)
		delete(w.kinds, gk)
	}
	for app, p := range w.pending {
		p.timer.Stop()
		delete(w.pending, app)
	}
	w.mu.Unlock()
	for _, d := range done {
		<-d
	}
}

func (w *Watcher) releaseLocked(app string) {
	for k := range w.held[app] {
		w.dropLocked(k)
	}
	delete(w.held, app)
	delete(w.syncs, app)
	delete(w.last, app)
	delete(w.streak, app)
	if p := w.pending[app]; p != nil {
		p.timer.Stop()
		delete(w.pending, app)
	}
}

// dropLocked forgets the object k, and stops its kind's watch when it was
// the last of its kind.
func (w *Watcher) dropLocked(k string) {
	delete(w.owners, k)
	gk := kindOf(k)
	kw := w.kinds[gk]
	if kw == nil {
		return
	}
	if kw.holds--; kw.holds > 0 {
		return
	}
	kw.cancel()
	delete(w.kinds, gk)
	w.log.Debug("stopped watching", "kind", gk.String())
}

// watchLocked counts one more object of gvk, starting its kind's watch
// when it is the first; false when the kind cannot be watched.
func (w *Watcher) watchLocked(gvk schema.GroupVersionKind) bool {
	gk := gvk.GroupKind()
	if kw := w.kinds[gk]; kw != nil {
		kw.holds++
		return true
	}
	gvr, err := w.resources.ResourceFor(gvk)
	if err != nil {
		w.log.Warn("cannot watch a kind applied; its drift is healed at the sync interval", "kind", gk.String(), "err", err)
		return false
	}
	inf := metadatainformer.NewFilteredMetadataInformer(w.client, gvr, metav1.NamespaceAll, 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.LabelSelector = apply.LabelApplication }).Informer()
	if err := inf.SetTransform(trim); err != nil {
		w.log.Warn("watch", "kind", gk.String(), "err", err)
		return false
	}
	_ = inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		if ctx.Err() == nil {
			// The reflector retries with its own backoff.
			w.log.Warn("watch of applied objects broke; it is retried", "kind", gk.String(), "err", err)
		}
	})
	if _, err := inf.AddEventHandler(handler{w: w, gk: gk}); err != nil {
		w.log.Warn("watch", "kind", gk.String(), "err", err)
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	kw := &kindWatch{gvr: gvr, synced: inf.HasSynced, holds: 1, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(kw.done)
		inf.RunWithContext(ctx)
	}()
	w.kinds[gk] = kw
	w.log.Debug("watching", "kind", gk.String(), "resource", gvr.String())
	return true
}

// changedObject is called for an event on an object that possibly
// drifted.
func (w *Watcher) changedObject(gk schema.GroupKind, namespace, name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	app, ok := w.owners[key(gk, namespace, name)]
	if !ok || w.closed {
		return
	}
	w.log.Debug("applied object changed", "app", app, "kind", gk.String(), "namespace", namespace, "name", name)
	now := time.Now()
	p := w.pending[app]
	if p == nil {
		wait, continues := w.delayLocked(app, now)
		p = &pending{first: now.Add(wait - w.cfg.Quiet), notBefore: now.Add(wait), continues: continues}
		p.timer = time.AfterFunc(wait, func() { w.fire(app, p) })
		w.pending[app] = p
		return
	}
	wait := min(w.cfg.Quiet, p.first.Add(w.cfg.MaxDelay).Sub(now))
	p.timer.Reset(max(wait, p.notBefore.Sub(now), 0))
}

// delayLocked returns how long app waits before its sync after a first
// change at now, and whether that change continues a streak of syncs
// (it came within Settle of the last one). From the third sync of a
// streak on, the wait doubles each time up to MaxBackoff: a fight with
// another writer over a field must not become a loop of writes. A heal
// makes two syncs in a row (the heal, then one for its own writes).
func (w *Watcher) delayLocked(app string, now time.Time) (time.Duration, bool) {
	last, ok := w.last[app]
	continues := ok && now.Sub(last) < w.cfg.Settle
	if !continues || w.streak[app] < 2 {
		return w.cfg.Quiet, continues
	}
	return min(w.cfg.Quiet<<min(w.streak[app]-1, 16), w.cfg.MaxBackoff), true
}

// fire hands app to drift once its debounce is over.
func (w *Watcher) fire(app string, p *pending) {
	w.mu.Lock()
	if w.pending[app] != p {
		// Released, or already fired by a timer Reset after it ran.
		w.mu.Unlock()
		return
	}
	delete(w.pending, app)
	if p.continues {
		w.streak[app]++
	} else {
		w.streak[app] = 0
	}
	w.last[app] = time.Now()
	w.syncs[app]++
	w.mu.Unlock()
	w.drift(app)
}

// handler receives one kind's events.
type handler struct {
	w  *Watcher
	gk schema.GroupKind
}

// OnAdd implements cache.ResourceEventHandler. An object appearing is
// no drift: the watch starting lists every object, and a missing object
// was seen going.
func (h handler) OnAdd(any, bool) {}

// OnUpdate implements cache.ResourceEventHandler.
func (h handler) OnUpdate(oldObj, newObj any) {
	o, ok1 := oldObj.(*metav1.PartialObjectMetadata)
	n, ok2 := newObj.(*metav1.PartialObjectMetadata)
	if ok1 && ok2 && changed(o, n) {
		h.w.changedObject(h.gk, n.Namespace, n.Name)
	}
}

// OnDelete implements cache.ResourceEventHandler.
func (h handler) OnDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
		h.w.changedObject(h.gk, m.Namespace, m.Name)
	}
}

// annotationSignature, on the watch's trimmed copies only (never sent
// anywhere), holds signature's digest; annotationOwnWrite, there too,
// marks an object whose last write was Drover's own apply (ownWrite).
const (
	annotationSignature = "watch.drover.dev/signature"
	annotationOwnWrite  = "watch.drover.dev/own-write"
)

// trim keeps of an object what changed needs: the cache then holds a few
// hundred bytes per object, whatever its managed fields. The informer may
// pass an object it holds through trim again, which keeps it as it is.
func trim(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	if _, done := m.Annotations[annotationSignature]; done && len(m.ManagedFields) == 0 {
		return m, nil
	}
	annotations := map[string]string{annotationSignature: signature(m)}
	if ownWrite(m) {
		annotations[annotationOwnWrite] = "true"
	}
	return &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID,
		ResourceVersion: m.ResourceVersion, Generation: m.Generation,
		Annotations: annotations,
	}}, nil
}

// ownWrite reports whether the newest write to m that was not a status
// update was Drover's own apply: every entry of its managed fields with
// the newest time is Drover's. The agent's sync, healing or taking a new
// commit, would otherwise ask for one more sync that finds nothing. The
// times have whole seconds: another writer in the same second as Drover
// shares the newest time, and its write counts.
func ownWrite(m *metav1.PartialObjectMetadata) bool {
	var newest time.Time
	ours := false
	for _, mf := range m.ManagedFields {
		// kubectl scale writes through the scale subresource: that one
		// counts, only status updates do not.
		if mf.Subresource == "status" || mf.Time == nil {
			continue
		}
		isOurs := mf.Manager == apply.FieldManager && mf.Operation == metav1.ManagedFieldsOperationApply
		switch t := mf.Time.Time; {
		case t.After(newest):
			newest, ours = t, isOurs
		case t.Equal(newest):
			ours = ours && isOurs
		}
	}
	return ours
}

// changed reports whether an update from o to n may have changed what
// Drover applied (both trimmed). On objects with a generation, the API
// server moves it on every change of their spec (of a Deployment's
// annotations too, which cost a sync that finds nothing) and not on status
// updates, so those and controllers' status-side writes do not count. Objects
// without one (ConfigMaps, Secrets, ServiceAccounts, ...) have hardly
// anything but what is applied, so any write that is not a status update
// counts. Either way, Drover's own label and content hash, and what
// Drover's field manager owns, count: a field taken over by another
// writer is drift (apply/drift.go).
func changed(o, n *metav1.PartialObjectMetadata) bool {
	if o.UID != n.UID {
		return true // deleted and made again between two events
	}
	if n.Annotations[annotationOwnWrite] != "" {
		return false // Drover's own apply, not drift
	}
	return o.Generation != n.Generation || o.Annotations[annotationSignature] != n.Annotations[annotationSignature]
}

// signature digests what changed compares besides the generation.
func signature(m *metav1.PartialObjectMetadata) string {
	h := sha256.New()
	write := func(s string) {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	write(m.Labels[apply.LabelApplication])
	write(m.Annotations[apply.AnnotationContentHash])
	for _, mf := range m.ManagedFields {
		ours := mf.Manager == apply.FieldManager && mf.Operation == metav1.ManagedFieldsOperationApply && mf.Subresource == ""
		switch {
		case ours:
			// What Drover owns, not when it last wrote.
			write("drover")
		case m.Generation != 0 || mf.Subresource == "status":
			continue
		default:
			write(mf.Manager)
			write(string(mf.Operation))
			write(mf.Subresource)
			if mf.Time != nil {
				write(mf.Time.UTC().Format(time.RFC3339))
			}
		}
		if mf.FieldsV1 != nil {
			write(string(mf.FieldsV1.Raw))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func key(gk schema.GroupKind, namespace, name string) string {
	return gk.Group + "/" + gk.Kind + "/" + namespace + "/" + name
}

// kindOf is the kind of a key.
func kindOf(k string) schema.GroupKind {
	parts := strings.SplitN(k, "/", 3)
	return schema.GroupKind{Group: parts[0], Kind: parts[1]}
}
