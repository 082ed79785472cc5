package rollout

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// rolloutIn returns a sim whose rollout is in the named situation, with
// the issue's strategy over fleetOf.
func rolloutIn(t *testing.T, situation string) *sim {
	t.Helper()
	if situation == "nothing released" {
		return newSim(t, mustParse(t, issueStrategy), fleetOf()...)
	}
	if situation == "first release" {
		return released(t, mustParse(t, issueStrategy), fleetOf()...)
	}
	m := released(t, mustParse(t, issueStrategy), fleetOf()...)
	m.release("y")
	switch situation {
	case "running":
	case "waiting-approval":
		m.succeed("c1")
		m.succeed("c2")
		m.tick(10 * time.Minute)
		m.step()
	case "paused":
		m.control(OpPause)
	case "failed":
		m.tick(time.Minute)
		m.report("c1", synced, degraded)
		m.step()
	case "completed":
		m.obs.Strategy = nil
		m.step()
	case "rolled-back":
		m.control(OpRollback)
	case "aborted":
		m.control(OpAbort)
	default:
		t.Fatalf("unknown situation %s", situation)
	}
	if want := Phase(situation); m.s.Phase != want {
		t.Fatalf("set up %s: phase %s", situation, m.s.Phase)
	}
	return m
}

// TestControlAppliesOnlyWhereItMeans: every op in every phase; where it
// does not apply, a clear error and no change.
func TestControlAppliesOnlyWhereItMeans(t *testing.T) {
	tests := []struct {
		situation string
		op        Op
		// want is the phase after, or the error's text.
		want    Phase
		wantErr string
	}{
		{"nothing released", OpPause, "", "pause: nothing has been released yet"},
		{"nothing released", OpRollback, "", "rollback: nothing has been released yet"},

		{"running", OpPause, PhasePaused, ""},
		{"running", OpResume, "", "resume: the rollout of " + short(sha("y")) + " is running, not paused"},
		{"running", OpPromote, "", "promote: the rollout of " + short(sha("y")) + " is running, not waiting for approval"},
		{"running", OpAbort, PhaseAborted, ""},
		{"running", OpRollback, PhaseRolledBack, ""},

		{"waiting-approval", OpPause, PhasePaused, ""},
		{"waiting-approval", OpResume, "", "not paused"},
		{"waiting-approval", OpPromote, PhaseRunning, ""},
		{"waiting-approval", OpAbort, PhaseAborted, ""},
		{"waiting-approval", OpRollback, PhaseRolledBack, ""},

		{"paused", OpPause, "", "is paused; only a running rollout or one waiting for approval can be paused"},
		{"paused", OpResume, PhaseRunning, ""},
		{"paused", OpPromote, "", "is paused, not waiting for approval"},
		{"paused", OpAbort, PhaseAborted, ""},
		{"paused", OpRollback, PhaseRolledBack, ""},

		{"failed", OpPause, "", "is failed; only a running rollout"},
		{"failed", OpResume, PhaseRunning, ""},
		{"failed", OpPromote, "", "not waiting for approval"},
		{"failed", OpAbort, PhaseAborted, ""},
		{"failed", OpRollback, PhaseRolledBack, ""},

		{"completed", OpPause, "", "is completed"},
		{"completed", OpResume, "", "not paused"},
		{"completed", OpPromote, "", "not waiting for approval"},
		{"completed", OpAbort, "", "abort: the rollout of " + short(sha("y")) + " is already completed"},
		{"completed", OpRollback, PhaseRolledBack, ""},

		{"first release", OpRollback, "", "rollback: no previous good release to roll back to: " + short(sha("w")) + " is the application's first release"},
		{"first release", OpAbort, "", "already completed"},

		{"rolled-back", OpRollback, "", "rollback: the rollout of " + short(sha("y")) + " is already rolled back to " + short(sha("w"))},
		{"rolled-back", OpResume, "", "not paused"},
		{"rolled-back", OpAbort, "", "already rolled-back"},

		{"aborted", OpResume, "", "not paused"},
		{"aborted", OpAbort, "", "already aborted"},
		{"aborted", OpRollback, PhaseRolledBack, ""},
	}
	for _, tt := range tests {
		t.Run(tt.situation+"/"+string(tt.op), func(t *testing.T) {
			m := rolloutIn(t, tt.situation)
			before := mustJSON(t, m.s)
			s, actions, err := Control(m.s, tt.op, m.now)
			if tt.wantErr != "" {
				var ce *ControlError
				if !errors.As(err, &ce) || ce.Op != tt.op || ce.Phase != m.s.Phase {
					t.Fatalf("error %v (%T), want a *ControlError", err, err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q, want %q", err, tt.wantErr)
				}
				if mustJSON(t, s) != before || len(actions) != 0 {
					t.Fatalf("a refused %s changed the rollout: %s", tt.op, describe(actions))
				}
				if errors.Is(err, ErrNoGoodRelease) != strings.Contains(tt.wantErr, "no previous good release") {
					t.Fatalf("errors.Is(ErrNoGoodRelease) wrong for %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Phase != tt.want {
				t.Fatalf("phase %s, want %s", s.Phase, tt.want)
			}
			if mustJSON(t, m.s) != before {
				t.Fatal("Control modified the State it was given")
			}
			if len(kinds(actions)) == 0 {
				t.Fatal("no event recorded")
			}
			// Whatever it did, Step carries on from there.
			m.s = s
			m.step()
		})
	}
	if _, _, err := Control(rolloutIn(t, "running").s, "approve", t0); err == nil || errors.As(err, new(*ControlError)) {
		t.Fatalf("unknown op: %v", err)
	}
}

func TestApprovalGate(t *testing.T) {
	m := rolloutIn(t, "waiting-approval")
	// A pause while waiting, then a resume: still waiting, nothing moved.
	m.control(OpPause)
	if _, _, err := Control(m.s, OpPromote, m.now); err == nil {
		t.Fatal("promote while paused")
	}
	m.control(OpResume)
	m.wantPhase(PhaseWaitingApproval)
	if actions := m.step(); len(actions) != 0 {
		t.Fatalf("resumed while waiting: %s", describe(actions))
	}
	m.wantWaiting("Waiting for approval of wave europe")
	actions := m.control(OpPromote)
	if got := describe(actions); got != "event rollout.wave.approved" {
		t.Fatalf("promote: %s", got)
	}
	if w := m.s.Waves[1]; w.Name != "europe" || w.ApprovedAt != m.now || w.Phase != WaveRunning {
		t.Fatalf("europe after promote: %+v", w)
	}
	m.step()
	m.wantPins("c1=y c2=y eu1=y eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
	// A second promote has nothing to approve.
	if _, _, err := Control(m.s, OpPromote, m.now); err == nil || !strings.Contains(err.Error(), "not waiting for approval") {
		t.Fatalf("second promote: %v", err)
	}
}

func TestApprovalOnFirstWave(t *testing.T) {
	m := released(t, mustParse(t, "waves: [{name: all, requireApproval: true}]"), cluster("a"))
	actions := m.release("y")
	if got := describe(actions); got != "event rollout.started; event rollout.wave.waiting-approval" {
		t.Fatalf("start: %s", got)
	}
	m.wantPhase(PhaseWaitingApproval)
	m.wantPins("a=w")
	m.control(OpPromote)
	if got := describe(m.step()); got != "pin a=y" {
		t.Fatalf("after promote: %s", got)
	}
}

func TestAbortKeepsClustersWhereTheyAre(t *testing.T) {
	m := rolloutIn(t, "running")
	m.succeed("c1")
	m.control(OpAbort)
	m.wantPins("c1=y c2=y eu1=w eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
	if actions := m.succeed("c2"); len(actions) != 0 {
		t.Fatalf("after abort: %s", describe(actions))
	}
	m.wantWaiting("")
	if m.s.LastGood() != sha("w") {
		t.Fatal("an aborted release is not good")
	}
	// The next release starts from where the clusters are.
	m.release("z")
	m.wantPins("c1=z c2=y eu1=w eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
	if m.s.Superseded != "" {
		t.Fatal("an aborted rollout is not superseded")
	}
}

func TestRollbackCompleted(t *testing.T) {
	m := rolloutIn(t, "completed")
	m.wantPins("c1=y c2=y eu1=y eu2=y eu3=y eu4=y us1=y us2=y us3=y us4=y")
	actions := m.control(OpRollback)
	if got := kinds(actions); len(got) != 1 || got[0] != EventRolledBack || len(actions) != 11 {
		t.Fatalf("rollback: %s", describe(actions))
	}
	m.wantPins("c1=w c2=w eu1=w eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
	if m.s.LastGood() != sha("w") {
		t.Fatal("a rolled-back release is not good")
	}
}

func TestWaiting(t *testing.T) {
	tests := []struct {
		situation string
		want      string
	}{
		{"nothing released", ""},
		{"running", "Updating wave canary: 0 of 2 clusters done, 1 updating"},
		{"waiting-approval", "Waiting for approval of wave europe"},
		{"paused", "Paused by an operator at wave canary; resume to continue"},
		{"failed", "Paused: 1 cluster failed in wave canary"},
		{"completed", ""},
		{"rolled-back", ""},
		{"aborted", ""},
	}
	for _, tt := range tests {
		t.Run(tt.situation, func(t *testing.T) {
			rolloutIn(t, tt.situation).wantWaiting(tt.want)
		})
	}
	// A soak ending another day names the day.
	s := State{Phase: PhaseRunning, Waves: []WaveState{{Name: "canary", Phase: WaveSoaking, SoakUntil: t0.Add(24 * time.Hour)}}}
	if got, want := Waiting(s, t0), "Soaking wave canary until 2026-03-02 12:00:00 UTC"; got != want {
		t.Fatalf("Waiting: %q, want %q", got, want)
	}
}

func TestParseOp(t *testing.T) {
	for _, op := range []Op{OpPause, OpResume, OpPromote, OpAbort, OpRollback} {
		if got, err := ParseOp(string(op)); err != nil || got != op {
			t.Errorf("ParseOp(%s) = %s, %v", op, got, err)
		}
	}
	if _, err := ParseOp("approve"); err == nil || !strings.Contains(err.Error(), "want pause, resume, promote, abort or rollback") {
		t.Errorf("ParseOp(approve): %v", err)
	}
}
