package reconcile

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/drover-dev/drover/agent/apply"
	"github.com/drover-dev/drover/agent/state"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// hookApplier is fakeApplier with what apply.Applier adds for Helm hooks:
// its Runs run post hooks, and it deletes releases with their delete
// hooks. It records the steps in the order they ran.
type hookApplier struct {
	*fakeApplier
	mu       sync.Mutex // guards the fields below
	steps    []string
	postErr  map[string]error
	rendered map[string][]*unstructured.Unstructured // by deleted application
}

func (h *hookApplier) record(step string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.steps = append(h.steps, step)
}

func (h *hookApplier) Begin(ctx context.Context, app, commit string, objs []*unstructured.Unstructured, p apply.Policy) (Run, error) {
	run, err := h.fakeApplier.Begin(ctx, app, commit, objs, p)
	return &hookRun{fakeRun: run.(*fakeRun), h: h}, err
}

func (h *hookApplier) DeleteRelease(ctx context.Context, app string, render func(context.Context) ([]*unstructured.Unstructured, error)) error {
	objs, err := render(ctx)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.rendered[app] = objs
	h.mu.Unlock()
	return h.Delete(ctx, app)
}

type hookRun struct {
	*fakeRun
	h *hookApplier
}

func (r *hookRun) Apply(ctx context.Context) error {
	r.h.record(r.app + " apply")
	return r.fakeRun.Apply(ctx)
}

func (r *hookRun) Prune(ctx context.Context) error {
	r.h.record(r.app + " prune")
	return r.fakeRun.Prune(ctx)
}

func (r *hookRun) PostHooks(context.Context) error {
	r.h.record(r.app + " post-hooks")
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	return r.h.postErr[r.app]
}

func (r *hookRun) Assess() {
	r.h.record(r.app + " assess")
	r.fakeRun.Assess()
}

func newHookReconciler(t *testing.T, render Renderer) (*Reconciler, *hookApplier, chan string) {
	t.Helper()
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ap := &hookApplier{
		fakeApplier: &fakeApplier{synced: map[string]string{}, failures: map[string]int{}, applyErr: map[string]error{}, pruneErr: map[string]error{}},
		postErr:     map[string]error{},
		rendered:    map[string][]*unstructured.Unstructured{},
	}
	acks := make(chan string, 16)
	rec := New(Config{RetryBase: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond}, st, fakeFetcher{}, render, ap,
		func(v, _ string) { acks <- v }, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rec.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return rec, ap, acks
}

func waitFor(t *testing.T, acks chan string, version string) {
	t.Helper()
	select {
	case v := <-acks:
		if v != version {
			t.Fatalf("acknowledged %q, want %q", v, version)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("version %q never acknowledged", version)
	}
}

// Post hooks run after the prune, and one that fails fails the sync with
// its message.
func TestPostHooksRunAfterPrune(t *testing.T) {
	rec, ap, acks := newHookReconciler(t, noRender)
	ap.postErr["late"] = errors.New("post-upgrade hook Job/late/notify: job failed: BackoffLimitExceeded")
	a := &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1)}}
	if err := rec.SetAssignment(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	waitFor(t, acks, "v1")
	ap.mu.Lock()
	steps := slices.Clone(ap.steps)
	ap.mu.Unlock()
	if want := []string{"web apply", "web prune", "web post-hooks", "web assess"}; !slices.Equal(steps, want) {
		t.Errorf("steps %v, want %v", steps, want)
	}

	a = &droverv1.Assignment{Version: "v2", Nonce: "n2", Applications: []*droverv1.AppAssignment{app("web", sha1), app("late", sha1)}}
	if err := rec.SetAssignment(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	waitFor(t, acks, "v2")
	for _, s := range rec.Statuses() {
		if s.GetApplication() != "late" {
			continue
		}
		if s.GetSync() != droverv1.SyncState_SYNC_STATE_FAILED || !strings.Contains(s.GetMessage(), "post-upgrade hook Job/late/notify") {
			t.Errorf("late = %v, want Failed naming the hook", s)
		}
		return
	}
	t.Fatal("no status for late")
}

// An application removed with prune on is deleted with its release's
// delete hooks: the applier can render the release it removes.
func TestRemovedApplicationRendersItsRelease(t *testing.T) {
	var mu sync.Mutex
	var renderedDirs []string
	render := func(_ context.Context, dir string, aa *droverv1.AppAssignment) ([]*unstructured.Unstructured, error) {
		mu.Lock()
		defer mu.Unlock()
		renderedDirs = append(renderedDirs, aa.GetName()+" "+dir)
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("v1")
		u.SetKind("ConfigMap")
		u.SetName(aa.GetName())
		return []*unstructured.Unstructured{u}, nil
	}
	rec, ap, acks := newHookReconciler(t, render)
	if err := rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1), app("old", sha2)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, acks, "v1")
	if err := rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v2", Nonce: "n2", Applications: []*droverv1.AppAssignment{app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, acks, "v2")
	ap.mu.Lock()
	objs := ap.rendered["old"]
	ap.mu.Unlock()
	if len(objs) != 1 || objs[0].GetName() != "old" {
		t.Errorf("DeleteRelease of old rendered %v, want its release's ConfigMap", objs)
	}
	ap.fakeApplier.mu.Lock()
	deleted := slices.Clone(ap.deleted)
	ap.fakeApplier.mu.Unlock()
	if !slices.Equal(deleted, []string{"old"}) {
		t.Errorf("deleted %v, want [old]", deleted)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(renderedDirs, "old /checkout/"+sha2) {
		t.Errorf("renders %v, want old rendered from its release's checkout", renderedDirs)
	}
}
