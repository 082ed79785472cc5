package daemon

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/drover-dev/drover/e2e/testbed"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// TestCapabilities: Helm's .Capabilities come from the cluster's
// discovery, "group/version" and "group/version/Kind"; a kind the
// cluster starts serving shows once the cache is older than its age, and
// not before.
func TestCapabilities(t *testing.T) {
	c := testbed.Clusters(t, 1)[0]
	caps, err := newCapabilities(c.Config, 0)
	if err != nil {
		t.Fatal(err)
	}
	cached, err := newCapabilities(c.Config, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cached.get(); err != nil {
		t.Fatal(err)
	}
	kv, versions, err := caps.get()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(kv, "v1.") {
		t.Errorf("Kubernetes version %q", kv)
	}
	for _, want := range []string{"v1", "apps/v1", "apps/v1/Deployment", "policy/v1/PodDisruptionBudget"} {
		if !slices.Contains(versions, want) {
			// Fatal: the wait below for a new kind would never end.
			t.Fatalf("API versions lack %q", want)
		}
	}
	if slices.Contains(versions, "example.com/v1/Gadget") {
		t.Fatal("the CRD's kind is served before it exists")
	}

	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "gadgets.example.com"},
		"spec": map[string]any{
			"group": "example.com", "scope": "Namespaced",
			"names": map[string]any{"kind": "Gadget", "plural": "gadgets"},
			"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if _, err := crds.Create(t.Context(), crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { crds.Delete(context.Background(), "gadgets.example.com", metav1.DeleteOptions{}) })
	// Served once established; discovery follows.
	for {
		_, versions, err = caps.get()
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(versions, "example.com/v1/Gadget") {
			break
		}
		select {
		case <-t.Context().Done():
			t.Fatal("the CRD's kind never showed")
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Within its age, the cache is what the renders get.
	if _, versions, _ := cached.get(); slices.Contains(versions, "example.com/v1/Gadget") {
		t.Error("a cache younger than its age discovered again")
	}
}
