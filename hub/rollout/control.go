package rollout

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Op is an operator's command to a rollout.
type Op string

const (
	// OpPause holds every cluster where it is; nothing new starts.
	OpPause Op = "pause"
	// OpResume continues a paused rollout; on a failed one it also gives
	// each failed cluster another progress deadline to become healthy.
	OpResume Op = "resume"
	// OpPromote approves the wave waiting for approval.
	OpPromote Op = "promote"
	// OpAbort ends the rollout: every cluster keeps what it runs until
	// the next release.
	OpAbort Op = "abort"
	// OpRollback moves every cluster to the last release that completed
	// before this one, also after this one completed.
	OpRollback Op = "rollback"
)

// ParseOp checks an operation named in a request.
func ParseOp(s string) (Op, error) {
	switch op := Op(s); op {
	case OpPause, OpResume, OpPromote, OpAbort, OpRollback:
		return op, nil
	}
	return "", fmt.Errorf("operation %q: want pause, resume, promote, abort or rollback", s)
}

// ErrNoGoodRelease is wrapped by the ControlError of a rollback when no
// earlier release ever completed.
var ErrNoGoodRelease = errors.New("no previous good release")

// ControlError says why an operation does not apply to the rollout as it
// stands; nothing was changed. The admin API answers it with
// FailedPrecondition.
type ControlError struct {
	Op    Op
	Phase Phase
	Msg   string
	Err   error
}

func (e *ControlError) Error() string { return string(e.Op) + ": " + e.Msg }

func (e *ControlError) Unwrap() error { return e.Err }

// Control applies an operator's command and returns the new State and its
// actions; the engine then calls Step as after any change. An operation
// that does not apply (a promote while nothing waits for approval, a
// rollback with no earlier good release, anything on a rollout that ended)
// returns a *ControlError and s unchanged. An unknown op is an error too.
func Control(s State, op Op, now time.Time) (State, []Action, error) {
	if _, err := ParseOp(string(op)); err != nil {
		return s, nil, err
	}
	refuse := func(err error, format string, args ...any) (State, []Action, error) {
		return s, nil, &ControlError{Op: op, Phase: s.Phase, Msg: fmt.Sprintf(format, args...), Err: err}
	}
	if s.Release == "" {
		return refuse(nil, "nothing has been released yet")
	}
	r := newStepper(s, nil, nil, now)
	switch op {
	case OpPause:
		if !r.acting() {
			return refuse(nil, "the rollout of %s is %s; only a running rollout or one waiting for approval can be paused", short(s.Release), s.Phase)
		}
		r.s.Phase = PhasePaused
		r.event(EventPaused, "", "", "Rollout of %s paused by an operator", short(s.Release))

	case OpResume:
		retried := 0
		switch s.Phase {
		case PhasePaused:
		case PhaseFailed:
			r.forEach(func(_ string, c *ClusterState) {
				if c.Phase != ClusterFailed {
					return
				}
				// The reports already taken in stay (a cluster that
				// recovered succeeds at the next Step); the failure that
				// was counted does not, so only a new one fails it again.
				c.Phase, c.Reason, c.Problem, c.EndedAt = ClusterUpdating, "", "", time.Time{}
				c.DeadlineFrom = now
				retried++
			})
		default:
			return refuse(nil, "the rollout of %s is %s, not paused", short(s.Release), s.Phase)
		}
		r.s.Phase, r.s.Reason = PhaseRunning, ""
		for _, ws := range r.s.Waves {
			if ws.Phase == WaveWaitingApproval {
				r.s.Phase = PhaseWaitingApproval
			}
		}
		msg := fmt.Sprintf("Rollout of %s resumed", short(s.Release))
		if retried > 0 {
			msg += fmt.Sprintf("; retrying %s", plural(retried, "failed cluster"))
		}
		r.event(EventResumed, "", "", "%s", msg)

	case OpPromote:
		if s.Phase != PhaseWaitingApproval {
			return refuse(nil, "the rollout of %s is %s, not waiting for approval", short(s.Release), s.Phase)
		}
		for i := range r.s.Waves {
			if ws := &r.s.Waves[i]; ws.Phase == WaveWaitingApproval {
				ws.Phase, ws.ApprovedAt, ws.StartedAt = WaveRunning, now, now
				r.event(EventWaveApproved, "", ws.Name, "Wave %s approved (%s)", ws.Name, plural(ws.Clusters, "cluster"))
				break
			}
		}
		r.s.Phase = PhaseRunning

	case OpAbort:
		if s.Phase.Done() {
			return refuse(nil, "the rollout of %s is already %s", short(s.Release), s.Phase)
		}
		r.s.Phase, r.s.EndedAt = PhaseAborted, now
		r.endWaves(WaveAborted, false)
		r.event(EventAborted, "", "", "Rollout of %s aborted by an operator; every cluster keeps what it runs until the next release", short(s.Release))

	case OpRollback:
		switch {
		case s.Phase == PhaseRolledBack:
			return refuse(nil, "the rollout of %s is already rolled back to %s", short(s.Release), short(s.Good))
		case s.Phase == PhaseSuperseded:
			return refuse(nil, "the rollout of %s was superseded; act on the newer one", short(s.Release))
		case s.Good == "":
			return refuse(ErrNoGoodRelease, "no previous good release to roll back to: %s is the application's first release", short(s.Release))
		}
		r.rollback("rolled back by an operator")
	}
	return r.s, r.actions, nil
}

// Waiting says in one sentence what the rollout waits for ("Soaking wave
// canary until 14:32:00 UTC", "Waiting for approval of wave europe",
// "Paused: 2 clusters failed in wave rest"), or "" once it has ended.
func Waiting(s State, now time.Time) string {
	w := currentWave(s)
	switch s.Phase {
	case PhaseWaitingApproval:
		if w != nil {
			return "Waiting for approval of wave " + w.Name
		}
	case PhasePaused:
		if w != nil {
			return fmt.Sprintf("Paused by an operator at wave %s; resume to continue", w.Name)
		}
		return "Paused by an operator; resume to continue"
	case PhaseFailed:
		return "Paused: " + failedSentence(s)
	case PhaseRunning:
		if w == nil {
			return fmt.Sprintf("Updating %s that joined after their wave completed", plural(countWhere(s, "", func(c ClusterState) bool { return !c.settled() }), "cluster"))
		}
		switch w.Phase {
		case WavePending:
			return "Starting wave " + w.Name
		case WaveSoaking:
			if w.SoakUntil.IsZero() {
				return fmt.Sprintf("Soaking wave %s: waiting for its clusters to be healthy again", w.Name)
			}
			return fmt.Sprintf("Soaking wave %s until %s", w.Name, formatTime(w.SoakUntil, now))
		}
		settled := countWhere(s, w.Name, func(c ClusterState) bool { return c.settled() })
		updating := countWhere(s, w.Name, func(c ClusterState) bool { return c.Phase == ClusterUpdating })
		msg := fmt.Sprintf("Updating wave %s: %d of %d clusters done, %d updating", w.Name, settled, w.Clusters, updating)
		if pending := w.Clusters - settled - updating; pending > 0 && updating < w.MaxParallel {
			// A free slot and a pending cluster: it is offline.
			msg += fmt.Sprintf(", waiting for %s to come back or time out", plural(pending, "offline cluster"))
		}
		return msg
	}
	return ""
}

// currentWave is the first wave not done, nil if all are.
func currentWave(s State) *WaveState {
	for i := range s.Waves {
		if s.Waves[i].Phase != WaveDone {
			return &s.Waves[i]
		}
	}
	return nil
}

// countWhere counts the clusters of wave (all for "") for which f holds.
func countWhere(s State, wave string, f func(ClusterState) bool) int {
	n := 0
	for _, c := range s.Clusters {
		if (wave == "" || c.Wave == wave) && f(c) {
			n++
		}
	}
	return n
}

// failedSentence is "2 clusters failed in wave rest" or, across waves, "3
// clusters failed in waves canary, rest".
func failedSentence(s State) string {
	n := 0
	var waves []string
	for _, ws := range s.Waves {
		if k := countWhere(s, ws.Name, func(c ClusterState) bool { return c.Phase == ClusterFailed }); k > 0 {
			n += k
			waves = append(waves, ws.Name)
		}
	}
	switch len(waves) {
	case 0:
		return "no cluster failing any more; resume to continue"
	case 1:
		return fmt.Sprintf("%s failed in wave %s", plural(n, "cluster"), waves[0])
	}
	return fmt.Sprintf("%s failed in waves %s", plural(n, "cluster"), strings.Join(waves, ", "))
}
