// Package reconcile keeps a cluster running its assignment. Each
// application is reconciled on its own, as an ordered list of steps —
// fetch the pinned commit, render it, apply (with prune), assess health —
// with bounded concurrency across applications, so one broken application
// fails alone while the others carry on. Status changes are kept for the
// hub and sent when it is reachable; the assignment is kept on disk, so the
// agent goes on reconciling and healing drift while the hub is away, also
// across restarts.
package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/drover-dev/drover/agent/apply"
	"github.com/drover-dev/drover/agent/state"
	"github.com/drover-dev/drover/internal/artifact"
	"github.com/drover-dev/drover/internal/backoff"
	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Fetcher brings an application's pinned content (a Git commit, a Helm
// chart version, an OCI artifact) onto disk (source.Cache.Fetch).
type Fetcher interface {
	Fetch(ctx context.Context, aa *droverv1.AppAssignment) (dir string, release func(), err error)
}

// Renderer turns a checked-out directory into objects. Its errors say
// that rendering failed and where ("render apps/web/deploy.yaml:7: ..."),
// as agent/render's do, so they are reported as they are.
type Renderer func(ctx context.Context, root string, a *droverv1.AppAssignment) ([]*unstructured.Unstructured, error)

// Applier makes the cluster match rendered objects, step by step.
type Applier interface {
	// Begin starts applying objs (apply.Applier.Begin); the Run is never
	// nil and is closed by the caller.
	Begin(ctx context.Context, app, commit string, objs []*unstructured.Unstructured, policy apply.Policy) (Run, error)
	// Assess reads an application's objects back, applying nothing.
	Assess(ctx context.Context, app string) (*apply.Result, error)
	// Delete deletes an application's objects.
	Delete(ctx context.Context, app string) error
}

// Run is one apply of one application, in steps (*apply.Run).
type Run interface {
	Apply(ctx context.Context) error
	Prune(ctx context.Context) error
	Assess()
	Result(ctx context.Context, err error) (*apply.Result, error)
	Close()
}

// postHooker is a Run that runs a release's post-install and post-upgrade
// Helm hooks once its objects are healthy (*apply.Run does). A Run without
// it has none to run.
type postHooker interface {
	PostHooks(ctx context.Context) error
}

var _ postHooker = (*apply.Run)(nil)

// releaseDeleter is an Applier that runs a release's pre-delete and
// post-delete Helm hooks around Delete, rendering the release again when
// it has some (*apply.Applier does).
type releaseDeleter interface {
	DeleteRelease(ctx context.Context, app string, render func(context.Context) ([]*unstructured.Unstructured, error)) error
}

var _ releaseDeleter = engine{}

// Engine adapts the agent's apply engine to Applier.
func Engine(a *apply.Applier) Applier { return engine{a} }

type engine struct{ *apply.Applier }

func (e engine) Begin(ctx context.Context, app, commit string, objs []*unstructured.Unstructured, policy apply.Policy) (Run, error) {
	return e.Applier.Begin(ctx, app, commit, objs, policy)
}

// Config tunes a Reconciler.
type Config struct {
	// Concurrency is how many applications are reconciled at once.
	Concurrency int
	// DefaultInterval is how often an application is re-applied (healing or
	// reporting drift) when its sync policy names no interval.
	DefaultInterval time.Duration
	// ProgressingInterval is how often the health of an application that is
	// still progressing is assessed.
	ProgressingInterval time.Duration
	// RetryBase and RetryMax bound the delays after retryable failures.
	RetryBase, RetryMax time.Duration
	// Reconciled, when set, is called after every reconcile of an
	// application still in the assignment, with its result and the first
	// failure (nil when none): the agent watches the objects it lists
	// (agent/watch). It is called from the reconciling goroutine without
	// r.mu held and must not block for long.
	Reconciled func(app string, res *apply.Result, err error)
}

func (c *Config) setDefaults() {
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.DefaultInterval <= 0 {
		c.DefaultInterval = 5 * time.Minute
	}
	if c.ProgressingInterval <= 0 {
		c.ProgressingInterval = 5 * time.Second
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 5 * time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 5 * time.Minute
	}
}

// Reconciler reconciles the applications of one assignment.
type Reconciler struct {
	cfg     Config
	log     *slog.Logger
	fetch   Fetcher
	render  Renderer
	applier Applier
	state   *state.Dir
	// onApplied is called once every application of an assignment has
	// been reconciled once; onStatus when a status changed. Both are
	// called from a reconciling goroutine without r.mu held, so they may
	// call back into the Reconciler; they must not block for long.
	onApplied func(version, nonce string)
	onStatus  func()

	wake chan struct{}

	mu             sync.Mutex // guards the fields below
	version, nonce string
	applied        string
	apps           map[string]*appState
	// waiting lists the applications of the current assignment not yet
	// reconciled once; when it empties, the assignment is acknowledged.
	waiting  map[string]bool
	statuses map[string]*droverv1.ApplicationStatus
	// unsent marks statuses changed since they were last handed to the
	// hub; fullNext asks for the next report to list everything.
	unsent   map[string]bool
	fullNext bool
	// removedUnsent lists the applications removed since the hub was last
	// handed a report naming them, so that it forgets their statuses.
	removedUnsent map[string]bool
	// removingStored: the state directory lists applications being
	// removed (saveRemovingLocked).
	removingStored bool
	// notes are the callbacks due once r.mu is released
	// (unlockAndNotify).
	notes []func()
}

type appState struct {
	spec     *droverv1.AppAssignment
	specHash string
	// synced is the specHash of the last Sync that completed; ran the one of
	// the last run that finished, successful or not.
	synced, ran string
	health      droverv1.Health
	due         time.Time
	running     bool
	// forceSync skips the assess-only shortcut once.
	forceSync bool
	// again: a sync was asked for while one ran, which may have read
	// the objects before the change that asked; run again when it ends.
	again bool
	// removed: the application left the assignment and is being pruned.
	removed bool
	retry   *backoff.Backoff
}

// New returns a Reconciler. Call Run to start it.
func New(cfg Config, st *state.Dir, f Fetcher, r Renderer, a Applier, onApplied func(version, nonce string), onStatus func(), logger *slog.Logger) *Reconciler {
	cfg.setDefaults()
	return &Reconciler{
		cfg: cfg, log: logger, fetch: f, render: r, applier: a, state: st,
		onApplied: onApplied, onStatus: onStatus,
		wake:          make(chan struct{}, 1),
		apps:          map[string]*appState{},
		statuses:      map[string]*droverv1.ApplicationStatus{},
		unsent:        map[string]bool{},
		removedUnsent: map[string]bool{},
		applied:       st.AppliedVersion(),
	}
}

// Resume takes the assignment stored on disk, if any, so the cluster is
// reconciled before (or without) the hub, and goes on removing the
// applications that had left it when the agent stopped.
func (r *Reconciler) Resume() error {
	a, err := r.state.Assignment()
	if err != nil {
		return err
	}
	removing, err := r.state.Removing()
	if err != nil {
		return err
	}
	if err := Validate(&droverv1.Assignment{Version: "removing", Applications: removing}); err != nil {
		return fmt.Errorf("stored applications being removed: %w", err)
	}
	if a != nil {
		if err := Validate(a); err != nil {
			return fmt.Errorf("stored assignment: %w", err)
		}
		r.take(a, false)
		r.log.Info("resumed the stored assignment", "version", a.GetVersion(), "applications", len(a.GetApplications()))
	}
	r.mu.Lock()
	defer r.unlockAndNotify()
	if r.waiting == nil {
		r.waiting = map[string]bool{}
	}
	r.removingStored = len(removing) > 0
	for _, aa := range removing {
		if _, assigned := r.apps[aa.GetName()]; assigned {
			continue
		}
		r.apps[aa.GetName()] = &appState{
			spec: aa, specHash: specHash(aa), removed: true, due: time.Now(),
			retry: backoff.New(r.cfg.RetryBase, r.cfg.RetryMax),
		}
		r.waiting[aa.GetName()] = true
		r.log.Info("resumed removing an application that left the assignment", "app", aa.GetName())
	}
	r.signal()
	return nil
}

// SetAssignment takes a new assignment from the hub. An invalid one is
// refused with the reason and changes nothing.
//
// The applications it drops are stored as being removed before the
// assignment itself, so that an agent that stops before it removed them
// finds them again when it resumes.
func (r *Reconciler) SetAssignment(ctx context.Context, a *droverv1.Assignment) error {
	if err := Validate(a); err != nil {
		return err
	}
	r.mu.Lock()
	err := r.saveRemovingLocked(a)
	r.mu.Unlock()
	if err != nil {
		return err
	}
	if err := r.state.SaveAssignment(a); err != nil {
		return fmt.Errorf("store the assignment: %w", err)
	}
	r.take(a, true)
	return nil
}

// saveRemovingLocked stores the applications being removed once next is
// the assignment (nil: the current one): those it does not name that the
// agent holds.
func (r *Reconciler) saveRemovingLocked(next *droverv1.Assignment) error {
	assigned := map[string]bool{}
	for _, aa := range next.GetApplications() {
		assigned[aa.GetName()] = true
	}
	var removing []*droverv1.AppAssignment
	for name, st := range r.apps {
		if next == nil && st.removed || next != nil && !assigned[name] {
			removing = append(removing, st.spec)
		}
	}
	if len(removing) == 0 && !r.removingStored {
		return nil
	}
	sort.Slice(removing, func(i, j int) bool { return removing[i].GetName() < removing[j].GetName() })
	if err := r.state.SaveRemoving(removing); err != nil {
		return fmt.Errorf("store the applications being removed: %w", err)
	}
	r.removingStored = len(removing) > 0
	return nil
}

func (r *Reconciler) take(a *droverv1.Assignment, fromHub bool) {
	r.mu.Lock()
	defer r.unlockAndNotify()
	r.version, r.nonce = a.GetVersion(), a.GetNonce()
	r.waiting = map[string]bool{}
	now := time.Now()
	seen := map[string]bool{}
	for _, aa := range a.GetApplications() {
		seen[aa.GetName()] = true
		// Assigned again before the hub heard of its removal: what the hub
		// needs now is its new status, not that old news.
		delete(r.removedUnsent, aa.GetName())
		h := specHash(aa)
		st := r.apps[aa.GetName()]
		if st == nil {
			st = &appState{retry: backoff.New(r.cfg.RetryBase, r.cfg.RetryMax)}
			r.apps[aa.GetName()] = st
		}
		st.removed = false
		if st.specHash != h || !fromHub {
			st.spec, st.specHash = aa, h
			st.due = now
			st.forceSync = true
			st.retry.Reset()
		}
		if st.ran != h {
			r.waiting[aa.GetName()] = true
		}
	}
	for name, st := range r.apps {
		if !seen[name] && !st.removed {
			st.removed = true
			st.due = now
			r.waiting[name] = true
		}
	}
	r.checkAppliedLocked()
	r.signal()
}

// Validate checks an assignment before the agent takes it.
func Validate(a *droverv1.Assignment) error {
	if a.GetVersion() == "" {
		return errors.New("assignment has no version")
	}
	names := map[string]bool{}
	for i, aa := range a.GetApplications() {
		field := fmt.Sprintf("applications[%d]", i)
		if errs := validation.IsDNS1123Label(aa.GetName()); len(errs) > 0 {
			return fmt.Errorf("%s.name %q: %s", field, aa.GetName(), errs[0])
		}
		if names[aa.GetName()] {
			return fmt.Errorf("%s.name %q: listed twice", field, aa.GetName())
		}
		names[aa.GetName()] = true
		if aa.GetRepoUrl() == "" {
			return fmt.Errorf("%s.repo_url: empty", field)
		}
		if err := validateCommit(aa); err != nil {
			return fmt.Errorf("%s.%w", field, err)
		}
		// Empty from a hub that sends no ref: the commit is fetched as before.
		if ref := aa.GetRef(); ref != "" {
			if err := gitremote.CheckRef(ref); err != nil {
				return fmt.Errorf("%s.ref: %w", field, err)
			}
		}
		if _, ok := droverv1.RenderType_name[int32(aa.GetRender())]; !ok || aa.GetRender() == droverv1.RenderType_RENDER_TYPE_UNSPECIFIED {
			return fmt.Errorf("%s.render: unknown render type %d", field, aa.GetRender())
		}
		if iv := aa.GetSyncPolicy().GetInterval(); iv != "" {
			if d, err := time.ParseDuration(iv); err != nil || d <= 0 {
				return fmt.Errorf("%s.sync_policy.interval: %q is not a positive duration", field, iv)
			}
		}
	}
	return nil
}

// validateCommit checks an application's pinned commit for its source
// type: a full lower-case Git SHA (the hub sends them lower-cased), or for a
// Helm repository or OCI source a revision VERSION@sha256:HEX. A source
// type this agent does not know is refused, so the hub hears (NACK) that
// the agent cannot deploy it.
func validateCommit(aa *droverv1.AppAssignment) error {
	switch aa.GetSourceType() {
	case droverv1.SourceType_SOURCE_TYPE_UNSPECIFIED, droverv1.SourceType_SOURCE_TYPE_GIT:
		if sha, err := gitremote.CheckCommit(aa.GetCommit()); err != nil || sha != aa.GetCommit() {
			return fmt.Errorf("commit: %q is not a full lower-case commit SHA", aa.GetCommit())
		}
	case droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY, droverv1.SourceType_SOURCE_TYPE_OCI:
		if _, err := artifact.ParseRevision(aa.GetCommit()); err != nil {
			return fmt.Errorf("commit: %q is not a revision VERSION@sha256:HEX", aa.GetCommit())
		}
		if aa.GetSourceType() == droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY && aa.GetChart() == "" {
			return errors.New("chart: empty for a Helm repository source")
		}
	default:
		return fmt.Errorf("source_type: unknown source type %d; this agent is older than the hub", aa.GetSourceType())
	}
	return nil
}

func specHash(aa *droverv1.AppAssignment) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(aa)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:16])
}

func (r *Reconciler) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// SyncNow reconciles an application (or all, for "") fully now.
func (r *Reconciler) SyncNow(app string) {
	r.mu.Lock()
	for name, st := range r.apps {
		if app == "" || name == app {
			st.due, st.forceSync = time.Time{}, true
			st.again = st.running
		}
	}
	r.mu.Unlock()
	r.signal()
}

// Drifted syncs an application now because an object it applied was
// changed by someone else (agent/watch): with selfHeal its sync re-applies
// what drifted, without it the sync reports OutOfSync and changes nothing.
// Either way the application's next sync is not left to its interval,
// which stays as a backstop.
func (r *Reconciler) Drifted(app string) {
	r.mu.Lock()
	st := r.apps[app]
	if st == nil || st.removed {
		r.mu.Unlock()
		return
	}
	st.due, st.forceSync = time.Time{}, true
	st.again = st.running
	selfHeal := st.spec.GetSyncPolicy().GetSelfHeal()
	r.mu.Unlock()
	r.log.Debug("objects changed by another writer: syncing", "app", app, "self_heal", selfHeal)
	r.signal()
}

// Holds reports whether app is in the assignment and not being removed.
func (r *Reconciler) Holds(app string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.apps[app]
	return st != nil && !st.removed
}

// AppliedVersion is the last assignment version applied and acknowledged.
func (r *Reconciler) AppliedVersion() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

// Run reconciles until ctx ends.
func (r *Reconciler) Run(ctx context.Context) {
	sem := make(chan struct{}, r.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	for {
		for _, name := range r.dueApps(time.Now(), cap(sem)-len(sem)) {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done(); r.signal() }()
				r.reconcile(ctx, name)
			}()
		}
		timer.Reset(r.nextWait(time.Now()))
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// dueApps marks up to n due applications running and returns them.
func (r *Reconciler) dueApps(now time.Time, n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for name, st := range r.apps {
		if len(out) >= n {
			break
		}
		if !st.running && !st.due.After(now) {
			st.running = true
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func (r *Reconciler) nextWait(now time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	wait := time.Minute
	for _, st := range r.apps {
		if st.running {
			continue
		}
		if d := st.due.Sub(now); d < wait {
			wait = d
		}
	}
	return max(wait, 10*time.Millisecond)
}

// attempt is one reconcile of one application: what its steps produced,
// for the steps after them and for the summary.
type attempt struct {
	spec *droverv1.AppAssignment
	log  *slog.Logger
	// dir is the checkout (fetch); release frees it.
	dir     string
	release func()
	// objs are the rendered objects (render).
	objs []*unstructured.Unstructured
	// run is the apply under way (apply, prune, assess).
	run Run
	// assessed is the state read back when only health was checked.
	assessed *apply.Result
}

// step is one step of a reconcile. Its error says whether retrying helps
// (retry.IsTransient); the first failure stops the steps after it, except
// those that run after a failure too.
type step struct {
	name string
	// afterFailure: the step runs after an earlier one failed, because it
	// only reads (assess says how the objects are either way).
	afterFailure bool
	do           func(ctx context.Context, a *attempt) error
}

// syncSteps apply an application's commit to the cluster.
func (r *Reconciler) syncSteps() []step {
	return []step{
		{name: "fetch", do: r.fetchStep},
		{name: "render", do: r.renderStep},
		{name: "apply", do: r.applyStep},
		{name: "prune", do: pruneStep},
		{name: "post-hooks", do: postHooksStep},
		{name: "assess", afterFailure: true, do: assessStep},
	}
}

// checkSteps only read the health of an application applied already,
// while it is progressing.
func (r *Reconciler) checkSteps() []step {
	return []step{{name: "assess", do: r.checkStep}}
}

// reconcile runs one application's steps once, summarises its status and
// schedules the next run.
func (r *Reconciler) reconcile(ctx context.Context, name string) {
	r.mu.Lock()
	st := r.apps[name]
	spec, hash, removed, force := st.spec, st.specHash, st.removed, st.forceSync
	assessOnly := !force && st.synced == hash && st.health == droverv1.Health_HEALTH_PROGRESSING
	st.forceSync = false
	r.mu.Unlock()
	log := r.log.With("app", name)

	if removed {
		r.remove(ctx, name, spec, log)
		return
	}

	at := &attempt{spec: spec, log: log}
	defer at.close()
	steps := r.syncSteps()
	if assessOnly {
		steps = r.checkSteps()
	}
	var err error
	for _, s := range steps {
		if err != nil && !s.afterFailure {
			continue
		}
		serr := s.do(ctx, at)
		if serr != nil && err == nil {
			at.log.Debug("step failed", "step", s.name, "err", serr)
			err = serr
		}
	}
	if ctx.Err() != nil {
		r.finish(name, hash, nil, false, time.Time{})
		return
	}
	res := at.summarize(ctx, err)
	next := r.schedule(name, spec, res, err)
	r.finish(name, hash, res, err == nil && !assessOnly, next)
	if r.cfg.Reconciled != nil && r.Holds(name) {
		r.cfg.Reconciled(name, res, err)
	}
}

func (r *Reconciler) fetchStep(ctx context.Context, a *attempt) error {
	dir, release, err := r.fetch.Fetch(ctx, a.spec)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	a.dir, a.release = dir, release
	return nil
}

func (r *Reconciler) renderStep(ctx context.Context, a *attempt) error {
	objs, err := r.render(ctx, a.dir, a.spec)
	if err != nil {
		// A render fails the same way every time, unless discovery got no
		// answer from the API server: retry.IsTransient tells them apart.
		// The error names the render already (Renderer).
		return err
	}
	a.objs = objs
	return nil
}

func (r *Reconciler) applyStep(ctx context.Context, a *attempt) error {
	pol := apply.Policy{Prune: a.spec.GetSyncPolicy().GetPrune(), SelfHeal: a.spec.GetSyncPolicy().GetSelfHeal()}
	run, err := r.applier.Begin(ctx, a.spec.GetName(), a.spec.GetCommit(), a.objs, pol)
	a.run = run
	// The applier has its own copies now.
	a.objs = nil
	if err != nil {
		return err
	}
	return run.Apply(ctx)
}

func pruneStep(ctx context.Context, a *attempt) error { return a.run.Prune(ctx) }

// postHooksStep runs after prune, as Helm runs post hooks once the release
// is in place; the pre hooks run within the apply step, before the
// objects that are not CRDs or Namespaces are applied.
func postHooksStep(ctx context.Context, a *attempt) error {
	if h, ok := a.run.(postHooker); ok {
		return h.PostHooks(ctx)
	}
	return nil
}

func assessStep(_ context.Context, a *attempt) error {
	if a.run != nil {
		a.run.Assess()
	}
	return nil
}

func (r *Reconciler) checkStep(ctx context.Context, a *attempt) error {
	res, err := r.applier.Assess(ctx, a.spec.GetName())
	if err != nil {
		// A failed assessment knows nothing worth keeping.
		return err
	}
	a.assessed = res
	return nil
}

// summarize is the one place an application's status is decided, from
// what its steps left and err, the first failure. Once the apply began,
// the Run decides (apply.Result.Summarize), so a failed apply keeps its
// per-object statuses and is never overwritten by what assess saw.
func (a *attempt) summarize(ctx context.Context, err error) *apply.Result {
	switch {
	case a.run != nil:
		res, _ := a.run.Result(ctx, err)
		return res
	case a.assessed != nil && err == nil:
		return a.assessed
	}
	res := &apply.Result{Application: a.spec.GetName(), Commit: a.spec.GetCommit()}
	res.Summarize(err, nil)
	return res
}

func (a *attempt) close() {
	if a.run != nil {
		a.run.Close()
	}
	if a.release != nil {
		a.release()
	}
}

// schedule returns when the application runs next: after a retry backoff
// when retrying helps, soon while it is progressing, else after its
// interval. Every delay is jittered, so a fleet does not run in lockstep.
func (r *Reconciler) schedule(name string, spec *droverv1.AppAssignment, res *apply.Result, err error) time.Time {
	r.mu.Lock()
	b := r.apps[name].retry
	r.mu.Unlock()
	now := time.Now()
	wait := backoff.Jitter(interval(spec, r.cfg.DefaultInterval), 0.1)
	switch {
	case err != nil:
		if retry.IsTransient(err) {
			wait = b.Next()
		}
		r.log.Warn("reconcile failed", "app", name, "commit", spec.GetCommit(), "err", err, "retryable", retry.IsTransient(err), "retry_in", wait.Round(time.Second))
	default:
		b.Reset()
		if res.Health == droverv1.Health_HEALTH_PROGRESSING || res.Health == droverv1.Health_HEALTH_UNKNOWN {
			wait = backoff.Jitter(r.cfg.ProgressingInterval, 0.1)
		}
	}
	return now.Add(wait)
}

func (r *Reconciler) remove(ctx context.Context, name string, spec *droverv1.AppAssignment, log *slog.Logger) {
	if spec.GetSyncPolicy().GetPrune() {
		if err := r.delete(ctx, name, spec, log); err != nil {
			if ctx.Err() == nil {
				log.Warn("prune removed application", "err", err)
				r.mu.Lock()
				st := r.apps[name]
				st.running = false
				st.due = time.Now().Add(st.retry.Next())
				r.mu.Unlock()
			}
			return
		}
		log.Info("application removed from the assignment: pruned")
	} else {
		log.Info("application removed from the assignment: its objects are left (prune is off)")
	}
	r.mu.Lock()
	defer r.unlockAndNotify()
	delete(r.apps, name)
	delete(r.statuses, name)
	delete(r.unsent, name)
	delete(r.waiting, name)
	if err := r.saveRemovingLocked(nil); err != nil {
		// Stored as still being removed: an agent restarted before the
		// next store removes it again, which finds nothing to do.
		log.Warn("removed application", "err", err)
	}
	r.removedUnsent[name] = true
	if r.onStatus != nil {
		r.notes = append(r.notes, r.onStatus)
	}
	r.checkAppliedLocked()
}

// delete deletes a removed application's objects, with its release's delete
// hooks when the applier runs them.
func (r *Reconciler) delete(ctx context.Context, name string, spec *droverv1.AppAssignment, log *slog.Logger) error {
	d, ok := r.applier.(releaseDeleter)
	if !ok {
		return r.applier.Delete(ctx, name)
	}
	render := func(ctx context.Context) ([]*unstructured.Unstructured, error) {
		at := &attempt{spec: spec, log: log}
		defer at.close()
		if err := r.fetchStep(ctx, at); err != nil {
			return nil, err
		}
		if err := r.renderStep(ctx, at); err != nil {
			return nil, err
		}
		return at.objs, nil
	}
	return d.DeleteRelease(ctx, name, render)
}

// finish records one run's result and schedules the next.
func (r *Reconciler) finish(name, hash string, res *apply.Result, synced bool, next time.Time) {
	r.mu.Lock()
	defer r.unlockAndNotify()
	st := r.apps[name]
	if st == nil {
		return
	}
	st.running = false
	// Asked for during this run (SyncNow, Drifted): run again at once.
	again := st.again
	st.again = false
	if res == nil {
		return
	}
	if st.specHash != hash {
		// A newer spec arrived meanwhile; it is due already.
		return
	}
	if synced {
		st.synced = hash
	}
	st.ran = hash
	st.health = res.Health
	st.due = next
	if again {
		st.due = time.Time{}
	}
	r.setStatusLocked(toStatus(name, res))
	delete(r.waiting, name)
	r.checkAppliedLocked()
}

func (r *Reconciler) checkAppliedLocked() {
	if len(r.waiting) > 0 || r.version == "" || r.version == r.applied {
		return
	}
	r.applied = r.version
	if err := r.state.SaveAppliedVersion(r.version); err != nil {
		r.log.Warn("record applied version", "err", err)
	}
	if r.nonce != "" && r.onApplied != nil {
		version, nonce := r.version, r.nonce
		r.notes = append(r.notes, func() { r.onApplied(version, nonce) })
	}
}

func (r *Reconciler) setStatusLocked(s *droverv1.ApplicationStatus) {
	if prev := r.statuses[s.GetApplication()]; prev != nil && sameStatus(prev, s) {
		return
	}
	r.statuses[s.GetApplication()] = s
	r.unsent[s.GetApplication()] = true
	if r.onStatus != nil {
		r.notes = append(r.notes, r.onStatus)
	}
}

// unlockAndNotify releases r.mu, then calls the callbacks queued while it
// was held, so that they may call back into the Reconciler.
func (r *Reconciler) unlockAndNotify() {
	notes := r.notes
	r.notes = nil
	r.mu.Unlock()
	for _, n := range notes {
		n()
	}
}

func sameStatus(a, b *droverv1.ApplicationStatus) bool {
	ac, bc := proto.Clone(a).(*droverv1.ApplicationStatus), proto.Clone(b).(*droverv1.ApplicationStatus)
	ac.ObservedAt, bc.ObservedAt = nil, nil
	return proto.Equal(ac, bc)
}

// MaxRemovedPerReport bounds the removed applications one report names
// (the hub reads at most as many); the rest go in the next report.
const MaxRemovedPerReport = 1000

// PendingStatus returns the statuses not yet handed to the hub, or all of
// them when full (or when the hub asked for a full report), and the
// applications removed since the hub was last told.
//
// A full report is deferred while an application is being removed: the
// hub forgets the statuses a full report does not list, and this one has
// not been pruned yet. The first report once the removal is done is the
// full one; until then reports carry what changed, as usual.
func (r *Reconciler) PendingStatus(full bool) *droverv1.StatusReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := &droverv1.StatusReport{Full: full || r.fullNext}
	if rep.Full && r.removingLocked() {
		rep.Full, r.fullNext = false, true
	}
	rep.Applications = r.statusesLocked(rep.Full)
	for app := range r.removedUnsent {
		rep.Removed = append(rep.Removed, app)
	}
	sort.Strings(rep.Removed)
	if len(rep.Removed) > MaxRemovedPerReport {
		rep.Removed = rep.Removed[:MaxRemovedPerReport]
	}
	return rep
}

// removingLocked reports whether some application is being removed.
func (r *Reconciler) removingLocked() bool {
	for _, st := range r.apps {
		if st.removed {
			return true
		}
	}
	return false
}

// statusesLocked returns every status, or only the unsent, by name.
func (r *Reconciler) statusesLocked(all bool) []*droverv1.ApplicationStatus {
	var out []*droverv1.ApplicationStatus
	for app, s := range r.statuses {
		if all || r.unsent[app] {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetApplication() < out[j].GetApplication() })
	return out
}

// Statuses returns the current status of every application, by name.
func (r *Reconciler) Statuses() []*droverv1.ApplicationStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.statusesLocked(true)
}

// StatusSent marks the statuses of rep as handed to the hub, unless they
// changed again meanwhile.
func (r *Reconciler) StatusSent(rep *droverv1.StatusReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rep.GetFull() {
		r.fullNext = false
	}
	for _, s := range rep.GetApplications() {
		if r.statuses[s.GetApplication()] == s {
			delete(r.unsent, s.GetApplication())
		}
	}
	// A name removed, assigned again and removed again between
	// PendingStatus and now is dropped with the first removal; the hub's
	// next full report catches up.
	for _, app := range rep.GetRemoved() {
		delete(r.removedUnsent, app)
	}
}

// ResendStatuses marks every status unsent, so that the next report lists
// them all again: for a new session with a hub that may have lost what
// the last one sent. Unlike a full report it deletes nothing on the hub,
// so an agent that has not reconciled everything since its start does not
// blank the statuses it has yet to recompute.
func (r *Reconciler) ResendStatuses() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for app := range r.statuses {
		r.unsent[app] = true
	}
}

// RequestFullStatus makes the next report list every application.
func (r *Reconciler) RequestFullStatus() {
	r.mu.Lock()
	r.fullNext = true
	r.mu.Unlock()
}

func interval(spec *droverv1.AppAssignment, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(spec.GetSyncPolicy().GetInterval()); err == nil && d > 0 {
		return d
	}
	return def
}

func toStatus(app string, res *apply.Result) *droverv1.ApplicationStatus {
	return &droverv1.ApplicationStatus{
		Application: app,
		Commit:      res.Commit,
		Sync:        res.Sync,
		Health:      res.Health,
		Message:     res.Message,
		Resources:   res.Resources,
		ObservedAt:  timestamppb.Now(),
	}
}
