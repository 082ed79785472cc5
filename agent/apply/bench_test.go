package apply

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// countingTransport counts the requests sent to the API server.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

// render200 is an application of 200 objects: a Namespace, 60 Deployments,
// 60 Services and 79 ConfigMaps.
func render200(b *testing.B, ns string) []*unstructured.Unstructured {
	objs := []*unstructured.Unstructured{namespace(b, ns)}
	for i := range 60 {
		objs = append(objs, deployment(b, ns, fmt.Sprintf("app-%02d", i), 1, nil, 0), service(b, ns, fmt.Sprintf("app-%02d", i), 80))
	}
	for i := range 79 {
		objs = append(objs, configMap(b, ns, fmt.Sprintf("config-%02d", i), fmt.Sprintf("value %d", i)))
	}
	return objs
}

// BenchmarkApply200 measures the first apply of 200 objects into an empty
// namespace, and a resync of the same render (nothing changed), which
// Drover answers without sending any object. It reports both times and
// the API requests each made.
func BenchmarkApply200(b *testing.B) {
	c := testbed.Clusters(b, 1)[0]
	var requests atomic.Int64
	cfg := rest.CopyConfig(c.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, n: &requests} })
	a, err := New(cfg, testbed.Logger(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	// The mapper's first discovery is a one-time cost of the agent.
	if _, err := a.Assess(b.Context(), "warm-up"); err != nil {
		b.Fatal(err)
	}

	var first, noop time.Duration
	var firstRequests, noopRequests int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		app := fmt.Sprintf("bench-%d", i)
		objs := render200(b, app)

		requests.Store(0)
		start := time.Now()
		res, err := a.Sync(b.Context(), app, "c1", objs, Policy{Prune: true, SelfHeal: true})
		first += time.Since(start)
		firstRequests += requests.Load()
		if err != nil || res.Applied != 200 {
			b.Fatalf("first apply: %v, %+v", err, res.Counts)
		}

		requests.Store(0)
		start = time.Now()
		res, err = a.Sync(b.Context(), app, "c1", objs, Policy{Prune: true, SelfHeal: true})
		noop += time.Since(start)
		noopRequests += requests.Load()
		if err != nil || res.Skipped != 200 || res.Sync != droverv1.SyncState_SYNC_STATE_SYNCED {
			b.Fatalf("no-op resync: %v, %+v", err, res.Counts)
		}

		b.StopTimer()
		if err := a.Delete(b.Context(), app); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(first.Seconds()*1000/n, "first-apply-ms")
	b.ReportMetric(noop.Seconds()*1000/n, "noop-resync-ms")
	b.ReportMetric(float64(firstRequests)/n, "first-apply-requests")
	b.ReportMetric(float64(noopRequests)/n, "noop-resync-requests")
	b.ReportMetric(100*float64(noop)/float64(first), "noop-%-of-first")
}
