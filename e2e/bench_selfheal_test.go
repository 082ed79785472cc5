package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// BenchmarkSelfHeal measures how long a hand change to what a real
// drover-agent applied lasts: from the change's API call returning to the
// object read back as applied, polled every 20 ms. The application's
// interval is 1h, so only the agent's watches can explain the heal. The
// changes alternate between kubectl scale on a Deployment and an edit of
// a ConfigMap's data, each after the last heal settled (so the agent's
// spacing of syncs that keep following each other does not count). It
// reports p50 and p99 in ms (budget ≤ 5 s).
func BenchmarkSelfHeal(b *testing.B) {
	const heals = 16
	dir := b.TempDir()
	agentBin := buildAgent(b, dir)

	git := testbed.GitServer(b)
	repo := git.CreateRepo(b, "selfheal")
	files := testbed.ExampleAppIn("heal", "nginx:1.27.0")
	files["apps/heal/configmap.yaml"] = settingsConfigMap("heal")
	commit := repo.Commit(b, "an application to heal", files)

	c := testbed.ClustersWithOptions(b, testbed.Options{N: 1})[0]
	kube := c.Client(b)
	hub, api := startBenchHub(b, dir)
	caFile, token := joinBenchHub(b, dir, hub, api, map[string]string{"env": "prod"})
	api.do(b, http.MethodPost, "/api/v1/applications", hourly(repo.URL, "heal", true), nil)
	startBenchAgent(b, agentBin, dir, hub, caFile, token, c)
	testbed.Eventually(b, fmt.Sprintf("heal Synced and Healthy at %.7s on %s", commit, c.Name), 3*time.Minute, func() (bool, string) {
		var resp droverv1.GetApplicationResponse
		if err := api.call(b.Context(), http.MethodGet, "/api/v1/applications/heal", nil, &resp); err != nil {
			return false, err.Error()
		}
		for _, s := range resp.GetStatuses() {
			if s.GetCluster() == c.Name {
				return isSyncedAt(s, commit), fmt.Sprintf("hub says %v", s)
			}
		}
		return false, fmt.Sprintf("statuses %v", resp.GetStatuses())
	})

	changes := []handChange{scaleByHand(kube, "heal"), editByHand(kube, "heal")}
	var took []time.Duration
	for b.Loop() {
		took = took[:0]
		for i := range heals {
			hc := changes[i%len(changes)]
			ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
			if err := hc.change(ctx); err != nil {
				cancel()
				b.Fatal(err)
			}
			start := time.Now()
			for {
				ok, last := hc.healed(ctx)
				if ok {
					break
				}
				if ctx.Err() != nil {
					cancel()
					b.Fatalf("hand change %d not reverted after 5 min: %s", i, last)
				}
				time.Sleep(20 * time.Millisecond)
			}
			took = append(took, time.Since(start))
			cancel()
			// The heal's own follow-up sync, then quiet.
			time.Sleep(10 * time.Second)
		}
	}
	slices.Sort(took)
	p := func(q float64) time.Duration { return took[min(len(took)-1, int(q*float64(len(took))))] }
	b.ReportMetric(ms(p(0.5)), "p50-ms")
	b.ReportMetric(ms(p(0.99)), "p99-ms")
	b.ReportMetric(float64(len(took)), "heals")
}
