package rollout

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/drover-dev/drover/hub/spec"
)

// benchFleet is n clusters: 1% canaries, 40% in the EU, the rest in the US,
// with a few more labels each, as a real fleet would have.
func benchFleet(n int) []Cluster {
	clusters := make([]Cluster, n)
	for i := range clusters {
		l := map[string]string{
			"region": "us", "env": "prod", "tier": fmt.Sprint(i % 3),
			"provider": []string{"aws", "gcp", "azure", "metal"}[i%4],
		}
		switch {
		case i%100 == 0:
			l["ring"] = "canary"
		case i%5 < 2:
			l["region"] = "eu"
		}
		// Names out of order, as a store might return them.
		clusters[i] = Cluster{Name: fmt.Sprintf("cluster-%05d", (i*7919)%n), Labels: l}
	}
	return clusters
}

func BenchmarkPlan10000(b *testing.B) {
	s := mustParse(b, issueStrategy)
	clusters := benchFleet(10000)
	b.ReportAllocs()
	for b.Loop() {
		if waves := Plan(s, clusters); len(waves) != 3 {
			b.Fatalf("%d waves", len(waves))
		}
	}
}

// BenchmarkStep10000 measures one Step of a rollout over 10,000 clusters in
// 3 waves, mid-way through europe (975 clusters updating at once), where
// every cluster has a status and 100 of them just reported healthy.
func BenchmarkStep10000(b *testing.B) {
	strategy := mustParse(b, issueStrategy)
	strategy.Waves[0].MaxParallel = spec.Percent(100)
	clusters := benchFleet(10000)
	m := released(b, strategy, clusters...)
	m.release("y")
	var canaries []string
	for name, c := range m.s.Clusters {
		if c.Wave == "canary" {
			canaries = append(canaries, name)
		}
	}
	m.succeed(canaries...)
	m.tick(10 * time.Minute)
	m.step()
	m.control(OpPromote)
	m.step()
	if m.s.Phase != PhaseRunning {
		b.Fatalf("phase %s", m.s.Phase)
	}
	m.tick(time.Minute)
	var updating []string
	for _, name := range slices.Sorted(maps.Keys(m.s.Clusters)) {
		switch c := m.s.Clusters[name]; c.Phase {
		case ClusterPending:
			m.reportAt(name, m.s.Good, synced, healthy, m.now)
		case ClusterUpdating:
			updating = append(updating, name)
			m.reportAt(name, m.s.Release, synced, progress, m.now)
		default:
			m.reportAt(name, m.s.Release, synced, healthy, m.now)
		}
	}
	if len(updating) < 900 {
		b.Fatalf("%d clusters updating", len(updating))
	}
	for _, name := range updating[:100] {
		m.report(name, synced, healthy)
	}
	s, obs, now := m.s, m.obs, m.now
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		next, actions := Step(s, obs, now)
		if len(actions) != 100 || next.Phase != PhaseRunning {
			b.Fatalf("%d actions, phase %s", len(actions), next.Phase)
		}
	}
}
