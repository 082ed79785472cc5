package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"weak"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/drover-dev/drover/agent/apply"
	"github.com/drover-dev/drover/agent/render"
	"github.com/drover-dev/drover/agent/state"
	"github.com/drover-dev/drover/internal/retry"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// The reconciler's ordering and bookkeeping are tested here with stand-ins
// for Git and the cluster; the real fetch, render and apply run in the
// end-to-end tests.

const (
	sha1 = "1111111111111111111111111111111111111111"
	sha2 = "2222222222222222222222222222222222222222"
)

type fakeFetcher struct{}

func (fakeFetcher) Fetch(_ context.Context, aa *droverv1.AppAssignment) (string, func(), error) {
	if strings.Contains(aa.GetRepoUrl(), "unreachable") {
		return "", nil, errors.New("connection refused")
	}
	return "/checkout/" + aa.GetCommit(), func() {}, nil
}

type fakeApplier struct {
	mu      sync.Mutex
	synced  map[string]string // app → commit
	deleted []string
	// failures makes the next applies of an application fail as the real
	// applier does when the API server is down: a transient error.
	failures map[string]int
	// applyErr and pruneErr make every apply or prune of an application
	// fail with that error; deleteErr every Delete.
	applyErr, pruneErr map[string]error
	deleteErr          error
}

func (f *fakeApplier) Begin(_ context.Context, app, commit string, objs []*unstructured.Unstructured, p apply.Policy) (Run, error) {
	return &fakeRun{f: f, app: app, commit: commit, policy: p, res: &apply.Result{Application: app, Commit: commit}}, nil
}

// fakeRun stands for the cluster's side of one apply; its Result is the
// real summary.
type fakeRun struct {
	f           *fakeApplier
	app, commit string
	policy      apply.Policy
	res         *apply.Result
}

func (r *fakeRun) Apply(context.Context) error {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	if r.f.failures[r.app] > 0 {
		r.f.failures[r.app]--
		return retry.Transient(errors.New("read inventory: connection refused"))
	}
	if err := r.f.applyErr[r.app]; err != nil {
		return err
	}
	r.f.synced[r.app] = r.commit
	return nil
}

func (r *fakeRun) Prune(context.Context) error {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return r.f.pruneErr[r.app]
}

// Assess finds one healthy object, applied or not.
func (r *fakeRun) Assess() {
	r.res.Resources = []*droverv1.ResourceStatus{{Version: "v1", Kind: "ConfigMap", Namespace: r.app, Name: r.app, Health: droverv1.Health_HEALTH_HEALTHY}}
	r.res.Health = droverv1.Health_HEALTH_HEALTHY
}

func (r *fakeRun) Result(ctx context.Context, err error) (*apply.Result, error) {
	r.res.Summarize(err, &r.policy)
	return r.res, err
}

func (r *fakeRun) Close() {}

func (f *fakeApplier) Assess(_ context.Context, app string) (*apply.Result, error) {
	return &apply.Result{Application: app, Health: droverv1.Health_HEALTH_HEALTHY, Sync: droverv1.SyncState_SYNC_STATE_SYNCED}, nil
}

func (f *fakeApplier) Delete(_ context.Context, app string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleteErr != nil {
		return f.deleteErr
	}
	f.deleted = append(f.deleted, app)
	return nil
}

func (f *fakeApplier) commitOf(app string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.synced[app]
}

func noRender(context.Context, string, *droverv1.AppAssignment) ([]*unstructured.Unstructured, error) {
	return nil, nil
}

type harness struct {
	rec  *Reconciler
	ap   *fakeApplier
	st   *state.Dir
	acks chan string
	// statusCalls has one element per onStatus call.
	statusCalls chan struct{}
	close       func()
}

func newHarness(t *testing.T, dir string, render Renderer) *harness {
	t.Helper()
	return newHarnessWith(t, dir, fakeFetcher{}, render)
}

func newHarnessWith(t *testing.T, dir string, fetch Fetcher, render Renderer) *harness {
	t.Helper()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{ap: &fakeApplier{synced: map[string]string{}, failures: map[string]int{}, applyErr: map[string]error{}, pruneErr: map[string]error{}},
		st: st, acks: make(chan string, 16), statusCalls: make(chan struct{}, 64)}
	if render == nil {
		render = noRender
	}
	h.rec = New(Config{RetryBase: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond}, st, fetch, render, h.ap,
		func(v, _ string) {
			// Called without the reconciler's lock: calling back in works.
			_ = h.rec.AppliedVersion()
			h.acks <- v
		}, func() {
			_ = h.rec.PendingStatus(false)
			h.statusCalls <- struct{}{}
		}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.rec.Run(ctx); close(done) }()
	h.close = func() { cancel(); <-done }
	t.Cleanup(h.close)
	return h
}

func app(name, commit string) *droverv1.AppAssignment {
	return &droverv1.AppAssignment{Name: name, RepoUrl: "https://git.example.test/" + name, Commit: commit,
		Render: droverv1.RenderType_RENDER_TYPE_DIRECTORY, SyncPolicy: &droverv1.SyncPolicy{Prune: true}}
}

func (h *harness) waitAck(t *testing.T, version string) {
	t.Helper()
	select {
	case v := <-h.acks:
		if v != version {
			t.Fatalf("acknowledged %q, want %q", v, version)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("version %q never acknowledged", version)
	}
}

func TestAcknowledgesOnceEveryApplicationRan(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	a := &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1), app("db", sha1)}}
	if err := h.rec.SetAssignment(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	if h.ap.commitOf("web") != sha1 || h.ap.commitOf("db") != sha1 {
		t.Fatalf("synced %v, want both apps at %s", h.ap.synced, sha1)
	}
	if got := h.st.AppliedVersion(); got != "v1" {
		t.Fatalf("stored applied version %q, want v1", got)
	}
}

func TestInvalidAssignmentIsRefusedAndChangesNothing(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	good := &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1)}}
	if err := h.rec.SetAssignment(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	for _, bad := range []*droverv1.Assignment{
		{Version: "", Applications: []*droverv1.AppAssignment{app("web", sha2)}},
		{Version: "v2", Applications: []*droverv1.AppAssignment{app("web", "main")}},
		{Version: "v2", Applications: []*droverv1.AppAssignment{app("web", sha2), app("web", sha2)}},
		{Version: "v2", Applications: []*droverv1.AppAssignment{app("Not_A_Name", sha2)}},
		{Version: "v2", Applications: []*droverv1.AppAssignment{{Name: "web", RepoUrl: "https://x.test/r", Commit: sha2, Render: droverv1.RenderType(99)}}},
	} {
		if err := h.rec.SetAssignment(context.Background(), bad); err == nil {
			t.Fatalf("assignment %v accepted", bad)
		}
	}
	stored, err := h.st.Assignment()
	if err != nil || stored.GetVersion() != "v1" {
		t.Fatalf("stored assignment %v (err %v), want v1 kept", stored.GetVersion(), err)
	}
	time.Sleep(100 * time.Millisecond)
	if h.ap.commitOf("web") != sha1 {
		t.Fatalf("web moved to %s after a refused assignment", h.ap.commitOf("web"))
	}
}

func TestOneBrokenApplicationFailsAlone(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	broken := app("broken", sha1)
	broken.RepoUrl = "https://unreachable.test/r"
	a := &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{broken, app("web", sha1)}}
	if err := h.rec.SetAssignment(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	rep := h.rec.PendingStatus(true)
	got := map[string]*droverv1.ApplicationStatus{}
	for _, s := range rep.GetApplications() {
		got[s.GetApplication()] = s
	}
	if s := got["broken"]; s.GetSync() != droverv1.SyncState_SYNC_STATE_FAILED || !strings.Contains(s.GetMessage(), "connection refused") {
		t.Fatalf("broken = %v, want Failed naming the cause", s)
	}
	if s := got["web"]; s.GetHealth() != droverv1.Health_HEALTH_HEALTHY {
		t.Fatalf("web = %v, want Healthy", s)
	}
}

func TestRemovedApplicationIsPruned(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1), app("old", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v2", Nonce: "n2", Applications: []*droverv1.AppAssignment{app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v2")
	h.ap.mu.Lock()
	defer h.ap.mu.Unlock()
	if len(h.ap.deleted) != 1 || h.ap.deleted[0] != "old" {
		t.Fatalf("deleted %v, want [old]", h.ap.deleted)
	}
}

// The hub learns of a removal from the report after it: the name is
// listed until a report naming it is handed to the hub, once, and a new
// session does not bring it back.
func TestRemovedApplicationIsReportedOnce(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1), app("old", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	h.rec.StatusSent(h.rec.PendingStatus(false))
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v2", Nonce: "n2", Applications: []*droverv1.AppAssignment{app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	// Acknowledged once old is removed too.
	h.waitAck(t, "v2")
	// Not handed over yet: a new session still has it to send.
	h.rec.ResendStatuses()
	rep := h.rec.PendingStatus(false)
	if got := rep.GetRemoved(); len(got) != 1 || got[0] != "old" {
		t.Fatalf("removed in the report after the removal %v, want [old]", got)
	}
	if len(rep.GetApplications()) != 1 || rep.GetApplications()[0].GetApplication() != "web" {
		t.Fatalf("statuses in the report after the removal %v, want web's only", rep.GetApplications())
	}
	h.rec.StatusSent(rep)
	if again := h.rec.PendingStatus(false); len(again.GetRemoved()) != 0 {
		t.Fatalf("removed again in the next report: %v", again.GetRemoved())
	}
	h.rec.ResendStatuses()
	if again := h.rec.PendingStatus(true); len(again.GetRemoved()) != 0 || !again.GetFull() {
		t.Fatalf("full report of a new session %v, want full and naming no removal", again)
	}
}

// A full report makes the hub forget the statuses it does not list, so
// none is sent while an application is still being removed: that one
// would be forgotten before its prune. The report once the removal is
// done is the full one.
func TestFullReportWaitsForRemoval(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1), app("old", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	h.rec.StatusSent(h.rec.PendingStatus(false))
	h.ap.mu.Lock()
	h.ap.deleteErr = errors.New("delete: connection refused")
	h.ap.mu.Unlock()
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v2", Nonce: "n2", Applications: []*droverv1.AppAssignment{app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.rec.RequestFullStatus()
	for range 3 {
		rep := h.rec.PendingStatus(true)
		if rep.GetFull() || len(rep.GetRemoved()) != 0 {
			t.Fatalf("report while old cannot be pruned %v, want neither full nor naming a removal", rep)
		}
		h.rec.StatusSent(rep)
	}
	h.ap.mu.Lock()
	h.ap.deleteErr = nil
	h.ap.mu.Unlock()
	h.waitAck(t, "v2")
	rep := h.rec.PendingStatus(false)
	if !rep.GetFull() || len(rep.GetRemoved()) != 1 || len(rep.GetApplications()) != 1 {
		t.Fatalf("report once old is removed %v, want full, with web's status and old removed", rep)
	}
}

func TestResumesStoredAssignmentWithoutHub(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, dir, nil)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha2)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	h.close()

	// A restarted agent, no hub: it reconciles from disk and acknowledges
	// nothing (there is no one to tell).
	h2 := newHarness(t, dir, nil)
	if err := h2.rec.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for h2.ap.commitOf("web") != sha2 {
		if time.Now().After(deadline) {
			t.Fatal("the stored assignment was not reconciled after a restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v := h2.rec.AppliedVersion(); v != "v1" {
		t.Fatalf("applied version after restart %q, want v1", v)
	}
	select {
	case v := <-h2.acks:
		t.Fatalf("acknowledged %q with no hub", v)
	default:
	}
}

// An agent stopped while an application that left its assignment was
// still being removed removes it when it resumes, although the stored
// assignment no longer names it; once removed, a later restart has
// nothing left to remove.
func TestResumeFinishesRemovals(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, dir, nil)
	ctx := context.Background()
	if err := h.rec.SetAssignment(ctx, &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1), app("old", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	h.ap.mu.Lock()
	h.ap.deleteErr = errors.New("delete: connection refused")
	h.ap.mu.Unlock()
	if err := h.rec.SetAssignment(ctx, &droverv1.Assignment{Version: "v2", Nonce: "n2", Applications: []*droverv1.AppAssignment{app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.close()

	h2 := newHarness(t, dir, nil)
	if err := h2.rec.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		h2.ap.mu.Lock()
		deleted := slices.Clone(h2.ap.deleted)
		h2.ap.mu.Unlock()
		if slices.Equal(deleted, []string{"old"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a restart the agent removed %v, want [old]: it left old's objects behind", deleted)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := h2.rec.PendingStatus(false).GetRemoved(); !slices.Equal(got, []string{"old"}) {
		t.Fatalf("removed in the report after the restart's removal %v, want [old]", got)
	}
	h2.close()
	if removing, err := h2.st.Removing(); err != nil || len(removing) != 0 {
		t.Fatalf("stored as being removed after the removal: %v (err %v), want nothing", removing, err)
	}
}

func TestStatusSentOnlyOnce(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	rep := h.rec.PendingStatus(false)
	if len(rep.GetApplications()) != 1 {
		t.Fatalf("pending %d statuses, want 1", len(rep.GetApplications()))
	}
	h.rec.StatusSent(rep)
	if again := h.rec.PendingStatus(false); len(again.GetApplications()) != 0 {
		t.Fatalf("status resent: %v", again.GetApplications())
	}
	if full := h.rec.PendingStatus(true); len(full.GetApplications()) != 1 || !full.GetFull() {
		t.Fatalf("full report %v, want every application", full)
	}
}

// A transient apply failure (the API server down) is reported with its
// cause and retried with the retry backoff (10-50 ms here), not at the
// sync interval (5 s for an application of unknown health): the
// application converges once the cause is gone.
func TestTransientApplyFailureIsRetried(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	h.ap.mu.Lock()
	h.ap.failures["web"] = 3
	h.ap.mu.Unlock()
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	if s := h.rec.PendingStatus(true).GetApplications(); len(s) != 1 || !strings.Contains(s[0].GetMessage(), "connection refused") && s[0].GetSync() != droverv1.SyncState_SYNC_STATE_SYNCED {
		t.Fatalf("status after the first attempt %v, want Failed naming the cause (or Synced after the retries)", s)
	}
	deadline := time.Now().Add(4 * time.Second)
	for h.ap.commitOf("web") != sha1 {
		if time.Now().After(deadline) {
			t.Fatalf("web not synced 4 s after 3 transient failures: not retried with the retry backoff")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ResendStatuses, called for a new session with the hub, lists every
// status again in the next report, without making it a full report
// (which would delete the hub's statuses of applications not yet
// reconciled).
func TestResendStatusesListsEveryStatusAgain(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1), app("db", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	first := h.rec.PendingStatus(false)
	if len(first.GetApplications()) != 2 {
		t.Fatalf("first report %v, want both applications", first)
	}
	h.rec.StatusSent(first)
	if again := h.rec.PendingStatus(false); len(again.GetApplications()) != 0 {
		t.Fatalf("report after sending %v, want nothing new", again)
	}
	h.rec.ResendStatuses()
	resent := h.rec.PendingStatus(false)
	if len(resent.GetApplications()) != 2 || resent.GetFull() {
		t.Fatalf("report after ResendStatuses %v, want both applications, not full", resent)
	}
}

// checkouts is a Fetcher whose commits are directories made by the test,
// one per repository.
type checkouts map[string]string

func (c checkouts) Fetch(_ context.Context, aa *droverv1.AppAssignment) (string, func(), error) {
	dir, ok := c[aa.GetRepoUrl()]
	if !ok {
		return "", nil, errors.New("no such repository")
	}
	return dir, func() {}, nil
}

// An application with a manifest over the render's per-file limit fails
// alone, with the real render step: its status names the file and the
// limit, none of it is applied, and the other application of the same
// assignment is.
func TestOversizedManifestFailsAlone(t *testing.T) {
	const limit = 1024
	repos := checkouts{}
	for name, files := range map[string]map[string]string{
		"big": {"small.yaml": configMap("small", 10), "big.yaml": configMap("big", limit+1)},
		"web": {"web.yaml": configMap("web", limit)},
	} {
		dir := t.TempDir()
		for f, content := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		repos[app(name, sha1).GetRepoUrl()] = dir
	}
	h := newHarnessWith(t, t.TempDir(), repos, render.Options{MaxFileBytes: limit}.Render)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("big", sha1), app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	got := map[string]*droverv1.ApplicationStatus{}
	for _, s := range h.rec.Statuses() {
		got[s.GetApplication()] = s
	}
	want := "render big.yaml: 1025 bytes is over the agent's limit of 1 KiB (1024 bytes) per manifest file (--max-manifest-bytes)"
	if s := got["big"]; s.GetSync() != droverv1.SyncState_SYNC_STATE_FAILED || s.GetMessage() != want {
		t.Errorf("big = %v; want Failed with the message %q", s, want)
	}
	if s := got["web"]; s.GetSync() != droverv1.SyncState_SYNC_STATE_SYNCED || h.ap.commitOf("web") != sha1 {
		t.Errorf("web = %v, applied at %q; want it synced at %s", s, h.ap.commitOf("web"), sha1)
	}
	if c := h.ap.commitOf("big"); c != "" {
		t.Errorf("big was applied at %s", c)
	}
}

// configMap is a ConfigMap manifest of exactly n bytes (or its smallest
// size, when larger than n).
func configMap(name string, n int) string {
	head := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: " + name + "\ndata:\n  pad: "
	return head + strings.Repeat("x", max(n-len(head)-1, 1)) + "\n"
}

// Once an application's run has finished, nothing in the reconciler keeps
// the objects it rendered: they are garbage after a collection. (The
// applier here keeps none either; the real one is checked in its own
// tests.)
func TestFinishedRenderIsNotRetained(t *testing.T) {
	var mu sync.Mutex
	var rendered []weak.Pointer[unstructured.Unstructured]
	renderer := func(_ context.Context, _ string, a *droverv1.AppAssignment) ([]*unstructured.Unstructured, error) {
		objs := make([]*unstructured.Unstructured, 100)
		mu.Lock()
		defer mu.Unlock()
		for i := range objs {
			objs[i] = &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "v1", "kind": "ConfigMap",
				"metadata": map[string]any{"name": fmt.Sprintf("%s-%d", a.GetName(), i)},
				"data":     map[string]any{"pad": strings.Repeat("x", 1<<10)},
			}}
			rendered = append(rendered, weak.Make(objs[i]))
		}
		return objs, nil
	}
	h := newHarness(t, t.TempDir(), renderer)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1), app("db", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	// The next runs are minutes away: nothing renders meanwhile.
	runtime.GC()
	mu.Lock()
	defer mu.Unlock()
	if len(rendered) != 200 {
		t.Fatalf("rendered %d objects, want 200", len(rendered))
	}
	live := 0
	for _, w := range rendered {
		if w.Value() != nil {
			live++
		}
	}
	if live > 0 {
		t.Errorf("%d of the 200 rendered objects are still reachable after the runs finished", live)
	}
}

// statusOf returns the current status of app.
func (h *harness) statusOf(t *testing.T, app string) *droverv1.ApplicationStatus {
	t.Helper()
	for _, s := range h.rec.Statuses() {
		if s.GetApplication() == app {
			return s
		}
	}
	t.Fatalf("no status for %s", app)
	return nil
}

// The status after a run is summarised once from the steps' results: a
// failed apply stays Failed with its cause although assess found the
// objects healthy afterwards, a failed prune shows, and every status is
// written once per run.
func TestStatusSummarisesTheSteps(t *testing.T) {
	h := newHarness(t, t.TempDir(), nil)
	h.ap.mu.Lock()
	h.ap.applyErr["bad"] = errors.New("ConfigMap/bad/bad: the API server refused it")
	h.ap.pruneErr["stuck"] = errors.New("prune: Secret/stuck/old: forbidden")
	h.ap.mu.Unlock()
	a := &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("bad", sha1), app("stuck", sha1), app("web", sha1)}}
	if err := h.rec.SetAssignment(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	h.close()

	if s := h.statusOf(t, "bad"); s.GetSync() != droverv1.SyncState_SYNC_STATE_FAILED || s.GetMessage() != "ConfigMap/bad/bad: the API server refused it" ||
		s.GetHealth() != droverv1.Health_HEALTH_HEALTHY || len(s.GetResources()) != 1 {
		t.Errorf("bad = %v; want Failed with the apply's error, and the health and objects assess saw", s)
	}
	if s := h.statusOf(t, "stuck"); s.GetSync() != droverv1.SyncState_SYNC_STATE_FAILED || !strings.Contains(s.GetMessage(), "forbidden") {
		t.Errorf("stuck = %v; want Failed with the prune's error", s)
	}
	if s := h.statusOf(t, "web"); s.GetSync() != droverv1.SyncState_SYNC_STATE_SYNCED || s.GetMessage() != "1 objects in sync with commit "+sha1 {
		t.Errorf("web = %v; want Synced", s)
	}
	if n := len(h.statusCalls); n != 3 {
		t.Errorf("onStatus called %d times for 3 applications run once each, want 3", n)
	}
}

// A render that failed because the API server did not answer discovery is
// retried with the retry backoff (10-50 ms here), not at the sync interval
// (5 min): it converges once the API server answers.
func TestTransientRenderFailureIsRetried(t *testing.T) {
	var mu sync.Mutex
	failures := 3
	renderer := func(context.Context, string, *droverv1.AppAssignment) ([]*unstructured.Unstructured, error) {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return nil, fmt.Errorf("render app.yaml: is Gizmo namespaced: %w", retry.Transient(errors.New("connection refused")))
		}
		return nil, nil
	}
	h := newHarness(t, t.TempDir(), renderer)
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{app("web", sha1)}}); err != nil {
		t.Fatal(err)
	}
	h.waitAck(t, "v1")
	deadline := time.Now().Add(4 * time.Second)
	for h.ap.commitOf("web") != sha1 {
		if time.Now().After(deadline) {
			t.Fatalf("web not synced 4 s after 3 transient render failures: not retried with the retry backoff")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDriftedDuringARunSyncsAgain: a change seen while the application's
// sync runs may have come after the sync read its objects, so another
// sync follows at once rather than at the interval (an hour here).
func TestDriftedDuringARunSyncsAgain(t *testing.T) {
	started := make(chan struct{}, 4)
	release := make(chan struct{})
	var renders sync.WaitGroup
	renders.Add(2)
	var calls int
	var mu sync.Mutex
	render := func(context.Context, string, *droverv1.AppAssignment) ([]*unstructured.Unstructured, error) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 1 {
			started <- struct{}{}
			<-release
		}
		if n <= 2 {
			renders.Done()
		}
		return nil, nil
	}
	h := newHarness(t, t.TempDir(), render)
	a := app("web", sha1)
	a.SyncPolicy.Interval = "1h"
	a.SyncPolicy.SelfHeal = true
	if err := h.rec.SetAssignment(context.Background(), &droverv1.Assignment{Version: "v1", Nonce: "n1", Applications: []*droverv1.AppAssignment{a}}); err != nil {
		t.Fatal(err)
	}
	<-started
	h.rec.Drifted("web")
	h.rec.Drifted("not-assigned") // nothing to sync, no failure
	close(release)
	done := make(chan struct{})
	go func() { renders.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("no second sync after Drifted during the first; the next would wait for the 1h interval")
	}
	if !h.rec.Holds("web") || h.rec.Holds("not-assigned") {
		t.Errorf("Holds(web) = %v, Holds(not-assigned) = %v; want true, false", h.rec.Holds("web"), h.rec.Holds("not-assigned"))
	}
}
