package dashboard

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-dev/drover/hub/rollout"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// rolloutView is an application's rollout as its page shows it: one
// sentence of what it waits for, a step per wave, and the operations the
// phase allows.
type rolloutView struct {
	Status *droverv1.RolloutStatus
	Phase  state
	// Waiting is RolloutStatus.waiting, or what ended it once it ended.
	Waiting string
	// Loud marks a rollout waiting for a person (approval, paused,
	// failed): the sentence is shown as an alert.
	Loud    bool
	Waves   []waveStep
	Ops     []rolloutOp
	Commit  string
	Started time.Time
}

// waveStep is one wave of the row of steps.
type waveStep struct {
	Name  string
	Phase state
	// Counts are the wave's clusters by phase, in a fixed order, zeros
	// left out.
	Counts    []countBadge
	Clusters  int
	Parallel  int
	SoakUntil time.Time
	// Gate is the approval gate: "" without one, else "waiting",
	// "approved" or "ahead".
	Gate string
	// Promote: the gate waits and the rollout may be promoted now (not
	// while paused at the gate).
	Promote bool
}

// rolloutOp is one button.
type rolloutOp struct {
	Op, Label, Confirm string
	Primary            bool
}

// Rollout phases as badges; never colour alone.
var rolloutPhases = map[string]state{
	string(rollout.PhaseRunning):         {"prog", "◐", "Running"},
	string(rollout.PhaseWaitingApproval): {"warn", "‖", "Waiting for approval"},
	string(rollout.PhasePaused):          {"susp", "‖", "Paused"},
	string(rollout.PhaseFailed):          {"bad", "✕", "Failed"},
	string(rollout.PhaseCompleted):       {"ok", "✓", "Completed"},
	string(rollout.PhaseRolledBack):      {"warn", "↶", "Rolled back"},
	string(rollout.PhaseAborted):         {"off", "■", "Aborted"},
	string(rollout.PhaseSuperseded):      {"none", "»", "Superseded"},
}

var wavePhases = map[string]state{
	string(rollout.WavePending):         {"none", "·", "Pending"},
	string(rollout.WaveWaitingApproval): {"warn", "‖", "Waiting for approval"},
	string(rollout.WaveRunning):         {"prog", "◐", "Updating"},
	string(rollout.WaveSoaking):         {"prog", "◔", "Soaking"},
	string(rollout.WaveDone):            {"ok", "✓", "Done"},
	string(rollout.WaveRolledBack):      {"warn", "↶", "Rolled back"},
	string(rollout.WaveAborted):         {"off", "■", "Aborted"},
}

// clusterPhases orders a wave's counts and names them as the page does
// ("done" for succeeded).
var clusterPhases = []struct {
	phase rollout.ClusterPhase
	st    state
}{
	{rollout.ClusterSucceeded, state{"ok", "✓", "done"}},
	{rollout.ClusterUpdating, state{"prog", "◐", "updating"}},
	{rollout.ClusterFailed, state{"bad", "✕", "failed"}},
	{rollout.ClusterSkipped, state{"off", "○", "skipped"}},
	{rollout.ClusterPending, state{"none", "·", "pending"}},
	{rollout.ClusterRolledBack, state{"warn", "↶", "rolled back"}},
}

// clusterPhaseState is a cluster's rollout phase as the matrix shows it.
func clusterPhaseState(phase string) state {
	for _, cp := range clusterPhases {
		if string(cp.phase) == phase {
			return cp.st
		}
	}
	return state{"unk", "?", phase}
}

func phaseState(m map[string]state, phase string) state {
	if st, ok := m[phase]; ok {
		return st
	}
	return state{"unk", "?", phase}
}

// appRollout fetches an application's rollout; nil when the application
// has no strategy, and a view without Status when its rollout has not
// started (or the hub runs none).
func (d *Dashboard) appRollout(ctx context.Context, a *droverv1.Application) (*rolloutView, error) {
	if len(a.GetSpec().GetRollout().GetWaves()) == 0 {
		return nil, nil
	}
	resp, err := d.cfg.Admin.GetRollout(ctx, &droverv1.GetRolloutRequest{Application: a.GetName()})
	switch status.Code(err) {
	case codes.OK:
	case codes.NotFound, codes.Unimplemented:
		return &rolloutView{}, nil
	default:
		return nil, fromAdmin(err)
	}
	return newRolloutView(resp.GetRollout()), nil
}

func newRolloutView(r *droverv1.RolloutStatus) *rolloutView {
	phase := rollout.Phase(r.GetPhase())
	v := &rolloutView{Status: r, Phase: phaseState(rolloutPhases, r.GetPhase()), Waiting: r.GetWaiting(), Commit: r.GetCommit()}
	if r.GetStartedAt() != nil {
		v.Started = r.GetStartedAt().AsTime()
	}
	switch phase {
	case rollout.PhaseWaitingApproval, rollout.PhasePaused, rollout.PhaseFailed:
		v.Loud = true
	}
	if v.Waiting == "" {
		// An ended rollout says how it ended.
		v.Waiting = v.Phase.Word
		if r.GetReason() != "" {
			v.Waiting += ": " + r.GetReason()
		}
	}
	for _, w := range r.GetWaves() {
		s := waveStep{Name: w.GetName(), Phase: phaseState(wavePhases, w.GetPhase()), Clusters: int(w.GetClusters()), Parallel: int(w.GetMaxParallel())}
		for _, cp := range clusterPhases {
			if n := w.GetClusterPhases()[string(cp.phase)]; n > 0 {
				s.Counts = append(s.Counts, countBadge{cp.st, int(n)})
			}
		}
		if w.GetPhase() == string(rollout.WaveSoaking) && w.GetSoakUntil() != nil {
			s.SoakUntil = w.GetSoakUntil().AsTime()
		}
		if w.GetRequiresApproval() {
			switch w.GetPhase() {
			case string(rollout.WaveWaitingApproval):
				s.Gate = "waiting"
				s.Promote = phase == rollout.PhaseWaitingApproval
			case string(rollout.WavePending):
				s.Gate = "ahead"
			default:
				s.Gate = "approved"
			}
		}
		v.Waves = append(v.Waves, s)
	}
	v.Ops = rolloutOps(phase, r.GetPreviousCommit() != "")
	return v
}

// rolloutOps are the operations the phase allows besides promote (which
// sits on its wave's gate), as rollout.Control decides them; the engine
// still has the last word.
func rolloutOps(phase rollout.Phase, hasGood bool) []rolloutOp {
	var ops []rolloutOp
	switch phase {
	case rollout.PhaseWaitingApproval, rollout.PhaseRunning:
		ops = append(ops, rolloutOp{Op: string(rollout.OpPause), Label: "‖ Pause"})
	case rollout.PhasePaused:
		ops = append(ops, rolloutOp{Op: string(rollout.OpResume), Label: "▶ Resume", Primary: true})
	case rollout.PhaseFailed:
		ops = append(ops, rolloutOp{Op: string(rollout.OpResume), Label: "▶ Resume (retry failed clusters)", Primary: true})
	}
	if hasGood && phase != rollout.PhaseRolledBack && phase != rollout.PhaseSuperseded {
		ops = append(ops, rolloutOp{Op: string(rollout.OpRollback), Label: "↶ Roll back", Confirm: "Roll every cluster back to the previous release?"})
	}
	if !phase.Done() {
		ops = append(ops, rolloutOp{Op: string(rollout.OpAbort), Label: "■ Abort", Confirm: "Abort the rollout? Every cluster keeps what it runs until the next release."})
	}
	return ops
}

// controlRollout promotes, pauses, resumes, rolls back or aborts an
// application's rollout (admins only; see action). The admin API records
// the operation with the signed-in person as its actor.
func (d *Dashboard) controlRollout(w http.ResponseWriter, r *http.Request) {
	name, op := r.PathValue("name"), r.PathValue("op")
	if _, err := rollout.ParseOp(op); err != nil {
		d.renderError(w, r, http.StatusBadRequest, "op: "+err.Error())
		return
	}
	_, err := d.cfg.Admin.ControlRollout(r.Context(), &droverv1.ControlRolloutRequest{Application: name, Op: op})
	if err != nil {
		err = fromAdmin(err)
		var pe *pageError
		if !errors.As(err, &pe) {
			d.log.Error("dashboard rollout control", "app", name, "op", op, "err", err)
			pe = &pageError{code: http.StatusServiceUnavailable, msg: "The hub could not " + op + " the rollout; it logged why."}
		}
		d.renderError(w, r, pe.code, pe.msg)
		return
	}
	// Every open page, this one included, shows the new state at once.
	d.Notify()
	http.Redirect(w, r, "/apps/"+url.PathEscape(name), http.StatusSeeOther)
}

// rolloutSummary is the overview's line on rollouts.
type rolloutSummary struct {
	Running, Waiting, Stopped int
	// Gates are the rollouts waiting for a person, the loudest thing on
	// the overview.
	Gates []rolloutGate
}

type rolloutGate struct {
	App, Sentence string
	Approval      bool
}

func (d *Dashboard) rolloutSummary(ctx context.Context) (rolloutSummary, error) {
	var sum rolloutSummary
	states, err := d.cfg.Store.ListRolloutStates(ctx)
	if err != nil {
		return sum, err
	}
	now := d.now()
	for app, st := range states {
		switch st.Phase {
		case rollout.PhaseRunning:
			sum.Running++
		case rollout.PhaseWaitingApproval:
			sum.Waiting++
			sum.Gates = append(sum.Gates, rolloutGate{App: app, Sentence: rollout.Waiting(st, now), Approval: true})
		case rollout.PhasePaused, rollout.PhaseFailed:
			sum.Stopped++
			sum.Gates = append(sum.Gates, rolloutGate{App: app, Sentence: rollout.Waiting(st, now)})
		}
	}
	// Approvals first, then by application.
	sort.Slice(sum.Gates, func(i, j int) bool {
		if sum.Gates[i].Approval != sum.Gates[j].Approval {
			return sum.Gates[i].Approval
		}
		return sum.Gates[i].App < sum.Gates[j].App
	})
	return sum, nil
}
