package fleet

import (
	"fmt"
	"log/slog"
	"runtime"
	"syscall"
	"testing"
	"time"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

var (
	benchEnvs    = []string{"prod", "staging", "dev"}
	benchRegions = []string{"eu-west", "eu-central", "us-east", "us-west", "ap-south"}
)

func benchLabels(i int) map[string]string {
	return map[string]string{
		"env":                           benchEnvs[i%3],
		"topology.kubernetes.io/region": benchRegions[(i/3)%5],
		"tier":                          []string{"edge", "core"}[(i/15)%2],
		"team":                          fmt.Sprintf("team-%d", i%7),
		"example.com/customer":          fmt.Sprintf("cust-%d", i%97),
	}
}

// benchApp is a realistic application: a selector (one of four shapes),
// two region/env overrides with a patch, Helm values and variables, a sync
// policy and, for some, credentials.
func benchApp(i int, commit string) *App {
	var sel *droverv1.LabelSelector
	switch i % 4 {
	case 0:
		sel = &droverv1.LabelSelector{}
	case 1:
		sel = matchLabels("env", "prod")
	case 2:
		sel = &droverv1.LabelSelector{MatchExpressions: []*droverv1.LabelSelectorRequirement{
			{Key: "topology.kubernetes.io/region", Operator: "In", Values: []string{"eu-west", "eu-central"}},
		}}
	case 3:
		sel = &droverv1.LabelSelector{MatchExpressions: []*droverv1.LabelSelectorRequirement{
			{Key: "env", Operator: "NotIn", Values: []string{"dev"}},
		}}
	}
	name := fmt.Sprintf("app-%02d", i)
	a := &App{
		Name:   name,
		Commit: commit,
		Spec: &droverv1.ApplicationSpec{
			Source:     &droverv1.Source{RepoUrl: "https://git.example.com/platform/" + name + ".git", Ref: "main", Path: "deploy/" + name},
			Render:     &droverv1.Render{Type: "kustomize", Namespace: name},
			Placement:  &droverv1.Placement{Selector: sel},
			SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "5m"},
			Overrides: []*droverv1.Override{
				{
					Selector: matchLabels("topology.kubernetes.io/region", "eu-west"),
					Patches: []*droverv1.KustomizePatch{{
						Patch:  "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: " + name + "\nspec:\n  replicas: 3\n",
						Target: &droverv1.PatchTarget{Kind: "Deployment", Name: name},
					}},
					Variables: map[string]string{"domain": "eu.example.com"},
				},
				{
					Selector:   matchLabels("env", "prod"),
					HelmValues: "resources:\n  requests:\n    cpu: 500m\n",
					Variables:  map[string]string{"log_level": "warn"},
				},
			},
		},
	}
	if i%5 == 0 {
		a.Credentials = &droverv1.RepoCredentials{Username: "bot", Password: "ghp_0123456789abcdef0123456789abcdef0123"}
	}
	return a
}

func benchFleet(b *testing.B, clusters, apps int) *Fleet {
	b.Helper()
	f := New(slog.New(slog.DiscardHandler))
	for i := range apps {
		if err := f.SetApp(benchApp(i, sha(fmt.Sprint("release", i)))); err != nil {
			b.Fatal(err)
		}
	}
	for i := range clusters {
		if err := f.SetCluster(fmt.Sprintf("cluster-%05d", i), benchLabels(i)); err != nil {
			b.Fatal(err)
		}
	}
	return f
}

// cpuTime is the process's user+system CPU time. The benchmarks report it
// per operation beside ns/op because the build machine is shared: wall time
// grows with everyone else's load, CPU time much less.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

func reportHeap(b *testing.B) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
}

// BenchmarkSetAppTenThousandClusters changes one application in a fleet of
// 10,000 clusters and 50 applications (about 30 placed on each cluster,
// 300,000 placements). The changed application is placed everywhere, or in
// the selector case moves between a third of the clusters and another
// third.
func BenchmarkSetAppTenThousandClusters(b *testing.B) {
	f := benchFleet(b, 10_000, 50)
	commits := []string{sha("a"), sha("b")}

	b.Run("new-commit-on-every-cluster", func(b *testing.B) {
		defer reportHeap(b)
		b.ReportAllocs()
		start := cpuTime(b)
		for i := 0; b.Loop(); i++ {
			if err := f.SetApp(benchApp(0, commits[i%2])); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, start)
	})
	b.Run("selector-moves-prod-to-staging", func(b *testing.B) {
		b.ReportAllocs()
		start := cpuTime(b)
		for i := 0; b.Loop(); i++ {
			a := benchApp(1, commits[0])
			a.Spec.Placement.Selector = matchLabels("env", benchEnvs[i%2])
			if err := f.SetApp(a); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, start)
	})
	b.Run("ref-change-recomputes-all-changes-none", func(b *testing.B) {
		b.ReportAllocs()
		refs := []string{"main", "release"}
		start := cpuTime(b)
		for i := 0; b.Loop(); i++ {
			a := benchApp(0, commits[0])
			a.Spec.Source.Ref = refs[i%2]
			if err := f.SetApp(a); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, start)
	})
	b.Run("identical-app-again", func(b *testing.B) {
		b.ReportAllocs()
		a := benchApp(0, commits[0])
		if err := f.SetApp(a); err != nil {
			b.Fatal(err)
		}
		start := cpuTime(b)
		for b.Loop() {
			if err := f.SetApp(a); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, start)
	})
}

// BenchmarkSetCommitTenThousandClusters releases a new commit of an
// application placed on all 10,000 clusters.
func BenchmarkSetCommitTenThousandClusters(b *testing.B) {
	f := benchFleet(b, 10_000, 50)
	commits := []string{sha("a"), sha("b")}
	b.ReportAllocs()
	start := cpuTime(b)
	for i := 0; b.Loop(); i++ {
		if err := f.SetCommit("app-00", commits[i%2]); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start)
}

// BenchmarkSetClusterFiftyApps relabels one cluster in and out of a region
// in the 10,000-cluster fleet.
func BenchmarkSetClusterFiftyApps(b *testing.B) {
	f := benchFleet(b, 10_000, 50)
	l1, l2 := benchLabels(0), benchLabels(0)
	l2["topology.kubernetes.io/region"] = "us-east"
	b.ReportAllocs()
	start := cpuTime(b)
	for i := 0; b.Loop(); i++ {
		l := l1
		if i%2 == 1 {
			l = l2
		}
		if err := f.SetCluster("cluster-00000", l); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start)
}

// BenchmarkCompute computes one cluster's assignment from 50 applications
// from scratch, selectors included.
func BenchmarkCompute(b *testing.B) {
	var apps []*App
	for i := range 50 {
		apps = append(apps, benchApp(i, sha(fmt.Sprint(i))))
	}
	c := Cluster{Name: "cluster-00000", Labels: benchLabels(0)}
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		Compute(c, apps)
	}
	reportCPU(b, start)
}
