package fleet

import (
	"maps"
	"reflect"
	"testing"

	"github.com/drover-dev/drover/internal/testlog"
)

// TestClusterLabels checks that the shared label view follows every change
// of the clusters and is built again only after one.
func TestClusterLabels(t *testing.T) {
	f := New(testlog.New(t))
	type want = map[string]map[string]string
	steps := []struct {
		name   string
		change func()
		want   want
	}{
		{"empty", func() {}, want{}},
		{"add", func() { must(t, f.SetCluster("c1", map[string]string{"env": "prod"})) }, want{"c1": {"env": "prod"}}},
		{"add another", func() { must(t, f.SetCluster("c2", nil)) }, want{"c1": {"env": "prod"}, "c2": {}}},
		{"relabel", func() { must(t, f.SetCluster("c1", map[string]string{"env": "dev"})) }, want{"c1": {"env": "dev"}, "c2": {}}},
		{"invalid change", func() {
			if err := f.SetCluster("c2", map[string]string{"bad key!": "x"}); err == nil {
				t.Fatal("invalid labels accepted")
			}
		}, want{"c1": {"env": "dev"}, "c2": {}}},
		{"remove", func() { f.RemoveCluster("c2") }, want{"c1": {"env": "dev"}}},
	}
	for _, st := range steps {
		st.change()
		got := f.ClusterLabels()
		if !maps.EqualFunc(got, st.want, func(a, b map[string]string) bool { return maps.Equal(a, b) }) {
			t.Fatalf("%s: ClusterLabels() = %v, want %v", st.name, got, st.want)
		}
	}

	// Unchanged clusters (labels set again to the same) keep the view.
	before := f.ClusterLabels()
	must(t, f.SetCluster("c1", map[string]string{"env": "dev"}))
	if reflect.ValueOf(f.ClusterLabels()).UnsafePointer() != reflect.ValueOf(before).UnsafePointer() {
		t.Fatal("the view was rebuilt although no cluster changed")
	}
}
