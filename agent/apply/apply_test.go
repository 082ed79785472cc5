package apply

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/agent/render"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/retry"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// waitTimeout bounds every wait for the cluster to reach a state; it is a
// safety net for a broken test, not an assertion about speed.
const waitTimeout = 2 * time.Minute

func mustObject(t testing.TB, doc string) *unstructured.Unstructured {
	t.Helper()
	// Through JSON, as a renderer does, so numbers are int64.
	j, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatalf("parse object: %v\n%s", err, doc)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		t.Fatalf("parse object: %v\n%s", err, doc)
	}
	return u
}

func namespace(t testing.TB, name string) *unstructured.Unstructured {
	return mustObject(t, fmt.Sprintf(`
apiVersion: v1
kind: Namespace
metadata: {name: %s}
`, name))
}

func configMap(t testing.TB, ns, name, value string) *unstructured.Unstructured {
	return mustObject(t, fmt.Sprintf(`
apiVersion: v1
kind: ConfigMap
metadata: {name: %s, namespace: %s}
data: {value: %q}
`, name, ns, value))
}

func service(t testing.TB, ns, name string, port int) *unstructured.Unstructured {
	return mustObject(t, fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec:
  selector: {app: %s}
  ports: [{name: http, port: %d, targetPort: 8080}]
`, name, ns, name, port))
}

// deployment renders a Deployment; extra pod labels go on the pod
// template only.
func deployment(t testing.TB, ns, name string, replicas int, podLabels map[string]string, progressDeadlineSeconds int) *unstructured.Unstructured {
	labels := map[string]string{"app": name}
	maps.Copy(labels, podLabels)
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		fmt.Fprintf(&b, "%q: %q, ", k, labels[k])
	}
	deadline := ""
	if progressDeadlineSeconds > 0 {
		deadline = fmt.Sprintf("progressDeadlineSeconds: %d", progressDeadlineSeconds)
	}
	return mustObject(t, fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
  namespace: %[2]s
  labels: {app: %[1]s}
spec:
  replicas: %[3]d
  %[5]s
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {%[4]s}}
    spec:
      containers:
      - name: app
        image: registry.example/app:1
        ports: [{containerPort: 8080}]
`, name, ns, replicas, strings.TrimSuffix(b.String(), ", "), deadline))
}

func newApplier(t testing.TB, c *testbed.Cluster) *Applier {
	t.Helper()
	a, err := New(c.Config, testlog.New(t), Options{WaitTimeout: time.Minute})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func mustSync(t *testing.T, a *Applier, app, commit string, objs []*unstructured.Unstructured, p Policy) *Result {
	t.Helper()
	res, err := a.Sync(t.Context(), app, commit, objs, p)
	if err != nil {
		t.Fatalf("Sync(%s, %s): %v", app, commit, err)
	}
	if res.Sync != droverv1.SyncState_SYNC_STATE_SYNCED {
		t.Fatalf("Sync(%s, %s): state %s (%s), want Synced", app, commit, res.Sync, res.Message)
	}
	return res
}

// waitHealth assesses the application until its health is want.
func waitHealth(t *testing.T, a *Applier, app string, want droverv1.Health) *Result {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		res, err := a.Assess(t.Context(), app)
		if err != nil {
			t.Fatalf("Assess(%s): %v", app, err)
		}
		if res.Health == want {
			return res
		}
		if time.Now().After(deadline) {
			t.Fatalf("Assess(%s): health %s, want %s; resources: %s", app, res.Health, want, describe(res))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitResource assesses the application until one object's health is
// want, and returns that object's status.
func waitResource(t *testing.T, a *Applier, app, kind, name string, want droverv1.Health) *droverv1.ResourceStatus {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		res, err := a.Assess(t.Context(), app)
		if err != nil {
			t.Fatalf("Assess(%s): %v", app, err)
		}
		if rs := resource(t, res, kind, name); rs.Health == want {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("Assess(%s): %s %s is not %s: %s", app, kind, name, want, describe(res))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func describe(res *Result) string {
	var parts []string
	for _, rs := range res.Resources {
		parts = append(parts, fmt.Sprintf("%s/%s/%s %s drifted=%v %q", rs.Kind, rs.Namespace, rs.Name, rs.Health, rs.Drifted, rs.Message))
	}
	return strings.Join(parts, "; ")
}

func resource(t *testing.T, res *Result, kind, name string) *droverv1.ResourceStatus {
	t.Helper()
	for _, rs := range res.Resources {
		if rs.Kind == kind && rs.Name == name {
			return rs
		}
	}
	t.Fatalf("no %s %s in the result: %s", kind, name, describe(res))
	return nil
}

// resourceVersions returns the resourceVersion of every object, read with
// client-go.
func resourceVersions(t *testing.T, dyn dynamic.Interface, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	rvs := map[string]string{}
	for _, o := range objs {
		live := get(t, dyn, o)
		if live == nil {
			t.Fatalf("%s is missing", refOf(o))
		}
		rvs[refOf(o).key()] = live.GetResourceVersion()
	}
	return rvs
}

var resources = map[string]schema.GroupVersionResource{
	"Namespace":  {Version: "v1", Resource: "namespaces"},
	"ConfigMap":  {Version: "v1", Resource: "configmaps"},
	"Service":    {Version: "v1", Resource: "services"},
	"Deployment": {Group: "apps", Version: "v1", Resource: "deployments"},
	"Widget":     {Group: "test.drover.dev", Version: "v1", Resource: "widgets"},
	"Gadget":     {Group: "test.drover.dev", Version: "v1", Resource: "gadgets"},
}

// get reads the live object o names, nil when it does not exist.
func get(t *testing.T, dyn dynamic.Interface, o *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	gvr, ok := resources[o.GetKind()]
	if !ok {
		t.Fatalf("test bug: no resource for kind %s", o.GetKind())
	}
	var ri dynamic.ResourceInterface = dyn.Resource(gvr)
	if o.GetNamespace() != "" {
		ri = dyn.Resource(gvr).Namespace(o.GetNamespace())
	}
	live, err := ri.Get(t.Context(), o.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("get %s: %v", refOf(o), err)
	}
	return live
}

// gone reports whether o does not exist or is being deleted.
func gone(t *testing.T, dyn dynamic.Interface, o *unstructured.Unstructured) bool {
	t.Helper()
	live := get(t, dyn, o)
	return live == nil || live.GetDeletionTimestamp() != nil
}

func scale(t *testing.T, kube kubernetes.Interface, ns, name string, replicas int32) {
	t.Helper()
	// What kubectl scale does: the scale subresource, another manager.
	_, err := kube.AppsV1().Deployments(ns).UpdateScale(t.Context(), name, &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       autoscalingv1.ScaleSpec{Replicas: replicas},
	}, metav1.UpdateOptions{FieldManager: "kubectl"})
	if err != nil {
		t.Fatalf("scale %s/%s: %v", ns, name, err)
	}
}

func replicas(t *testing.T, kube kubernetes.Interface, ns, name string) int32 {
	t.Helper()
	d, err := kube.AppsV1().Deployments(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return *d.Spec.Replicas
}

func assertDrifted(t *testing.T, a *Applier, app string, want ...string) {
	t.Helper()
	drifted, err := a.Detect(t.Context(), app)
	if err != nil {
		t.Fatalf("Detect(%s): %v", app, err)
	}
	var got []string
	for _, r := range drifted {
		got = append(got, r.String())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Detect(%s) = %v, want %v", app, got, want)
	}
}

func createNamespace(t *testing.T, kube kubernetes.Interface, name string) {
	t.Helper()
	_, err := kube.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// TestApply runs against one real cluster shared by its subtests, each
// with its own applications and namespaces.
func TestApply(t *testing.T) {
	c := testbed.Clusters(t, 1)[0]
	kube := c.Client(t)
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("parallel", func(t *testing.T) {
		t.Run("apply, resync, drift, self-heal", func(t *testing.T) {
			t.Parallel()
			testLifecycle(t, newApplier(t, c), kube, dyn)
		})
		t.Run("prune", func(t *testing.T) {
			t.Parallel()
			testPrune(t, newApplier(t, c), kube, dyn)
		})
		t.Run("CRD and its custom resources", func(t *testing.T) {
			t.Parallel()
			testCRD(t, newApplier(t, c), dyn)
		})
		t.Run("unknown kind", func(t *testing.T) {
			t.Parallel()
			testUnknownKind(t, newApplier(t, c), dyn)
		})
		t.Run("rejected object fails alone", func(t *testing.T) {
			t.Parallel()
			testRejected(t, newApplier(t, c), dyn)
		})
		t.Run("objects of another application", func(t *testing.T) {
			t.Parallel()
			testConflict(t, newApplier(t, c), dyn)
		})
		t.Run("immutable field", func(t *testing.T) {
			t.Parallel()
			testImmutable(t, newApplier(t, c), dyn)
		})
		t.Run("never ready", func(t *testing.T) {
			t.Parallel()
			testNeverReady(t, newApplier(t, c))
		})
		t.Run("invalid input", func(t *testing.T) {
			t.Parallel()
			testInvalidInput(t, newApplier(t, c), kube)
		})
		t.Run("delete", func(t *testing.T) {
			t.Parallel()
			testDelete(t, newApplier(t, c), kube, dyn)
		})
		t.Run("a stage applied at once, a refused object fails alone", func(t *testing.T) {
			t.Parallel()
			testStageConcurrent(t, c, dyn)
		})
		t.Run("no dry-run for a new object", func(t *testing.T) {
			t.Parallel()
			testNoDryRunForNew(t, c)
		})
	})
	// Last: it stops the API server the others use.
	t.Run("API server unreachable", func(t *testing.T) {
		testUnreachable(t, c, newApplier(t, c))
	})
}

func testLifecycle(t *testing.T, a *Applier, kube kubernetes.Interface, dyn dynamic.Interface) {
	const app, ns = "shop", "shop"
	objs := []*unstructured.Unstructured{
		deployment(t, ns, "web", 2, nil, 0),
		service(t, ns, "web", 80),
		configMap(t, ns, "web-config", "v1"),
		namespace(t, ns),
	}
	rendered := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		rendered[i] = o.DeepCopy()
	}

	res := mustSync(t, a, app, "c1", objs, Policy{Prune: true})
	if res.Applied != 4 || res.Skipped != 0 {
		t.Errorf("first Sync: %+v, want 4 applied", res.Counts)
	}
	for i := range objs {
		if !equalObjects(objs[i], rendered[i]) {
			t.Errorf("Sync changed the caller's object %s", refOf(objs[i]))
		}
	}
	if got := res.Resources[0]; got.Kind != "Namespace" {
		t.Errorf("first resource is %s %s, want the Namespace (apply order)", got.Kind, got.Name)
	}

	// Drover's label is on the Deployment's metadata, never on its pod
	// template or selector.
	live := get(t, dyn, objs[0])
	if got := live.GetLabels()[LabelApplication]; got != app {
		t.Errorf("Deployment label %s = %q, want %q", LabelApplication, got, app)
	}
	if live.GetAnnotations()[AnnotationContentHash] == "" {
		t.Errorf("Deployment has no %s annotation", AnnotationContentHash)
	}
	podLabels, _, _ := unstructured.NestedStringMap(live.Object, "spec", "template", "metadata", "labels")
	selector, _, _ := unstructured.NestedStringMap(live.Object, "spec", "selector", "matchLabels")
	if !maps.Equal(podLabels, map[string]string{"app": "web"}) || !maps.Equal(selector, map[string]string{"app": "web"}) {
		t.Errorf("pod template labels %v, selector %v: want only app=web", podLabels, selector)
	}

	healthy := waitHealth(t, a, app, droverv1.Health_HEALTH_HEALTHY)
	if healthy.Sync != droverv1.SyncState_SYNC_STATE_SYNCED || healthy.Commit != "c1" || len(healthy.Resources) != 4 {
		t.Errorf("Assess: %s %q commit %q, %d resources; want Synced, c1, 4", healthy.Sync, healthy.Message, healthy.Commit, len(healthy.Resources))
	}

	t.Run("resync of an unchanged render sends nothing", func(t *testing.T) {
		before := resourceVersions(t, dyn, rendered)
		res := mustSync(t, a, app, "c2", rendered, Policy{Prune: true, SelfHeal: true})
		if res.Counts != (Counts{Skipped: 4}) {
			t.Errorf("resync: %+v, want only 4 skipped", res.Counts)
		}
		if after := resourceVersions(t, dyn, rendered); !maps.Equal(before, after) {
			t.Errorf("resync changed resourceVersions: before %v, after %v", before, after)
		}
		if res.Health != droverv1.Health_HEALTH_HEALTHY {
			t.Errorf("resync health %s, want Healthy: %s", res.Health, describe(res))
		}
	})

	t.Run("a write by another manager to a field Drover does not own is not drift", func(t *testing.T) {
		cm, err := kube.CoreV1().ConfigMaps(ns).Get(t.Context(), "web-config", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Annotations["team"] = "payments"
		if _, err := kube.CoreV1().ConfigMaps(ns).Update(t.Context(), cm, metav1.UpdateOptions{FieldManager: "kubectl-annotate"}); err != nil {
			t.Fatal(err)
		}
		assertDrifted(t, a, app)
	})

	t.Run("kubectl scale is drift; without selfHeal it stays", func(t *testing.T) {
		scale(t, kube, ns, "web", 5)
		assertDrifted(t, a, app, "Deployment/shop/web")
		res, err := a.Sync(t.Context(), app, "c2", rendered, Policy{Prune: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sync != droverv1.SyncState_SYNC_STATE_OUT_OF_SYNC || res.Drifted != 1 || res.Applied != 0 {
			t.Errorf("Sync without selfHeal: %s %+v (%s), want OutOfSync, 1 drifted, 0 applied", res.Sync, res.Counts, res.Message)
		}
		if rs := resource(t, res, "Deployment", "web"); !rs.Drifted {
			t.Errorf("Deployment not reported drifted: %s", describe(res))
		}
		if got := replicas(t, kube, ns, "web"); got != 5 {
			t.Errorf("replicas = %d after a Sync without selfHeal, want 5 (left alone)", got)
		}
	})

	t.Run("selfHeal reverts it", func(t *testing.T) {
		res := mustSync(t, a, app, "c2", rendered, Policy{Prune: true, SelfHeal: true})
		if res.Applied != 1 || res.Skipped != 3 || res.Drifted != 1 {
			t.Errorf("self-heal: %+v, want 1 applied, 3 skipped, 1 drifted", res.Counts)
		}
		if rs := resource(t, res, "Deployment", "web"); rs.Drifted {
			t.Errorf("Deployment still reported drifted after self-heal: %s", describe(res))
		}
		if got := replicas(t, kube, ns, "web"); got != 2 {
			t.Errorf("replicas = %d after self-heal, want 2", got)
		}
		assertDrifted(t, a, app)
	})

	t.Run("a value set back by hand is drift until Drover owns it again", func(t *testing.T) {
		scale(t, kube, ns, "web", 3)
		scale(t, kube, ns, "web", 2)
		// The value is Drover's again, but kubectl owns it.
		assertDrifted(t, a, app, "Deployment/shop/web")
		res := mustSync(t, a, app, "c2", rendered, Policy{Prune: true, SelfHeal: true})
		if res.Applied != 1 {
			t.Errorf("self-heal of ownership: %+v, want 1 applied", res.Counts)
		}
		assertDrifted(t, a, app)
		// Drover owns replicas again, so the next scale shows.
		scale(t, kube, ns, "web", 4)
		assertDrifted(t, a, app, "Deployment/shop/web")
		mustSync(t, a, app, "c2", rendered, Policy{Prune: true, SelfHeal: true})
	})

	t.Run("kubectl edit of an applied field is drift", func(t *testing.T) {
		svc, err := kube.CoreV1().Services(ns).Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.Selector = map[string]string{"app": "other"}
		if _, err := kube.CoreV1().Services(ns).Update(t.Context(), svc, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
			t.Fatal(err)
		}
		assertDrifted(t, a, app, "Service/shop/web")
		mustSync(t, a, app, "c2", rendered, Policy{Prune: true, SelfHeal: true})
		svc, err = kube.CoreV1().Services(ns).Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(svc.Spec.Selector, map[string]string{"app": "web"}) {
			t.Errorf("selector after self-heal = %v, want app=web", svc.Spec.Selector)
		}
	})

	t.Run("a deleted object is drift, and selfHeal recreates it", func(t *testing.T) {
		if err := kube.CoreV1().ConfigMaps(ns).Delete(t.Context(), "web-config", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		assertDrifted(t, a, app, "ConfigMap/shop/web-config")
		res := mustSync(t, a, app, "c2", rendered, Policy{Prune: true, SelfHeal: true})
		if res.Applied != 1 || res.Skipped != 3 {
			t.Errorf("recreate: %+v, want 1 applied, 3 skipped", res.Counts)
		}
	})

	t.Run("a changed render is applied", func(t *testing.T) {
		changed := []*unstructured.Unstructured{rendered[0], rendered[1], configMap(t, ns, "web-config", "v2"), rendered[3]}
		res := mustSync(t, a, app, "c3", changed, Policy{Prune: true})
		if res.Applied != 1 || res.Skipped != 3 {
			t.Errorf("changed render: %+v, want 1 applied, 3 skipped", res.Counts)
		}
		live := get(t, dyn, changed[2])
		if v, _, _ := unstructured.NestedString(live.Object, "data", "value"); v != "v2" {
			t.Errorf("ConfigMap value = %q, want v2", v)
		}
		res = mustSync(t, a, app, "c3", changed, Policy{Prune: true})
		if res.Counts != (Counts{Skipped: 4}) {
			t.Errorf("resync after the change: %+v, want 4 skipped", res.Counts)
		}
	})
}

func equalObjects(a, b *unstructured.Unstructured) bool {
	ja, _ := a.MarshalJSON()
	jb, _ := b.MarshalJSON()
	return string(ja) == string(jb)
}

func testPrune(t *testing.T, a *Applier, kube kubernetes.Interface, dyn dynamic.Interface) {
	const app, ns = "prune", "prune"
	createNamespace(t, kube, ns)
	// Someone else's object in the same namespace, never Drover's.
	foreign := configMap(t, ns, "foreign", "x")
	if _, err := kube.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "foreign", Namespace: ns},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a1, a2, a3 := configMap(t, ns, "a1", "1"), configMap(t, ns, "a2", "2"), configMap(t, ns, "a3", "3")
	mustSync(t, a, app, "c1", []*unstructured.Unstructured{a1, a2, a3}, Policy{Prune: true})

	res := mustSync(t, a, app, "c2", []*unstructured.Unstructured{a1, a2}, Policy{})
	if res.Kept != 1 || res.Pruned != 0 {
		t.Errorf("without prune: %+v, want 1 kept", res.Counts)
	}
	if gone(t, dyn, a3) {
		t.Error("a3 was deleted although prune is off")
	}
	assertDrifted(t, a, app)

	// Back in the render, a kept object is the application's again.
	res = mustSync(t, a, app, "c2", []*unstructured.Unstructured{a1, a2, a3}, Policy{})
	if res.Counts != (Counts{Skipped: 3}) {
		t.Errorf("kept object back in the render: %+v, want 3 skipped", res.Counts)
	}
	assessed, err := a.Assess(t.Context(), app)
	if err != nil || len(assessed.Resources) != 3 || assessed.Kept != 0 {
		t.Fatalf("Assess: %v, %d resources, %d kept; want 3 resources, none kept", err, len(assessed.Resources), assessed.Kept)
	}
	// One state, one wording, whether a sync or a drift check found it.
	if want := "3 objects in sync with commit c2"; res.Message != want || assessed.Message != want {
		t.Errorf("in sync after a sync: %q, after a check for drift: %q; want both %q", res.Message, assessed.Message, want)
	}

	res = mustSync(t, a, app, "c2", []*unstructured.Unstructured{a1, a2}, Policy{Prune: true})
	if res.Pruned != 1 || res.Kept != 0 {
		t.Errorf("with prune: %+v, want 1 pruned", res.Counts)
	}
	if !gone(t, dyn, a3) {
		t.Error("a3 still exists after a Sync with prune")
	}

	// An object whose label someone removed is no longer Drover's to
	// delete, even though the inventory names it.
	cm, err := kube.CoreV1().ConfigMaps(ns).Get(t.Context(), "a2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(cm.Labels, LabelApplication)
	if _, err := kube.CoreV1().ConfigMaps(ns).Update(t.Context(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	res = mustSync(t, a, app, "c3", []*unstructured.Unstructured{a1}, Policy{Prune: true})
	if res.Pruned != 0 {
		t.Errorf("unlabelled object: %+v, want 0 pruned", res.Counts)
	}
	if gone(t, dyn, a2) {
		t.Error("a2 was deleted although it no longer carries the application's label")
	}
	if gone(t, dyn, foreign) {
		t.Error("an object Drover never applied was deleted")
	}

	// Pruning everything leaves the foreign object and the namespace
	// Drover did not create.
	mustSync(t, a, app, "c4", nil, Policy{Prune: true})
	if !gone(t, dyn, a1) {
		t.Error("a1 still exists after an empty render with prune")
	}
	if gone(t, dyn, foreign) || gone(t, dyn, namespace(t, ns)) {
		t.Error("pruning an empty render deleted what Drover did not apply")
	}
}

const widgetCRD = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: %[1]ss.test.drover.dev}
spec:
  group: test.drover.dev
  scope: Namespaced
  names: {kind: %[2]s, plural: %[1]ss, singular: %[1]s, listKind: %[2]sList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
`

func testCRD(t *testing.T, a *Applier, dyn dynamic.Interface) {
	const app, ns = "widgets", "widgets"
	widget := mustObject(t, `
apiVersion: test.drover.dev/v1
kind: Widget
metadata: {name: w1, namespace: widgets}
spec: {size: 3}
`)
	objs := []*unstructured.Unstructured{widget, mustObject(t, fmt.Sprintf(widgetCRD, "widget", "Widget")), namespace(t, ns)}
	res := mustSync(t, a, app, "c1", objs, Policy{Prune: true})
	if res.Applied != 3 {
		t.Errorf("CRD, CR and Namespace: %+v, want 3 applied", res.Counts)
	}
	if get(t, dyn, widget) == nil {
		t.Fatal("the Widget was not created")
	}
	waitHealth(t, a, app, droverv1.Health_HEALTH_HEALTHY)

	// A second CRD of a group the mapper knows already, with its CR.
	gadget := mustObject(t, `
apiVersion: test.drover.dev/v1
kind: Gadget
metadata: {name: g1, namespace: widgets}
spec: {size: 1}
`)
	objs = append(objs, mustObject(t, fmt.Sprintf(widgetCRD, "gadget", "Gadget")), gadget)
	res = mustSync(t, a, app, "c2", objs, Policy{Prune: true})
	if res.Applied != 2 || res.Skipped != 3 {
		t.Errorf("second CRD: %+v, want 2 applied, 3 skipped", res.Counts)
	}
	if get(t, dyn, gadget) == nil {
		t.Fatal("the Gadget was not created")
	}
}

func testUnknownKind(t *testing.T, a *Applier, dyn dynamic.Interface) {
	const app, ns = "unknown", "unknown"
	cm := configMap(t, ns, "c", "1")
	objs := []*unstructured.Unstructured{namespace(t, ns), cm, mustObject(t, `
apiVersion: nowhere.drover.dev/v1
kind: Sprocket
metadata: {name: s1, namespace: unknown}
`)}
	res, err := a.Sync(t.Context(), app, "c1", objs, Policy{Prune: true})
	if err == nil {
		t.Fatal("Sync of an unknown kind succeeded")
	}
	var oe *ObjectError
	if !errors.As(err, &oe) || oe.Object.Kind != "Sprocket" || oe.Object.Name != "s1" {
		t.Fatalf("error %v: want an ObjectError naming Sprocket s1", err)
	}
	if retry.IsTransient(err) {
		t.Errorf("an unknown kind is reported retryable: %v", err)
	}
	want := `Sprocket/unknown/s1: no matches for kind "Sprocket" in version "nowhere.drover.dev/v1"`
	if res.Sync != droverv1.SyncState_SYNC_STATE_FAILED || !strings.Contains(res.Message, want) {
		t.Errorf("result %s %q, want Failed with %q", res.Sync, res.Message, want)
	}
	if rs := resource(t, res, "Sprocket", "s1"); !strings.Contains(rs.Message, "no matches for kind") {
		t.Errorf("Sprocket status message %q, want the API's", rs.Message)
	}
	if !gone(t, dyn, cm) {
		t.Error("objects were applied although the render has an unknown kind")
	}

	// The render step asks the same discovery: a kind the API server
	// answered it does not serve is the manifests' fault, and so is YAML
	// that does not parse.
	for name, manifest := range map[string]string{
		"unknown kind": "apiVersion: nowhere.drover.dev/v1\nkind: Sprocket\nmetadata: {name: s1}\n",
		"bad YAML":     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [\n",
	} {
		err := renderThrough(t, a, manifest)
		if err == nil || retry.IsTransient(err) {
			t.Errorf("render of an %s: %v (transient %v), want an error that retrying cannot fix", name, err, retry.IsTransient(err))
		}
	}
}

// renderThrough renders manifest as an application of one file, asking the
// applier's cluster which kinds are namespaced, as the agent does.
func renderThrough(t *testing.T, a *Applier, manifest string) error {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.yaml"), []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := render.Options{IsNamespaced: a.IsNamespaced}.Render(t.Context(), dir, &droverv1.AppAssignment{
		Name: "rendered", Render: droverv1.RenderType_RENDER_TYPE_DIRECTORY, Namespace: "rendered",
	})
	t.Logf("render: %v", err)
	return err
}

// TestRenderDiscoveryFailureIsTransient: a render that cannot learn whether
// a kind is namespaced because no API server answers may pass when tried
// again.
func TestRenderDiscoveryFailureIsTransient(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	a, err := New(&rest.Config{Host: "https://" + closed, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}, testlog.New(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = renderThrough(t, a, "apiVersion: example.drover.dev/v1\nkind: Gizmo\nmetadata: {name: g1}\n")
	if err == nil || !retry.IsTransient(err) {
		t.Errorf("render with no API server: %v, want a transient error", err)
	}
}

func testRejected(t *testing.T, a *Applier, dyn dynamic.Interface) {
	const app, ns = "bad", "bad"
	good := []*unstructured.Unstructured{namespace(t, ns), service(t, ns, "api", 80), configMap(t, ns, "api", "1")}
	mustSync(t, a, app, "c1", good, Policy{Prune: true})

	// The next commit breaks the Service, drops the ConfigMap and adds
	// another.
	extra := configMap(t, ns, "extra", "1")
	bad := []*unstructured.Unstructured{namespace(t, ns), service(t, ns, "api", 70000), extra}
	res, err := a.Sync(t.Context(), app, "c2", bad, Policy{Prune: true})
	if err == nil {
		t.Fatal("Sync of an invalid Service succeeded")
	}
	var oe *ObjectError
	if !errors.As(err, &oe) || oe.Object.String() != "Service/bad/api" {
		t.Fatalf("error %v: want an ObjectError naming Service/bad/api", err)
	}
	if !apierrors.IsInvalid(err) || retry.IsTransient(err) {
		t.Errorf("error %v: want the API server's Invalid error, not retryable", err)
	}
	if res.Sync != droverv1.SyncState_SYNC_STATE_FAILED || !strings.Contains(res.Message, "Service/bad/api") ||
		!strings.Contains(res.Message, "70000") {
		t.Errorf("result %s %q: want Failed, naming the Service and the API server's message", res.Sync, res.Message)
	}
	if gone(t, dyn, good[2]) {
		t.Error("a failed Sync pruned the ConfigMap")
	}
	if !gone(t, dyn, extra) {
		t.Error("an object of the failed stage was created")
	}
	// The inventory lists old and new objects: the new one, not applied,
	// without a hash; the dropped one still there to prune; the commit
	// that last completed.
	inv, err := a.newSession(app).readInventory(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]entry{}
	for _, e := range inv.Entries {
		entries[e.ref().String()] = e
	}
	if e, ok := entries["ConfigMap/bad/extra"]; !ok || e.Hash != "" || e.Live != "" {
		t.Errorf("inventory entry of the new object: %+v (listed %v), want listed without a hash", e, ok)
	}
	if e, ok := entries["ConfigMap/bad/api"]; !ok || !e.Stale {
		t.Errorf("inventory entry of the dropped object: %+v (listed %v), want listed as stale", e, ok)
	}
	if e := entries["Service/bad/api"]; e.Hash == "" || e.Live == "" {
		t.Errorf("inventory entry of the refused Service: %+v, want the last applied one", e)
	}
	if len(entries) != 4 || inv.Commit != "c1" {
		t.Errorf("inventory: %d entries at commit %q, want 4 at c1", len(entries), inv.Commit)
	}

	// Another application on the same cluster is unaffected.
	const other = "good"
	objs := []*unstructured.Unstructured{namespace(t, other), configMap(t, other, "c", "1")}
	mustSync(t, a, other, "c1", objs, Policy{Prune: true})
	res = mustSync(t, a, other, "c1", objs, Policy{Prune: true})
	if res.Skipped != 2 {
		t.Errorf("other application: %+v, want 2 skipped", res.Counts)
	}

	// Once fixed, the application syncs and prunes.
	fixed := []*unstructured.Unstructured{namespace(t, ns), service(t, ns, "api", 81), extra}
	res = mustSync(t, a, app, "c3", fixed, Policy{Prune: true})
	if res.Pruned != 1 || res.Applied != 2 || !gone(t, dyn, good[2]) || gone(t, dyn, extra) {
		t.Errorf("fixed render: %+v, want the Service and the new ConfigMap applied, the old one pruned", res.Counts)
	}
}

func testConflict(t *testing.T, a *Applier, dyn dynamic.Interface) {
	const ns = "shared"
	shared := configMap(t, ns, "settings", "mine")
	mustSync(t, a, "owner", "c1", []*unstructured.Unstructured{namespace(t, ns), shared}, Policy{Prune: true})

	theirs := configMap(t, ns, "settings", "theirs")
	mine := configMap(t, ns, "intruder-own", "x")
	res, err := a.Sync(t.Context(), "intruder", "c1", []*unstructured.Unstructured{mine, theirs}, Policy{Prune: true})
	var conflict *ConflictError
	if !errors.As(err, &conflict) || conflict.Owner != "owner" {
		t.Fatalf("Sync of another application's object: %v, want a ConflictError naming owner", err)
	}
	if res.Sync != droverv1.SyncState_SYNC_STATE_FAILED || !strings.Contains(res.Message, "ConfigMap/shared/settings") {
		t.Errorf("result %s %q, want Failed naming the object", res.Sync, res.Message)
	}
	live := get(t, dyn, shared)
	if v, _, _ := unstructured.NestedString(live.Object, "data", "value"); v != "mine" || live.GetLabels()[LabelApplication] != "owner" {
		t.Errorf("the owner's object changed: value %q, label %q", v, live.GetLabels()[LabelApplication])
	}
	if !gone(t, dyn, mine) {
		t.Error("the intruder's own object was applied although its Sync failed validation")
	}
}

func testNeverReady(t *testing.T, a *Applier) {
	const app, ns = "stuck", "stuck"
	objs := []*unstructured.Unstructured{
		namespace(t, ns),
		deployment(t, ns, "ok", 1, nil, 0),
		deployment(t, ns, "stuck", 1, map[string]string{testbed.NeverReadyLabel: "true"}, 5),
	}
	// Right after the apply, kstatus sees Deployments the controller has
	// not observed yet: InProgress. The stuck one stays so until its
	// progress deadline passes, then turns Failed.
	res := mustSync(t, a, app, "c1", objs, Policy{Prune: true})
	if res.Health != droverv1.Health_HEALTH_PROGRESSING {
		t.Errorf("health right after the apply is %s, want Progressing: %s", res.Health, describe(res))
	}
	if rs := resource(t, res, "Deployment", "stuck"); rs.Health != droverv1.Health_HEALTH_PROGRESSING {
		t.Errorf("stuck Deployment %s, want Progressing", rs.Health)
	}
	waitResource(t, a, app, "Deployment", "ok", droverv1.Health_HEALTH_HEALTHY)
	stuck := waitResource(t, a, app, "Deployment", "stuck", droverv1.Health_HEALTH_DEGRADED)
	if stuck.Message == "" {
		t.Error("the Degraded Deployment has no message")
	}
	waitHealth(t, a, app, droverv1.Health_HEALTH_DEGRADED)
}

func testInvalidInput(t *testing.T, a *Applier, kube kubernetes.Interface) {
	noName := configMap(t, "x", "", "1")
	tests := []struct {
		name string
		app  string
		objs []*unstructured.Unstructured
		want string
	}{
		{"empty application", "", nil, "application name is empty"},
		{"application not a label value", "no spaces", nil, `application name "no spaces"`},
		{"nil object", "input", []*unstructured.Unstructured{nil}, "objs[0]: object is nil"},
		{"no name", "input", []*unstructured.Unstructured{configMap(t, "input", "ok", "1"), noName}, "objs[1]: ConfigMap: metadata.name is empty"},
		{"no kind", "input", []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "metadata": map[string]any{"name": "x"}}}}, "objs[0]: kind is empty"},
		{"duplicate", "input", []*unstructured.Unstructured{configMap(t, "input", "a", "1"), configMap(t, "input", "a", "2")}, "objs[1]: ConfigMap/input/a is also objs[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := a.Sync(t.Context(), tt.app, "c1", tt.objs, Policy{Prune: true})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Sync: %v, want an error containing %q", err, tt.want)
			}
			if res.Sync != droverv1.SyncState_SYNC_STATE_FAILED || retry.IsTransient(err) {
				t.Errorf("result %s, retryable %v: want Failed, not retryable", res.Sync, retry.IsTransient(err))
			}
		})
	}
	if _, err := kube.CoreV1().ConfigMaps("drover-system").Get(t.Context(), inventoryName("input"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("invalid input wrote an inventory: %v", err)
	}
	if _, err := New(nil, testlog.New(t), Options{}); err == nil {
		t.Error("New(nil config) succeeded")
	}
	if _, err := New(&rest.Config{}, testlog.New(t), Options{Concurrency: -1}); err == nil || !strings.Contains(err.Error(), "Options.Concurrency") {
		t.Errorf("New with a negative concurrency: %v, want an error naming Options.Concurrency", err)
	}
}

func testDelete(t *testing.T, a *Applier, kube kubernetes.Interface, dyn dynamic.Interface) {
	const app, ns = "leaving", "leaving"
	objs := []*unstructured.Unstructured{namespace(t, ns), configMap(t, ns, "a", "1"), service(t, ns, "svc", 80)}
	mustSync(t, a, app, "c1", objs, Policy{Prune: true})
	stay := []*unstructured.Unstructured{namespace(t, "staying"), configMap(t, "staying", "a", "1")}
	mustSync(t, a, "staying", "c1", stay, Policy{Prune: true})

	if err := a.Delete(t.Context(), app); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	for _, o := range objs {
		if !gone(t, dyn, o) {
			t.Errorf("%s still exists after Delete", refOf(o))
		}
	}
	if _, err := kube.CoreV1().ConfigMaps("drover-system").Get(t.Context(), inventoryName(app), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("inventory after Delete: %v, want NotFound", err)
	}
	res, err := a.Assess(t.Context(), app)
	if err != nil || res.Health != droverv1.Health_HEALTH_MISSING {
		t.Errorf("Assess after Delete: %v %s, want Missing", err, res.Health)
	}
	if err := a.Delete(t.Context(), app); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	for _, o := range stay {
		if gone(t, dyn, o) {
			t.Errorf("Delete of %s removed %s of another application", app, refOf(o))
		}
	}
	res = mustSync(t, a, "staying", "c1", stay, Policy{Prune: true})
	if res.Skipped != 2 {
		t.Errorf("other application after Delete: %+v, want 2 skipped", res.Counts)
	}
}

func testUnreachable(t *testing.T, c *testbed.Cluster, a *Applier) {
	const app, ns = "offline", "offline"
	objs := []*unstructured.Unstructured{namespace(t, ns), configMap(t, ns, "a", "1")}
	mustSync(t, a, app, "c1", objs, Policy{Prune: true})

	c.StopAPIServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	res, err := a.Sync(ctx, app, "c2", append(objs, configMap(t, ns, "b", "2")), Policy{Prune: true})
	if err == nil {
		t.Fatal("Sync with the API server stopped succeeded")
	}
	if !retry.IsTransient(err) {
		t.Errorf("Sync with the API server stopped: %v, want a retryable error", err)
	}
	if res.Sync != droverv1.SyncState_SYNC_STATE_FAILED {
		t.Errorf("result %s, want Failed", res.Sync)
	}
	if _, err := a.Assess(ctx, app); !retry.IsTransient(err) {
		t.Errorf("Assess with the API server stopped: %v, want a retryable error", err)
	}
	// A kind not yet discovered makes the render ask the stopped server.
	if err := renderThrough(t, a, "apiVersion: example.drover.dev/v1\nkind: Gizmo\nmetadata: {name: g1}\n"); err == nil || !retry.IsTransient(err) {
		t.Errorf("render with the API server stopped: %v, want a transient error", err)
	}
	c.StartAPIServer(t)

	res = mustSync(t, a, app, "c2", append(objs, configMap(t, ns, "b", "2")), Policy{Prune: true})
	if res.Applied != 1 || res.Skipped != 2 {
		t.Errorf("after the API server returned: %+v, want 1 applied, 2 skipped", res.Counts)
	}
}

func testImmutable(t *testing.T, a *Applier, dyn dynamic.Interface) {
	const app, ns = "frozen", "frozen"
	frozen := func(value string, force bool) *unstructured.Unstructured {
		cm := configMap(t, ns, "settings", value)
		cm.Object["immutable"] = true
		if force {
			cm.SetAnnotations(map[string]string{AnnotationForce: ForceEnabled})
		}
		return cm
	}
	mustSync(t, a, app, "c1", []*unstructured.Unstructured{namespace(t, ns), frozen("v1", false)}, Policy{Prune: true})
	before := get(t, dyn, frozen("v1", false))

	// Without force, the API server's refusal is the result.
	_, err := a.Sync(t.Context(), app, "c2", []*unstructured.Unstructured{namespace(t, ns), frozen("v2", false)}, Policy{Prune: true})
	var oe *ObjectError
	if !errors.As(err, &oe) || oe.Object.String() != "ConfigMap/frozen/settings" || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("Sync of a changed immutable ConfigMap: %v, want an ObjectError saying the field is immutable", err)
	}
	if live := get(t, dyn, before); live.GetUID() != before.GetUID() {
		t.Error("the ConfigMap was recreated without force")
	}

	// With the force annotation, Drover recreates it.
	res := mustSync(t, a, app, "c3", []*unstructured.Unstructured{namespace(t, ns), frozen("v2", true)}, Policy{Prune: true})
	if res.Applied != 1 {
		t.Errorf("forced Sync: %+v, want 1 applied", res.Counts)
	}
	live := get(t, dyn, before)
	if v, _, _ := unstructured.NestedString(live.Object, "data", "value"); v != "v2" || live.GetUID() == before.GetUID() {
		t.Errorf("after a forced Sync: value %q, same object %v; want v2 in a new object", v, live.GetUID() == before.GetUID())
	}
}
