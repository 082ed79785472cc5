package watch

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"
	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/agent/apply"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
)

func TestMain(m *testing.M) { testbed.Main(m) }

func entry(manager string, op metav1.ManagedFieldsOperationType, sub string, at int64, fields string) metav1.ManagedFieldsEntry {
	t := metav1.Unix(at, 0)
	return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, Subresource: sub, Time: &t, FieldsType: "FieldsV1",
		FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}}
}

const (
	droverFields = `{"f:metadata":{"f:labels":{"f:drover.dev/application":{}}},"f:spec":{"f:replicas":{}}}`
	takenFields  = `{"f:metadata":{"f:labels":{"f:drover.dev/application":{}}}}`
)

func object(generation int64, rv string, managed ...metav1.ManagedFieldsEntry) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
		Name: "x", Namespace: "ns", UID: "u1", ResourceVersion: rv, Generation: generation,
		Labels:        map[string]string{apply.LabelApplication: "web"},
		Annotations:   map[string]string{apply.AnnotationContentHash: "h1"},
		ManagedFields: managed,
	}}
}

// TestChanged: what an update must change to count as possible drift.
// Status updates and controllers' metadata on objects with a generation
// must not, or every rollout would make a sync.
func TestChanged(t *testing.T) {
	drover := entry(apply.FieldManager, metav1.ManagedFieldsOperationApply, "", 100, droverFields)
	droverLater := entry(apply.FieldManager, metav1.ManagedFieldsOperationApply, "", 200, droverFields)
	status1 := entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, "status", 100, `{"f:status":{"f:replicas":{}}}`)
	status2 := entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, "status", 150, `{"f:status":{"f:readyReplicas":{}}}`)
	revision := entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, "", 150, `{"f:metadata":{"f:annotations":{"f:deployment.kubernetes.io/revision":{}}}}`)
	edit := entry("kubectl-edit", metav1.ManagedFieldsOperationUpdate, "", 150, `{"f:data":{"f:greeting":{}}}`)
	edit2 := entry("kubectl-edit", metav1.ManagedFieldsOperationUpdate, "", 160, `{"f:data":{"f:greeting":{}}}`)
	taken := entry(apply.FieldManager, metav1.ManagedFieldsOperationApply, "", 100, takenFields)
	taker := entry("kubectl-edit", metav1.ManagedFieldsOperationUpdate, "", 150, `{"f:data":{"f:greeting":{}}}`)
	scaled := entry("kubectl", metav1.ManagedFieldsOperationUpdate, "scale", 150, `{"f:spec":{"f:replicas":{}}}`)
	sameSecond := entry("kubectl-edit", metav1.ManagedFieldsOperationUpdate, "", 200, `{"f:data":{"f:greeting":{}}}`)
	byHand := entry("kubectl-label", metav1.ManagedFieldsOperationUpdate, "", 150, `{"f:metadata":{"f:labels":{}}}`)

	relabelled := object(2, "12", drover, byHand)
	relabelled.Labels[apply.LabelApplication] = "other"
	rehashed := object(2, "12", drover, byHand)
	rehashed.Annotations[apply.AnnotationContentHash] = "h2"
	reapplied := object(2, "12", droverLater)
	reapplied.Annotations[apply.AnnotationContentHash] = "h2"
	recreated := object(1, "12", drover)
	recreated.UID = "u2"

	for _, tt := range []struct {
		name     string
		old, new *metav1.PartialObjectMetadata
		want     bool
	}{
		{"status update", object(2, "10", drover, status1), object(2, "11", drover, status2), false},
		{"controller's annotation on an object with a generation", object(2, "10", drover), object(2, "11", drover, revision), false},
		{"spec changed (kubectl set image)", object(2, "10", drover), object(3, "11", drover, edit), true},
		{"kubectl scale, through the scale subresource", object(2, "10", drover), object(3, "11", drover, scaled), true},
		{"Drover's own apply of a new spec", object(2, "10", drover), object(3, "11", droverLater), false},
		{"Drover's own apply of a new content hash", object(2, "10", drover), reapplied, false},
		{"another writer in the same second as Drover", object(0, "10", drover), object(0, "11", droverLater, sameSecond), true},
		{"a field Drover applied taken over", object(2, "10", drover), object(2, "11", taken, taker), true},
		{"Drover's own apply of the same fields", object(0, "10", drover), object(0, "11", droverLater), false},
		{"data edited by hand (no generation)", object(0, "10", drover), object(0, "11", drover, edit), true},
		{"edited again by the same hand", object(0, "10", drover, edit), object(0, "11", drover, edit2), true},
		{"status update (no generation)", object(0, "10", drover, status1), object(0, "11", drover, status2), false},
		{"application label changed", object(2, "10", drover), relabelled, true},
		{"content hash changed", object(2, "10", drover), rehashed, true},
		{"deleted and made again", object(1, "10", drover), recreated, true},
		{"nothing", object(2, "10", drover), object(2, "10", drover), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, _ := trim(tt.old)
			n, _ := trim(tt.new)
			if got := changed(o.(*metav1.PartialObjectMetadata), n.(*metav1.PartialObjectMetadata)); got != tt.want {
				t.Errorf("changed = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestDebounce: a burst of changes to an application's objects makes one
// sync.
func TestDebounce(t *testing.T) {
	fired := make(chan string, 10)
	w := New(Config{Quiet: 300 * time.Millisecond, MaxDelay: 2 * time.Second}, nil, nil,
		func(string) bool { return true }, func(app string) { fired <- app }, testlog.New(t))
	defer w.Close()
	cm := corev1.SchemeGroupVersion.WithKind("ConfigMap").GroupKind()
	w.owners[key(cm, "ns", "a")] = "web"
	w.owners[key(cm, "ns", "b")] = "web"
	for range 5 {
		w.changedObject(cm, "ns", "a")
		w.changedObject(cm, "ns", "b")
	}
	w.changedObject(cm, "ns", "not-held")
	if app := <-fired; app != "web" {
		t.Fatalf("synced %q, want web", app)
	}
	// Past the longest the burst could have been spread over.
	time.Sleep(3 * time.Second)
	if n := len(fired); n != 0 {
		t.Errorf("%d more syncs after one burst, want none", n)
	}
}

// TestWatchesAppliedObjects runs the Watcher on a real API server, on
// objects apply.Applier applied: changes by another writer and deletions
// ask for a sync of their application, status updates and the agent's own
// no-op resync do not, and releasing the application stops its watches.
func TestWatchesAppliedObjects(t *testing.T) {
	c := testbed.Clusters(t, 1)[0]
	log := testlog.New(t)
	ap, err := apply.New(c.Config, log, apply.Options{})
	if err != nil {
		t.Fatal(err)
	}
	objs := manifests(t, `apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {greeting: hello}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx:1.27.0}]
`)
	policy := apply.Policy{Prune: true, SelfHeal: true}
	resync := func() *apply.Result {
		t.Helper()
		res, err := ap.Sync(t.Context(), "shop", "c1", objs, policy)
		if err != nil {
			t.Fatalf("Sync: %v", err)
		}
		return res
	}
	res := resync()

	var mu sync.Mutex // guards the field below
	syncs := 0
	asked := make(chan struct{}, 100)
	meta, err := metadata.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	w := New(Config{Quiet: 200 * time.Millisecond, MaxDelay: time.Second}, meta, ap,
		func(app string) bool { return app == "shop" },
		func(app string) {
			mu.Lock()
			syncs++
			mu.Unlock()
			asked <- struct{}{}
		}, log)
	defer w.Close()
	w.Hold("shop", res.Objects())
	if got := w.Kinds(); len(got) != 3 {
		t.Fatalf("watching %v, want Namespace, ConfigMap and Deployment", got)
	}
	waitFor(t, "the watches to list", w.HasSynced)

	kube := c.Client(t)
	// The Deployment's pods become ready (kwok): status updates only.
	waitFor(t, "the Deployment available", func() bool {
		d, err := kube.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
		return err == nil && d.Status.AvailableReplicas == 1
	})
	quiet := func(what string) {
		t.Helper()
		time.Sleep(2 * time.Second) // past MaxDelay: a sync would have been asked for
		mu.Lock()
		defer mu.Unlock()
		if syncs != 0 {
			t.Fatalf("%s: %d syncs asked for, want none", what, syncs)
		}
	}
	quiet("status updates")
	if r := resync(); r.Applied != 0 {
		t.Fatalf("resync applied %d objects, want none", r.Applied)
	}
	quiet("a no-op resync")

	heal := func(what string, change func(ctx context.Context) error) {
		t.Helper()
		if err := change(t.Context()); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		select {
		case <-asked:
		case <-time.After(time.Minute):
			t.Fatalf("%s: no sync asked for", what)
		}
		if r := resync(); r.Drifted == 0 {
			t.Fatalf("%s: the sync asked for found no drift", what)
		}
		// The heal's own writes may ask for one more sync, which finds
		// nothing, writes nothing and so asks for none.
		time.Sleep(2 * time.Second)
		for len(asked) > 0 {
			<-asked
			if r := resync(); r.Applied != 0 || r.Drifted != 0 {
				t.Fatalf("%s: the sync after the heal applied %d and found %d drifted, want none", what, r.Applied, r.Drifted)
			}
			time.Sleep(2 * time.Second)
		}
		mu.Lock()
		syncs = 0
		mu.Unlock()
	}
	heal("ConfigMap data edited", func(ctx context.Context) error {
		_, err := kube.CoreV1().ConfigMaps("shop").Patch(ctx, "settings", types.MergePatchType, []byte(`{"data":{"greeting":"changed by hand"}}`), metav1.PatchOptions{FieldManager: "kubectl-edit"})
		return err
	})
	heal("Deployment scaled", func(ctx context.Context) error {
		_, err := kube.AppsV1().Deployments("shop").Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{FieldManager: "kubectl"})
		return err
	})
	heal("ConfigMap deleted", func(ctx context.Context) error {
		return kube.CoreV1().ConfigMaps("shop").Delete(ctx, "settings", metav1.DeleteOptions{})
	})

	w.Release("shop")
	if got := w.Kinds(); len(got) != 0 {
		t.Fatalf("after Release, watching %v, want nothing", got)
	}
	if _, err := kube.CoreV1().ConfigMaps("shop").Patch(t.Context(), "settings", types.MergePatchType, []byte(`{"data":{"greeting":"again"}}`), metav1.PatchOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	quiet("a change after Release")
}

func manifests(t *testing.T, docs string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, doc := range splitDocs(docs) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func splitDocs(s string) []string {
	var out []string
	for _, d := range strings.Split(s, "\n---\n") {
		if strings.TrimSpace(d) != "" {
			out = append(out, d)
		}
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 2m for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTrimTwice: the informer may trim an object it holds again, which
// must not change it, or that would look like a change.
func TestTrimTwice(t *testing.T) {
	o := object(2, "10", entry(apply.FieldManager, metav1.ManagedFieldsOperationApply, "", 100, droverFields))
	once, _ := trim(o)
	twice, _ := trim(once)
	if changed(once.(*metav1.PartialObjectMetadata), twice.(*metav1.PartialObjectMetadata)) {
		t.Errorf("trimmed again: %v, was %v", twice, once)
	}
}

// TestBackoff: syncs that keep following each other are spaced ever
// further apart, up to MaxBackoff; a change after a quiet spell starts
// over.
func TestBackoff(t *testing.T) {
	w := New(Config{}, nil, nil, func(string) bool { return true }, func(string) {}, testlog.New(t))
	now := time.Now()
	for _, tt := range []struct {
		name      string
		sinceLast time.Duration // 0: never synced
		streak    int
		want      time.Duration
		continues bool
	}{
		{"first change", 0, 0, time.Second, false},
		{"after a quiet spell", time.Minute, 7, time.Second, false},
		{"a heal's own writes", 100 * time.Millisecond, 0, time.Second, true},
		{"a third sync in a row", 100 * time.Millisecond, 1, time.Second, true},
		{"a fourth", 100 * time.Millisecond, 2, 2 * time.Second, true},
		{"a seventh", 100 * time.Millisecond, 5, 16 * time.Second, true},
		{"many", 100 * time.Millisecond, 40, time.Minute, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			delete(w.last, "web")
			if tt.sinceLast > 0 {
				w.last["web"] = now.Add(-tt.sinceLast)
			}
			w.streak["web"] = tt.streak
			if wait, continues := w.delayLocked("web", now); wait != tt.want || continues != tt.continues {
				t.Errorf("delay = %v, continues %v; want %v, %v", wait, continues, tt.want, tt.continues)
			}
		})
	}
}
