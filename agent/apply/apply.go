// Package apply makes one Kubernetes cluster match the rendered objects of
// one application, and says how far it does: per-object health, drift and
// sync state.
//
// It is the agent's apply, prune and assess steps, on Flux's apply engine
// (github.com/fluxcd/pkg/ssa) rather than a new one: server-side apply with
// field manager "drover", forced ownership, CRDs and Namespaces first. What
// Drover adds around it:
//
//   - An inventory per application, stored in the cluster (inventory.go),
//     listing every object applied with the hash of its rendered content
//     and a fingerprint of its live state right after the apply.
//   - Skipping: an object whose rendered hash is unchanged and that shows
//     no drift is not sent to the API server at all (drift.go says exactly
//     what counts as drift). A resync of an unchanged application costs one
//     read of the inventory and one List per kind and namespace.
//   - Prune: objects that left the render are deleted, only when they
//     still carry the application's label, Namespaces last.
//   - Health per object with kstatus, rolled up worst-first (health.go).
//
// Operations on one application are serialised; different applications
// run concurrently and never touch each other's objects or inventories.
package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/cli-utils/pkg/kstatus/polling/clusterreader"
	"github.com/fluxcd/cli-utils/pkg/kstatus/polling/engine"
	"github.com/fluxcd/cli-utils/pkg/object"
	"github.com/fluxcd/pkg/ssa"
	ssaerrors "github.com/fluxcd/pkg/ssa/errors"
	"github.com/fluxcd/pkg/ssa/utils"
	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	"github.com/drover-dev/drover/internal/retry"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// DefaultQPS and DefaultBurst are the client rate limits New gives a
// rest.Config that sets none, and the agent's defaults. The agent owns its
// cluster's apply traffic: the first apply of a few hundred objects should
// go at the API server's pace, not wait on the client. These are the
// limits Flux's kustomize-controller is commonly run with for the same
// engine (its own defaults are 50 and 300), and a burst of 200 covers the
// requests of a 200-object first apply at once. The API server protects
// itself with API Priority and Fairness whatever a client sends.
const (
	DefaultQPS   = 100
	DefaultBurst = 200
)

// defaultConcurrency is Options.Concurrency's default.
const defaultConcurrency = 8

// Options configures an Applier. The zero value is usable.
type Options struct {
	// Force lets Drover delete and recreate any object whose change the
	// API server refuses as a change to an immutable field (a Job's
	// template, a Service's clusterIP, a Deployment's selector). Off by
	// default, as in Flux: ssa recognises such refusals by their HTTP
	// status (409 Conflict, 422 Invalid), so Force also recreates objects
	// whose new version is simply invalid, losing the running one. An
	// object annotated drover.dev/force: enabled opts in alone.
	Force bool
	// Concurrency is how many objects of a stage are checked with a
	// server-side dry-run, or applied, at once, and how many Lists run at
	// once. 0 means 8: with the default client rate limits, enough to
	// keep a local API server busy without queueing on the client side.
	Concurrency int
	// WaitTimeout bounds the wait for CRDs, Namespaces and ClusterRoles to
	// be ready before the objects that need them are applied. 0 means 1m.
	WaitTimeout time.Duration
	// InventoryNamespace holds the inventories. "" means drover-system;
	// it is created when missing.
	InventoryNamespace string
	// DefaultNamespace is given to namespaced objects rendered without
	// one, as kubectl does. "" means default.
	DefaultNamespace string
	// HookTimeout bounds the wait for each Helm hook to complete, and for
	// the objects to be healthy before post-install and post-upgrade hooks
	// (hooks.go). 0 means DefaultHookTimeout.
	HookTimeout time.Duration
}

func (o *Options) setDefaults() error {
	if o.Concurrency < 0 {
		return fmt.Errorf("Options.Concurrency is %d: use a positive number, or 0 for %d", o.Concurrency, defaultConcurrency)
	}
	if o.Concurrency == 0 {
		o.Concurrency = defaultConcurrency
	}
	if o.WaitTimeout < 0 {
		return fmt.Errorf("Options.WaitTimeout is %s: use a positive duration, or 0 for 1m", o.WaitTimeout)
	}
	if o.WaitTimeout == 0 {
		o.WaitTimeout = time.Minute
	}
	if o.HookTimeout < 0 {
		return fmt.Errorf("Options.HookTimeout is %s: use a positive duration, or 0 for %s", o.HookTimeout, DefaultHookTimeout)
	}
	if o.HookTimeout == 0 {
		o.HookTimeout = DefaultHookTimeout
	}
	if o.InventoryNamespace == "" {
		o.InventoryNamespace = "drover-system"
	}
	if errs := validation.IsDNS1123Label(o.InventoryNamespace); len(errs) > 0 {
		return fmt.Errorf("Options.InventoryNamespace %q: %s", o.InventoryNamespace, strings.Join(errs, "; "))
	}
	if o.DefaultNamespace == "" {
		o.DefaultNamespace = "default"
	}
	if errs := validation.IsDNS1123Label(o.DefaultNamespace); len(errs) > 0 {
		return fmt.Errorf("Options.DefaultNamespace %q: %s", o.DefaultNamespace, strings.Join(errs, "; "))
	}
	return nil
}

// Policy is an application's sync policy as far as applying goes.
type Policy struct {
	// Prune deletes objects that left the render. Without it they stay,
	// listed in the inventory so that a later Sync with Prune, or Delete,
	// removes them.
	Prune bool
	// SelfHeal re-applies objects that drifted although their rendered
	// content did not change. Without it they are reported (OutOfSync)
	// and left alone; objects whose rendered content changed are applied
	// either way.
	SelfHeal bool
}

// Counts say what one operation did with the application's objects.
type Counts struct {
	// Applied objects were written by a server-side apply.
	Applied int
	// Unchanged objects were sent for a server-side dry-run that showed
	// nothing to change, and not written.
	Unchanged int
	// Skipped objects were not sent to the API server at all: their
	// rendered content is unchanged and they show no drift.
	Skipped int
	// Drifted objects differed from the last apply, healed or not.
	Drifted int
	// Pruned objects left the render and were deleted (or were gone).
	Pruned int
	// Kept objects left the render and are still in the cluster: prune is
	// off, or deleting them failed.
	Kept int
}

// Result is the state of one application on the cluster after an
// operation.
type Result struct {
	Application string
	// Commit is the commit Sync was given; for Assess, the commit of the
	// last Sync that completed.
	Commit    string
	Sync      droverv1.SyncState
	Health    droverv1.Health
	Message   string
	Resources []*droverv1.ResourceStatus
	Counts

	// neverApplied: an assessment found no inventory.
	neverApplied bool
}

// Applier applies applications to one cluster. Its methods are safe for
// concurrent use; calls for the same application wait for each other.
type Applier struct {
	log    *slog.Logger
	opts   Options
	client client.Client
	mapper meta.RESTMapper
	poller *polling.StatusPoller
	locks  appLocks
}

// New returns an Applier for the cluster cfg points at. It makes no
// request: the API server may be unreachable when the agent starts.
func New(cfg *rest.Config, logger *slog.Logger, opts Options) (*Applier, error) {
	if cfg == nil {
		return nil, errors.New("apply: rest.Config is nil")
	}
	if logger == nil {
		return nil, errors.New("apply: logger is nil")
	}
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		// client-go's default of 5 requests a second would make the
		// first apply of a few hundred objects take minutes.
		cfg.QPS, cfg.Burst = DefaultQPS, DefaultBurst
	}
	cfg.WarningHandler = nil
	cfg.WarningHandlerWithContext = warningLogger{log: logger}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("apply: HTTP client: %w", err)
	}
	// The dynamic mapper discovers lazily and re-reads discovery for a
	// group version whenever a lookup misses, so kinds defined by CRDs
	// applied in the first stage are found in the next one.
	mapper, err := apiutil.NewDynamicRESTMapper(cfg, httpClient)
	if err != nil {
		return nil, fmt.Errorf("apply: REST mapper: %w", err)
	}
	c, err := client.New(cfg, client.Options{
		HTTPClient: httpClient,
		Mapper:     mapper,
		Log:        logr.FromSlogHandler(logger.Handler()),
	})
	if err != nil {
		return nil, fmt.Errorf("apply: client: %w", err)
	}
	poller := polling.NewStatusPoller(c, mapper, polling.Options{
		// The poller only waits for the few cluster definitions of a
		// Sync: one Get each beats listing every CRD and Namespace.
		ClusterReaderFactory: engine.ClusterReaderFactoryFunc(clusterreader.NewDirectClusterReader),
	})
	return &Applier{log: logger, opts: opts, client: c, mapper: mapper, poller: poller}, nil
}

// session is one operation on one application.
type session struct {
	a      *Applier
	app    string
	log    *slog.Logger
	rec    *recorder
	client *recordingClient
	mgr    *ssa.ResourceManager
	// renderCRDs are the kinds the render's own CRDs define, with whether
	// each is namespaced.
	renderCRDs map[schema.GroupKind]bool
}

func (a *Applier) newSession(app string) *session {
	rec := newRecorder()
	c := &recordingClient{Client: a.client, rec: rec}
	mgr := ssa.NewResourceManager(c, a.poller, ssa.Owner{Field: FieldManager, Group: "drover.dev"})
	mgr.SetConcurrency(a.opts.Concurrency)
	return &session{a: a, app: app, log: a.log.With("app", app), rec: rec, client: c, mgr: mgr}
}

// Sync makes the cluster match objs, the rendered objects of app at
// commit, and returns the application's state. objs are not modified. It
// is a Run's steps in order: Begin, Apply, Prune, PostHooks, Assess, then
// Result.
//
// The Result is never nil. A non-nil error means the Sync did not
// complete: the Result's Sync is Failed and its Message names the object
// at fault. retry.IsTransient(err) says whether retrying can help; an
// *ObjectError names an object the API server refused. Nothing is applied
// when an object is invalid, of an unknown kind, or belongs to another
// application. A cancelled ctx returns ctx.Err().
func (a *Applier) Sync(ctx context.Context, app, commit string, objs []*unstructured.Unstructured, policy Policy) (*Result, error) {
	run, err := a.Begin(ctx, app, commit, objs, policy)
	defer run.Close()
	if err == nil {
		err = run.Apply(ctx)
	}
	if err == nil {
		err = run.Prune(ctx)
	}
	if err == nil {
		err = run.PostHooks(ctx)
	}
	run.Assess()
	return run.Result(ctx, err)
}

// Run is one sync of one application, taken as steps that the caller
// runs in order, stopping at the first that fails:
//
//   - Begin validates and hashes the objects, reads the inventory and
//     Lists the live objects;
//   - Apply decides which objects to send (changed render, new, or
//     drifted with Policy.SelfHeal), records new objects in the inventory
//     before creating them, and applies in stages with ssa;
//   - Prune deletes (Policy.Prune) what left the render and writes the
//     new inventory;
//   - PostHooks runs a new release's post-install or post-upgrade Helm
//     hooks once the objects are healthy (hooks.go); Apply runs the pre
//     hooks first;
//   - Assess, which runs after a failure too, reads each object's health
//     and drift from what the steps saw, without a request;
//   - Result is the one place the application's sync state and message
//     are decided, from the first failure or else from the assessment.
//
// Close releases the application, which Begin holds for the Run. The
// agent's reconciler runs these among its own steps (after fetch and
// render); Sync runs them alone.
type Run struct {
	s      *session
	app    string
	commit string
	policy Policy
	unlock func()

	desired []*desiredObject
	// hooks are the render's Helm hooks, which are not in desired.
	hooks []*hook
	inv   *inventory
	res   *Result
	// drifted lists the objects that still differ from their render, for
	// the Result's message; set by Assess.
	drifted []string
	started time.Time
}

// Begin starts a Run: it takes the application's lock, validates and
// hashes objs, reads the inventory and Lists the live objects. The Run is
// never nil, so that Assess and Result can report a failed Begin; Close
// it either way.
func (a *Applier) Begin(ctx context.Context, app, commit string, objs []*unstructured.Unstructured, policy Policy) (*Run, error) {
	run := &Run{app: app, commit: commit, policy: policy, res: &Result{Application: app, Commit: commit}, started: time.Now()}
	if err := validateApp(app); err != nil {
		return run, err
	}
	unlock, err := a.locks.lock(ctx, app)
	if err != nil {
		return run, err
	}
	run.unlock = unlock
	run.s = a.newSession(app)
	if run.desired, err = run.s.prepare(objs); err != nil {
		return run, classify(ctx, err)
	}
	if run.desired, run.hooks, err = run.s.splitHooks(run.desired); err != nil {
		return run, err
	}
	if run.inv, err = run.s.readInventory(ctx); err != nil {
		return run, classify(ctx, err)
	}
	refs := make([]ObjectRef, len(run.desired))
	for i, d := range run.desired {
		refs[i] = d.ref
	}
	live, err := run.s.observe(ctx, refs)
	if err != nil {
		return run, classify(ctx, err)
	}
	prev := run.inv.byKey()
	for _, d := range run.desired {
		if p, ok := prev[d.ref.key()]; ok {
			e := *p
			e.Stale = false // back in the render
			d.prev = &e
		}
		d.final = live[d.ref.key()]
	}
	return run, nil
}

// Close releases the application's lock. It may be called more than once.
func (r *Run) Close() {
	if r.unlock != nil {
		r.unlock()
		r.unlock = nil
	}
}

// Apply decides which objects to send and applies them. Nothing is
// written before every object passed the checks. When the apply fails,
// the inventory records what was applied before the failure, under the
// commit it had.
func (r *Run) Apply(ctx context.Context) error {
	s, res := r.s, r.res
	var conflicts []*ObjectError
	for _, d := range r.desired {
		if d.final != nil {
			if owner := d.final.GetLabels()[LabelApplication]; owner != "" && owner != s.app {
				d.failure = &ConflictError{Owner: owner}
				conflicts = append(conflicts, &ObjectError{Object: d.ref, Err: d.failure})
				continue
			}
		}
		if d.prev != nil && d.prev.Hash == d.hash && d.prev.Live != "" {
			d.drift = driftReason(d.prev, d.final)
			if d.drift == "" {
				res.Skipped++
				continue
			}
			res.Drifted++
			if !r.policy.SelfHeal {
				continue
			}
			d.healed = true
		}
		d.send = true
	}
	if len(conflicts) > 0 {
		return objectErrors(conflicts)
	}

	// Record objects in the inventory before creating them, so that a
	// crash from here on leaves a superset of what is in the cluster to
	// prune, never an orphan. Their hash stays empty until applied. When
	// no object is new, the union is what is stored: nothing to write.
	var grown bool
	for _, d := range r.desired {
		if d.prev == nil {
			r.inv.Entries = append(r.inv.Entries, newEntry(d.ref))
			grown = true
		}
	}
	if grown {
		if err := s.writeInventory(ctx, r.inv); err != nil {
			return classify(ctx, err)
		}
	}

	var err error
	if r.preHooksDue() {
		// The render's CRDs and Namespaces go before the pre-install and
		// pre-upgrade hooks, as Helm installs a chart's crds/ before its
		// hooks: a hook may be a custom resource, or live in a namespace
		// the render makes.
		defs, rest := splitDefinitions(r.desired)
		if err = s.apply(ctx, defs, res); err == nil {
			if err = r.preHooks(ctx); err == nil {
				err = s.apply(ctx, rest, res)
			}
		}
	} else {
		err = s.apply(ctx, r.desired, res)
	}
	if err != nil {
		// Prune never runs after a failed apply, which must not take away
		// what is running: everything that left the render stays listed.
		if werr := r.writeInventory(ctx, r.inv.Commit, r.stale()); werr != nil && ctx.Err() == nil {
			s.log.Warn("write inventory after a failed sync", "err", werr)
		}
		return classify(ctx, err)
	}
	return nil
}

// Prune deletes the objects that left the render, when the policy says
// so, and writes the inventory of the commit: what was applied, and what
// left the render but is still in the cluster, marked stale.
func (r *Run) Prune(ctx context.Context) error {
	stale := r.stale()
	kept := stale
	var pruneErr error
	if r.policy.Prune && len(stale) > 0 {
		var pruned int
		kept, pruned, pruneErr = r.s.prune(ctx, stale)
		r.res.Pruned = pruned
	}
	r.res.Kept = len(kept)
	if err := r.writeInventory(ctx, r.commit, kept); err != nil {
		if pruneErr == nil {
			return classify(ctx, err)
		}
		// The first failure says more; the next Sync retries both.
		r.s.log.Warn("write inventory after a failed prune", "err", err)
	}
	return classify(ctx, pruneErr)
}

// stale returns the inventory's entries that left the render.
func (r *Run) stale() []entry {
	inRender := make(map[string]bool, len(r.desired))
	for _, d := range r.desired {
		inRender[d.ref.key()] = true
	}
	var stale []entry
	for _, e := range r.inv.Entries {
		if !inRender[e.ref().key()] {
			stale = append(stale, e)
		}
	}
	return stale
}

// writeInventory stores the inventory after this Run: the render's objects
// (with the hash and live fingerprint of those applied), then kept, stale.
func (r *Run) writeInventory(ctx context.Context, commit string, kept []entry) error {
	final := &inventory{Application: r.app, Commit: commit, resourceVersion: r.inv.resourceVersion, stored: r.inv.stored}
	if len(r.hooks) > 0 {
		// A render without hooks forgets them: the next release with
		// hooks is a new one whatever its commit.
		final.Hooks = r.inv.Hooks
	}
	for _, d := range r.desired {
		switch {
		case d.send && d.done && d.final != nil:
			e := newEntry(d.ref)
			e.Hash, e.Live = d.hash, fingerprint(d.final)
			final.Entries = append(final.Entries, e)
		case d.prev != nil:
			final.Entries = append(final.Entries, *d.prev)
		default:
			final.Entries = append(final.Entries, newEntry(d.ref))
		}
	}
	for _, e := range kept {
		e.Stale = true
		final.Entries = append(final.Entries, e)
	}
	if err := r.s.writeInventory(ctx, final); err != nil {
		return err
	}
	r.inv = final
	return nil
}

// Assess fills the Result's per-object statuses and health from what the
// steps saw of each object, with no request: the objects the API server
// answered for, the live ones Begin read for the others. It runs after a
// failed step too, so a failed Run still says how each object is.
func (r *Run) Assess() {
	r.res.Resources, r.res.Health = assessObjects(r.desired)
}

// Result returns the application's state after the Run, whose steps
// ended with err (nil when they all succeeded), summarised by
// Result.Summarize. A cancelled ctx returns ctx.Err(): cancellation is no
// failure.
func (r *Run) Result(ctx context.Context, err error) (*Result, error) {
	res := r.res
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	res.Summarize(err, &r.policy)
	if err != nil {
		r.log().Warn("sync failed", "commit", r.commit, "err", err, "retryable", retry.IsTransient(err))
		return res, err
	}
	// A resync that found nothing to do is the common case; it is not
	// worth a line at Info every interval.
	level := slog.LevelDebug
	if res.Applied+res.Pruned+res.Drifted > 0 {
		level = slog.LevelInfo
	}
	r.log().Log(ctx, level, "synced", "commit", r.commit, "health", res.Health.String(), "applied", res.Applied,
		"unchanged", res.Unchanged, "skipped", res.Skipped, "drifted", res.Drifted, "pruned", res.Pruned,
		"kept", res.Kept, "duration", time.Since(r.started).Round(time.Millisecond))
	return res, nil
}

func (r *Run) log() *slog.Logger {
	if r.s == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.s.log
}

// observe reads the live objects of refs that carry LabelApplication (of
// any application): one List per kind and namespace. Objects of kinds the
// cluster does not serve are simply absent.
func (s *session) observe(ctx context.Context, refs []ObjectRef) (map[string]*unstructured.Unstructured, error) {
	type listKey struct {
		gvk       schema.GroupVersionKind
		namespace string
	}
	wanted := make(map[listKey]map[string]bool)
	for _, r := range refs {
		k := listKey{gvk: r.gvk(), namespace: r.Namespace}
		if wanted[k] == nil {
			wanted[k] = map[string]bool{}
		}
		wanted[k][r.key()] = true
	}

	var mu sync.Mutex // guards live
	live := make(map[string]*unstructured.Unstructured, len(refs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.a.opts.Concurrency)
	for k, keys := range wanted {
		g.Go(func() error {
			list := &unstructured.UnstructuredList{}
			list.SetGroupVersionKind(k.gvk.GroupVersion().WithKind(k.gvk.Kind + "List"))
			opts := []client.ListOption{client.HasLabels{LabelApplication}}
			if k.namespace != "" {
				opts = append(opts, client.InNamespace(k.namespace))
			}
			err := s.a.client.List(gctx, list, opts...)
			if meta.IsNoMatchError(err) {
				return nil
			}
			if err != nil {
				where := "the cluster"
				if k.namespace != "" {
					where = "namespace " + k.namespace
				}
				return fmt.Errorf("list %s in %s: %w", k.gvk.Kind, where, err)
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range list.Items {
				u := &list.Items[i]
				if u.GetKind() == "" {
					u.SetGroupVersionKind(k.gvk)
				}
				if key := refOf(u).key(); keys[key] {
					live[key] = u
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return live, nil
}

// stage is one of ssa's apply stages: objects that later objects need
// (CRDs, Namespaces, ClusterRoles; then *Class kinds) are applied and
// waited for before the rest.
type stage struct {
	objs []*desiredObject
	wait bool
}

// apply sends the objects marked d.send to the API server, stage by stage,
// and records in each what the API server answered.
//
// The stages are ssa's (IsClusterDefinition, then IsClassDefinition, then
// the rest), each waited for with WaitForSetWithContext before the next:
// ApplyAllStaged's wait ignores the context, and a cancelled Sync would
// hang until WaitTimeout. Within a stage, objects go Options.Concurrency
// at a time, each on its own (see applyStage).
func (s *session) apply(ctx context.Context, desired []*desiredObject, res *Result) error {
	var defs, classes, others []*desiredObject
	for _, d := range desired {
		switch {
		case !d.send:
		case utils.IsClusterDefinition(d.obj):
			defs = append(defs, d)
		case utils.IsClassDefinition(d.obj):
			classes = append(classes, d)
		default:
			others = append(others, d)
		}
	}
	opts := ssa.ApplyOptions{
		Force:         s.a.opts.Force,
		ForceSelector: map[string]string{AnnotationForce: ForceEnabled},
		WaitInterval:  500 * time.Millisecond,
		WaitTimeout:   s.a.opts.WaitTimeout,
	}
	for _, st := range []stage{{defs, true}, {classes, true}, {others, false}} {
		if len(st.objs) == 0 {
			continue
		}
		err := s.applyStage(ctx, st.objs, opts, res)
		s.collect(st.objs)
		if err != nil {
			return err
		}
		if st.wait {
			set := make(object.ObjMetadataSet, len(st.objs))
			for i, d := range st.objs {
				set[i] = d.ref.objMetadata()
			}
			wait := ssa.WaitOptions{Interval: opts.WaitInterval, Timeout: s.a.opts.WaitTimeout}
			if err := s.mgr.WaitForSetWithContext(ctx, set, wait); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return retry.Transient(fmt.Errorf("wait for %d CRDs, Namespaces or ClusterRoles to be ready: %w", len(st.objs), err))
			}
		}
	}
	return nil
}

// write is what applyStage does with one object once it is checked.
type write int

const (
	// writeNothing: the object is as rendered in the cluster.
	writeNothing write = iota
	// writeApply: one server-side apply.
	writeApply
	// writeThroughSSA: ssa's ApplyAll, which deletes and recreates an
	// object whose change the API server refuses as immutable, when force
	// is on for it.
	writeThroughSSA
)

// applyStage applies the objects of one stage in two steps, each running
// Options.Concurrency objects at once:
//
//  1. Check. An object the cluster has (observe read it) is compared with
//     ssa's server-side dry-run (Diff), as ApplyAll does: one that shows
//     no change is not written. A refusal here stops the stage before any
//     of its objects is written, as with ApplyAll. A new object has
//     nothing to compare with and costs no request here.
//  2. Write. Every object to write is server-side applied on its own: one
//     that the API server refuses does not keep the others from being
//     applied, and each refusal is recorded on its object. A new object
//     refused as immutable or invalid (an unlabelled one was there after
//     all) goes through ssa's ApplyAll, which recreates it when force is
//     on and otherwise fails it with the dry-run's words, as before.
//
// The counts do not depend on the order the API server answers in; the
// error returned is the first failed object's in the stage's order,
// naming the others.
func (s *session) applyStage(ctx context.Context, ds []*desiredObject, opts ssa.ApplyOptions, res *Result) error {
	writes := make([]write, len(ds))
	errs := make([]error, len(ds))
	var g errgroup.Group // no shared cancel: one object's failure stops no other
	g.SetLimit(s.a.opts.Concurrency)
	for i, d := range ds {
		if d.final == nil {
			writes[i] = writeApply
			continue
		}
		g.Go(func() error {
			writes[i], errs[i] = s.check(ctx, d, opts)
			return nil
		})
	}
	_ = g.Wait()
	if err := firstError(ds, errs); err != nil {
		return err
	}

	for i, d := range ds {
		switch writes[i] {
		case writeApply:
			g.Go(func() error {
				errs[i] = s.write(ctx, d, opts)
				return nil
			})
		case writeThroughSSA:
			g.Go(func() error {
				errs[i] = s.writeThroughSSA(ctx, d, opts)
				return nil
			})
		}
	}
	_ = g.Wait()
	for i, d := range ds {
		d.done = errs[i] == nil
		switch {
		case errs[i] != nil:
		case writes[i] == writeNothing:
			res.Unchanged++
		default:
			res.Applied++
		}
	}
	return firstError(ds, errs)
}

// check compares the live object d.final with a server-side dry-run of d
// and says how to write it. An object ssa finds unchanged is written all
// the same when another field manager took some of Drover's fields (a
// value set back by hand after kubectl scale): ssa compares values only,
// but until Drover owns those fields again a later change to them would
// not show as drift.
func (s *session) check(ctx context.Context, d *desiredObject, opts ssa.ApplyOptions) (write, error) {
	cs, _, _, err := s.mgr.Diff(ctx, d.obj.DeepCopy(), ssa.DiffOptions{Force: opts.Force, ForceSelector: opts.ForceSelector})
	if err != nil {
		return writeNothing, s.applyError(ctx, err, map[string]*desiredObject{d.ref.key(): d})
	}
	switch cs.Action {
	case ssa.ConfiguredAction:
		return writeApply, nil
	case ssa.CreatedAction:
		// Refused as immutable with force on, or gone since observe read
		// it: ApplyAll handles both.
		return writeThroughSSA, nil
	case ssa.UnchangedAction:
		live, dryRun, _ := s.rec.get(d.ref.key())
		if live != nil && dryRun != nil && !sameOwnedFields(live, dryRun) {
			return writeApply, nil
		}
	}
	return writeNothing, nil
}

// write server-side applies d with forced ownership, as ssa does.
func (s *session) write(ctx context.Context, d *desiredObject, opts ssa.ApplyOptions) error {
	u := d.obj.DeepCopy()
	utils.RemoveCABundleFromCRD(u)
	err := s.client.applyObject(ctx, u, client.ForceOwnership, client.FieldOwner(FieldManager))
	switch {
	case err == nil:
		return nil
	case d.final == nil && ssaerrors.IsImmutableError(err):
		return s.writeThroughSSA(ctx, d, opts)
	default:
		d.failure = err
		return s.objectError(d.ref, err)
	}
}

// writeThroughSSA applies d with ssa's ApplyAll: a Get, a dry-run, and
// the apply, or the delete and re-create of an immutable object that force
// allows.
func (s *session) writeThroughSSA(ctx context.Context, d *desiredObject, opts ssa.ApplyOptions) error {
	if _, err := s.mgr.ApplyAll(ctx, []*unstructured.Unstructured{d.obj.DeepCopy()}, opts); err != nil {
		return s.applyError(ctx, err, map[string]*desiredObject{d.ref.key(): d})
	}
	return nil
}

// firstError returns the first error of errs, which are ds's, naming the
// objects of the others.
func firstError(ds []*desiredObject, errs []error) error {
	var first error
	var others []string
	for i, err := range errs {
		switch {
		case err == nil:
		case first == nil:
			first = err
		default:
			others = append(others, ds[i].ref.String())
		}
	}
	return andOthers(first, others)
}

// collect copies what the recorder saw of each object into it.
func (s *session) collect(ds []*desiredObject) {
	for _, d := range ds {
		live, _, _ := s.rec.get(d.ref.key())
		if live != nil {
			d.final = live
		}
		if err := s.rec.failure(d.ref.key()); err != nil {
			d.failure = err
		}
	}
}

// applyError turns ssa's error into one naming the object at fault.
func (s *session) applyError(ctx context.Context, err error, byKey map[string]*desiredObject) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var dryRun *ssaerrors.DryRunErr
	if errors.As(err, &dryRun) && dryRun.InvolvedObject() != nil {
		ref := refOf(dryRun.InvolvedObject())
		cause := dryRun.Unwrap()
		if d := byKey[ref.key()]; d != nil {
			d.failure = cause
			ref = d.ref
		}
		return s.objectError(ref, cause)
	}
	for key, d := range byKey {
		if f := s.rec.failure(key); f != nil {
			d.failure = f
			return s.objectError(d.ref, f)
		}
	}
	return fmt.Errorf("apply: %w", err)
}

// objectError wraps an API server's refusal of ref. A kind that a CRD of
// this very render defines may be missing from discovery for a moment
// after the CRD is ready: that one is worth retrying.
func (s *session) objectError(ref ObjectRef, cause error) error {
	err := &ObjectError{Object: ref, Err: cause}
	if meta.IsNoMatchError(cause) {
		if _, ok := s.renderCRDs[schema.GroupKind{Group: ref.Group, Kind: ref.Kind}]; ok {
			return retry.Transient(err)
		}
	}
	return err
}

// prune deletes the objects of stale that still carry the application's
// label, Namespaces last and only when everything else went, and returns
// the entries still in the cluster.
func (s *session) prune(ctx context.Context, stale []entry) (kept []entry, pruned int, err error) {
	byKey := make(map[string]entry, len(stale))
	var objs, namespaces []*unstructured.Unstructured
	for _, e := range stale {
		r := e.ref()
		// Objects of a kind the cluster no longer serves cannot exist.
		if _, err := s.a.mapper.RESTMapping(r.gvk().GroupKind(), r.Version); meta.IsNoMatchError(err) {
			pruned++
			continue
		}
		byKey[r.key()] = e
		if isNamespace(r) {
			namespaces = append(namespaces, r.stub())
		} else {
			objs = append(objs, r.stub())
		}
	}
	opts := ssa.DeleteOptions{
		PropagationPolicy: metav1.DeletePropagationBackground,
		// ssa checks the live object: one Drover did not label for this
		// application is never deleted, whatever the inventory says.
		Inclusions: map[string]string{LabelApplication: s.app},
	}
	failed := map[string]bool{}
	for _, batch := range [][]*unstructured.Unstructured{objs, namespaces} {
		if len(batch) == 0 {
			continue
		}
		if err != nil {
			// Something else could not be deleted: keep the Namespaces,
			// and what is in them.
			for _, o := range batch {
				failed[refOf(o).key()] = true
			}
			continue
		}
		var cs *ssa.ChangeSet
		cs, err = s.mgr.DeleteAll(ctx, batch, opts)
		if cs == nil {
			for _, o := range batch {
				failed[refOf(o).key()] = true
			}
			continue
		}
		for _, e := range cs.Entries {
			key := metaKey(e.ObjMetadata.GroupKind.Group, e.ObjMetadata.GroupKind.Kind, e.ObjMetadata.Namespace, e.ObjMetadata.Name)
			switch e.Action {
			case ssa.DeletedAction:
				pruned++
				s.log.Info("pruned", "object", e.Subject)
			case ssa.SkippedAction:
				s.log.Info("not pruned: the live object is not labelled for this application", "object", e.Subject)
			default:
				failed[key] = true
			}
		}
	}
	for key, e := range byKey {
		if failed[key] {
			kept = append(kept, e)
		}
	}
	if err != nil {
		return kept, pruned, fmt.Errorf("prune: %w", err)
	}
	return kept, pruned, nil
}

// assessObjects returns each object's status, from what an operation
// learned about it, and the application's health: the worst object's.
func assessObjects(desired []*desiredObject) ([]*droverv1.ResourceStatus, droverv1.Health) {
	resources := make([]*droverv1.ResourceStatus, 0, len(desired))
	healths := make([]droverv1.Health, 0, len(desired))
	for _, d := range desired {
		rs := &droverv1.ResourceStatus{
			Group: d.ref.Group, Version: d.ref.Version, Kind: d.ref.Kind,
			Namespace: d.ref.Namespace, Name: d.ref.Name,
		}
		rs.Health, rs.Message = objectHealth(d.final)
		if d.drift != "" && !(d.healed && d.done) {
			rs.Drifted = true
			rs.Message = d.drift
		}
		if d.failure != nil {
			rs.Message = d.failure.Error()
		}
		healths = append(healths, rs.Health)
		resources = append(resources, rs)
	}
	return resources, rollUp(healths...)
}

// Summarize decides the Result's sync state and message, and its health
// when nothing was assessed. It is the one place they are decided: for a
// Sync, an Assess, and the agent's steps before these (fetch, render).
// err is the first failure of the steps that ran, and wins: Failed. Else
// objects that still drift make it OutOfSync; else it is Synced. policy is
// the Sync's, or nil for an assessment, which applies nothing.
func (r *Result) Summarize(err error, policy *Policy) {
	var drifted []string
	for _, rs := range r.Resources {
		if rs.Drifted {
			ref := refOfStatus(rs)
			drifted = append(drifted, ref.String()+": "+rs.Message)
		}
	}
	switch {
	case err == nil && r.neverApplied:
		r.Sync = droverv1.SyncState_SYNC_STATE_OUT_OF_SYNC
		r.Health = droverv1.Health_HEALTH_MISSING
		r.Message = "the application was never applied to this cluster"
	case err != nil:
		r.Sync = droverv1.SyncState_SYNC_STATE_FAILED
		r.Message = err.Error()
		if len(r.Resources) == 0 {
			// Nothing was assessed: the failure came first.
			r.Health = droverv1.Health_HEALTH_UNKNOWN
		}
	case len(drifted) > 0:
		r.Sync = droverv1.SyncState_SYNC_STATE_OUT_OF_SYNC
		why := ""
		if policy != nil {
			why = " and selfHeal is off"
		}
		r.Message = fmt.Sprintf("%d objects drifted%s: %s", len(drifted), why, strings.Join(drifted, "; "))
	default:
		r.Sync = droverv1.SyncState_SYNC_STATE_SYNCED
		r.Message = inSync(len(r.Resources), r.Commit, r.Applied, r.Pruned)
		if policy != nil && r.Kept > 0 && !policy.Prune {
			r.Message += fmt.Sprintf("; %d objects left the render and are kept (prune is off)", r.Kept)
		}
	}
}

// Assess reads the application's objects back and returns their health
// and drift, applying nothing: the periodic status of an application. Its
// Commit is that of the last Sync that completed. An application never
// synced to this cluster is OutOfSync and Missing.
func (a *Applier) Assess(ctx context.Context, app string) (*Result, error) {
	res := &Result{Application: app}
	err := validateApp(app)
	if err == nil {
		var unlock func()
		if unlock, err = a.locks.lock(ctx, app); err != nil {
			return res, err
		}
		defer unlock()
		err = classify(ctx, a.newSession(app).assess(ctx, res))
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	res.Summarize(err, nil)
	return res, err
}

// assess fills res with what the cluster has of the application's
// objects, or says it was never applied.
func (s *session) assess(ctx context.Context, res *Result) error {
	inv, err := s.readInventory(ctx)
	if err != nil {
		return err
	}
	if inv.resourceVersion == "" {
		res.neverApplied = true
		return nil
	}
	res.Commit = inv.Commit
	var current []*desiredObject
	var refs []ObjectRef
	for _, e := range inv.Entries {
		if e.Stale {
			res.Kept++
			continue
		}
		current = append(current, &desiredObject{ref: e.ref(), prev: &e})
		refs = append(refs, e.ref())
	}
	live, err := s.observe(ctx, refs)
	if err != nil {
		return err
	}
	for _, d := range current {
		if l := live[d.ref.key()]; l != nil && l.GetLabels()[LabelApplication] == s.app {
			d.final = l
		}
		d.drift = driftReason(d.prev, d.final)
		if d.drift != "" {
			res.Drifted++
		}
	}
	res.Resources, res.Health = assessObjects(current)
	return nil
}

// inSync describes an application whose objects all match its commit, in
// the same words after a sync and after a check for drift: the state is the
// same. What a sync changed on the way is said after it.
func inSync(objects int, commit string, applied, pruned int) string {
	msg := fmt.Sprintf("%d objects in sync with commit %s", objects, commit)
	if applied > 0 || pruned > 0 {
		msg += fmt.Sprintf(" (this sync applied %d and pruned %d)", applied, pruned)
	}
	return msg
}

// Objects returns the objects the Result has a status of.
func (r *Result) Objects() []ObjectRef {
	out := make([]ObjectRef, len(r.Resources))
	for i, rs := range r.Resources {
		out[i] = refOfStatus(rs)
	}
	return out
}

func refOfStatus(rs *droverv1.ResourceStatus) ObjectRef {
	return ObjectRef{Group: rs.GetGroup(), Version: rs.GetVersion(), Kind: rs.GetKind(), Namespace: rs.GetNamespace(), Name: rs.GetName()}
}

// Detect returns the objects of the application whose live state differs
// from the last apply (drift.go says exactly how), applying nothing.
func (a *Applier) Detect(ctx context.Context, app string) ([]ObjectRef, error) {
	res, err := a.Assess(ctx, app)
	if err != nil {
		return nil, err
	}
	var drifted []ObjectRef
	for _, rs := range res.Resources {
		if rs.Drifted {
			drifted = append(drifted, refOfStatus(rs))
		}
	}
	return drifted, nil
}

// Delete deletes every object of the application's inventory that still
// carries its label, Namespaces last, then the inventory: for an
// application that left the cluster's assignment. Deleting an application
// that has no inventory does nothing. After a partial failure the
// inventory keeps what is left, and Delete can be called again.
func (a *Applier) Delete(ctx context.Context, app string) error {
	return a.DeleteRelease(ctx, app, nil)
}

// DeleteRelease is Delete, running the pre-delete Helm hooks of the
// application's release before and its post-delete hooks after (hooks.go).
// render returns the release's rendered objects; it is called only when
// the inventory says the last release had delete hooks, so deleting any
// other application fetches and renders nothing. A nil render runs no hook.
func (a *Applier) DeleteRelease(ctx context.Context, app string, render func(context.Context) ([]*unstructured.Unstructured, error)) error {
	if err := validateApp(app); err != nil {
		return err
	}
	unlock, err := a.locks.lock(ctx, app)
	if err != nil {
		return err
	}
	defer unlock()
	s := a.newSession(app)
	if err := s.delete(ctx, render); err != nil {
		return classify(ctx, err)
	}
	return nil
}

func (s *session) delete(ctx context.Context, render func(context.Context) ([]*unstructured.Unstructured, error)) error {
	inv, err := s.readInventory(ctx)
	if err != nil {
		return err
	}
	if inv.resourceVersion == "" {
		return nil
	}
	hooks, err := s.deleteHooks(ctx, inv, render)
	if err != nil {
		return err
	}
	if err := s.preDeleteHooks(ctx, inv, hooks); err != nil {
		return err
	}
	kept, pruned, err := s.prune(ctx, inv.Entries)
	if err != nil {
		for i := range kept {
			kept[i].Stale = true
		}
		inv.Entries = kept
		if werr := s.writeInventory(ctx, inv); werr != nil {
			s.log.Warn("write inventory after a failed delete", "err", werr)
		}
		return err
	}
	if err := s.postDeleteHooks(ctx, inv, hooks); err != nil {
		return err
	}
	if err := s.deleteInventory(ctx); err != nil {
		return err
	}
	s.log.Info("deleted application", "pruned", pruned)
	return nil
}

// appLocks serialises operations per application.
type appLocks struct {
	mu   sync.Mutex // guards the field below
	held map[string]*appLock
}

type appLock struct {
	ch   chan struct{} // holds a token while the lock is held
	refs int           // holders and waiters
}

// lock waits for the application's lock, or for ctx to end, and returns
// the function that releases it.
func (l *appLocks) lock(ctx context.Context, app string) (func(), error) {
	l.mu.Lock()
	if l.held == nil {
		l.held = map[string]*appLock{}
	}
	al := l.held[app]
	if al == nil {
		al = &appLock{ch: make(chan struct{}, 1)}
		l.held[app] = al
	}
	al.refs++
	l.mu.Unlock()

	select {
	case al.ch <- struct{}{}:
		return func() {
			<-al.ch
			l.release(app, al)
		}, nil
	case <-ctx.Done():
		l.release(app, al)
		return nil, ctx.Err()
	}
}

func (l *appLocks) release(app string, al *appLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	al.refs--
	if al.refs == 0 {
		delete(l.held, app)
	}
}

// objectErrors reports every refused object, the first as the error's
// object.
func objectErrors(errs []*ObjectError) error {
	names := make([]string, 0, len(errs))
	for _, e := range errs[1:] {
		names = append(names, e.Object.String())
	}
	return andOthers(errs[0], names)
}

// andOthers is first, followed by the names of the other objects that
// failed; nil when first is.
func andOthers(first error, others []string) error {
	if first == nil || len(others) == 0 {
		return first
	}
	return fmt.Errorf("%w (and %d more: %s)", first, len(others), strings.Join(others, ", "))
}

func metaKey(group, kind, namespace, name string) string {
	return group + "/" + kind + "/" + namespace + "/" + name
}
