package rollout

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/drover-dev/drover/hub/spec"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestFirstReleaseGoesEverywhereAtOnce(t *testing.T) {
	m := newSim(t, mustParse(t, issueStrategy), fleetOf()[:3]...)
	if s, actions := Step(State{}, Observations{Placed: fleetOf()}, t0); s.Release != "" || len(actions) != 0 {
		t.Fatalf("no commit yet: got %+v, %s", s, describe(actions))
	}
	actions := m.release("w")
	m.wantPhase(PhaseCompleted)
	m.wantPins("c1=w c2=w eu1=w")
	if got, want := describe(actions), "event rollout.started; pin c1=w; pin c2=w; pin eu1=w; event rollout.completed"; got != want {
		t.Fatalf("actions:\n got %s\nwant %s", got, want)
	}
	if m.s.ID != 1 || m.s.LastGood() != sha("w") || m.s.Good != "" {
		t.Fatalf("state: id %d, good %q, last good %q", m.s.ID, m.s.Good, m.s.LastGood())
	}
	m.wantWaiting("")
	if _, _, err := Control(m.s, OpRollback, m.now); err == nil || !strings.Contains(err.Error(), "no previous good release") {
		t.Fatalf("rollback of the first release: %v", err)
	}
}

func TestNoStrategyGoesEverywhereAtOnce(t *testing.T) {
	m := released(t, nil, fleetOf()[:3]...)
	actions := m.release("y")
	m.wantPhase(PhaseCompleted)
	m.wantPins("c1=y c2=y eu1=y")
	if got, want := describe(actions), "event rollout.started; pin c1=y; pin c2=y; pin eu1=y; event rollout.completed"; got != want {
		t.Fatalf("actions:\n got %s\nwant %s", got, want)
	}
	if !strings.Contains(m.s.Reason, "no rollout strategy") {
		t.Fatalf("reason %q", m.s.Reason)
	}
}

// TestIssueExample walks the issue's strategy from start to completion.
func TestIssueExample(t *testing.T) {
	m := released(t, mustParse(t, issueStrategy), fleetOf()...)

	actions := m.release("y")
	m.wantPhase(PhaseRunning)
	if m.s.ID != 2 || m.s.Good != sha("w") || m.s.Release != sha("y") {
		t.Fatalf("rollout %d of %s from %s", m.s.ID, commits[m.s.Release], commits[m.s.Good])
	}
	if got, want := describe(actions), "event rollout.started; event rollout.wave.started; pin c1=y"; got != want {
		t.Fatalf("actions:\n got %s\nwant %s", got, want)
	}
	m.wantPins("c1=y c2=w eu1=w eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
	m.wantWaiting("Updating wave canary: 0 of 2 clusters done, 1 updating")

	// Progressing is not done yet.
	m.tick(time.Minute)
	m.report("c1", synced, progress)
	if actions := m.step(); len(actions) != 0 {
		t.Fatalf("Progressing: %s", describe(actions))
	}
	// maxParallel 1: c2 waits for c1.
	if got := describe(m.succeed("c1")); got != "pin c2=y" {
		t.Fatalf("after c1: %s", got)
	}
	actions = m.succeed("c2")
	if got := kinds(actions); !slices.Equal(got, []string{EventWaveSoaking}) {
		t.Fatalf("after c2: %s", describe(actions))
	}
	m.wantWaves("canary:soaking europe:pending rest:pending")
	m.wantWaiting("Soaking wave canary until 12:13:00 UTC")

	m.tick(9*time.Minute + 59*time.Second)
	if actions := m.step(); len(actions) != 0 {
		t.Fatalf("mid-soak: %s", describe(actions))
	}
	m.tick(time.Second)
	actions = m.step()
	if got := kinds(actions); !slices.Equal(got, []string{EventWaveCompleted, EventWaveWaiting}) {
		t.Fatalf("end of soak: %s", describe(actions))
	}
	m.wantPhase(PhaseWaitingApproval)
	m.wantWaiting("Waiting for approval of wave europe")
	m.wantPins("c1=y c2=y eu1=w eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")

	// Nothing moves without the approval, however long.
	m.tick(24 * time.Hour)
	if actions := m.step(); len(actions) != 0 {
		t.Fatalf("waiting for approval: %s", describe(actions))
	}
	m.control(OpPromote)
	if got := describe(m.step()); got != "pin eu1=y" {
		t.Fatalf("after promote: %s", got)
	}
	m.wantPhase(PhaseRunning)
	// 25% of 4 is one at a time.
	if got := describe(m.succeed("eu1")); got != "pin eu2=y" {
		t.Fatalf("after eu1: %s", got)
	}
	m.succeed("eu2")
	m.succeed("eu3")
	// No soak: europe completes as it settles; rest starts 2 at a time.
	actions = m.succeed("eu4")
	if got, want := describe(actions), "event rollout.wave.completed; event rollout.wave.started; pin us1=y; pin us2=y"; got != want {
		t.Fatalf("after europe:\n got %s\nwant %s", got, want)
	}
	m.wantWaiting("Updating wave rest: 0 of 4 clusters done, 2 updating")
	m.succeed("us1", "us2")
	actions = m.succeed("us3", "us4")
	if got := kinds(actions); !slices.Equal(got, []string{EventWaveCompleted, EventCompleted}) {
		t.Fatalf("end: %s", describe(actions))
	}
	m.wantPhase(PhaseCompleted)
	m.wantPins("c1=y c2=y eu1=y eu2=y eu3=y eu4=y us1=y us2=y us3=y us4=y")
	m.wantWaiting("")
	if m.s.LastGood() != sha("y") {
		t.Fatal("a completed rollout's release is the last good one")
	}
}

func TestMaxParallel(t *testing.T) {
	tests := []struct {
		maxParallel spec.IntOrPercent
		// want is how many of 10 clusters update at once.
		want int
	}{
		{spec.IntOrPercent{}, 10},
		{spec.Count(1), 1},
		{spec.Count(3), 3},
		{spec.Count(20), 10},
		{spec.Percent(25), 3},
		{spec.Percent(5), 1},
		{spec.Percent(100), 10},
	}
	for _, tt := range tests {
		t.Run(tt.maxParallel.String(), func(t *testing.T) {
			var clusters []Cluster
			for _, n := range []string{"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"} {
				clusters = append(clusters, cluster(n))
			}
			m := released(t, &spec.Strategy{Waves: []spec.WaveSpec{{Name: "all", MaxParallel: tt.maxParallel}}}, clusters...)
			m.release("y")
			updated := 0
			for round := 0; m.s.Phase == PhaseRunning; round++ {
				var updating []string
				for name, c := range m.s.Clusters {
					if c.Phase == ClusterUpdating {
						updating = append(updating, name)
					}
				}
				if want := min(tt.want, 10-updated); len(updating) != want {
					t.Fatalf("round %d: %d clusters updating, want %d", round, len(updating), want)
				}
				updated += len(updating)
				m.succeed(updating...)
			}
			m.wantPhase(PhaseCompleted)
		})
	}
}

// TestStaleStatusDoesNotAdvance: only a report about the release, observed
// after the cluster was pinned to it, makes it succeed.
func TestStaleStatusDoesNotAdvance(t *testing.T) {
	tests := []struct {
		name string
		// report is sent after c1 started (at start+1m), with the commit
		// and the observation time given relative to the start.
		commit string
		at     time.Duration
	}{
		{"the previous release", "w", time.Minute},
		{"another commit", "x", time.Minute},
		{"the release, observed before the start", "y", -time.Minute},
		{"the release, observed at the start", "y", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := released(t, mustParse(t, issueStrategy), fleetOf()...)
			m.release("y")
			start := m.now
			m.tick(time.Minute)
			m.reportAt("c1", sha(tt.commit), synced, healthy, start.Add(tt.at))
			if actions := m.step(); len(actions) != 0 {
				t.Fatalf("stale status acted: %s", describe(actions))
			}
			if c := m.s.Clusters["c1"]; c.Phase != ClusterUpdating {
				t.Fatalf("c1 %s after a stale status", c.Phase)
			}
			// Stale Degraded or Failed does not fail it either.
			m.tick(time.Minute)
			m.reportAt("c1", sha(tt.commit), syncFailed, degraded, start.Add(tt.at-time.Second))
			m.step()
			if c := m.s.Clusters["c1"]; c.Phase != ClusterUpdating {
				t.Fatalf("c1 %s after a stale failure", c.Phase)
			}
			// The fresh report does.
			m.succeed("c1")
			if c := m.s.Clusters["c1"]; c.Phase != ClusterSucceeded {
				t.Fatalf("c1 %s after a fresh report", c.Phase)
			}
		})
	}
}

func TestOutOfOrderReports(t *testing.T) {
	t.Run("an older Healthy after a newer Degraded", func(t *testing.T) {
		m := released(t, &spec.Strategy{Waves: []spec.WaveSpec{{Name: "all", MaxParallel: spec.Count(1)}}, MaxFailures: spec.Count(5)}, cluster("a"), cluster("b"))
		m.release("y")
		start := m.now
		m.tick(5 * time.Minute)
		m.reportAt("a", sha("y"), synced, progress, start.Add(3*time.Minute))
		m.step()
		// The Healthy of minute 2 arrives after the Progressing of minute
		// 3: a is not healthy.
		m.reportAt("a", sha("y"), synced, healthy, start.Add(2*time.Minute))
		if actions := m.step(); len(actions) != 0 {
			t.Fatalf("out-of-order Healthy acted: %s", describe(actions))
		}
		m.wantPhases("a:updating b:pending")
	})
	t.Run("a late Healthy does not undo a failure", func(t *testing.T) {
		m := released(t, &spec.Strategy{Waves: []spec.WaveSpec{{Name: "all"}}, MaxFailures: spec.Count(5)}, cluster("a"), cluster("b"))
		m.release("y")
		start := m.now
		m.tick(5 * time.Minute)
		m.reportAt("a", sha("y"), synced, degraded, start.Add(3*time.Minute))
		m.step()
		m.reportAt("a", sha("y"), synced, healthy, start.Add(2*time.Minute))
		m.step()
		m.wantPhases("a:failed b:updating")
	})
	t.Run("a NACK older than the Healthy status", func(t *testing.T) {
		m := released(t, &spec.Strategy{Waves: []spec.WaveSpec{{Name: "all"}}}, cluster("a"))
		m.release("y")
		start := m.now
		m.tick(5 * time.Minute)
		o := m.obs.Clusters["a"]
		o.Nack = &Nack{Commit: sha("y"), Error: "bad", At: start.Add(time.Minute)}
		o.Status = &Status{Commit: sha("y"), Sync: synced, Health: healthy, ObservedAt: start.Add(2 * time.Minute)}
		m.obs.Clusters["a"] = o
		m.step()
		m.wantPhase(PhaseCompleted)
	})
	t.Run("a report from the future", func(t *testing.T) {
		m := released(t, &spec.Strategy{Waves: []spec.WaveSpec{{Name: "all"}}}, cluster("a"))
		m.release("y")
		// The agent's clock runs ahead: taken as observed now, which is
		// not after the start.
		m.reportAt("a", sha("y"), synced, healthy, m.now.Add(time.Hour))
		m.step()
		m.wantPhases("a:updating")
		m.tick(time.Minute)
		m.step()
		m.wantPhase(PhaseCompleted)
	})
}

func TestClusterFailures(t *testing.T) {
	tests := []struct {
		name     string
		strategy string
		// act happens one minute after a started.
		act        func(m *sim)
		wait       time.Duration
		wantPhase  ClusterPhase
		wantReason string
	}{
		{"NACK", "", func(m *sim) {
			o := m.obs.Clusters["a"]
			o.Nack = &Nack{Commit: m.obs.Commit, Error: "assignment too large", At: m.now}
			m.obs.Clusters["a"] = o
		}, 0, ClusterFailed, "the agent rejected the assignment: assignment too large"},
		{"NACK of another commit", "", func(m *sim) {
			o := m.obs.Clusters["a"]
			o.Nack = &Nack{Commit: sha("w"), Error: "old", At: m.now}
			m.obs.Clusters["a"] = o
		}, 0, ClusterUpdating, ""},
		{"NACK from before the start", "", func(m *sim) {
			o := m.obs.Clusters["a"]
			o.Nack = &Nack{Commit: m.obs.Commit, Error: "old", At: m.now.Add(-2 * time.Minute)}
			m.obs.Clusters["a"] = o
		}, 0, ClusterUpdating, ""},
		{"sync Failed", "", func(m *sim) { m.report("a", syncFailed, progress) }, 0, ClusterFailed, "sync failed: msg from a"},
		{"Degraded", "", func(m *sim) { m.report("a", synced, degraded) }, 0, ClusterFailed, "Degraded: msg from a"},
		{"OutOfSync and Healthy is not done", "", func(m *sim) { m.report("a", outOfSync, healthy) }, 0, ClusterUpdating, ""},
		{"Progressing within the deadline", "", func(m *sim) { m.report("a", synced, progress) }, 9 * time.Minute, ClusterUpdating, ""},
		{"Progressing beyond the default deadline", "", func(m *sim) { m.report("a", synced, progress) }, 9*time.Minute + time.Second,
			ClusterFailed, "not Synced and Healthy at " + short(sha("y")) + " within the progress deadline of 10m0s (last report: Synced, Progressing)"},
		{"Progressing beyond a custom deadline", "progressDeadline: 2m", func(m *sim) { m.report("a", synced, progress) }, time.Minute + time.Second,
			ClusterFailed, "within the progress deadline of 2m0s"},
		{"no report at all", "progressDeadline: 2m", func(*sim) {}, time.Minute + time.Second,
			ClusterFailed, "(last report: none about the release)"},
		{"offline time does not count", "progressDeadline: 2m\nofflineTimeout: 1h", func(m *sim) { m.offline("a", m.now) }, 30 * time.Minute,
			ClusterUpdating, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := released(t, mustParse(t, "waves: [{name: all}]\n"+tt.strategy), cluster("a"), cluster("b"))
			m.release("y")
			m.tick(time.Minute)
			tt.act(m)
			m.step()
			m.tick(tt.wait)
			m.step()
			c := m.s.Clusters["a"]
			if c.Phase != tt.wantPhase || !strings.Contains(c.Reason, tt.wantReason) {
				t.Fatalf("a: %s (%q), want %s (%q)", c.Phase, c.Reason, tt.wantPhase, tt.wantReason)
			}
			if tt.wantPhase == ClusterFailed {
				m.wantPhase(PhaseFailed)
				// A failed cluster keeps the release: the pause holds
				// every cluster where it is.
				m.wantPins("a=y b=y")
				var ev *Event
				for _, a := range m.log {
					if e, ok := a.(*Event); ok && e.Kind == EventClusterFailed && e.Cluster == "a" {
						ev = e
					}
				}
				if ev == nil || ev.Cluster != "a" || ev.Wave != "all" || !strings.Contains(ev.Message, tt.wantReason) {
					t.Fatalf("failure event %+v", ev)
				}
			}
		})
	}
}

func TestOfflineCatchUpAfterReturn(t *testing.T) {
	t.Run("back online after the deadline would have passed", func(t *testing.T) {
		m := released(t, mustParse(t, "waves: [{name: all}]\nprogressDeadline: 2m\nofflineTimeout: 1h"), cluster("a"))
		m.release("y")
		m.offline("a", m.now)
		m.tick(30 * time.Minute)
		m.step()
		m.online("a")
		m.tick(time.Minute)
		m.step()
		m.wantPhases("a:updating")
		m.tick(time.Minute + time.Second)
		m.step()
		m.wantPhases("a:failed")
	})
}

func TestFailureBudget(t *testing.T) {
	tests := []struct {
		maxFailures string
		clusters    int
		// failing clusters Degrade one by one; tolerated is how many
		// the rollout carries on with.
		tolerated int
	}{
		{"0", 4, 0},
		{"1", 4, 1},
		{"3", 4, 3},
		{"25%", 4, 1},
		{"10%", 15, 1}, // 1.5 rounds down
		{"10%", 9, 0},
		{"100%", 3, 3},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s of %d", tt.maxFailures, tt.clusters), func(t *testing.T) {
			var clusters []Cluster
			for i := range tt.clusters {
				clusters = append(clusters, cluster(string(rune('a'+i))))
			}
			m := released(t, mustParse(t, "waves: [{name: all, maxParallel: 1}]\nmaxFailures: "+tt.maxFailures), clusters...)
			m.release("y")
			for i := range tt.clusters {
				name := string(rune('a' + i))
				m.tick(time.Minute)
				m.report(name, synced, degraded)
				m.step()
				if i < tt.tolerated {
					if i+1 == tt.clusters {
						break
					}
					m.wantPhase(PhaseRunning)
					if i+1 < tt.clusters && m.s.Clusters[string(rune('a'+i+1))].Phase != ClusterUpdating {
						t.Fatalf("after %d tolerated failures the next cluster did not start", i+1)
					}
					continue
				}
				m.wantPhase(PhaseFailed)
				m.wantWaiting("Paused: " + plural(i+1, "cluster") + " failed in wave all")
				if i+1 < tt.clusters && m.s.Clusters[string(rune('a'+i+1))].Phase != ClusterPending {
					t.Fatal("a cluster started after the budget ran out")
				}
				return
			}
			// Every cluster failed within the budget: the rollout
			// completes, failures and all.
			m.wantPhase(PhaseCompleted)
		})
	}
}

func TestOnFailureRollback(t *testing.T) {
	strategy := mustParse(t, issueStrategy)
	strategy.OnFailure = spec.FailureRollback
	m := released(t, strategy, fleetOf()...)
	m.release("y")
	m.succeed("c1")
	m.succeed("c2")
	m.tick(10 * time.Minute)
	m.step()
	m.control(OpPromote)
	m.step()
	m.wantPins("c1=y c2=y eu1=y eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
	m.tick(time.Minute)
	m.report("eu1", syncFailed, progress)
	actions := m.step()
	if got, want := describe(actions), "event rollout.cluster.failed eu1; pin c1=w; pin c2=w; pin eu1=w; event rollout.rolled-back"; got != want {
		t.Fatalf("actions:\n got %s\nwant %s", got, want)
	}
	m.wantPhase(PhaseRolledBack)
	m.wantPins("c1=w c2=w eu1=w eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
	m.wantWaiting("")
	if m.s.LastGood() != sha("w") {
		t.Fatal("after a rollback the last good release is the previous one")
	}
	// Reports after the rollback change nothing; a new cluster gets the
	// good release.
	m.obs.Placed = append(m.obs.Placed, cluster("new"))
	m.obs.Clusters["new"] = Observation{Online: true, LastSeen: m.now}
	m.succeed("eu1")
	m.wantPins("c1=w c2=w eu1=w eu2=w eu3=w eu4=w new=w us1=w us2=w us3=w us4=w")
	// The next release starts from there.
	m.release("z")
	m.wantPins("c1=z c2=w eu1=w eu2=w eu3=w eu4=w new=w us1=w us2=w us3=w us4=w")
	if m.s.Good != sha("w") || m.s.Superseded != "" {
		t.Fatalf("next rollout from %s, superseded %q", commits[m.s.Good], m.s.Superseded)
	}
}

// TestHealthAfterSuccess: a cluster that succeeded is watched until the
// rollout completes; soak restarts when one stops being healthy.
func TestHealthAfterSuccess(t *testing.T) {
	strategy := "waves:\n- {name: canary, selector: {matchLabels: {ring: canary}}, soak: 10m}\n- {name: rest}\nmaxFailures: 1\nprogressDeadline: 5m"
	m := released(t, mustParse(t, strategy), fleetOf()[:4]...)
	m.release("y")
	m.succeed("c1", "c2")
	m.wantWaiting("Soaking wave canary until 12:11:00 UTC")
	// c2 Progressing holds the soak.
	m.tick(8 * time.Minute)
	m.report("c2", synced, progress)
	m.step()
	m.wantWaves("canary:soaking rest:pending")
	m.wantWaiting("Soaking wave canary: waiting for its clusters to be healthy again")
	m.tick(5 * time.Minute)
	m.step()
	m.wantWaves("canary:soaking rest:pending")
	// Healthy again: the soak starts over from then.
	m.succeed("c2")
	m.wantWaiting("Soaking wave canary until 12:25:00 UTC")
	m.tick(10 * time.Minute)
	m.step()
	m.wantWaves("canary:done rest:running")
	// c1 turns Degraded later: it fails (within the budget of 1).
	m.tick(time.Minute)
	m.report("c1", synced, degraded)
	m.step()
	m.wantPhases("c1:failed c2:succeeded eu1:updating eu2:updating")
	m.wantPhase(PhaseRunning)
	// c2 stays Progressing beyond the deadline: the second failure stops
	// it.
	m.tick(time.Minute)
	m.report("c2", synced, progress)
	m.step()
	m.tick(5*time.Minute + time.Second)
	m.step()
	m.wantPhases("c1:failed c2:failed eu1:failed eu2:failed")
	m.wantPhase(PhaseFailed)
	if !strings.Contains(m.s.Reason, "4 clusters failed, more than maxFailures 1 allows: c1 (wave canary), c2 (wave canary), eu1 (wave rest), eu2 (wave rest)") {
		t.Fatalf("reason %q", m.s.Reason)
	}
	m.wantWaiting("Paused: 4 clusters failed in waves canary, rest")
}

func TestPauseHoldsClusters(t *testing.T) {
	m := released(t, mustParse(t, "waves: [{name: all, maxParallel: 2}]"), fleetOf()[:4]...)
	m.release("y")
	m.wantPins("c1=y c2=y eu1=w eu2=w")
	m.control(OpPause)
	m.wantPhase(PhasePaused)
	m.wantWaiting("Paused by an operator at wave all; resume to continue")
	// Reports are still taken in, but nothing new starts.
	if actions := m.succeed("c1", "c2"); len(actions) != 0 {
		t.Fatalf("paused: %s", describe(actions))
	}
	m.wantPhases("c1:succeeded c2:succeeded eu1:pending eu2:pending")
	m.wantPins("c1=y c2=y eu1=w eu2=w")
	// Offline clusters are not skipped while paused.
	m.offline("eu1", m.now)
	m.tick(time.Hour)
	m.step()
	m.wantPhases("c1:succeeded c2:succeeded eu1:pending eu2:pending")

	m.control(OpResume)
	m.wantPhase(PhaseRunning)
	actions := m.step()
	if got, want := describe(actions), "event rollout.cluster.skipped eu1; pin eu2=y"; got != want {
		t.Fatalf("after resume:\n got %s\nwant %s", got, want)
	}
}

func TestResumeRetriesFailedClusters(t *testing.T) {
	m := released(t, mustParse(t, "waves: [{name: all, maxParallel: 1}]\nprogressDeadline: 5m"), cluster("a"), cluster("b"))
	m.release("y")
	m.tick(time.Minute)
	m.report("a", synced, degraded)
	m.step()
	m.wantPhase(PhaseFailed)

	t.Run("a cluster still failing fails again at the deadline", func(t *testing.T) {
		m := m.fork(t)
		m.control(OpResume)
		m.wantPhase(PhaseRunning)
		m.step()
		m.wantPhases("a:updating b:pending")
		m.tick(5*time.Minute + time.Second)
		m.step()
		m.wantPhase(PhaseFailed)
		m.wantPhases("a:failed b:pending")
	})
	t.Run("a cluster that recovered succeeds", func(t *testing.T) {
		m := m.fork(t)
		m.tick(time.Minute)
		m.report("a", synced, healthy)
		m.step()
		m.wantPhase(PhaseFailed) // a failure is not undone by itself
		m.control(OpResume)
		if got := describe(m.step()); got != "pin b=y" {
			t.Fatalf("after resume: %s", got)
		}
		m.wantPhases("a:succeeded b:updating")
	})
}

func TestOfflineClustersAreSkipped(t *testing.T) {
	strategy := "waves:\n- {name: canary, selector: {matchLabels: {ring: canary}}}\n- {name: rest, maxParallel: 1}\nofflineTimeout: 15m"
	t.Run("offline when its wave comes", func(t *testing.T) {
		m := released(t, mustParse(t, strategy), fleetOf()[:4]...)
		m.offline("c2", m.now.Add(-13*time.Minute))
		m.release("y")
		// c2 is offline, not yet for 15m: c1 starts, c2 waits.
		m.wantPhases("c1:updating c2:pending eu1:pending eu2:pending")
		m.succeed("c1")
		m.wantWaiting("Updating wave canary: 1 of 2 clusters done, 0 updating, waiting for 1 offline cluster to come back or time out")
		m.wantWaves("canary:running rest:pending")
		// At 15m it is skipped and the wave completes.
		m.tick(time.Minute)
		actions := m.step()
		if got, want := describe(actions), "event rollout.cluster.skipped c2; event rollout.wave.completed; event rollout.wave.started; pin eu1=y"; got != want {
			t.Fatalf("actions:\n got %s\nwant %s", got, want)
		}
		if c := m.s.Clusters["c2"]; !strings.Contains(c.Reason, "offline since 11:47:00 UTC") {
			t.Fatalf("reason %q", c.Reason)
		}
		m.wantPins("c1=y c2=w eu1=y eu2=w")
		// It comes back: it runs the last completed release, then the
		// new one once the rollout completes.
		m.online("c2")
		m.succeed("eu1")
		m.wantPins("c1=y c2=w eu1=y eu2=y")
		actions = m.succeed("eu2")
		m.wantPhase(PhaseCompleted)
		m.wantPins("c1=y c2=y eu1=y eu2=y")
		if !strings.Contains(describe(actions), "pin c2=y") {
			t.Fatalf("completion: %s", describe(actions))
		}
	})
	t.Run("never seen online", func(t *testing.T) {
		m := released(t, mustParse(t, strategy), fleetOf()[:4]...)
		delete(m.obs.Clusters, "c2")
		m.release("y")
		m.wantPhases("c1:updating c2:skipped eu1:pending eu2:pending")
		if c := m.s.Clusters["c2"]; c.Reason != "never seen online" {
			t.Fatalf("reason %q", c.Reason)
		}
	})
	t.Run("goes offline while updating", func(t *testing.T) {
		m := released(t, mustParse(t, strategy), fleetOf()[:4]...)
		m.release("y")
		m.wantPins("c1=y c2=y eu1=w eu2=w")
		m.tick(time.Minute)
		m.offline("c2", m.now)
		m.succeed("c1")
		m.tick(13 * time.Minute)
		m.step()
		m.wantPhases("c1:succeeded c2:updating eu1:pending eu2:pending")
		m.tick(time.Minute)
		m.step()
		m.wantPhases("c1:succeeded c2:skipped eu1:updating eu2:pending")
		// Skipped, it is pinned back to the last completed release.
		m.wantPins("c1=y c2=w eu1=y eu2=w")
	})
	t.Run("an offline cluster does not take a slot", func(t *testing.T) {
		m := released(t, mustParse(t, strategy), fleetOf()[:4]...)
		m.offline("eu1", m.now)
		m.release("y")
		m.succeed("c1", "c2")
		m.wantPhases("c1:succeeded c2:succeeded eu1:pending eu2:updating")
	})
}

// TestSupersede: a newer commit mid-rollout starts from the first wave;
// clusters keep what they run until their wave reaches them.
func TestSupersede(t *testing.T) {
	strategy := "waves:\n- {name: canary, selector: {matchLabels: {ring: canary}}}\n- {name: europe, selector: {matchLabels: {region: eu}}, maxParallel: 2}\n- {name: rest}\nmaxFailures: 1"
	m := released(t, mustParse(t, strategy), fleetOf()...)
	m.release("y")
	m.succeed("c1", "c2")
	m.tick(time.Minute)
	m.report("eu1", synced, degraded)
	m.succeed("eu2")
	// eu1 failed within the budget: eu3 and eu4 take the two slots.
	m.wantPhases("c1:succeeded c2:succeeded eu1:failed eu2:succeeded eu3:updating eu4:updating us1:pending us2:pending us3:pending us4:pending")
	m.wantPins("c1=y c2=y eu1=y eu2=y eu3=y eu4=y us1=w us2=w us3=w us4=w")

	actions := m.release("z")
	if got, want := describe(actions), "event rollout.superseded; event rollout.started; event rollout.wave.started; pin c1=z; pin c2=z"; got != want {
		t.Fatalf("actions:\n got %s\nwant %s", got, want)
	}
	if m.s.ID != 3 || m.s.Superseded != sha("y") || m.s.Good != sha("w") {
		t.Fatalf("rollout %d supersedes %s from %s", m.s.ID, commits[m.s.Superseded], commits[m.s.Good])
	}
	m.wantPins("c1=z c2=z eu1=y eu2=y eu3=y eu4=y us1=w us2=w us3=w us4=w")
	m.wantWaves("canary:running europe:pending rest:pending")
	// Reports about y no longer count.
	m.tick(time.Minute)
	m.reportAt("c1", sha("y"), synced, healthy, m.now)
	m.step()
	m.wantPhases("c1:updating c2:updating eu1:pending eu2:pending eu3:pending eu4:pending us1:pending us2:pending us3:pending us4:pending")
	m.succeed("c1", "c2")
	m.wantPins("c1=z c2=z eu1=z eu2=z eu3=y eu4=y us1=w us2=w us3=w us4=w")

	// Rolling back z goes to w, the last release that completed, also on
	// the clusters still on y: y never completed.
	m.control(OpRollback)
	m.wantPins("c1=w c2=w eu1=w eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
}

func TestSupersedeCompletedOrPaused(t *testing.T) {
	m := released(t, mustParse(t, "waves: [{name: all, maxParallel: 1}]"), cluster("a"), cluster("b"))
	m.release("y")
	m.control(OpPause)
	actions := m.release("z")
	if got := kinds(actions); !slices.Equal(got, []string{EventSuperseded, EventStarted, EventWaveStarted}) {
		t.Fatalf("superseding a paused rollout: %s", describe(actions))
	}
	m.wantPhase(PhaseRunning)
	m.succeed("a")
	m.succeed("b")
	m.wantPhase(PhaseCompleted)
	actions = m.release("v")
	if got := kinds(actions); !slices.Equal(got, []string{EventStarted, EventWaveStarted}) {
		t.Fatalf("after a completed rollout: %s", describe(actions))
	}
	if m.s.Good != sha("z") || m.s.Superseded != "" {
		t.Fatalf("good %s superseded %q", commits[m.s.Good], m.s.Superseded)
	}
}

// TestRevertToGoodRelease: a release of the commit the clusters already
// run is done by the fresh reports they sent since they were pinned to it.
func TestRevertToGoodRelease(t *testing.T) {
	m := released(t, mustParse(t, "waves: [{name: all, maxParallel: 1}]"), cluster("a"), cluster("b"))
	m.tick(time.Minute)
	m.reportAt("a", sha("w"), synced, healthy, m.now)
	m.reportAt("b", sha("w"), synced, healthy, m.now)
	m.release("y")
	m.tick(time.Minute)
	m.report("a", synced, degraded)
	m.step()
	m.wantPhase(PhaseFailed)
	m.control(OpRollback)
	m.wantPins("a=w b=w")
	// a re-applies w and says so; then the ref goes back to w.
	m.tick(time.Minute)
	m.reportAt("a", sha("w"), synced, healthy, m.now)
	m.tick(time.Minute)
	actions := m.release("w")
	m.wantPhase(PhaseCompleted)
	if got := describe(actions); got != "event rollout.started; event rollout.wave.started; event rollout.wave.completed; event rollout.completed" {
		t.Fatalf("actions: %s", got)
	}
}

func TestPlacementChanges(t *testing.T) {
	strategy := "waves:\n- {name: canary, selector: {matchLabels: {ring: canary}}}\n- {name: europe, selector: {matchLabels: {region: eu}}, requireApproval: true}\n- {name: rest}"
	setup := func(t *testing.T) *sim {
		m := released(t, mustParse(t, strategy), fleetOf()[:6]...)
		m.release("y")
		m.succeed("c1", "c2")
		m.wantPhase(PhaseWaitingApproval)
		return m
	}
	add := func(m *sim, c Cluster) {
		m.obs.Placed = append(m.obs.Placed, c)
		m.obs.Clusters[c.Name] = Observation{Online: true, LastSeen: m.now}
	}
	t.Run("new cluster in a wave not reached", func(t *testing.T) {
		m := setup(t)
		add(m, cluster("eu9", "region", "eu"))
		if got := describe(m.step()); got != "pin eu9=w" {
			t.Fatalf("new cluster: %s", got)
		}
		m.control(OpPromote)
		m.step()
		m.wantPins("c1=y c2=y eu1=y eu2=y eu3=y eu4=y eu9=y")
	})
	t.Run("new cluster in a wave done", func(t *testing.T) {
		m := setup(t)
		add(m, cluster("c3", "ring", "canary"))
		// It joins its wave, which already proved the release.
		if got := describe(m.step()); got != "pin c3=w; pin c3=y" {
			t.Fatalf("new cluster: %s", got)
		}
		m.wantWaves("canary:done europe:waiting-approval rest:pending")
		m.control(OpPromote)
		m.step()
		m.succeed("eu1", "eu2", "eu3", "eu4")
		// The rollout does not complete before c3 settles.
		m.wantPhase(PhaseRunning)
		m.wantWaiting("Updating 1 cluster that joined after their wave completed")
		m.succeed("c3")
		m.wantPhase(PhaseCompleted)
	})
	t.Run("new cluster in the catch-all wave", func(t *testing.T) {
		m := setup(t)
		add(m, cluster("mars1", "region", "mars"))
		m.step()
		m.wantPins("c1=y c2=y eu1=w eu2=w eu3=w eu4=w mars1=w")
		if c := m.s.Clusters["mars1"]; c.Wave != "rest" || c.Phase != ClusterPending {
			t.Fatalf("mars1: %+v", c)
		}
	})
	t.Run("a cluster leaves", func(t *testing.T) {
		m := setup(t)
		m.control(OpPromote)
		m.step()
		m.succeed("eu1", "eu2", "eu3")
		m.wantPhase(PhaseRunning)
		// eu4, the last one updating, leaves: the wave and the rollout
		// complete without it.
		m.obs.Placed = slices.DeleteFunc(slices.Clone(m.obs.Placed), func(c Cluster) bool { return c.Name == "eu4" })
		m.step()
		m.wantPhase(PhaseCompleted)
		m.wantPins("c1=y c2=y eu1=y eu2=y eu3=y")
	})
	t.Run("labels move a pending cluster to a later wave", func(t *testing.T) {
		m := released(t, mustParse(t, strategy), fleetOf()[:6]...)
		m.obs.Placed[1] = cluster("c2", "region", "eu") // no longer a canary
		m.release("y")
		m.wantPins("c1=y c2=w eu1=w eu2=w eu3=w eu4=w")
		if c := m.s.Clusters["c2"]; c.Wave != "europe" {
			t.Fatalf("c2 in wave %s", c.Wave)
		}
	})
	t.Run("labels move a succeeded cluster to a later wave", func(t *testing.T) {
		m := setup(t)
		m.obs.Placed[0] = cluster("c1", "region", "eu")
		m.step()
		// It keeps the release and counts as done in its new wave.
		m.wantPins("c1=y c2=y eu1=w eu2=w eu3=w eu4=w")
		m.control(OpPromote)
		m.step()
		m.succeed("eu1", "eu2", "eu3", "eu4")
		m.wantPhase(PhaseCompleted)
	})
	t.Run("placement changes after completion", func(t *testing.T) {
		m := setup(t)
		m.control(OpPromote)
		m.step()
		m.succeed("eu1", "eu2", "eu3", "eu4")
		m.wantPhase(PhaseCompleted)
		add(m, cluster("new"))
		if got := describe(m.step()); got != "pin new=y" {
			t.Fatalf("new cluster after completion: %s", got)
		}
	})
}

// TestStrategyEdits: the strategy is read at every Step.
func TestStrategyEdits(t *testing.T) {
	m := released(t, mustParse(t, "waves:\n- {name: canary, selector: {matchLabels: {ring: canary}}}\n- {name: rest, maxParallel: 1}"), fleetOf()[:4]...)
	m.release("y")
	m.succeed("c1", "c2")
	m.wantPins("c1=y c2=y eu1=y eu2=w")
	// maxParallel raised mid-wave.
	m.obs.Strategy = mustParse(t, "waves:\n- {name: canary, selector: {matchLabels: {ring: canary}}}\n- {name: rest}")
	if got := describe(m.step()); got != "pin eu2=y" {
		t.Fatalf("after raising maxParallel: %s", got)
	}
	// Strategy removed: the release goes everywhere at once.
	m.obs.Placed = append(m.obs.Placed, cluster("eu3"))
	m.obs.Clusters["eu3"] = Observation{Online: true}
	m.obs.Strategy = nil
	m.step()
	m.wantPhase(PhaseCompleted)
	m.wantPins("c1=y c2=y eu1=y eu2=y eu3=y")
}

// TestRestartMidWave replays a rollout in which the State goes through
// JSON before every Step, as if the hub restarted each time, and checks
// that it makes the same decisions as one that never restarts.
func TestRestartMidWave(t *testing.T) {
	run := func(restart bool) []string {
		m := released(t, mustParse(t, issueStrategy), fleetOf()...)
		var trace []string
		step := func() {
			if restart {
				var s State
				if err := json.Unmarshal([]byte(mustJSON(t, m.s)), &s); err != nil {
					t.Fatal(err)
				}
				m.s = s
			}
			trace = append(trace, describe(m.step()))
		}
		m.obs.Commit = sha("y")
		step()
		for _, names := range [][]string{{"c1"}, {"c2"}, {}, {}} {
			m.tick(6 * time.Minute)
			for _, n := range names {
				m.report(n, synced, healthy)
			}
			step()
		}
		m.control(OpPromote)
		step()
		for _, n := range []string{"eu1", "eu2", "eu3", "eu4", "us1", "us2", "us3", "us4"} {
			m.tick(time.Minute)
			m.report(n, synced, healthy)
			step()
		}
		trace = append(trace, string(m.s.Phase), m.pins())
		return trace
	}
	straight, restarted := run(false), run(true)
	if !slices.Equal(straight, restarted) {
		t.Fatalf("a restarting hub decides differently:\n%s\nvs\n%s", strings.Join(straight, "\n"), strings.Join(restarted, "\n"))
	}
	if straight[len(straight)-2] != string(PhaseCompleted) {
		t.Fatalf("did not complete: %v", straight)
	}
	// Every cluster was started exactly once.
	started := map[string]int{}
	for _, line := range straight {
		for _, part := range strings.Split(line, "; ") {
			if name, ok := strings.CutPrefix(part, "pin "); ok && strings.HasSuffix(name, "=y") {
				started[name]++
			}
		}
	}
	for name, n := range started {
		if n != 1 {
			t.Errorf("%s pinned %d times", name, n)
		}
	}
}

// TestImplicitWave: clusters no wave selects are updated last, all at once.
func TestImplicitWave(t *testing.T) {
	m := released(t, mustParse(t, "waves: [{name: canary, selector: {matchLabels: {ring: canary}}, maxParallel: 1, soak: 5m}]"), fleetOf()[:5]...)
	m.release("y")
	m.wantWaves("canary:running remaining:pending")
	m.succeed("c1")
	m.succeed("c2")
	m.tick(5 * time.Minute)
	if got, want := describe(m.step()), "event rollout.wave.completed; event rollout.wave.started; pin eu1=y; pin eu2=y; pin eu3=y"; got != want {
		t.Fatalf("after canary:\n got %s\nwant %s", got, want)
	}
	m.succeed("eu1", "eu2", "eu3")
	m.wantPhase(PhaseCompleted)
	// A cluster placed now that no wave selects joins the completed
	// release.
	m.obs.Placed = append(m.obs.Placed, cluster("x"))
	m.obs.Clusters["x"] = Observation{Online: true}
	if got := describe(m.step()); got != "pin x=y" {
		t.Fatalf("new cluster: %s", got)
	}
}

// TestReasons: agents' messages quoted in reasons and events are bounded
// and valid UTF-8 (events are protobuf strings); long lists are cut.
func TestReasons(t *testing.T) {
	long := strings.Repeat("é", 400) // 800 bytes
	if got := withMessage("Degraded", "  "+long); len(got) > len("Degraded: ")+maxMessageBytes+3 || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Fatalf("long message: %d bytes, valid %v", len(got), utf8.ValidString(got))
	}
	if got := withMessage("sync failed", "bad \xff byte"); got != "sync failed: bad ? byte" {
		t.Fatalf("invalid UTF-8: %q", got)
	}
	if got := withMessage("Degraded", " "); got != "Degraded" {
		t.Fatalf("empty message: %q", got)
	}

	var clusters []Cluster
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		clusters = append(clusters, cluster(n))
	}
	m := released(t, mustParse(t, "waves: [{name: all}]\nmaxFailures: 10%"), clusters...)
	m.release("y")
	m.tick(time.Minute)
	for _, c := range clusters {
		m.report(c.Name, syncFailed, degraded)
	}
	m.step()
	m.wantPhase(PhaseFailed)
	if want := "7 clusters failed, more than maxFailures 10% allows: a (wave all), b (wave all), c (wave all), d (wave all), e (wave all) and 2 more"; m.s.Reason != want {
		t.Fatalf("reason:\n got %q\nwant %q", m.s.Reason, want)
	}
}

// TestAtOnceReleaseFollowsClusters: a release that went everywhere at once
// completed, but its waves and clusters say what the clusters run: each
// updates until it reports the release Synced and Healthy, or a failure,
// and a wave runs until its clusters settled.
func TestAtOnceReleaseFollowsClusters(t *testing.T) {
	for _, tt := range []struct {
		name     string
		strategy *spec.Strategy
		waves    string
	}{
		{"first release", mustParse(t, issueStrategy), "canary:running europe:running rest:done"},
		{"no strategy", nil, "remaining:running"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := newSim(t, tt.strategy, fleetOf()[:3]...)
			m.release("w")
			m.wantPhase(PhaseCompleted)
			m.wantPhases("c1:updating c2:updating eu1:updating")
			m.wantWaves(tt.waves)
			m.succeed("c1", "c2")
			m.wantPhases("c1:succeeded c2:succeeded eu1:updating")
			m.tick(time.Minute)
			m.report("eu1", synced, degraded)
			actions := m.step()
			if got, want := describe(actions), "event rollout.cluster.failed eu1"; got != want {
				t.Fatalf("eu1 Degraded:\n got %s\nwant %s", got, want)
			}
			m.wantPhases("c1:succeeded c2:succeeded eu1:failed")
			m.wantPhase(PhaseCompleted)
			if tt.strategy != nil {
				m.wantWaves("canary:done europe:done rest:done")
			} else {
				m.wantWaves("remaining:done")
			}
			// A cluster placed after the release completed runs it, and
			// is followed the same way.
			m.obs.Placed = append(m.obs.Placed, cluster("new"))
			m.obs.Clusters["new"] = Observation{Online: true, LastSeen: m.now}
			m.step()
			m.wantPins("c1=w c2=w eu1=w new=w")
			m.wantPhases("c1:succeeded c2:succeeded eu1:failed new:updating")
			m.succeed("new")
			m.wantPhases("c1:succeeded c2:succeeded eu1:failed new:succeeded")
		})
	}
}

func TestAtOnce(t *testing.T) {
	m := newSim(t, mustParse(t, issueStrategy), fleetOf()[:3]...)
	m.obs.Commit = sha("w")
	releasedAt := m.now
	m.tick(time.Minute)
	m.report("c1", synced, healthy)
	// Reported before the release: about something else.
	m.reportAt("c2", sha("w"), synced, healthy, releasedAt.Add(-time.Second))
	m.report("eu1", synced, degraded)
	s := AtOnce(m.obs, releasedAt, m.now)
	m.s = s
	m.wantPhase(PhaseCompleted)
	m.wantPhases("c1:succeeded c2:updating eu1:failed")
	m.wantWaves("remaining:running")
	m.wantPins("c1=w c2=w eu1=w")
	if s.ID != 0 || s.Release != sha("w") || s.Reason != NoStrategyReason {
		t.Fatalf("AtOnce: id %d, release %s, reason %q", s.ID, commits[s.Release], s.Reason)
	}
}

// TestEndedRolloutWaves: a rollback or an abort leaves no wave running.
func TestEndedRolloutWaves(t *testing.T) {
	m := released(t, mustParse(t, issueStrategy), fleetOf()...)
	m.release("y")
	m.succeed("c1")
	m.wantWaves("canary:running europe:pending rest:pending")

	t.Run("rollback", func(t *testing.T) {
		m := m.fork(t)
		m.control(OpRollback)
		m.wantWaves("canary:rolled-back europe:pending rest:pending")
		m.wantPhases("c1:rolled-back c2:rolled-back eu1:pending eu2:pending eu3:pending eu4:pending us1:pending us2:pending us3:pending us4:pending")
		m.wantPins("c1=w c2=w eu1=w eu2=w eu3=w eu4=w us1=w us2=w us3=w us4=w")
	})
	t.Run("abort", func(t *testing.T) {
		m := m.fork(t)
		m.control(OpAbort)
		m.wantWaves("canary:aborted europe:pending rest:pending")
	})
	t.Run("failure", func(t *testing.T) {
		strategy := mustParse(t, issueStrategy)
		strategy.OnFailure = spec.FailureRollback
		m := released(t, strategy, fleetOf()...)
		m.release("y")
		m.succeed("c1")
		m.tick(time.Minute)
		m.obs.Clusters["c2"] = Observation{Online: true, LastSeen: m.now, Status: &Status{
			Commit: sha("y"), Sync: synced, Health: degraded, Message: "applied 2, unchanged 0, skipped 0, pruned 0", ObservedAt: m.now,
			Resources: []*droverv1.ResourceStatus{
				{Kind: "ConfigMap", Namespace: "web", Name: "cfg", Health: healthy, Message: "Resource is always ready"},
				{Group: "apps", Kind: "Deployment", Namespace: "web", Name: "nginx", Health: degraded, Message: "ProgressDeadlineExceeded: ReplicaSet \"nginx-1\" has timed out progressing."},
			},
		}}
		m.step()
		m.wantPhase(PhaseRolledBack)
		m.wantWaves("canary:rolled-back europe:pending rest:pending")
		m.wantPhases("c1:rolled-back c2:failed eu1:pending eu2:pending eu3:pending eu4:pending us1:pending us2:pending us3:pending us4:pending")
		want := `Degraded: Deployment web/nginx: ProgressDeadlineExceeded: ReplicaSet "nginx-1" has timed out progressing.`
		if got := m.s.Clusters["c2"].Reason; got != want {
			t.Fatalf("c2's reason:\n got %q\nwant %q", got, want)
		}
	})
}

// TestRollbackAfterCompletion: every wave was done, so every wave is
// rolled back.
func TestRollbackAfterCompletion(t *testing.T) {
	m := released(t, nil, fleetOf()[:3]...)
	m.release("y")
	m.succeed("c1", "c2", "eu1")
	m.wantPhase(PhaseCompleted)
	m.control(OpRollback)
	m.wantWaves("remaining:rolled-back")
	m.wantPhases("c1:rolled-back c2:rolled-back eu1:rolled-back")
	m.wantPins("c1=w c2=w eu1=w")
}
