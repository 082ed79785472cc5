package rollout

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/drover-dev/drover/hub/spec"
	"github.com/drover-dev/drover/internal/artifact"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Step advances the rollout to what obs and now call for and returns the
// new State with the actions the engine must carry out, in a deterministic
// order. In one call it:
//
//   - starts a new rollout when obs.Commit is a new release (superseding a
//     running one: clusters keep what they run until their wave reaches
//     them);
//   - follows placement: a new cluster runs the last completed release
//     until its wave reaches it, a cluster that left is forgotten, and a
//     cluster whose labels moved it to another wave goes with them;
//   - takes in reports newer than the ones already taken, counting only
//     those about the release and observed after the cluster was pinned to
//     it, and decides which clusters succeeded or failed;
//   - stops the rollout (pause or rollback) when more clusters failed than
//     maxFailures allows;
//   - unless paused or failed: skips clusters offline beyond
//     offlineTimeout, starts clusters within each wave's maxParallel,
//     completes waves whose clusters settled and soaked, opens approval
//     gates, and completes the rollout.
//
// Without a strategy, or for an application's first release, the release
// goes to every cluster at once.
func Step(s State, obs Observations, now time.Time) (State, []Action) {
	r := newStepper(s, obs.Strategy, obs.Clusters, now)
	switch {
	case obs.Commit == "" || obs.Commit == s.Release:
	default:
		r.begin(obs.Commit)
	}
	if r.s.Release == "" {
		return s, nil
	}
	r.place(obs.Placed)
	if r.s.Phase == PhaseCompleted {
		r.follow()
	}
	if r.s.Phase.Done() {
		return r.s, r.actions
	}
	if r.acting() && (obs.Strategy == nil || r.s.Good == "") {
		r.completeAtOnce(obs.Strategy == nil)
		r.follow()
		return r.s, r.actions
	}
	r.observeAll()
	if r.overBudget() && (r.s.Phase != PhaseFailed || onFailure(r.strategy) == spec.FailureRollback) {
		r.stop()
		return r.s, r.actions
	}
	if r.acting() {
		r.skipOffline()
		r.advance()
	}
	return r.s, r.actions
}

// stepper holds one Step (or Control) call's work. s is a copy whose Waves
// and Clusters are its own.
type stepper struct {
	s        State
	strategy *spec.Strategy // never nil
	clusters map[string]Observation
	now      time.Time
	// plan is the current plan; nil in Control, which orders clusters by
	// name instead.
	plan     []Wave
	actions  []Action
	failures int
}

func newStepper(s State, strategy *spec.Strategy, clusters map[string]Observation, now time.Time) *stepper {
	if strategy == nil {
		strategy = &spec.Strategy{}
	}
	s.Waves = slices.Clone(s.Waves)
	s.Clusters = maps.Clone(s.Clusters)
	if s.Clusters == nil {
		s.Clusters = make(map[string]ClusterState)
	}
	return &stepper{s: s, strategy: strategy, clusters: clusters, now: now}
}

func (r *stepper) acting() bool {
	return r.s.Phase == PhaseRunning || r.s.Phase == PhaseWaitingApproval
}

func (r *stepper) event(kind, cluster, wave, format string, args ...any) {
	r.actions = append(r.actions, &Event{Kind: kind, Cluster: cluster, Wave: wave, Message: fmt.Sprintf(format, args...)})
}

// pin points c at commit, noting the change for the engine.
func (r *stepper) pin(name string, c *ClusterState, commit string) {
	if c.Commit == commit {
		return
	}
	c.Commit = commit
	c.PinnedAt = r.now
	r.actions = append(r.actions, &Pin{Cluster: name, Commit: commit})
}

// forEach calls f on every cluster, in plan order (by wave, then name) or,
// without a plan, by name, and stores what f changed.
func (r *stepper) forEach(f func(name string, c *ClusterState)) {
	// One ClusterState for the whole walk: f could keep a pointer, so a
	// variable per cluster would be an allocation per cluster.
	c := new(ClusterState)
	visit := func(name string) {
		var ok bool
		if *c, ok = r.s.Clusters[name]; !ok {
			return
		}
		before := *c
		f(name, c)
		if *c != before {
			r.s.Clusters[name] = *c
		}
	}
	if r.plan == nil {
		for _, name := range slices.Sorted(maps.Keys(r.s.Clusters)) {
			visit(name)
		}
		return
	}
	for _, w := range r.plan {
		for _, name := range w.Clusters {
			visit(name)
		}
	}
}

// begin replaces the State with a new rollout of commit.
func (r *stepper) begin(commit string) {
	prev := r.s
	r.s = State{
		ID:        prev.ID + 1,
		Release:   commit,
		Good:      prev.LastGood(),
		Phase:     PhaseRunning,
		StartedAt: r.now,
		Clusters:  make(map[string]ClusterState, len(prev.Clusters)),
	}
	for name, c := range prev.Clusters {
		r.s.Clusters[name] = ClusterState{Wave: c.Wave, Phase: ClusterPending, Commit: c.Commit, PinnedAt: c.PinnedAt}
	}
	if prev.Release != "" && !prev.Phase.Done() {
		r.s.Superseded = prev.Release
		r.event(EventSuperseded, "", "", "Rollout of %s superseded by %s: it starts again from the first wave; clusters keep what they run until their wave reaches them",
			short(prev.Release), short(commit))
	}
	if r.s.Good == "" {
		r.event(EventStarted, "", "", "Releasing %s", short(commit))
		return
	}
	r.event(EventStarted, "", "", "Rolling out %s; clusters not reached yet stay on %s", short(commit), short(r.s.Good))
}

// place follows placement: Plan over the placed clusters, their waves, the
// clusters that came and went.
func (r *stepper) place(placed []Cluster) {
	r.plan = Plan(r.strategy, placed)
	hold := r.s.Good
	if r.s.Phase == PhaseCompleted {
		hold = r.s.Release
	}
	// Counting saves building a set of 10,000 names at every Step to find
	// the clusters that left, when none did.
	planned := 0
	for _, w := range r.plan {
		for _, name := range w.Clusters {
			planned++
			c, ok := r.s.Clusters[name]
			if ok && c.Wave == w.Name {
				continue
			}
			if !ok {
				c = ClusterState{Phase: ClusterPending}
				r.pin(name, &c, hold)
			}
			c.Wave = w.Name
			r.s.Clusters[name] = c
		}
	}
	if len(r.s.Clusters) > planned {
		r.forget()
	}
	if r.s.Phase.Done() {
		return
	}
	byName := make(map[string]WaveState, len(r.s.Waves))
	for _, ws := range r.s.Waves {
		byName[ws.Name] = ws
	}
	r.s.Waves = make([]WaveState, len(r.plan))
	for i, w := range r.plan {
		ws, ok := byName[w.Name]
		if !ok {
			ws = WaveState{Name: w.Name, Phase: WavePending}
		}
		ws.Clusters = len(w.Clusters)
		ws.MaxParallel = w.MaxParallel
		r.s.Waves[i] = ws
	}
}

// forget drops the clusters the plan no longer has: they left the
// placement, and the fleet takes the application off them.
func (r *stepper) forget() {
	placed := make(map[string]struct{}, len(r.s.Clusters))
	for _, w := range r.plan {
		for _, name := range w.Clusters {
			placed[name] = struct{}{}
		}
	}
	for name := range r.s.Clusters {
		if _, ok := placed[name]; !ok {
			delete(r.s.Clusters, name)
		}
	}
}

func (r *stepper) completeAtOnce(noStrategy bool) {
	for i := range r.s.Waves {
		if r.s.Waves[i].Phase != WaveDone {
			r.s.Waves[i].Phase = WaveDone
			r.s.Waves[i].DoneAt = r.now
		}
	}
	if noStrategy {
		r.complete(NoStrategyReason)
		return
	}
	r.complete("first release of the application: there is no earlier release to hold clusters on, so it went to every cluster at once")
}

// AtOnce is where the current release of an application without a rollout
// strategy stands. It went to every placed cluster at once when it was
// made, at releasedAt, and each cluster is updating, succeeded or failed
// by what it reported since. Nothing stores it and it has no ID (rollouts
// number from 1): an engine computes it when asked, from the same
// Observations a Step takes (Strategy is ignored).
func AtOnce(obs Observations, releasedAt, now time.Time) State {
	obs.Strategy = nil
	if releasedAt.After(now) {
		releasedAt = now
	}
	// The first Step pins every cluster at releasedAt; the second takes
	// in what they reported since.
	s, _ := Step(State{}, obs, releasedAt)
	s, _ = Step(s, obs, now)
	s.ID = 0
	return s
}

// NoStrategyReason is the Reason of the release of an application without
// a rollout strategy.
const NoStrategyReason = "the application has no rollout strategy, so its releases go to every cluster at once"

// follow keeps a completed rollout's clusters and waves saying what they
// run: a cluster pinned to the release (all of them, after a release that
// went everywhere at once, and any placed since) is updating until it
// reports the release Synced and Healthy or a failure, and a wave runs
// while one of its clusters updates. Nothing is gated any more, so only
// the reports decide: no deadline, no failure budget.
func (r *stepper) follow() {
	updating := make(map[string]bool, len(r.s.Waves))
	r.forEach(func(name string, c *ClusterState) {
		if c.Phase == ClusterPending && c.Commit == r.s.Release {
			c.Phase, c.StartedAt, c.DeadlineFrom = ClusterUpdating, r.now, r.now
		}
		if c.Phase != ClusterUpdating {
			return
		}
		r.observe(c, r.clusters[name])
		switch {
		case c.Problem != "":
			r.fail(name, c, c.Problem)
		case !c.HealthySince.IsZero():
			c.Phase = ClusterSucceeded
			c.EndedAt = r.now
		default:
			updating[c.Wave] = true
		}
	})
	for i := range r.s.Waves {
		ws := &r.s.Waves[i]
		switch {
		case updating[ws.Name]:
			ws.Phase = WaveRunning
		case ws.Phase != WaveDone:
			ws.Phase, ws.DoneAt = WaveDone, r.now
		}
	}
}

func (r *stepper) complete(reason string) {
	r.s.Phase = PhaseCompleted
	r.s.Reason = reason
	r.s.EndedAt = r.now
	var succeeded, failed, skipped int
	r.forEach(func(name string, c *ClusterState) {
		switch c.Phase {
		case ClusterSucceeded:
			succeeded++
		case ClusterFailed:
			failed++
		case ClusterSkipped:
			skipped++
		}
		r.pin(name, c, r.s.Release)
	})
	msg := fmt.Sprintf("Rollout of %s completed on %d clusters: %d succeeded, %d failed, %d skipped",
		short(r.s.Release), len(r.s.Clusters), succeeded, failed, skipped)
	if skipped > 0 {
		msg += "; the skipped ones get it when they return"
	}
	if reason != "" {
		msg = fmt.Sprintf("Released %s to %d clusters: %s", short(r.s.Release), len(r.s.Clusters), reason)
	}
	r.event(EventCompleted, "", "", "%s", msg)
}

// observeAll takes in new reports of every cluster the rollout watches and
// decides which succeeded or failed.
func (r *stepper) observeAll() {
	r.forEach(func(name string, c *ClusterState) {
		if c.Phase == ClusterFailed {
			r.failures++
		}
		if !c.started() {
			return
		}
		o := r.clusters[name]
		r.observe(c, o)
		r.evaluate(name, c, o)
	})
}

// observe takes in o's status and NACK if they are newer than what c has
// taken in: a report that arrives after a newer one changes nothing. Of
// the two, the newer one decides.
func (r *stepper) observe(c *ClusterState, o Observation) {
	st, nack := o.Status, o.Nack
	var stAt, nackAt time.Time
	if st != nil {
		if stAt = r.clamp(st.ObservedAt); !stAt.After(c.Observed) {
			st = nil
		}
	}
	if nack != nil {
		if nackAt = r.clamp(nack.At); !nackAt.After(c.NackSeen) {
			nack = nil
		}
	}
	if st != nil && nack != nil && nackAt.Before(stAt) {
		r.takeNack(c, nack, nackAt)
		r.takeStatus(c, st, stAt)
		return
	}
	if st != nil {
		r.takeStatus(c, st, stAt)
	}
	if nack != nil {
		r.takeNack(c, nack, nackAt)
	}
}

// clamp keeps a report from the future (a clock running ahead) from being
// fresh in one Step and stale in the same Step repeated: it is taken as
// observed now.
func (r *stepper) clamp(t time.Time) time.Time {
	if t.After(r.now) {
		return r.now
	}
	return t
}

// fresh reports whether a report observed at t about commit is about the
// release as the cluster runs it now, not an earlier deployment of it.
func (r *stepper) fresh(c *ClusterState, commit string, t time.Time) bool {
	return commit == r.s.Release && c.Commit == r.s.Release && t.After(c.PinnedAt)
}

func (r *stepper) takeStatus(c *ClusterState, st *Status, at time.Time) {
	c.Observed = at
	if !r.fresh(c, st.Commit, at) {
		return
	}
	c.Last = syncName(st.Sync) + ", " + healthName(st.Health)
	switch {
	case st.Sync == droverv1.SyncState_SYNC_STATE_FAILED:
		c.setProblem(withMessage("sync failed", st.Message))
	case st.Health == droverv1.Health_HEALTH_DEGRADED:
		c.setProblem(withMessage("Degraded", degradedMessage(st)))
	case st.Sync == droverv1.SyncState_SYNC_STATE_SYNCED && st.Health == droverv1.Health_HEALTH_HEALTHY:
		c.Problem = ""
		c.UnhealthySince = time.Time{}
		if c.HealthySince.IsZero() {
			c.HealthySince = at
		}
	default:
		c.Problem = ""
		c.HealthySince = time.Time{}
		if c.UnhealthySince.IsZero() {
			c.UnhealthySince = at
		}
	}
}

func (r *stepper) takeNack(c *ClusterState, n *Nack, at time.Time) {
	c.NackSeen = at
	if !r.fresh(c, n.Commit, at) {
		return
	}
	c.Last = "assignment rejected"
	c.setProblem(withMessage("the agent rejected the assignment", n.Error))
}

func (c *ClusterState) setProblem(p string) {
	c.Problem = p
	c.HealthySince = time.Time{}
	c.UnhealthySince = time.Time{}
}

// evaluate decides from what c has taken in whether it succeeded or
// failed. Time offline does not count against the progress deadline: an
// offline cluster is the offline timeout's business.
func (r *stepper) evaluate(name string, c *ClusterState, o Observation) {
	deadline := progressDeadline(r.strategy)
	switch c.Phase {
	case ClusterUpdating:
		if !o.Online && r.now.After(c.DeadlineFrom) {
			c.DeadlineFrom = r.now
		}
		switch {
		case c.Problem != "":
			r.fail(name, c, c.Problem)
		case !c.HealthySince.IsZero():
			c.Phase = ClusterSucceeded
			c.EndedAt = r.now
		case r.now.Sub(c.DeadlineFrom) > deadline:
			r.fail(name, c, fmt.Sprintf("not Synced and Healthy at %s within the progress deadline of %s (last report: %s)",
				short(r.s.Release), deadline, orDefault(c.Last, "none about the release")))
		}
	case ClusterSucceeded:
		if !o.Online && !c.UnhealthySince.IsZero() && r.now.After(c.UnhealthySince) {
			c.UnhealthySince = r.now
		}
		switch {
		case c.Problem != "":
			r.fail(name, c, c.Problem)
		case !c.UnhealthySince.IsZero() && r.now.Sub(c.UnhealthySince) > deadline:
			r.fail(name, c, fmt.Sprintf("not healthy again within the progress deadline of %s (last report: %s)", deadline, c.Last))
		}
	}
}

func (r *stepper) fail(name string, c *ClusterState, reason string) {
	c.Phase = ClusterFailed
	c.Reason = reason
	c.EndedAt = r.now
	r.failures++
	r.event(EventClusterFailed, name, c.Wave, "Cluster %s failed in wave %s: %s", name, c.Wave, reason)
}

func (r *stepper) overBudget() bool {
	return r.failures > r.strategy.MaxFailures.FloorOf(len(r.s.Clusters))
}

// stop applies the failure policy.
func (r *stepper) stop() {
	reason := r.failureSummary()
	if onFailure(r.strategy) == spec.FailureRollback {
		r.rollback(reason)
		return
	}
	r.s.Phase = PhaseFailed
	r.s.Reason = reason
	r.event(EventFailed, "", "", "Rollout of %s paused: %s; resume retries the failed clusters, or roll back or abort", short(r.s.Release), reason)
}

func (r *stepper) failureSummary() string {
	const listed = 5
	var names []string
	r.forEach(func(name string, c *ClusterState) {
		if c.Phase == ClusterFailed {
			names = append(names, fmt.Sprintf("%s (wave %s)", name, c.Wave))
		}
	})
	list := strings.Join(names[:min(len(names), listed)], ", ")
	if len(names) > listed {
		list += fmt.Sprintf(" and %d more", len(names)-listed)
	}
	return fmt.Sprintf("%s failed, more than maxFailures %s allows: %s", plural(len(names), "cluster"), r.strategy.MaxFailures, list)
}

// rollback moves every cluster to the last release that completed. Clusters
// still on a superseded release go too: it never completed, so it is not
// known to be good.
func (r *stepper) rollback(reason string) {
	r.s.Phase = PhaseRolledBack
	r.s.Reason = reason
	r.s.EndedAt = r.now
	r.endWaves(WaveRolledBack, true)
	moved := 0
	r.forEach(func(name string, c *ClusterState) {
		if c.Commit != r.s.Good {
			r.pin(name, c, r.s.Good)
			moved++
			// A failed cluster keeps its phase and reason: they say why
			// the rollout stopped.
			if c.Phase != ClusterFailed {
				c.Phase = ClusterRolledBack
				c.EndedAt = r.now
			}
		}
	})
	r.event(EventRolledBack, "", "", "Rolled back from %s to %s (%d clusters moved): %s", short(r.s.Release), short(r.s.Good), moved, reason)
}

// endWaves ends the waves of a rollout that stopped for good: a wave it
// reached is phase (a done one too, when undone is set), and one it never
// reached, or that waited for an approval nobody gave, is pending, so
// nothing reads as going on or as approved.
func (r *stepper) endWaves(phase WavePhase, undone bool) {
	for i := range r.s.Waves {
		ws := &r.s.Waves[i]
		switch ws.Phase {
		case WavePending, WaveWaitingApproval:
			ws.Phase = WavePending
		case WaveDone:
			if undone {
				ws.Phase = phase
			}
		default:
			ws.Phase = phase
		}
	}
}

func (r *stepper) skipOffline() {
	timeout := offlineTimeout(r.strategy)
	r.forEach(func(name string, c *ClusterState) {
		if c.Phase != ClusterUpdating {
			return
		}
		if o := r.clusters[name]; offlineFor(o, r.now) >= timeout {
			r.skip(name, c, o)
		}
	})
}

// offlineFor is how long the cluster has been offline; zero when online.
func offlineFor(o Observation, now time.Time) time.Duration {
	switch {
	case o.Online:
		return 0
	case o.LastSeen.IsZero():
		return math.MaxInt64
	}
	return now.Sub(o.LastSeen)
}

func (r *stepper) skip(name string, c *ClusterState, o Observation) {
	c.Phase = ClusterSkipped
	c.EndedAt = r.now
	c.Reason = "never seen online"
	if !o.LastSeen.IsZero() {
		c.Reason = "offline since " + formatTime(o.LastSeen, r.now)
	}
	r.pin(name, c, r.s.Good)
	r.event(EventClusterSkip, name, c.Wave, "Cluster %s skipped in wave %s: %s, more than the offline timeout of %s; it runs %s and gets %s once the rollout completes",
		name, c.Wave, c.Reason, offlineTimeout(r.strategy), short(r.s.Good), short(r.s.Release))
}

// advance moves the waves along in order, as far as they can go now.
func (r *stepper) advance() {
	r.s.Phase = PhaseRunning
	for i := range r.plan {
		if !r.advanceWave(&r.plan[i], &r.s.Waves[i]) {
			return
		}
	}
	// Clusters that joined a wave after it completed must settle too.
	for _, c := range r.s.Clusters {
		if !c.settled() {
			return
		}
	}
	r.complete("")
}

// advanceWave moves one wave along and reports whether it is done, so the
// next one may go.
func (r *stepper) advanceWave(w *Wave, ws *WaveState) bool {
	if ws.Phase == WaveDone {
		return r.startPending(w)
	}
	if ws.Phase == WavePending {
		if w.RequireApproval {
			ws.Phase = WaveWaitingApproval
			r.event(EventWaveWaiting, "", w.Name, "Wave %s (%s) waits for approval", w.Name, plural(len(w.Clusters), "cluster"))
		} else {
			r.startWave(w, ws)
		}
	}
	if ws.Phase == WaveWaitingApproval {
		r.s.Phase = PhaseWaitingApproval
		return false
	}
	if !r.startPending(w) {
		return false
	}
	if !r.settled(w) {
		ws.Phase = WaveRunning
		ws.SettledAt, ws.SoakStart, ws.SoakUntil = time.Time{}, time.Time{}, time.Time{}
		return false
	}
	if ws.Phase == WaveRunning {
		ws.Phase = WaveSoaking
		ws.SettledAt = r.now
		if w.Soak > 0 {
			r.event(EventWaveSoaking, "", w.Name, "Wave %s settled; soaking for %s", w.Name, w.Soak)
		}
	}
	if !r.soaked(w, ws) {
		return false
	}
	ws.Phase = WaveDone
	ws.DoneAt = r.now
	r.event(EventWaveCompleted, "", w.Name, "Wave %s completed", w.Name)
	return true
}

func (r *stepper) startWave(w *Wave, ws *WaveState) {
	ws.Phase = WaveRunning
	ws.StartedAt = r.now
	r.event(EventWaveStarted, "", w.Name, "Wave %s started: %s, at most %d at a time", w.Name, plural(len(w.Clusters), "cluster"), w.MaxParallel)
}

// startPending starts the wave's pending clusters, in name order, as far as
// maxParallel allows, and skips those offline beyond the timeout. An online
// cluster is preferred to an offline one, which waits without taking a
// slot. It reports false when a start used up the failure budget (a
// cluster may fail at once when it already ran the release), after
// stopping the rollout.
func (r *stepper) startPending(w *Wave) bool {
	timeout := offlineTimeout(r.strategy)
	updating := 0
	for _, name := range w.Clusters {
		if r.s.Clusters[name].Phase == ClusterUpdating {
			updating++
		}
	}
	for _, name := range w.Clusters {
		c := r.s.Clusters[name]
		if c.Phase != ClusterPending {
			continue
		}
		o := r.clusters[name]
		switch {
		case !o.Online:
			if offlineFor(o, r.now) < timeout {
				continue
			}
			r.skip(name, &c, o)
		case updating < w.MaxParallel:
			r.start(name, &c, o)
			if c.Phase == ClusterUpdating {
				updating++
			}
		default:
			continue
		}
		r.s.Clusters[name] = c
		if c.Phase == ClusterFailed && r.overBudget() {
			r.stop()
			return false
		}
	}
	return true
}

// start pins the cluster to the release and takes in its reports at once:
// a cluster that already ran the release may be done already.
func (r *stepper) start(name string, c *ClusterState, o Observation) {
	*c = ClusterState{Wave: c.Wave, Phase: ClusterUpdating, Commit: c.Commit, PinnedAt: c.PinnedAt, StartedAt: r.now, DeadlineFrom: r.now}
	r.pin(name, c, r.s.Release)
	r.observe(c, o)
	r.evaluate(name, c, o)
}

func (r *stepper) settled(w *Wave) bool {
	for _, name := range w.Clusters {
		if c := r.s.Clusters[name]; !c.settled() {
			return false
		}
	}
	return true
}

// soaked updates the wave's soak window and reports whether it is over.
// The soak counts from when the wave settled or the last of its succeeded
// clusters became healthy, whichever is later, and starts again when one
// of them stops being healthy.
func (r *stepper) soaked(w *Wave, ws *WaveState) bool {
	start := ws.SettledAt
	for _, name := range w.Clusters {
		c := r.s.Clusters[name]
		if c.Phase != ClusterSucceeded {
			continue
		}
		if c.HealthySince.IsZero() {
			ws.SoakStart, ws.SoakUntil = time.Time{}, time.Time{}
			return false
		}
		if c.HealthySince.After(start) {
			start = c.HealthySince
		}
	}
	ws.SoakStart = start
	ws.SoakUntil = start.Add(w.Soak)
	return !r.now.Before(ws.SoakUntil)
}

// short names a release's commit in events: 7 characters of a Git SHA, or
// a Helm or OCI revision's version and short digest.
func short(commit string) string { return artifact.ShortCommit(commit, 7) }

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// maxMessageBytes bounds an agent's message quoted in a reason: reasons go
// into events and the State.
const maxMessageBytes = 300

func withMessage(what, msg string) string {
	msg = strings.ToValidUTF8(strings.TrimSpace(msg), "?")
	if msg == "" {
		return what
	}
	if len(msg) > maxMessageBytes {
		cut := maxMessageBytes
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "..."
	}
	return what + ": " + msg
}

// degradedMessage says which objects of a Degraded report failed and why
// ("Deployment web/nginx: Progress deadline exceeded"), as the agent
// reported them; the report's own message when it names none.
func degradedMessage(st *Status) string {
	var parts []string
	for _, rs := range st.Resources {
		if rs.GetHealth() != droverv1.Health_HEALTH_DEGRADED {
			continue
		}
		obj := rs.GetKind() + " " + rs.GetName()
		if rs.GetNamespace() != "" {
			obj = rs.GetKind() + " " + rs.GetNamespace() + "/" + rs.GetName()
		}
		parts = append(parts, withMessage(obj, rs.GetMessage()))
	}
	if len(parts) == 0 {
		return st.Message
	}
	return strings.Join(parts, "; ")
}

// syncName and healthName say "unknown" in words, since the names stand
// inside a sentence of the rollout's status ("sync unknown, health unknown").
func syncName(s droverv1.SyncState) string {
	if n := s.Name(); n != "Unknown" {
		return n
	}
	return "sync unknown"
}

func healthName(h droverv1.Health) string {
	if n := h.Name(); n != "Unknown" {
		return n
	}
	return "health unknown"
}

// formatTime writes t in UTC, with the date when it is not now's.
func formatTime(t, now time.Time) string {
	t, now = t.UTC(), now.UTC()
	if t.Format(time.DateOnly) == now.Format(time.DateOnly) {
		return t.Format("15:04:05 UTC")
	}
	return t.Format("2006-01-02 15:04:05 UTC")
}
