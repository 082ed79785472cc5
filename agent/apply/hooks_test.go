package apply

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// hookJob renders a Job annotated as a Helm hook. The test bed's kwok
// completes a Job's pod once it runs; a failing one has pods that never
// start (testbed.NeverReadyLabel) and a one-second deadline, which the
// Job controller turns into a Failed condition.
func hookJob(t testing.TB, ns, name, events, weight, policy string, fail bool) *unstructured.Unstructured {
	annotations := fmt.Sprintf("helm.sh/hook: %q", events)
	if weight != "" {
		annotations += fmt.Sprintf(", helm.sh/hook-weight: %q", weight)
	}
	if policy != "" {
		annotations += fmt.Sprintf(", helm.sh/hook-delete-policy: %q", policy)
	}
	deadline, podLabels := "", "{hook: "+name+"}"
	if fail {
		deadline = "activeDeadlineSeconds: 1"
		podLabels = fmt.Sprintf("{hook: %s, %q: \"true\"}", name, testbed.NeverReadyLabel)
	}
	return mustObject(t, fmt.Sprintf(`
apiVersion: batch/v1
kind: Job
metadata:
  name: %s
  namespace: %s
  annotations: {%s}
spec:
  backoffLimit: 0
  %s
  template:
    metadata: {labels: %s}
    spec:
      restartPolicy: Never
      containers: [{name: hook, image: registry.example/hook:1}]
`, name, ns, annotations, deadline, podLabels))
}

// tracer records the requests an Applier sends, in order, with the body
// of what each GET answered.
type tracer struct {
	mu   sync.Mutex // guards reqs
	reqs []traced
}

type traced struct {
	method, path string
	body         []byte
}

func (tr *tracer) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := next.RoundTrip(r)
		if err != nil {
			return resp, err
		}
		var body []byte
		if r.Method == http.MethodGet && resp.StatusCode == http.StatusOK {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return nil, err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
		}
		tr.mu.Lock()
		tr.reqs = append(tr.reqs, traced{method: r.Method, path: r.URL.Path, body: body})
		tr.mu.Unlock()
		return resp, nil
	})
}

func (tr *tracer) reset() []traced {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	reqs := tr.reqs
	tr.reqs = nil
	return reqs
}

// first returns the index of the first request that matches, -1 if none.
func first(reqs []traced, match func(traced) bool) int {
	for i, r := range reqs {
		if match(r) {
			return i
		}
	}
	return -1
}

func patchOf(path string) func(traced) bool {
	return func(r traced) bool { return r.method == http.MethodPatch && r.path == path }
}

// jobComplete matches a read of the Job at path that answered it Complete.
func jobComplete(path string) func(traced) bool {
	return func(r traced) bool {
		if r.method != http.MethodGet || r.path != path {
			return false
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(r.body); err != nil {
			return false
		}
		done, failure := hookOutcome(u)
		return done && failure == nil
	}
}

// healthyRead matches a read (Get or List) of the Deployment name that
// answered it healthy.
func healthyRead(collection, name string) func(traced) bool {
	return func(r traced) bool {
		if r.method != http.MethodGet || !strings.HasPrefix(r.path, collection) {
			return false
		}
		// Through the unstructured decoder: kstatus wants int64 numbers.
		list := &unstructured.UnstructuredList{}
		if err := list.UnmarshalJSON(r.body); err != nil {
			return false
		}
		for i := range list.Items {
			if u := &list.Items[i]; u.GetName() == name {
				h, _ := objectHealth(u)
				return h == droverv1.Health_HEALTH_HEALTHY
			}
		}
		return false
	}
}

func newTracedApplier(t *testing.T, c *testbed.Cluster, opts Options) (*Applier, *tracer) {
	t.Helper()
	tr := &tracer{}
	cfg := rest.CopyConfig(c.Config)
	cfg.Wrap(tr.wrap)
	a, err := New(cfg, testlog.New(t), opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a, tr
}

func jobUID(t *testing.T, kube kubernetes.Interface, ns, name string) types.UID {
	t.Helper()
	j, err := kube.BatchV1().Jobs(ns).Get(t.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return ""
	}
	if err != nil {
		t.Fatalf("get Job %s/%s: %v", ns, name, err)
	}
	return j.UID
}

// inventoryJSON returns the stored inventory of app as JSON.
func inventoryJSON(t *testing.T, kube kubernetes.Interface, app string) string {
	t.Helper()
	cm, err := kube.CoreV1().ConfigMaps("drover-system").Get(t.Context(), inventoryName(app), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("inventory of %s: %v", app, err)
	}
	raw, err := decodeInventory(cm)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// TestHooks runs Helm hooks against one real cluster whose controller
// manager runs Jobs to completion (kwok completes their pods).
func TestHooks(t *testing.T) {
	c := testbed.Clusters(t, 1)[0]
	kube := c.Client(t)
	t.Run("parallel", func(t *testing.T) {
		t.Run("install, re-sync, upgrade, restart", func(t *testing.T) {
			t.Parallel()
			testHookLifecycle(t, c, kube)
		})
		t.Run("failing pre-upgrade hook", func(t *testing.T) {
			t.Parallel()
			testHookFails(t, c, kube)
		})
		t.Run("post hooks wait for health", func(t *testing.T) {
			t.Parallel()
			testHookUnhealthy(t, c, kube)
		})
		t.Run("a hook in a namespace the render makes", func(t *testing.T) {
			t.Parallel()
			testHookNamespace(t, c, kube)
		})
		t.Run("delete hooks", func(t *testing.T) {
			t.Parallel()
			testHookDelete(t, c, kube)
		})
		t.Run("invalid weight", func(t *testing.T) {
			t.Parallel()
			testHookInvalid(t, c, kube)
		})
	})
}

func testHookLifecycle(t *testing.T, c *testbed.Cluster, kube kubernetes.Interface) {
	const app, ns = "hooked", "hooked"
	createNamespace(t, kube, ns)
	a, tr := newTracedApplier(t, c, Options{})
	release := func(value string) []*unstructured.Unstructured {
		return []*unstructured.Unstructured{
			configMap(t, ns, "web-config", value),
			deployment(t, ns, "web", 1, nil, 0),
			hookJob(t, ns, "pre", "pre-install", "", "", false),
			hookJob(t, ns, "post", "post-install,post-upgrade", "", "", false),
			hookJob(t, ns, "migrate", "pre-upgrade", "5", "", false),
			hookJob(t, ns, "cleanup", "pre-upgrade", "-5", "hook-succeeded", false),
			hookJob(t, ns, "rollback", "pre-rollback,post-rollback,test", "", "", false),
		}
	}
	jobs := "/apis/batch/v1/namespaces/" + ns + "/jobs/"
	configMapPath := "/api/v1/namespaces/" + ns + "/configmaps/web-config"

	// Install: pre-install before any object, post-install once healthy.
	res := mustSync(t, a, app, "c1", release("v1"), Policy{Prune: true})
	reqs := tr.reset()
	preDone, mainApplied := first(reqs, jobComplete(jobs+"pre")), first(reqs, patchOf(configMapPath))
	if preDone < 0 || mainApplied < preDone {
		t.Errorf("pre-install hook seen complete at request %d, the ConfigMap applied at %d: want the hook complete first", preDone, mainApplied)
	}
	postApplied := first(reqs, patchOf(jobs+"post"))
	healthy := first(reqs, healthyRead("/apis/apps/v1/namespaces/"+ns+"/deployments", "web"))
	if postApplied < 0 || healthy < 0 || healthy > postApplied || mainApplied > postApplied {
		t.Errorf("post-install hook applied at request %d, the Deployment first read healthy at %d, the ConfigMap applied at %d: want the hook after both", postApplied, healthy, mainApplied)
	}
	for _, name := range []string{"migrate", "cleanup", "rollback"} {
		if uid := jobUID(t, kube, ns, name); uid != "" {
			t.Errorf("Job %s exists after the install: only pre-install and post-install hooks run then", name)
		}
	}
	// Hooks are no objects of the application.
	if len(res.Resources) != 2 || res.Health != droverv1.Health_HEALTH_HEALTHY {
		t.Errorf("after the install: health %s, resources %s; want the ConfigMap and the Deployment, Healthy", res.Health, describe(res))
	}
	if inv := inventoryJSON(t, kube, app); strings.Contains(inv, `"Job"`) {
		t.Errorf("the inventory lists a hook: %s", inv)
	}
	pre, post := jobUID(t, kube, ns, "pre"), jobUID(t, kube, ns, "post")

	// A re-sync of the release runs no hook, also from a restarted agent.
	mustSync(t, a, app, "c1", release("v1"), Policy{Prune: true})
	restarted, tr2 := newTracedApplier(t, c, Options{})
	mustSync(t, restarted, app, "c1", release("v1"), Policy{Prune: true})
	for _, r := range append(tr.reset(), tr2.reset()...) {
		if strings.HasPrefix(r.path, jobs) && r.method != http.MethodGet {
			t.Errorf("a re-sync of the same commit sent %s %s", r.method, r.path)
		}
	}

	// Upgrade: the pre-upgrade hooks by weight, the post-upgrade hook
	// replaced (before-hook-creation), the pre-install hook left alone.
	res = mustSync(t, restarted, app, "c2", release("v2"), Policy{Prune: true})
	reqs = tr2.reset()
	cleanup, migrate := first(reqs, patchOf(jobs+"cleanup")), first(reqs, patchOf(jobs+"migrate"))
	mainApplied = first(reqs, patchOf(configMapPath))
	if cleanup < 0 || migrate < cleanup || mainApplied < migrate {
		t.Errorf("cleanup (weight -5) applied at request %d, migrate (weight 5) at %d, the ConfigMap at %d: want them in that order", cleanup, migrate, mainApplied)
	}
	if uid := jobUID(t, kube, ns, "cleanup"); uid != "" {
		t.Error("the hook-succeeded hook cleanup exists after it succeeded")
	}
	if jobUID(t, kube, ns, "migrate") == "" {
		t.Error("the pre-upgrade hook migrate does not exist after the upgrade: it has no delete policy that removes it")
	}
	if got := jobUID(t, kube, ns, "post"); got == "" || got == post {
		t.Errorf("post-upgrade hook post: uid %q, was %q: want a new instance (before-hook-creation)", got, post)
	}
	if got := jobUID(t, kube, ns, "pre"); got != pre {
		t.Errorf("pre-install hook pre: uid %q, was %q: an upgrade must not run it", got, pre)
	}
	if uid := jobUID(t, kube, ns, "rollback"); uid != "" {
		t.Error("the rollback and test hook ran")
	}
	if len(res.Resources) != 2 {
		t.Errorf("after the upgrade: resources %s, want the ConfigMap and the Deployment", describe(res))
	}

	// A rollback to the first commit is one more upgrade: its upgrade
	// hooks run, its rollback hooks do not.
	migrated := jobUID(t, kube, ns, "migrate")
	mustSync(t, restarted, app, "c1", release("v1"), Policy{Prune: true})
	if got := jobUID(t, kube, ns, "migrate"); got == "" || got == migrated {
		t.Errorf("pre-upgrade hook migrate after a rollback: uid %q, was %q: want it run again", got, migrated)
	}
	if jobUID(t, kube, ns, "rollback") != "" || jobUID(t, kube, ns, "pre") != pre {
		t.Error("a rollback ran the rollback hooks, or the pre-install hook")
	}

	// A release without hooks leaves the hooks' objects alone (they are
	// never pruned) and the inventory without a record of them.
	res = mustSync(t, restarted, app, "c3", []*unstructured.Unstructured{configMap(t, ns, "web-config", "v3")}, Policy{Prune: true})
	if res.Pruned != 1 {
		t.Errorf("release without the Deployment: %+v, want 1 pruned", res.Counts)
	}
	for _, name := range []string{"pre", "post", "migrate"} {
		if jobUID(t, kube, ns, name) == "" {
			t.Errorf("hook Job %s was deleted by a release without hooks", name)
		}
	}
	if inv := inventoryJSON(t, kube, app); strings.Contains(inv, `"hooks"`) {
		t.Errorf("the inventory of a release without hooks records hooks: %s", inv)
	}
}

func testHookFails(t *testing.T, c *testbed.Cluster, kube kubernetes.Interface) {
	const app, ns = "hook-fails", "hook-fails"
	createNamespace(t, kube, ns)
	a, _ := newTracedApplier(t, c, Options{})
	mustSync(t, a, app, "c1", []*unstructured.Unstructured{configMap(t, ns, "settings", "v1")}, Policy{Prune: true})
	if inv := inventoryJSON(t, kube, app); strings.Contains(inv, `"hooks"`) {
		t.Errorf("the inventory of an application without hooks records hooks: %s", inv)
	}

	objs := []*unstructured.Unstructured{
		configMap(t, ns, "settings", "v2"),
		hookJob(t, ns, "migrate", "pre-upgrade", "", "hook-failed", true),
	}
	res, err := a.Sync(t.Context(), app, "c2", objs, Policy{Prune: true})
	const want = "pre-upgrade hook Job/hook-fails/migrate: job failed: DeadlineExceeded"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Sync with a failing pre-upgrade hook: %v, want an error containing %q", err, want)
	}
	if res.Sync != droverv1.SyncState_SYNC_STATE_FAILED || !strings.Contains(res.Message, want) {
		t.Errorf("result %s %q, want Failed naming the hook", res.Sync, res.Message)
	}
	cm, err := kube.CoreV1().ConfigMaps(ns).Get(t.Context(), "settings", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["value"] != "v1" {
		t.Errorf("ConfigMap value %q after the failed hook, want v1: nothing is applied", cm.Data["value"])
	}
	if uid := jobUID(t, kube, ns, "migrate"); uid != "" {
		t.Error("the hook-failed hook migrate exists after it failed")
	}

	// A hook that completed does not run again when the apply after it
	// failed and the release is retried.
	var prepared types.UID
	objs = []*unstructured.Unstructured{
		configMap(t, ns, "settings", "v3"),
		mustObject(t, `{apiVersion: v1, kind: ConfigMap, metadata: {name: refused, namespace: hook-fails}, data: {"not a key": x}}`),
		hookJob(t, ns, "prepare", "pre-upgrade", "", "", false),
	}
	for i := range 2 {
		_, err := a.Sync(t.Context(), app, "c3", objs, Policy{Prune: true})
		if err == nil || !strings.Contains(err.Error(), "ConfigMap/hook-fails/refused") {
			t.Fatalf("Sync %d of a release with a refused object: %v, want an error naming it", i+1, err)
		}
		if i == 0 {
			prepared = jobUID(t, kube, ns, "prepare")
			continue
		}
		if got := jobUID(t, kube, ns, "prepare"); got == "" || got != prepared {
			t.Errorf("hook prepare: uid %q, was %q: a retry of the release ran it again", got, prepared)
		}
	}
}

func testHookUnhealthy(t *testing.T, c *testbed.Cluster, kube kubernetes.Interface) {
	const app, ns = "hook-waits", "hook-waits"
	createNamespace(t, kube, ns)
	// The timeout is what this test waits for: a Deployment that never
	// turns healthy keeps the post-install hook from running.
	a, _ := newTracedApplier(t, c, Options{HookTimeout: 3 * time.Second})
	objs := []*unstructured.Unstructured{
		deployment(t, ns, "stuck", 1, map[string]string{testbed.NeverReadyLabel: "true"}, 0),
		hookJob(t, ns, "post", "post-install", "", "", false),
	}
	res, err := a.Sync(t.Context(), app, "c1", objs, Policy{Prune: true})
	const want = "post-install hooks not run: the objects are not healthy"
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "Deployment/hook-waits/stuck") {
		t.Fatalf("Sync with an unhealthy Deployment: %v, want an error containing %q naming the Deployment", err, want)
	}
	if res.Sync != droverv1.SyncState_SYNC_STATE_FAILED {
		t.Errorf("result %s, want Failed", res.Sync)
	}
	if uid := jobUID(t, kube, ns, "post"); uid != "" {
		t.Error("the post-install hook ran although the Deployment is not healthy")
	}
}

func testHookInvalid(t *testing.T, c *testbed.Cluster, kube kubernetes.Interface) {
	const app, ns = "hook-invalid", "hook-invalid"
	createNamespace(t, kube, ns)
	a, _ := newTracedApplier(t, c, Options{})
	objs := []*unstructured.Unstructured{
		configMap(t, ns, "settings", "v1"),
		hookJob(t, ns, "pre", "pre-install", "first", "", false),
	}
	_, err := a.Sync(t.Context(), app, "c1", objs, Policy{Prune: true})
	const want = `Job/hook-invalid/pre: annotation helm.sh/hook-weight: "first" is not an integer`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Sync: %v, want an error containing %q", err, want)
	}
	if _, err := kube.CoreV1().ConfigMaps(ns).Get(t.Context(), "settings", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ConfigMap after an invalid hook: %v, want NotFound", err)
	}
	if _, err := kube.CoreV1().ConfigMaps("drover-system").Get(t.Context(), inventoryName(app), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("inventory after an invalid hook: %v, want NotFound", err)
	}

	// A hook never takes over an object Drover did not create.
	taken := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "taken", Namespace: ns}, Data: map[string]string{"value": "by hand"}}
	taken, err = kube.CoreV1().ConfigMaps(ns).Create(t.Context(), taken, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hook := configMap(t, ns, "taken", "by the hook")
	hook.SetAnnotations(map[string]string{AnnotationHook: HookPreInstall})
	_, err = a.Sync(t.Context(), app, "c1", []*unstructured.Unstructured{configMap(t, ns, "settings", "v1"), hook}, Policy{Prune: true})
	const wantTaken = "pre-install hook ConfigMap/hook-invalid/taken: an object of that name exists that Drover did not create"
	if err == nil || !strings.Contains(err.Error(), wantTaken) {
		t.Fatalf("Sync with a hook named as an object Drover did not create: %v, want an error containing %q", err, wantTaken)
	}
	live, err := kube.CoreV1().ConfigMaps(ns).Get(t.Context(), "taken", metav1.GetOptions{})
	if err != nil || live.Data["value"] != "by hand" || live.UID != taken.UID {
		t.Errorf("the object Drover did not create after the hook: %v %v, want it untouched", live, err)
	}
	if _, err := kube.CoreV1().ConfigMaps(ns).Get(t.Context(), "settings", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ConfigMap after a refused hook: %v, want NotFound", err)
	}
}

func TestSplitHooks(t *testing.T) {
	s := &session{log: slog.New(slog.DiscardHandler)}
	obj := func(name, kind string, annotations map[string]string) *desiredObject {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("v1")
		u.SetKind(kind)
		u.SetNamespace("ns")
		u.SetName(name)
		u.SetAnnotations(annotations)
		return &desiredObject{ref: refOf(u), obj: u}
	}
	ds := []*desiredObject{
		obj("plain", "ConfigMap", nil),
		obj("b", "ConfigMap", map[string]string{AnnotationHook: "pre-install, Post-Upgrade", AnnotationHookWeight: "1"}),
		obj("a", "ConfigMap", map[string]string{AnnotationHook: "pre-install", AnnotationHookWeight: " 1 "}),
		obj("heavy", "ConfigMap", map[string]string{AnnotationHook: "pre-install", AnnotationHookWeight: "-3", AnnotationHookDeletePolicy: "hook-succeeded,hook-failed"}),
		obj("old", "ConfigMap", map[string]string{AnnotationHook: "crd-install"}),
	}
	sortDesired(ds)
	objs, hooks, err := s.splitHooks(ds)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].ref.Name != "plain" {
		t.Errorf("objects %v, want only plain", objs)
	}
	var got []string
	for _, h := range hooks {
		got = append(got, fmt.Sprintf("%s %d %v %v", h.d.ref.Name, h.weight, slices.Sorted(maps.Keys(h.events)), slices.Sorted(maps.Keys(h.policies))))
	}
	want := []string{
		"heavy -3 [pre-install] [hook-failed hook-succeeded]",
		"old 0 [] [before-hook-creation]",
		"a 1 [pre-install] [before-hook-creation]",
		"b 1 [post-upgrade pre-install] [before-hook-creation]",
	}
	if !slices.Equal(got, want) {
		t.Errorf("hooks\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var pre []string
	for _, h := range hooksFor(hooks, HookPreInstall) {
		pre = append(pre, h.d.ref.Name)
	}
	if !slices.Equal(pre, []string{"heavy", "a", "b"}) {
		t.Errorf("pre-install hooks %v, want [heavy a b]", pre)
	}
}

func TestHookOutcome(t *testing.T) {
	tests := []struct {
		name, doc string
		done      bool
		failure   string
	}{
		{"job running", `{apiVersion: batch/v1, kind: Job, metadata: {name: j}, status: {startTime: "2026-01-01T00:00:00Z", active: 1}}`, false, ""},
		{"job complete", `{apiVersion: batch/v1, kind: Job, metadata: {name: j}, status: {conditions: [{type: Complete, status: "True"}]}}`, true, ""},
		{"job failed", `{apiVersion: batch/v1, kind: Job, metadata: {name: j}, status: {conditions: [{type: Failed, status: "True", reason: BackoffLimitExceeded, message: "Job has reached the specified backoff limit"}]}}`, true, "job failed: BackoffLimitExceeded: Job has reached the specified backoff limit"},
		{"pod running", `{apiVersion: v1, kind: Pod, metadata: {name: p}, status: {phase: Running}}`, false, ""},
		{"pod succeeded", `{apiVersion: v1, kind: Pod, metadata: {name: p}, status: {phase: Succeeded}}`, true, ""},
		{"pod failed", `{apiVersion: v1, kind: Pod, metadata: {name: p}, status: {phase: Failed, message: "OOMKilled"}}`, true, "pod failed: OOMKilled"},
		{"config map", `{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}`, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done, failure := hookOutcome(mustObject(t, tt.doc))
			msg := ""
			if failure != nil {
				msg = failure.Error()
			}
			if done != tt.done || msg != tt.failure {
				t.Errorf("hookOutcome = %v, %q; want %v, %q", done, msg, tt.done, tt.failure)
			}
		})
	}
}

func testHookNamespace(t *testing.T, c *testbed.Cluster, kube kubernetes.Interface) {
	const app, ns = "hook-ns", "hook-made"
	a, tr := newTracedApplier(t, c, Options{})
	objs := []*unstructured.Unstructured{
		namespace(t, ns),
		configMap(t, ns, "settings", "v1"),
		hookJob(t, ns, "init", "pre-install", "", "", false),
	}
	mustSync(t, a, app, "c1", objs, Policy{Prune: true})
	reqs := tr.reset()
	jobs := "/apis/batch/v1/namespaces/" + ns + "/jobs/"
	made, hook := first(reqs, patchOf("/api/v1/namespaces/"+ns)), first(reqs, jobComplete(jobs+"init"))
	applied := first(reqs, patchOf("/api/v1/namespaces/"+ns+"/configmaps/settings"))
	if made < 0 || hook < made || applied < hook {
		t.Errorf("Namespace applied at request %d, pre-install hook seen complete at %d, ConfigMap applied at %d: want that order", made, hook, applied)
	}
}

func testHookDelete(t *testing.T, c *testbed.Cluster, kube kubernetes.Interface) {
	const app, ns = "hook-delete", "hook-delete"
	createNamespace(t, kube, ns)
	a, tr := newTracedApplier(t, c, Options{})
	objs := []*unstructured.Unstructured{
		configMap(t, ns, "settings", "v1"),
		hookJob(t, ns, "backup", "pre-delete", "", "", false),
		hookJob(t, ns, "farewell", "post-delete", "", "", false),
	}
	mustSync(t, a, app, "c1", objs, Policy{Prune: true})
	for _, name := range []string{"backup", "farewell"} {
		if jobUID(t, kube, ns, name) != "" {
			t.Errorf("delete hook %s ran on install", name)
		}
	}
	// An application without delete hooks is deleted without a render.
	mustSync(t, a, "hook-delete-plain", "c1", []*unstructured.Unstructured{configMap(t, ns, "plain", "v1")}, Policy{Prune: true})
	err := a.DeleteRelease(t.Context(), "hook-delete-plain", func(context.Context) ([]*unstructured.Unstructured, error) {
		t.Error("DeleteRelease rendered an application without delete hooks")
		return nil, nil
	})
	if err != nil {
		t.Fatalf("DeleteRelease without hooks: %v", err)
	}

	tr.reset()
	rendered := 0
	err = a.DeleteRelease(t.Context(), app, func(context.Context) ([]*unstructured.Unstructured, error) {
		rendered++
		return objs, nil
	})
	if err != nil {
		t.Fatalf("DeleteRelease: %v", err)
	}
	reqs := tr.reset()
	jobs := "/apis/batch/v1/namespaces/" + ns + "/jobs/"
	deleted := first(reqs, func(r traced) bool {
		return r.method == http.MethodDelete && r.path == "/api/v1/namespaces/"+ns+"/configmaps/settings"
	})
	backup, farewell := first(reqs, jobComplete(jobs+"backup")), first(reqs, patchOf(jobs+"farewell"))
	if rendered != 1 || backup < 0 || deleted < backup || farewell < deleted {
		t.Errorf("rendered %d times; pre-delete hook seen complete at request %d, the ConfigMap deleted at %d, the post-delete hook applied at %d: want one render and that order", rendered, backup, deleted, farewell)
	}
	if jobUID(t, kube, ns, "backup") == "" || jobUID(t, kube, ns, "farewell") == "" {
		t.Error("a delete hook without a delete policy is gone after the delete: it stays, as with Helm")
	}
	if _, err := kube.CoreV1().ConfigMaps("drover-system").Get(t.Context(), inventoryName(app), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("inventory after DeleteRelease: %v, want NotFound", err)
	}
}
