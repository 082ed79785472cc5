// Package rollout plans Drover's progressive rollouts: how a new release of
// an application moves across its placed clusters in waves, gated by their
// health, a failure budget, soak times and manual approvals.
//
// It is pure computation, so that every decision can be tested and replayed.
// An engine owns the I/O: it keeps one State per application (in PostgreSQL;
// State marshals to JSON), and whenever something changes (a new commit, a
// status report, placement, the clock) it calls Step with what it observes
// now and carries out the returned Actions; operators' commands go through
// Control. Pins gives, at any moment, the commit every placed cluster must
// run, which the engine hands to the fleet as fleet.App.Pins.
//
// Step is level-triggered and idempotent: the same State and inputs give
// the same result and, the second time, no actions. A hub that restarts
// mid-wave loads the State, applies Pins and calls Step again; it neither
// skips a cluster nor starts one twice. Actions are notices of what changed
// (to send and to record), not the only record of it.
//
// All times (now, reports' ObservedAt, LastSeen) must come from one clock,
// the hub's: freshness is decided by comparing a report's time with the
// moment the cluster was pinned.
package rollout

import (
	"time"

	"github.com/drover-dev/drover/hub/spec"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Phase is a rollout's phase.
type Phase string

const (
	// PhaseRunning: waves are being updated or soaked.
	PhaseRunning Phase = "running"
	// PhaseWaitingApproval: the next wave waits for an operator's promote.
	PhaseWaitingApproval Phase = "waiting-approval"
	// PhasePaused: an operator paused; clusters hold where they are.
	PhasePaused Phase = "paused"
	// PhaseFailed: more clusters failed than maxFailures allows and the
	// policy is to pause; clusters hold where they are until an operator
	// resumes (retrying the failed clusters), rolls back or aborts.
	PhaseFailed Phase = "failed"
	// PhaseCompleted: every placed cluster runs the release.
	PhaseCompleted Phase = "completed"
	// PhaseRolledBack: every placed cluster runs the last release that
	// completed.
	PhaseRolledBack Phase = "rolled-back"
	// PhaseAborted: an operator stopped the rollout; every cluster keeps
	// what it runs until the next release.
	PhaseAborted Phase = "aborted"
	// PhaseSuperseded: a newer release replaced this one mid-rollout. Step
	// never returns a State in this phase (it returns the new rollout);
	// an engine that keeps history marks the old record with it.
	PhaseSuperseded Phase = "superseded"
)

// Phases, WavePhases and ClusterPhases list every phase of each kind, for
// whatever shows them (droverctl, the dashboard) to check it knows each.
var (
	Phases        = []Phase{PhaseRunning, PhaseWaitingApproval, PhasePaused, PhaseFailed, PhaseCompleted, PhaseRolledBack, PhaseAborted, PhaseSuperseded}
	WavePhases    = []WavePhase{WavePending, WaveWaitingApproval, WaveRunning, WaveSoaking, WaveDone, WaveRolledBack, WaveAborted}
	ClusterPhases = []ClusterPhase{ClusterPending, ClusterUpdating, ClusterSucceeded, ClusterFailed, ClusterSkipped, ClusterRolledBack}
)

// Done reports whether the rollout has ended: nothing it does changes any
// more except placing new clusters.
func (p Phase) Done() bool {
	switch p {
	case PhaseCompleted, PhaseRolledBack, PhaseAborted, PhaseSuperseded:
		return true
	}
	return false
}

// WavePhase is a wave's phase.
type WavePhase string

const (
	WavePending         WavePhase = "pending"
	WaveWaitingApproval WavePhase = "waiting-approval"
	WaveRunning         WavePhase = "running"
	// WaveSoaking: every cluster of the wave has settled; the wave
	// completes once the succeeded ones stayed healthy for its soak.
	WaveSoaking WavePhase = "soaking"
	WaveDone    WavePhase = "done"
	// WaveRolledBack: the rollout reached the wave, then rolled back; its
	// clusters run the last completed release. (A wave it never reached
	// stays pending.)
	WaveRolledBack WavePhase = "rolled-back"
	// WaveAborted: an operator aborted the rollout while the wave was
	// updating or soaking; its clusters keep what they run.
	WaveAborted WavePhase = "aborted"
)

// ClusterPhase is a cluster's phase in a rollout.
type ClusterPhase string

const (
	// ClusterPending: not reached yet; runs the commit it had. Once the
	// rollout completed, a cluster pinned to the release is updating
	// (then succeeded or failed by its reports), never pending.
	ClusterPending ClusterPhase = "pending"
	// ClusterUpdating: pinned to the release, not yet Synced and Healthy.
	ClusterUpdating ClusterPhase = "updating"
	// ClusterSucceeded: reported Synced and Healthy at the release.
	ClusterSucceeded ClusterPhase = "succeeded"
	// ClusterFailed: NACKed, failed to sync, Degraded, or not healthy
	// within the progress deadline. It keeps the release.
	ClusterFailed ClusterPhase = "failed"
	// ClusterSkipped: offline beyond the offline timeout when its wave
	// needed it; it runs the last completed release until the rollout
	// completes.
	ClusterSkipped ClusterPhase = "skipped"
	// ClusterRolledBack: the rollout rolled back and moved the cluster
	// from what it ran to the last completed release.
	ClusterRolledBack ClusterPhase = "rolled-back"
)

// State is one application's rollout: the release it moves, where each
// wave and cluster stands, and what the rollout is doing. Its zero value is
// "nothing released yet". Treat it as a value: Step and Control return a
// new State and never modify the one they are given.
type State struct {
	// ID numbers the application's rollouts: each new release's rollout
	// is one more than the one it follows, starting at 1.
	ID int64 `json:"id"`
	// Release is the commit this rollout moves the clusters to.
	Release string `json:"release"`
	// Good is the last release that completed before this one, which
	// clusters not reached yet, skipped and rolled back run; "" for the
	// first release, which goes everywhere at once (there is nothing to
	// hold clusters on).
	Good  string `json:"good,omitempty"`
	Phase Phase  `json:"phase"`
	// Reason says why the rollout failed, rolled back or ended at once.
	Reason string `json:"reason,omitempty"`
	// Superseded is the release this rollout replaced mid-rollout.
	Superseded string    `json:"superseded,omitempty"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	EndedAt    time.Time `json:"endedAt,omitzero"`
	// Waves follow the current plan's order.
	Waves []WaveState `json:"waves,omitempty"`
	// Clusters has one entry per placed cluster.
	Clusters map[string]ClusterState `json:"clusters,omitempty"`
}

// LastGood is the last release that completed: the one a newer release's
// rollout holds clusters on.
func (s State) LastGood() string {
	if s.Phase == PhaseCompleted {
		return s.Release
	}
	return s.Good
}

// WaveState is where one wave stands.
type WaveState struct {
	Name  string    `json:"name"`
	Phase WavePhase `json:"phase"`
	// Clusters is the wave's size in the last plan, MaxParallel its
	// resolved maxParallel.
	Clusters    int       `json:"clusters"`
	MaxParallel int       `json:"maxParallel"`
	StartedAt   time.Time `json:"startedAt,omitzero"`
	ApprovedAt  time.Time `json:"approvedAt,omitzero"`
	// SettledAt is when every cluster of the wave had succeeded, failed
	// or been skipped.
	SettledAt time.Time `json:"settledAt,omitzero"`
	// SoakStart is when the wave was last seen all healthy; zero while a
	// succeeded cluster is not healthy.
	SoakStart time.Time `json:"soakStart,omitzero"`
	// SoakUntil is when the soak ends, SoakStart plus the wave's soak.
	SoakUntil time.Time `json:"soakUntil,omitzero"`
	DoneAt    time.Time `json:"doneAt,omitzero"`
}

// ClusterState is where one placed cluster stands.
type ClusterState struct {
	// Wave is the cluster's wave in the last plan.
	Wave  string       `json:"wave"`
	Phase ClusterPhase `json:"phase"`
	// Commit is what the cluster is pinned to now (see Pins).
	Commit string `json:"commit"`
	// PinnedAt is when Commit last changed. A report about the release
	// counts only if observed after it: anything older is about another
	// deployment of the same commit.
	PinnedAt time.Time `json:"pinnedAt,omitzero"`
	// StartedAt is when the rollout reached the cluster.
	StartedAt time.Time `json:"startedAt,omitzero"`
	// DeadlineFrom is when the progress deadline starts counting: the
	// start, a retry, or the last time the cluster was seen offline.
	DeadlineFrom time.Time `json:"deadlineFrom,omitzero"`
	EndedAt      time.Time `json:"endedAt,omitzero"`
	// Observed and NackSeen are the times of the newest status and NACK
	// taken in; anything not newer is out of order and ignored.
	Observed time.Time `json:"observed,omitzero"`
	NackSeen time.Time `json:"nackSeen,omitzero"`
	// HealthySince is set while the newest fresh report is Synced and
	// Healthy at the release: since when.
	HealthySince time.Time `json:"healthySince,omitzero"`
	// UnhealthySince is set while the newest fresh report is neither
	// healthy nor a failure (Progressing, OutOfSync...): since when.
	UnhealthySince time.Time `json:"unhealthySince,omitzero"`
	// Problem is set while the newest fresh report is a failure.
	Problem string `json:"problem,omitempty"`
	// Last summarises the newest fresh report ("OutOfSync, Progressing").
	Last string `json:"last,omitempty"`
	// Reason says why the cluster failed or was skipped.
	Reason string `json:"reason,omitempty"`
}

// started reports whether the rollout has pinned the cluster to the
// release and is watching its reports.
func (c *ClusterState) started() bool {
	switch c.Phase {
	case ClusterUpdating, ClusterSucceeded, ClusterFailed:
		return true
	}
	return false
}

// settled reports whether the cluster no longer holds its wave.
func (c *ClusterState) settled() bool {
	switch c.Phase {
	case ClusterSucceeded, ClusterFailed, ClusterSkipped:
		return true
	}
	return false
}

// Pins returns the commit every placed cluster must run now, by cluster
// name: the release for clusters the rollout reached (and for all once it
// completed), the last completed release for clusters skipped or rolled
// back, and what it ran before for clusters not reached yet. The engine
// gives the fleet these as fleet.App.Pins (it may leave out the entries
// equal to fleet.App.Commit).
func Pins(s State) map[string]string {
	pins := make(map[string]string, len(s.Clusters))
	for name, c := range s.Clusters {
		if c.Commit != "" {
			pins[name] = c.Commit
		}
	}
	return pins
}

// Observations is what the engine knows when it calls Step.
type Observations struct {
	// Commit is the content commit of the application's current release
	// (what its clusters get), "" while its ref has never been resolved. A
	// commit other than the State's starts a new rollout that supersedes
	// the running one; a release that changes nothing under the
	// application's paths keeps the content commit, so it starts none.
	Commit string
	// Strategy is the application's rollout strategy now, nil for none.
	// Edits apply to the running rollout: waves done stay done, and a new
	// or renamed wave is a pending wave in its place.
	Strategy *spec.Strategy
	// Placed is every cluster the application is placed on now.
	Placed []Cluster
	// Clusters holds what is known about each placed cluster; a missing
	// entry is a cluster never seen online.
	Clusters map[string]Observation
}

// Observation is what the hub knows about one cluster.
type Observation struct {
	// Status is the newest status of the application on the cluster, nil
	// if none.
	Status *Status
	// Nack is set when the agent's newest answer to an assignment holding
	// the application was a NACK.
	Nack   *Nack
	Online bool
	// LastSeen is when the cluster was last heard from; zero for never.
	LastSeen time.Time
}

// Status is one status report of the application on a cluster.
type Status struct {
	// Commit is the commit the agent applied or tried to.
	Commit  string
	Sync    droverv1.SyncState
	Health  droverv1.Health
	Message string
	// Resources are the report's objects; only the Degraded ones are
	// read, to say in a failure which objects failed and why (the
	// application's own message says what was applied). The engine may
	// fill them only for reports that are Degraded.
	Resources  []*droverv1.ResourceStatus
	ObservedAt time.Time
}

// Nack is an agent's rejection of an assignment.
type Nack struct {
	// Commit is the application's commit in the rejected assignment.
	Commit string
	Error  string
	At     time.Time
}

// Action is something the engine must do after Step or Control: a *Pin or
// an *Event.
type Action interface{ action() }

// Pin tells the engine that Cluster must now run Commit (Pins has the
// whole picture).
type Pin struct {
	Cluster string
	Commit  string
}

// Event is something to record in the event history (and show).
type Event struct {
	// Kind is one of the Event* constants.
	Kind string
	// Cluster and Wave are set when the event is about one.
	Cluster string
	Wave    string
	Message string
}

func (*Pin) action()   {}
func (*Event) action() {}

// Event kinds.
const (
	EventStarted       = "rollout.started"
	EventSuperseded    = "rollout.superseded"
	EventWaveStarted   = "rollout.wave.started"
	EventWaveWaiting   = "rollout.wave.waiting-approval"
	EventWaveApproved  = "rollout.wave.approved"
	EventWaveSoaking   = "rollout.wave.soaking"
	EventWaveCompleted = "rollout.wave.completed"
	EventClusterFailed = "rollout.cluster.failed"
	EventClusterSkip   = "rollout.cluster.skipped"
	EventPaused        = "rollout.paused"
	EventResumed       = "rollout.resumed"
	EventFailed        = "rollout.failed"
	EventRolledBack    = "rollout.rolled-back"
	EventAborted       = "rollout.aborted"
	EventCompleted     = "rollout.completed"
)
