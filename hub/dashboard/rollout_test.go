package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/hub/rollout"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Rollout and ControlRollout make fakeHub the admin API's rollout engine.
func (h *fakeHub) Rollout(_ context.Context, app string) (*droverv1.RolloutStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rollouts[app]
	if r == nil {
		return nil, fmt.Errorf("rollout of %s: %w", app, store.ErrNotFound)
	}
	return r, nil
}

func (h *fakeHub) ControlRollout(_ context.Context, app string, op rollout.Op, actor string) (*droverv1.RolloutStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rollouts[app]
	if r == nil {
		return nil, fmt.Errorf("rollout of %s: %w", app, store.ErrNotFound)
	}
	if op == rollout.OpPromote && r.GetPhase() != string(rollout.PhaseWaitingApproval) {
		return nil, &rollout.ControlError{Op: op, Phase: rollout.Phase(r.GetPhase()), Msg: "the rollout is " + r.GetPhase() + ", not waiting for approval"}
	}
	h.controls = append(h.controls, app+" "+string(op)+" "+actor)
	return r, nil
}

func (h *fakeHub) setRollout(app string, r *droverv1.RolloutStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rollouts == nil {
		h.rollouts = map[string]*droverv1.RolloutStatus{}
	}
	h.rollouts[app] = r
}

func (h *fakeHub) takeControls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.controls
	h.controls = nil
	return out
}

// addShop adds "shop" to the fixture: a canary wave (us-1) done and a
// europe wave (eu-1) waiting for approval, as the engine would store and
// report it.
func addShop(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	a := app("shop", "https://github.com/acme/fleet.git", "shop", map[string]string{"env": "prod"})
	a.Spec.Rollout = &droverv1.RolloutStrategy{Waves: []*droverv1.RolloutWave{
		{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "us"}}, Soak: "10m"},
		{Name: "europe", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}}, MaxParallel: structpb.NewNumberValue(1), RequireApproval: true},
		{Name: "rest"},
	}}
	_, err := f.store.CreateApplication(ctx, a, "alice")
	must(t, err)
	_, err = f.store.AddRelease(ctx, "shop", commitWeb2, "main", "", t0.Add(-3*time.Hour))
	must(t, err)
	_, err = f.store.AddRelease(ctx, "shop", commitNew, "main", "", t0.Add(-40*time.Minute))
	must(t, err)
	conn, err := pgx.Connect(ctx, f.databaseURL)
	must(t, err)
	_, err = conn.Exec(ctx, `UPDATE events SET time = $1 WHERE application = 'shop'`, t0.Add(-45*time.Minute))
	must(t, err)
	must(t, conn.Close(ctx))

	started := t0.Add(-40 * time.Minute)
	must(t, f.store.PutRolloutState(ctx, "shop", rollout.State{
		ID: 2, Release: commitNew, Good: commitWeb2, Phase: rollout.PhaseWaitingApproval, StartedAt: started,
		Waves: []rollout.WaveState{
			{Name: "canary", Phase: rollout.WaveDone, Clusters: 1, MaxParallel: 1},
			{Name: "europe", Phase: rollout.WaveWaitingApproval, Clusters: 1, MaxParallel: 1},
			{Name: "rest", Phase: rollout.WavePending},
		},
		Clusters: map[string]rollout.ClusterState{
			"us-1": {Wave: "canary", Phase: rollout.ClusterSucceeded, Commit: commitNew},
			"eu-1": {Wave: "europe", Phase: rollout.ClusterPending, Commit: commitWeb2},
		},
	}))
	f.hub.placed["shop"] = []string{"eu-1", "us-1"}
	f.hub.setRollout("shop", waitingShop())
}

func waitingShop() *droverv1.RolloutStatus {
	return &droverv1.RolloutStatus{
		Application: "shop", Id: 2, Commit: commitNew, PreviousCommit: commitWeb2, Phase: "waiting-approval",
		Waiting: "Waiting for approval of wave europe", StartedAt: timestamppb.New(t0.Add(-40 * time.Minute)),
		Waves: []*droverv1.RolloutWaveStatus{
			{Name: "canary", Phase: "done", Clusters: 1, MaxParallel: 1, ClusterPhases: map[string]int32{"succeeded": 1}},
			{Name: "europe", Phase: "waiting-approval", Clusters: 1, MaxParallel: 1, ClusterPhases: map[string]int32{"pending": 1}, RequiresApproval: true},
			{Name: "rest", Phase: "pending"},
		},
		Clusters: []*droverv1.RolloutClusterStatus{
			{Name: "us-1", Wave: "canary", Phase: "succeeded", Commit: commitNew},
			{Name: "eu-1", Wave: "europe", Phase: "pending", Commit: commitWeb2},
		},
	}
}

// TestRolloutPages renders an application whose rollout waits for
// approval, as an admin and as a viewer, the overview's banner, and a
// soaking wave's countdown.
func TestRolloutPages(t *testing.T) {
	f := newFixture(t)
	addShop(t, f)
	admin, viewer := f.browser(t), f.browser(t)
	admin.login(f.admin)
	viewer.login(f.viewer)
	for _, tc := range []struct {
		name     string
		b        *browser
		path     string
		contains []string
		lacks    []string
	}{
		{"app-rollout-admin", admin, "/apps/shop?fragment=1",
			[]string{"Waiting for approval of wave europe", "‖ Needs approval", `action="/apps/shop/rollout/promote"`, "✓ 1 done", "· 1 pending",
				`action="/apps/shop/rollout/pause"`, `action="/apps/shop/rollout/rollback"`, `action="/apps/shop/rollout/abort"`, "europe <span class=\"b none\">· pending</span>"},
			[]string{"all at once", `action="/apps/shop/rollout/resume"`}},
		{"app-rollout-viewer", viewer, "/apps/shop?fragment=1",
			[]string{"Waiting for approval of wave europe", "‖ Needs approval", "admins promote, pause and roll back"},
			[]string{"/rollout/", "<form class=\"act\""}},
		{"overview-rollout", viewer, "/?fragment=1",
			[]string{"Approval needed", `<a href="/apps/shop">shop</a> — Waiting for approval of wave europe`, `<span class="n">1</span> waiting for approval`},
			nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.b.t = t
			code, body := tc.b.get(tc.path)
			if code != http.StatusOK {
				t.Fatalf("GET %s = %d", tc.path, code)
			}
			for _, s := range tc.contains {
				if !strings.Contains(body, s) {
					t.Errorf("GET %s: missing %q", tc.path, s)
				}
			}
			for _, s := range tc.lacks {
				if strings.Contains(body, s) {
					t.Errorf("GET %s: has %q", tc.path, s)
				}
			}
			golden(t, tc.name, body)
		})
	}

	t.Run("soaking", func(t *testing.T) {
		admin.t = t
		r := waitingShop()
		r.Phase, r.Waiting = "running", "Soaking wave canary until 12:05:00 UTC"
		r.Waves[0].Phase, r.Waves[0].SoakUntil = "soaking", timestamppb.New(t0.Add(5*time.Minute))
		r.Waves[1].Phase = "pending"
		f.hub.setRollout("shop", r)
		t.Cleanup(func() { f.hub.setRollout("shop", waitingShop()) })
		_, body := admin.get("/apps/shop?fragment=1")
		for _, s := range []string{"Soaking wave canary until 12:05:00 UTC", `◔ Soak ends <time datetime="2030-01-02 12:05:00 UTC" title="2030-01-02 12:05:00 UTC">in 5 min</time>`, "◇ Approval gate"} {
			if !strings.Contains(body, s) {
				t.Errorf("soaking rollout: missing %q", s)
			}
		}
		if strings.Contains(body, "/rollout/promote") {
			t.Error("a soaking rollout offers promote")
		}
	})

	t.Run("no strategy", func(t *testing.T) {
		admin.t = t
		if _, body := admin.get("/apps/web?fragment=1"); !strings.Contains(body, "Rollout: all at once (no strategy)") || strings.Contains(body, "/rollout/") {
			t.Error("an application without a strategy shows a rollout")
		}
	})
}

// TestRolloutActions: every rollout button goes through the CSRF and role
// gate; only an admin with the session's token acts, as the audit actor.
func TestRolloutActions(t *testing.T) {
	f := newFixture(t)
	addShop(t, f)
	admin, viewer := f.browser(t), f.browser(t)
	adminCSRF, viewerCSRF := admin.login(f.admin), viewer.login(f.viewer)
	for _, tc := range []struct {
		name string
		b    *browser
		path string
		form url.Values
		code int
		want string
	}{
		{"promote without CSRF", admin, "/apps/shop/rollout/promote", url.Values{}, 403, "CSRF check failed"},
		{"promote with a forged CSRF", admin, "/apps/shop/rollout/promote", url.Values{"csrf": {"forged"}}, 403, "CSRF check failed"},
		{"viewer promote", viewer, "/apps/shop/rollout/promote", url.Values{"csrf": {viewerCSRF}}, 403, "may look but not act"},
		{"viewer abort", viewer, "/apps/shop/rollout/abort", url.Values{"csrf": {viewerCSRF}}, 403, "may look but not act"},
		{"unknown op", admin, "/apps/shop/rollout/launch", url.Values{"csrf": {adminCSRF}}, 400, "op: "},
		{"unknown application", admin, "/apps/nope/rollout/pause", url.Values{"csrf": {adminCSRF}}, 404, "does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.b.t = t
			code, _, body := tc.b.do("POST", tc.path, tc.form)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Errorf("POST %s = %d, want %d with %q:\n%s", tc.path, code, tc.code, tc.want, body)
			}
			if got := f.hub.takeControls(); len(got) != 0 {
				t.Errorf("the rollout was controlled: %v", got)
			}
		})
	}

	admin.t = t
	code, hdr, body := admin.do("POST", "/apps/shop/rollout/promote", url.Values{"csrf": {adminCSRF}})
	if code != http.StatusSeeOther || hdr.Get("Location") != "/apps/shop" {
		t.Fatalf("admin promote = %d %q: %s", code, hdr.Get("Location"), body)
	}
	if got := f.hub.takeControls(); len(got) != 1 || got[0] != "shop promote alice" {
		t.Fatalf("controls = %v, want shop promote by alice", got)
	}

	// An operation the phase refuses says why, and changes nothing.
	r := waitingShop()
	r.Phase = "running"
	f.hub.setRollout("shop", r)
	code, _, body = admin.do("POST", "/apps/shop/rollout/promote", url.Values{"csrf": {adminCSRF}})
	if code != http.StatusBadRequest || !strings.Contains(body, "not waiting for approval") {
		t.Errorf("promote of a running rollout = %d, want 400 saying it is not waiting for approval:\n%s", code, body)
	}
	if got := f.hub.takeControls(); len(got) != 0 {
		t.Errorf("controls = %v, want none", got)
	}
}
