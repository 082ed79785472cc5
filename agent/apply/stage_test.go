package apply

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
)

// isApply tells a server-side apply request, and whether it is a dry-run.
func isApply(r *http.Request) (apply, dryRun bool) {
	apply = r.Method == http.MethodPatch && strings.HasPrefix(r.Header.Get("Content-Type"), "application/apply-patch")
	return apply, apply && r.URL.Query().Has("dryRun")
}

// meeting holds the first want requests that match until all of them are
// in flight together, and says whether they were: with applies one after
// another the first never sees the second arrive.
type meeting struct {
	want  int
	match func(*http.Request) bool

	mu      sync.Mutex // guards the fields below
	arrived int
	alone   bool          // a held request stopped waiting before the others came
	all     chan struct{} // closed when want requests arrived
}

func newMeeting(want int, match func(*http.Request) bool) *meeting {
	return &meeting{want: want, match: match, all: make(chan struct{})}
}

func (m *meeting) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if !m.match(r) {
			return next.RoundTrip(r)
		}
		m.mu.Lock()
		m.arrived++
		n := m.arrived
		if n == m.want {
			close(m.all)
		}
		m.mu.Unlock()
		if n <= m.want {
			// The bound only ends the wait of a build that applies one
			// at a time, which met() then reports.
			select {
			case <-m.all:
			case <-r.Context().Done():
				m.leftAlone()
			case <-time.After(waitTimeout):
				m.leftAlone()
			}
		}
		return next.RoundTrip(r)
	})
}

func (m *meeting) leftAlone() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.alone = true
}

// met says whether the first want requests were all in flight at once.
func (m *meeting) met() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.arrived >= m.want && !m.alone
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// testStageConcurrent: the objects of one stage are applied at once, and
// one the API server refuses fails alone: every other one is applied, and
// the error names the refused one.
func testStageConcurrent(t *testing.T, c *testbed.Cluster, dyn dynamic.Interface) {
	const app, ns = "many", "many"
	meet := newMeeting(2, func(r *http.Request) bool {
		apply, dryRun := isApply(r)
		return apply && !dryRun && strings.Contains(r.URL.Path, "/namespaces/"+ns+"/configmaps/")
	})
	cfg := rest.CopyConfig(c.Config)
	cfg.Wrap(meet.wrap)
	a, err := New(cfg, testlog.New(t), Options{WaitTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}

	// The Service sorts after the ConfigMaps, in the same stage.
	objs := []*unstructured.Unstructured{namespace(t, ns)}
	for i := range 12 {
		objs = append(objs, configMap(t, ns, fmt.Sprintf("settings-%02d", i), "1"))
	}
	bad := service(t, ns, "api", 70000)
	res, err := a.Sync(t.Context(), app, "c1", append(objs, bad), Policy{Prune: true})
	var oe *ObjectError
	if !errors.As(err, &oe) || oe.Object.String() != "Service/many/api" || !apierrors.IsInvalid(err) {
		t.Fatalf("Sync with an invalid Service: %v, want an ObjectError naming Service/many/api, the API server's Invalid", err)
	}
	if rs := resource(t, res, "Service", "api"); !strings.Contains(rs.Message, "70000") {
		t.Errorf("the Service's status says %q, want the API server's words about port 70000", rs.Message)
	}
	for _, o := range objs {
		if gone(t, dyn, o) {
			t.Errorf("%s was not applied: the refused Service kept it out", refOf(o))
		}
	}
	if res.Applied != len(objs) {
		t.Errorf("counts %+v, want %d applied", res.Counts, len(objs))
	}
	if !meet.met() {
		t.Error("no two ConfigMaps were applied at the same time")
	}

	// What was applied is in the inventory as applied: once the Service is
	// fixed, it is the only object sent.
	res = mustSync(t, a, app, "c2", append(objs, service(t, ns, "api", 80)), Policy{Prune: true})
	if res.Applied != 1 || res.Skipped != len(objs) {
		t.Errorf("after fixing the Service: %+v, want 1 applied and %d skipped", res.Counts, len(objs))
	}
}

// testNoDryRunForNew: an object the cluster does not have yet is applied
// with no server-side dry-run before it; one that it has is still
// compared first, and a no-op resync sends nothing.
func testNoDryRunForNew(t *testing.T, c *testbed.Cluster) {
	const app, ns = "fresh", "fresh"
	var mu sync.Mutex // guards the counts below
	var applies, dryRuns int
	cfg := rest.CopyConfig(c.Config)
	cfg.Wrap(func(next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			apply, dryRun := isApply(r)
			mu.Lock()
			switch {
			case dryRun:
				dryRuns++
			case apply:
				applies++
			}
			mu.Unlock()
			return next.RoundTrip(r)
		})
	})
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		a, d := applies, dryRuns
		applies, dryRuns = 0, 0
		return a, d
	}
	a, err := New(cfg, testlog.New(t), Options{WaitTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}

	objs := []*unstructured.Unstructured{
		namespace(t, ns),
		deployment(t, ns, "web", 1, nil, 0),
		service(t, ns, "web", 80),
		configMap(t, ns, "settings", "1"),
	}
	res := mustSync(t, a, app, "c1", objs, Policy{Prune: true})
	if n, d := counts(); res.Applied != 4 || n != 4 || d != 0 {
		t.Errorf("first sync: %+v, %d applies and %d dry-runs; want 4 applied with 4 applies and no dry-run", res.Counts, n, d)
	}

	objs[3] = configMap(t, ns, "settings", "2")
	res = mustSync(t, a, app, "c2", objs, Policy{Prune: true})
	if n, d := counts(); res.Applied != 1 || res.Skipped != 3 || n != 1 || d != 1 {
		t.Errorf("changed ConfigMap: %+v, %d applies and %d dry-runs; want 1 applied, 3 skipped, with 1 dry-run and 1 apply", res.Counts, n, d)
	}

	res = mustSync(t, a, app, "c2", objs, Policy{Prune: true})
	if n, d := counts(); res.Skipped != 4 || n != 0 || d != 0 {
		t.Errorf("no-op resync: %+v, %d applies and %d dry-runs; want 4 skipped and nothing sent", res.Counts, n, d)
	}
}
