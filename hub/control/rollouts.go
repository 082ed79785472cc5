package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/ownership"
	"github.com/drover-dev/drover/hub/rollout"
	"github.com/drover-dev/drover/hub/spec"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/backoff"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// rolloutInterval is how often the engine steps every rollout even without
// a wake: soaks and deadlines end, and clusters go offline, with no event to
// say so. Status writes, ACKs and NACKs wake it at once (Controller.Poke).
const rolloutInterval = time.Second

// rolloutRetryMax caps the engine's delay between steps while they fail.
const rolloutRetryMax = 15 * time.Second

// rollouts is the rollout engine: one goroutine that drives hub/rollout's
// planner for every application with a rollout strategy. It is the only
// writer of their rollout states and pins. Applications without a strategy
// never reach it: their release goes to every cluster at once, as before.
//
// It also puts every application into the fleet (setApp), so that the
// fleet never holds an application without its rollout's pins.
type rollouts struct {
	store *store.Store
	fleet *fleet.Fleet
	owner Owner
	log   *slog.Logger
	// offlineTimeout is the hub's online window.
	offlineTimeout time.Duration

	wake    chan struct{}
	control chan controlRequest
	// changed is called after a rollout state is stored (the dashboard's
	// refresh); it must not wake the engine.
	changed func()

	// mu serialises what goes into the fleet for an application (its
	// spec from setApp, its pins from the engine), so neither overwrites
	// the other with something older. Lock order: mu, then the fleet's.
	mu sync.Mutex // guards the fields below
	// apps is the application last set for each name, pins aside.
	apps map[string]*engineApp
	// states is each application's rollout as last stored, and versions
	// the version of that write: a state read back is taken only when it
	// is newer than the one held.
	states   map[string]rollout.State
	versions map[string]int64
}

// engineApp is an application as the engine keeps it: what goes into the
// fleet, and its rollout strategy parsed once, when the application is set.
type engineApp struct {
	*fleet.App
	// strategy is the parsed spec.rollout, nil without one; strategyErr
	// says why a strategy stored before a stricter rule does not parse.
	strategy    *spec.Strategy
	strategyErr error
}

type controlRequest struct {
	app, actor string
	op         rollout.Op
	reply      chan error
}

// newRollouts returns an engine with no rollout states: the Controller's
// load reads them (reloadStates) before it sets the applications, so that
// the fleet gets their pins as it loads (the hub resumes every rollout
// where it was).
func newRollouts(st *store.Store, f *fleet.Fleet, owner Owner, offlineTimeout time.Duration, changed func(), logger *slog.Logger) *rollouts {
	return &rollouts{
		store: st, fleet: f, owner: owner, log: logger, offlineTimeout: offlineTimeout,
		changed:  changed,
		wake:     make(chan struct{}, 1),
		control:  make(chan controlRequest),
		apps:     map[string]*engineApp{},
		states:   map[string]rollout.State{},
		versions: map[string]int64{},
	}
}

// setApp puts an application into the fleet. With a rollout strategy and
// a rollout state, the clusters get the state's pins and a cluster the
// rollout does not know yet gets the last good release, never one not
// proven yet.
func (e *rollouts) setApp(app *fleet.App) error {
	ea := &engineApp{App: app}
	ea.strategy, ea.strategyErr = spec.RolloutStrategy(app.Spec)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.fleet.SetApp(e.withPinsLocked(app)); err != nil {
		return err
	}
	e.apps[app.Name] = ea
	e.poke()
	return nil
}

func (e *rollouts) withPinsLocked(app *fleet.App) *fleet.App {
	st, ok := e.states[app.Name]
	if app.Spec.GetRollout() == nil || !ok || st.Release == "" {
		return app
	}
	cp := *app
	cp.Commit = holdCommit(st)
	cp.Pins = rollout.Pins(st)
	return &cp
}

// holdCommit is what a cluster the rollout has not placed yet runs.
func holdCommit(st rollout.State) string {
	if c := st.LastGood(); c != "" {
		return c
	}
	return st.Release
}

// removeApp takes an application out of the fleet and forgets it.
func (e *rollouts) removeApp(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.apps, name)
	delete(e.states, name)
	delete(e.versions, name)
	e.fleet.RemoveApp(name)
}

// manages reports whether the engine moves the application's releases:
// it has a rollout strategy.
func (e *rollouts) manages(app string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.apps[app]
	return a != nil && a.Spec.GetRollout() != nil
}

// poke wakes the engine without waiting.
func (e *rollouts) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// run steps every rollout when woken and every rolloutInterval until ctx
// ends.
func (e *rollouts) run(ctx context.Context) error {
	// While steps fail (the database is away) they are spaced out, so the
	// engine neither hammers the database nor floods the log.
	retry := backoff.New(rolloutInterval, rolloutRetryMax)
	t := time.NewTimer(rolloutInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-e.wake:
		case req := <-e.control:
			req.reply <- e.doControl(ctx, req)
		}
		next := rolloutInterval
		if e.stepAll(ctx) {
			next = retry.Next()
		} else {
			retry.Reset()
		}
		t.Reset(next)
	}
}

// Control applies an operator's command through the engine goroutine.
func (e *rollouts) Control(ctx context.Context, app string, op rollout.Op, actor string) error {
	req := controlRequest{app: app, op: op, actor: actor, reply: make(chan error, 1)}
	select {
	case e.control <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *rollouts) doControl(ctx context.Context, req controlRequest) error {
	e.mu.Lock()
	app := e.apps[req.app]
	e.mu.Unlock()
	if app == nil {
		return fmt.Errorf("application %s: %w", req.app, store.ErrNotFound)
	}
	if app.Spec.GetRollout() == nil {
		return &rollout.ControlError{Op: req.op, Msg: "the application has no rollout strategy: its releases go to every cluster at once"}
	}
	in, err := e.store.RolloutInputs(ctx, req.app, nil)
	if err != nil {
		return err
	}
	// On the stored state, whichever replica owns the rollout: the owner's
	// next step, made from the state before, is refused as stale and
	// reads this one.
	var next rollout.State
	r, err := e.store.UpdateRollout(ctx, req.app, func(cur store.Rollout) (rollout.State, []*droverv1.Event, error) {
		var actions []rollout.Action
		var err error
		if next, actions, err = rollout.Control(cur.State, req.op, in.Now); err != nil {
			return rollout.State{}, nil, err
		}
		return next, e.events(req.app, actions, req.actor), nil
	})
	if err != nil {
		return err
	}
	e.adopt(req.app, r)
	e.log.Info("rollout command", "app", req.app, "op", req.op, "actor", req.actor, "phase", next.Phase)
	// Step at once, as after any change: a promote starts the wave now.
	e.stepOne(ctx, req.app)
	return nil
}

// stepAll steps every application with a strategy, and forgets the
// rollouts of applications whose strategy was removed. It reports whether
// a step failed.
func (e *rollouts) stepAll(ctx context.Context) (failed bool) {
	e.mu.Lock()
	var names, dropped []string
	for name, app := range e.apps {
		if _, ok := e.owner.Lease(ownership.RolloutJob(name)); !ok {
			continue // another replica's, or nobody's yet
		}
		if _, ok := e.states[name]; ok && app.Spec.GetRollout() == nil {
			dropped = append(dropped, name)
		} else {
			names = append(names, name)
		}
	}
	e.mu.Unlock()
	slices.Sort(names)
	for _, name := range dropped {
		e.drop(ctx, name)
	}
	// Shared and read-only: the engine steps on every status write, and
	// copying every cluster's labels each time was most of its cost.
	lbls := e.fleet.ClusterLabels()
	for _, name := range names {
		if ctx.Err() != nil {
			return failed
		}
		if err := e.step(ctx, name, lbls); err != nil && ctx.Err() == nil {
			e.log.Warn("rollout step", "app", name, "err", err)
			failed = true
		}
	}
	return failed
}

func (e *rollouts) stepOne(ctx context.Context, name string) {
	if err := e.step(ctx, name, e.fleet.ClusterLabels()); err != nil && ctx.Err() == nil {
		e.log.Warn("rollout step", "app", name, "err", err)
	}
}

// drop deletes the rollout of an application that no longer has a
// strategy: its releases go everywhere at once again, and a strategy added
// later starts from what the clusters run then.
func (e *rollouts) drop(ctx context.Context, name string) {
	lease, ok := e.owner.Lease(ownership.RolloutJob(name))
	if !ok {
		return
	}
	if err := e.store.DeleteRollout(ctx, lease, name); err != nil {
		e.log.Warn("delete rollout", "app", name, "err", err)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.states, name)
	delete(e.versions, name)
	if app := e.apps[name]; app != nil {
		if err := e.fleet.SetApp(app.App); err != nil {
			e.log.Error("place application", "app", name, "err", err)
		}
	}
}

// step observes one application and advances its rollout.
func (e *rollouts) step(ctx context.Context, name string, lbls map[string]map[string]string) error {
	lease, owned := e.owner.Lease(ownership.RolloutJob(name))
	e.mu.Lock()
	app := e.apps[name]
	prev, version := e.states[name], e.versions[name]
	e.mu.Unlock()
	if !owned || app == nil || app.Spec.GetRollout() == nil {
		return nil
	}
	if app.strategyErr != nil {
		// Stored before a stricter rule: hold every cluster where it is.
		return fmt.Errorf("rollout strategy: %w", app.strategyErr)
	}
	_, obs, now, err := e.observe(ctx, name, prev, lbls)
	if err != nil {
		return err
	}
	obs.Strategy = app.strategy
	next, actions := rollout.Step(prev, obs, now)
	return e.commit(ctx, lease, name, version, prev, next, actions)
}

// observe reads what the planner needs about an application: its newest
// release (nil before the first), whose content commit is what the
// planner rolls out (a release that changes nothing under the
// application's paths has the content of the one before, so it starts no
// rollout and moves no cluster), its placed clusters and what is known
// about each, and the database's clock. prev is the rollout the
// observations are for, so that the objects of a Degraded report are read
// only while the planner has yet to take the report in.
func (e *rollouts) observe(ctx context.Context, name string, prev rollout.State, lbls map[string]map[string]string) (*droverv1.Release, rollout.Observations, time.Time, error) {
	obs := rollout.Observations{Clusters: map[string]rollout.Observation{}}
	rels, err := e.store.ListReleases(ctx, name, 1)
	if err != nil {
		return nil, obs, time.Time{}, err
	}
	var rel *droverv1.Release
	if len(rels) > 0 {
		rel = rels[0]
		obs.Commit = rel.GetContentCommit()
	}
	placed := e.fleet.PlacedClusters(name)
	for _, c := range placed {
		obs.Placed = append(obs.Placed, rollout.Cluster{Name: c, Labels: lbls[c]})
	}
	in, err := e.store.RolloutInputs(ctx, name, placed)
	if err != nil {
		return nil, obs, time.Time{}, err
	}
	var degraded []string
	for _, c := range placed {
		var o rollout.Observation
		if seen, ok := in.LastSeen[c]; ok {
			o.LastSeen = seen
			o.Online = in.Now.Sub(seen) < e.offlineTimeout
		}
		if s, ok := in.Statuses[c]; ok {
			o.Status = &rollout.Status{Commit: s.Commit, Sync: s.Sync, Health: s.Health, Message: s.Message, ObservedAt: s.ReceivedAt}
			if s.Health == droverv1.Health_HEALTH_DEGRADED && s.Commit == obs.Commit && takesIn(prev, prev.Clusters[c], obs.Commit) && s.ReceivedAt.After(prev.Clusters[c].Observed) {
				degraded = append(degraded, c)
			}
		}
		if n, ok := in.Nacks[c]; ok {
			o.Nack = e.nack(name, c, n)
		}
		obs.Clusters[c] = o
	}
	if len(degraded) > 0 {
		if err := e.degradedObjects(ctx, name, degraded, obs.Clusters); err != nil {
			return nil, obs, time.Time{}, err
		}
	}
	return rel, obs, in.Now, nil
}

// takesIn reports whether the planner takes in the reports of a cluster
// in state c of rollout prev when the release is commit: those it leaves
// unread would otherwise be read again at every step.
func takesIn(prev rollout.State, c rollout.ClusterState, commit string) bool {
	switch {
	case prev.Release != commit:
		return true // a new rollout starts
	case prev.Phase == rollout.PhaseCompleted:
		return c.Phase == rollout.ClusterPending || c.Phase == rollout.ClusterUpdating
	case prev.Phase.Done():
		return false
	}
	return c.Phase != rollout.ClusterSkipped
}

// degradedObjects adds to the Degraded reports of clusters their objects,
// which say what failed and why: the application's own message says only
// what was applied. One read for all of them, and only when a Degraded
// report is new, so a cluster that stays Degraded costs nothing more.
func (e *rollouts) degradedObjects(ctx context.Context, name string, clusters []string, obs map[string]rollout.Observation) error {
	sts, err := e.store.StatusesForApplication(ctx, name)
	if err != nil {
		return err
	}
	want := make(map[string]bool, len(clusters))
	for _, c := range clusters {
		want[c] = true
	}
	for _, st := range sts {
		o := obs[st.GetCluster()]
		// The row may have changed since RolloutInputs read it: its
		// objects go with the report only while it says the same.
		if !want[st.GetCluster()] || o.Status == nil || st.GetCommit() != o.Status.Commit || st.GetHealth() != o.Status.Health {
			continue
		}
		o.Status.Resources = st.GetResources()
	}
	return nil
}

// nack maps a cluster's NACK to the application's commit in the NACKed
// assignment. Only the cluster's current assignment is known; a NACK of an
// older one is nil: the agent has the current one to answer, and its answer
// to that decides.
func (e *rollouts) nack(app, cluster string, n store.Nack) *rollout.Nack {
	a := e.fleet.Assignment(cluster)
	if a.GetVersion() != n.Version {
		return nil
	}
	for _, aa := range a.GetApplications() {
		if aa.GetName() == app {
			return &rollout.Nack{Commit: aa.GetCommit(), Error: n.Error, At: n.At}
		}
	}
	return nil
}

// commit stores next (when it differs from prev) with the step's events
// under the rollout's lease, then gives the fleet its pins: a hub that
// stops in between resumes from the stored state and applies its pins at
// start. A step from a state written meanwhile (an operator's command
// through any replica) stores nothing: the engine reads the state again
// and steps from it. A lost lease stores nothing either: the rollout is
// another replica's now.
func (e *rollouts) commit(ctx context.Context, lease store.Lease, name string, version int64, prev, next rollout.State, actions []rollout.Action) error {
	a, err := json.Marshal(prev)
	if err != nil {
		return err
	}
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	if bytes.Equal(a, b) && len(actions) == 0 {
		return nil
	}
	v, err := e.store.CommitRollout(ctx, lease, name, version, next, e.events(name, actions, "hub"))
	switch {
	case errors.Is(err, store.ErrStale):
		e.log.Info("rollout written meanwhile; stepping from the stored state", "app", name)
		if err := e.reloadState(ctx, name); err != nil {
			return err
		}
		e.poke()
		return nil
	case errors.Is(err, store.ErrLeaseLost):
		e.log.Info("rollout moved to another replica", "app", name)
		return nil
	case err != nil:
		return err
	}
	e.adopt(name, store.Rollout{State: next, Version: v})
	for _, act := range actions {
		if ev, ok := act.(*rollout.Event); ok {
			e.log.Info("rollout", "app", name, "kind", ev.Kind, "cluster", ev.Cluster, "wave", ev.Wave, "msg", ev.Message)
		}
	}
	return nil
}

// events are the events among a step's or a command's actions, to be
// stored with its state.
func (e *rollouts) events(app string, actions []rollout.Action, actor string) []*droverv1.Event {
	var out []*droverv1.Event
	for _, act := range actions {
		if ev, ok := act.(*rollout.Event); ok {
			out = append(out, &droverv1.Event{
				Time: timestamppb.Now(), Kind: ev.Kind, Actor: actor, Cluster: ev.Cluster, Application: app, Message: ev.Message,
			})
		}
	}
	return out
}

// adopt takes r as an application's rollout unless the engine holds a
// newer one already, and gives the fleet its pins.
func (e *rollouts) adopt(name string, r store.Rollout) {
	e.mu.Lock()
	if v, ok := e.versions[name]; ok && v > r.Version {
		e.mu.Unlock()
		return
	}
	e.states[name], e.versions[name] = r.State, r.Version
	var setErr error
	if app := e.apps[name]; app != nil {
		// The fleet recomputes nothing when the pins did not change.
		setErr = e.fleet.SetApp(e.withPinsLocked(app.App))
	}
	e.mu.Unlock()
	if setErr != nil {
		e.log.Error("pin application", "app", name, "err", setErr)
	}
	e.changed()
}

// Rollout reports an application's rollout (for the admin API).
func (c *Controller) Rollout(ctx context.Context, app string) (*droverv1.RolloutStatus, error) {
	return c.rollouts.Rollout(ctx, app)
}

// ControlRollout applies an operator's command to an application's rollout
// and reports the rollout after it (for the admin API).
func (c *Controller) ControlRollout(ctx context.Context, app string, op rollout.Op, actor string) (*droverv1.RolloutStatus, error) {
	if err := c.rollouts.Control(ctx, app, op, actor); err != nil {
		return nil, err
	}
	return c.rollouts.Rollout(ctx, app)
}

// Rollout reports an application's rollout as stored.
// An application without a rollout strategy has no stored rollout: its
// releases go to every cluster at once, and the report is its current
// release's, worked out from what its clusters report now.
func (e *rollouts) Rollout(ctx context.Context, name string) (*droverv1.RolloutStatus, error) {
	var spec *droverv1.ApplicationSpec
	e.mu.Lock()
	a := e.apps[name]
	if a != nil {
		spec = a.Spec
	}
	// The state as the engine last committed it, which it stores and
	// pins the fleet to under e.mu: one read from the store could show a
	// phase ("rolled-back") before the fleet's assignments follow it.
	st, known := e.states[name]
	e.mu.Unlock()
	if a != nil && spec.GetRollout() == nil {
		return e.atOnce(ctx, name)
	}
	if !known {
		var err error
		if st, err = e.store.GetRolloutState(ctx, name); err != nil {
			return nil, err
		}
	}
	approval := map[string]bool{}
	for _, w := range spec.GetRollout().GetWaves() {
		approval[w.GetName()] = w.GetRequireApproval()
	}
	return rolloutStatus(name, st, approval, time.Now()), nil
}

// atOnce reports the current release of an application without a rollout
// strategy as a rollout that went to every cluster at once.
func (e *rollouts) atOnce(ctx context.Context, name string) (*droverv1.RolloutStatus, error) {
	rel, obs, now, err := e.observe(ctx, name, rollout.State{}, e.fleet.ClusterLabels())
	if err != nil {
		return nil, err
	}
	if rel == nil {
		return nil, fmt.Errorf("release of application %s: %w", name, store.ErrNotFound)
	}
	st := rollout.AtOnce(obs, rel.GetCreatedAt().AsTime(), now)
	return rolloutStatus(name, st, nil, now), nil
}

func rolloutStatus(name string, st rollout.State, approval map[string]bool, now time.Time) *droverv1.RolloutStatus {
	out := &droverv1.RolloutStatus{
		Application: name, Id: st.ID, Commit: st.Release, PreviousCommit: st.Good,
		Phase: string(st.Phase), Reason: st.Reason, Waiting: rollout.Waiting(st, now),
		StartedAt: tsOrNil(st.StartedAt), EndedAt: tsOrNil(st.EndedAt),
	}
	order := map[string]int{}
	for i, w := range st.Waves {
		order[w.Name] = i
		out.Waves = append(out.Waves, &droverv1.RolloutWaveStatus{
			Name: w.Name, Phase: string(w.Phase), Clusters: int32(w.Clusters), MaxParallel: int32(w.MaxParallel),
			ClusterPhases: map[string]int32{}, SoakUntil: tsOrNil(w.SoakUntil), RequiresApproval: approval[w.Name],
		})
	}
	for _, cname := range slices.Sorted(maps.Keys(st.Clusters)) {
		c := st.Clusters[cname]
		if i, ok := order[c.Wave]; ok {
			out.Waves[i].ClusterPhases[string(c.Phase)]++
		}
		msg := c.Reason
		if msg == "" {
			msg = c.Last
		}
		out.Clusters = append(out.Clusters, &droverv1.RolloutClusterStatus{Name: cname, Wave: c.Wave, Phase: string(c.Phase), Commit: c.Commit, Message: msg})
	}
	slices.SortStableFunc(out.Clusters, func(a, b *droverv1.RolloutClusterStatus) int {
		if d := order[a.GetWave()] - order[b.GetWave()]; d != 0 {
			return d
		}
		return strings.Compare(a.GetName(), b.GetName())
	})
	return out
}

func tsOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
