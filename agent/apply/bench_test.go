package apply

import (
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/cli-utils/pkg/kstatus/polling/clusterreader"
	"github.com/fluxcd/cli-utils/pkg/kstatus/polling/engine"
	"github.com/fluxcd/pkg/ssa"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
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

// render202 is an application of 202 objects, the reference workload of
// Drover's apply: a Namespace, 60 Deployments, 60 Services and 81
// ConfigMaps.
func render202(b *testing.B, ns string) []*unstructured.Unstructured {
	objs := []*unstructured.Unstructured{namespace(b, ns)}
	for i := range 60 {
		objs = append(objs, deployment(b, ns, fmt.Sprintf("app-%02d", i), 1, nil, 0), service(b, ns, fmt.Sprintf("app-%02d", i), 80))
	}
	for i := range 81 {
		objs = append(objs, configMap(b, ns, fmt.Sprintf("config-%02d", i), fmt.Sprintf("value %d", i)))
	}
	return objs
}

// benchReps is how many times BenchmarkApplyVsFlux measures each figure
// per iteration; it reports the medians.
const benchReps = 5

// BenchmarkApplyVsFlux measures, on one test-bed cluster, the first apply
// of 202 objects into an empty namespace by Drover with its default
// options and client rate limits, the no-op resync of the same render,
// and the same objects applied by Flux's engine as Flux's
// kustomize-controller uses it: ssa's ApplyAllStaged, 4 concurrent
// dry-runs (its --concurrent-ssa default), client QPS 100 and burst 200,
// the same wait interval as Drover's.
//
// The no-op resync is timed once the cluster has finished reacting to
// the two applies (every Deployment available), as the periodic resync
// an interval later finds it; drover-noop-after-apply-ms is the same
// resync straight after Drover's first apply, while the cluster's
// controllers still create ReplicaSets and Pods for 120 new Deployments
// on the same cores.
//
// Each iteration repeats all this benchReps times, alternating which
// engine goes first, each into a namespace of its own deleted (and gone)
// before the next repetition, and reports the medians:
// drover-first-apply-ms, drover-noop-resync-ms, flux-first-apply-ms, the
// API requests of Drover's two, and the ratios ratio-drover-flux
// (Drover's first apply over Flux's) and ratio-noop-first (the no-op
// resync over the first apply).
func BenchmarkApplyVsFlux(b *testing.B) {
	c := testbed.Clusters(b, 1)[0]
	kube := c.Client(b)
	ctx := b.Context()

	var requests atomic.Int64
	cfg := rest.CopyConfig(c.Config)
	// The agent's own limits, not the test bed's.
	cfg.QPS, cfg.Burst = DefaultQPS, DefaultBurst
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, n: &requests} })
	a, err := New(cfg, testlog.New(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	flux := newFluxManager(b, c.Config)
	fluxOpts := ssa.DefaultApplyOptions()
	fluxOpts.WaitInterval = 500 * time.Millisecond

	policy := Policy{Prune: true, SelfHeal: true}
	droverApply := func(ns string) (time.Duration, int64) {
		objs := render202(b, ns)
		requests.Store(0)
		start := time.Now()
		res, err := a.Sync(ctx, ns, "c1", objs, policy)
		took := time.Since(start)
		if err != nil || res.Applied != len(objs) {
			b.Fatalf("Drover's first apply: %v, %+v", err, res.Counts)
		}
		return took, requests.Load()
	}
	droverNoop := func(ns string) (time.Duration, int64) {
		objs := render202(b, ns)
		requests.Store(0)
		start := time.Now()
		res, err := a.Sync(ctx, ns, "c1", objs, policy)
		took := time.Since(start)
		if err != nil || res.Skipped != len(objs) || res.Sync != droverv1.SyncState_SYNC_STATE_SYNCED {
			b.Fatalf("Drover's no-op resync: %v, %+v", err, res.Counts)
		}
		return took, requests.Load()
	}
	fluxApply := func(ns string) time.Duration {
		objs := render202(b, ns)
		flux.SetOwnerLabels(objs, ns, "flux-system")
		start := time.Now()
		cs, err := flux.ApplyAllStaged(ctx, objs, fluxOpts)
		took := time.Since(start)
		if err != nil || len(cs.Entries) != len(objs) {
			b.Fatalf("Flux's first apply: %v, %d entries", err, len(cs.Entries))
		}
		return took
	}
	cleanUp := func(droverNS, fluxNS string) {
		if err := a.Delete(ctx, droverNS); err != nil {
			b.Fatal(err)
		}
		if err := kube.CoreV1().Namespaces().Delete(ctx, fluxNS, metav1.DeleteOptions{}); err != nil {
			b.Fatal(err)
		}
		waitNamespacesGone(b, kube, droverNS, fluxNS)
	}

	// Discovery, and the first use of each kind, are one-time costs of
	// either engine.
	droverApply("warm-up-drover")
	droverNoop("warm-up-drover")
	fluxApply("warm-up-flux")
	cleanUp("warm-up-drover", "warm-up-flux")

	var first, noop, noopAfter, fluxFirst []time.Duration
	var firstReq, noopReq []int64
	var n int
	for b.Loop() {
		for rep := range benchReps {
			n++
			droverNS, fluxNS := fmt.Sprintf("drover-%d", n), fmt.Sprintf("flux-%d", n)
			var f, after, fx time.Duration
			var fr int64
			if rep%2 == 0 {
				f, fr = droverApply(droverNS)
				after, _ = droverNoop(droverNS)
				fx = fluxApply(fluxNS)
			} else {
				fx = fluxApply(fluxNS)
				f, fr = droverApply(droverNS)
				after, _ = droverNoop(droverNS)
			}
			b.StopTimer()
			testbed.WaitDeploymentsAvailable(b, kube, droverNS, fluxNS)
			b.StartTimer()
			o, or := droverNoop(droverNS)
			first, noop, noopAfter, fluxFirst = append(first, f), append(noop, o), append(noopAfter, after), append(fluxFirst, fx)
			firstReq, noopReq = append(firstReq, fr), append(noopReq, or)
			b.StopTimer()
			cleanUp(droverNS, fluxNS)
			b.StartTimer()
		}
	}
	mFirst, mNoop, mFlux := median(first), median(noop), median(fluxFirst)
	b.ReportMetric(ms(mFirst), "drover-first-apply-ms")
	b.ReportMetric(ms(mNoop), "drover-noop-resync-ms")
	b.ReportMetric(ms(median(noopAfter)), "drover-noop-after-apply-ms")
	b.ReportMetric(ms(mFlux), "flux-first-apply-ms")
	b.ReportMetric(float64(median(firstReq)), "drover-first-apply-requests")
	b.ReportMetric(float64(median(noopReq)), "drover-noop-resync-requests")
	b.ReportMetric(float64(mFirst)/float64(mFlux), "ratio-drover-flux")
	b.ReportMetric(float64(mNoop)/float64(mFirst), "ratio-noop-first")
	b.ReportMetric(float64(len(first)), "repetitions")
}

// newFluxManager is Flux's engine on the cluster cfg points at, set up as
// kustomize-controller sets it up.
func newFluxManager(b *testing.B, cfg *rest.Config) *ssa.ResourceManager {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 100, 200
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	mapper, err := apiutil.NewDynamicRESTMapper(cfg, httpClient)
	if err != nil {
		b.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{HTTPClient: httpClient, Mapper: mapper})
	if err != nil {
		b.Fatal(err)
	}
	poller := polling.NewStatusPoller(c, mapper, polling.Options{
		ClusterReaderFactory: engine.ClusterReaderFactoryFunc(clusterreader.NewDirectClusterReader),
	})
	m := ssa.NewResourceManager(c, poller, ssa.Owner{Field: "kustomize-controller", Group: "kustomize.toolkit.fluxcd.io"})
	m.SetConcurrency(4)
	return m
}

// waitNamespacesGone waits until the namespaces are deleted, so that the
// cluster's garbage collection does not run into the next measurement.
func waitNamespacesGone(b *testing.B, kube kubernetes.Interface, namespaces ...string) {
	testbed.Eventually(b, fmt.Sprintf("namespaces %v deleted", namespaces), 3*time.Minute, func() (bool, string) {
		for _, ns := range namespaces {
			_, err := kube.CoreV1().Namespaces().Get(b.Context(), ns, metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				return false, fmt.Sprintf("namespace %s: get: %v", ns, err)
			}
		}
		return true, ""
	})
}

func median[T time.Duration | int64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return d.Seconds() * 1000 }
