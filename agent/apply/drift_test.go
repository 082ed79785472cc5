package apply

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// droverFields is what the API server records for Drover applying
// liveDeployment's spec (two containers, replicas, a label).
const droverFields = `{
  "f:metadata": {"f:labels": {"f:app": {}}},
  "f:spec": {
    "f:replicas": {},
    "f:template": {"f:spec": {"f:containers": {
      "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}, "f:ports": {
        "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}
      }},
      "k:{\"name\":\"log\"}": {".": {}, "f:image": {}, "f:name": {}}
    }}},
    "f:finalizers": {"v:\"a\"": {}}
  }
}`

func liveDeployment(t *testing.T, fields string) *unstructured.Unstructured {
	t.Helper()
	u := mustObject(t, `
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: ns
  labels: {app: web}
  annotations: {deployment.kubernetes.io/revision: "1"}
spec:
  replicas: 2
  template:
    spec:
      containers:
      - name: web
        image: nginx:1
        ports: [{containerPort: 80, protocol: TCP}]
      - name: log
        image: busybox:1
  finalizers: [a, b]
status:
  readyReplicas: 2
`)
	if fields != "" {
		u.SetManagedFields([]metav1.ManagedFieldsEntry{
			{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, Subresource: "status",
				FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{"f:readyReplicas":{}}}`)}},
			{Manager: FieldManager, Operation: metav1.ManagedFieldsOperationApply, APIVersion: "apps/v1",
				FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}},
		})
	}
	return u
}

func TestFingerprint(t *testing.T) {
	base := fingerprint(liveDeployment(t, droverFields))
	if base == "" {
		t.Fatal("fingerprint of an object Drover applied is empty")
	}
	tests := []struct {
		name    string
		fields  string // Drover's field set; droverFields when empty
		change  func(u *unstructured.Unstructured)
		drifted bool
	}{
		{name: "unchanged", change: func(*unstructured.Unstructured) {}},
		{name: "status changed", change: func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedField(u.Object, int64(0), "status", "readyReplicas")
		}},
		{name: "annotation of another manager", change: func(u *unstructured.Unstructured) {
			u.SetAnnotations(map[string]string{"deployment.kubernetes.io/revision": "2", "x": "y"})
		}},
		{name: "unowned container added", change: func(u *unstructured.Unstructured) {
			containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
			containers = append(containers, map[string]any{"name": "sidecar", "image": "envoy:1"})
			_ = unstructured.SetNestedSlice(u.Object, containers, "spec", "template", "spec", "containers")
		}},
		{name: "containers reordered", change: func(u *unstructured.Unstructured) {
			containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
			containers[0], containers[1] = containers[1], containers[0]
			_ = unstructured.SetNestedSlice(u.Object, containers, "spec", "template", "spec", "containers")
		}},
		{name: "unowned set member added", change: func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedStringSlice(u.Object, []string{"a", "b", "c"}, "spec", "finalizers")
		}},
		{name: "owned value changed", drifted: true, change: func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedField(u.Object, int64(3), "spec", "replicas")
		}},
		{name: "owned field removed", drifted: true, change: func(u *unstructured.Unstructured) {
			unstructured.RemoveNestedField(u.Object, "spec", "replicas")
		}},
		{name: "owned label changed", drifted: true, change: func(u *unstructured.Unstructured) {
			u.SetLabels(map[string]string{"app": "other"})
		}},
		{name: "keyed item value changed", drifted: true, change: func(u *unstructured.Unstructured) {
			containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
			containers[1].(map[string]any)["image"] = "busybox:2"
			_ = unstructured.SetNestedSlice(u.Object, containers, "spec", "template", "spec", "containers")
		}},
		{name: "keyed item removed", drifted: true, change: func(u *unstructured.Unstructured) {
			containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
			_ = unstructured.SetNestedSlice(u.Object, containers[:1], "spec", "template", "spec", "containers")
		}},
		{name: "nested keyed item changed", drifted: true, change: func(u *unstructured.Unstructured) {
			containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
			containers[0].(map[string]any)["ports"] = []any{map[string]any{"containerPort": int64(8080), "protocol": "TCP"}}
			_ = unstructured.SetNestedSlice(u.Object, containers, "spec", "template", "spec", "containers")
		}},
		{name: "owned set member removed", drifted: true, change: func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedStringSlice(u.Object, []string{"b"}, "spec", "finalizers")
		}},
		{
			name: "ownership taken by another manager, value the same", drifted: true,
			fields: `{"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:template": {"f:spec": {"f:containers": {
			  "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}, "f:ports": {
			    "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}},
			  "k:{\"name\":\"log\"}": {".": {}, "f:image": {}, "f:name": {}}}}}, "f:finalizers": {"v:\"a\"": {}}}}`,
			change: func(*unstructured.Unstructured) {},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields := tt.fields
			if fields == "" {
				fields = droverFields
			}
			u := liveDeployment(t, fields)
			tt.change(u)
			got := fingerprint(u)
			if got == "" {
				t.Fatal("fingerprint is empty")
			}
			if drifted := got != base; drifted != tt.drifted {
				t.Errorf("fingerprint changed = %v, want %v", drifted, tt.drifted)
			}
		})
	}
}

func TestFingerprintWithoutDroverEntry(t *testing.T) {
	if got := fingerprint(liveDeployment(t, "")); got != "" {
		t.Errorf("fingerprint of an object without Drover's managed fields = %q, want empty", got)
	}
}

func TestDriftReason(t *testing.T) {
	live := liveDeployment(t, droverFields)
	live.SetAnnotations(map[string]string{AnnotationContentHash: "h1"})
	applied := entry{Hash: "h1", Live: fingerprint(live)}
	tests := []struct {
		name  string
		entry entry
		live  *unstructured.Unstructured
		want  bool
	}{
		{"in sync", applied, live, false},
		{"missing", applied, nil, true},
		{"never applied", entry{}, live, true},
		{"hash annotation differs", entry{Hash: "h2", Live: applied.Live}, live, true},
		{"fingerprint differs", entry{Hash: "h1", Live: "other"}, live, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reason := driftReason(&tt.entry, tt.live)
			if got := reason != ""; got != tt.want {
				t.Errorf("driftReason = %q, drifted %v, want %v", reason, got, tt.want)
			}
		})
	}
}
