//go:build linux

package loadtest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/e2e/loadtest"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

const (
	// replicaCount and replicaFleet are BenchmarkReplicas' replicas and
	// agents: 3,000 a replica, unless DROVER_BENCH_AGENTS asks for fewer.
	replicaCount = 3
	replicaFleet = 9000
	// propagationChanges is how many one-cluster changes Propagation makes
	// on each side.
	propagationChanges = 20
)

// BenchmarkReplicas measures three drover-hub replicas (processes joined by
// gossip on one PostgreSQL, testbed.StartReplicas) under one fleet of
// simulated agents spread evenly over them (agent i starts on replica
// i mod 3 and fails over to the next, as drover-agent does). The
// sub-benchmarks run in order on the same replicas and fleet:
//
//	Memory          each replica's RSS over its RSS before the agents came,
//	                per agent it holds (KiB/agent), idle agents
//	Fanout          a new release of an all-at-once application placed on
//	                every agent, made through replica 0: time from the
//	                refresh until each agent received and ACKed it (the
//	                agents ACK at once), p50/p99/max
//	Propagation     a cluster's labels changed through replica 0 so that
//	                an application is placed on it: time until its agent
//	                receives the new assignment, for agents held by replica 1
//	                (the change reaches it by NOTIFY and its Controller
//	                reloads the cluster) and, for comparison, by replica 0
//	                itself; p50/p99 of each and the difference of medians
//	KillRecovery    replica 2 killed with SIGKILL: time until each of its
//	                agents is answered by another replica, p50/p99/max
//	OneReplica      the other replicas stopped: every agent on replica 0, whose
//	                RSS per agent is the one-replica figure to compare with
//	                Memory's
//
// DROVER_BENCH_AGENTS=N runs with N agents instead of 9,000.
func BenchmarkReplicas(b *testing.B) {
	n := replicaFleet
	if os.Getenv("DROVER_BENCH_AGENTS") != "" {
		n = min(benchAgents(b), replicaFleet)
	}
	testbed.RaiseOpenFileLimit(b, uint64(2*n+1024))
	start := time.Now()
	db := testbed.Postgres(b)
	git := testbed.GitServer(b)
	reps := testbed.StartReplicas(b, replicaCount, testbed.HubOptions{
		DatabaseURL: db,
		Hostnames:   []string{"127.0.0.1"},
		Args:        []string{"--log-level", "warn"},
	})
	hub0 := reps.Hubs[0]
	caPEM, err := os.ReadFile(reps.CAFile)
	if err != nil {
		b.Fatal(err)
	}
	var tok droverv1.CreateJoinTokenResponse
	replicaCall(b, hub0, http.MethodPost, "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Reusable: true, Labels: map[string]string{"env": "load"}}, &tok)
	fl, err := loadtest.New(loadtest.Config{
		HubAddrs: strings.Split(reps.AgentAddrs(), ","), ServerName: "127.0.0.1", CAPEM: caPEM, JoinToken: tok.GetToken(),
		NamePrefix: "rep", ConnectRate: connectRate,
	}, testlog.NewAt(b, slog.LevelWarn))
	if err != nil {
		b.Fatalf("load tool: %v", err)
	}
	b.Cleanup(fl.Close)
	if err := fl.Register(context.Background(), n); err != nil {
		b.Fatalf("register %d agents: %v", n, err)
	}
	b.Logf("%d agents registered in %v", n, time.Since(start).Round(time.Millisecond))

	base := make([]int64, replicaCount)
	for i, h := range reps.Hubs {
		base[i] = rssKiB(b, h.Process().Pid())
	}
	idle := loadtest.Behaviour{Heartbeat: 30 * time.Second}
	if err := fl.Connect(context.Background(), n, idle); err != nil {
		b.Fatalf("connect %d agents: %v", n, err)
	}
	agents := fl.Agents()
	awaitAgents(b, agents, "connected and holding their assignment", func(a *loadtest.Agent, st loadtest.State) bool {
		return a.Connected() && len(st.Arrivals) > 0 && st.Answered == st.Arrivals[len(st.Arrivals)-1].Version
	})
	b.Logf("%d agents connected in %v", n, time.Since(start).Round(time.Millisecond))

	// Each figure but Fanout's and Propagation's is taken once: its
	// b.Loop runs once, as each takes seconds.
	b.Run("Memory", func(b *testing.B) {
		for b.Loop() {
			// Idle means settled: let the connection burst's garbage go.
			time.Sleep(10 * time.Second)
			held := heldBy(agents)
			for i, h := range reps.Hubs {
				rss := rssKiB(b, h.Process().Pid())
				per := float64(rss-base[i]) / float64(held[h.AgentAddr])
				b.ReportMetric(per, fmt.Sprintf("hub-%d-KiB/agent", i))
				b.Logf("hub-%d: RSS idle %d KiB, with %d agents %d KiB: %.1f KiB per agent", i, base[i], held[h.AgentAddr], rss, per)
			}
		}
	})

	b.Run("Fanout", func(b *testing.B) {
		repo := replicaApp(b, git, hub0, "fanout", map[string]string{"env": "load"})
		awaitAgents(b, agents, "holding the application", func(a *loadtest.Agent, st loadtest.State) bool {
			last := len(st.Arrivals) - 1
			return last >= 0 && st.Arrivals[last].Applications == 1 && st.Answered == st.Arrivals[last].Version
		})
		var lat []time.Duration
		release := 1
		for b.Loop() {
			release++
			before := arrivalCounts(agents)
			repo.Commit(b, fmt.Sprintf("v%d", release), map[string]string{"app/deploy.yaml": fmt.Sprintf("kind: ConfigMap\nmetadata: {name: v%d}\n", release)})
			// The change is the release: a refresh makes the hub
			// resolve the ref now instead of at its next poll.
			changed := time.Now()
			replicaCall(b, hub0, http.MethodPost, "/api/v1/applications/fanout/refresh", nil, nil)
			awaitAgents(b, agents, "holding and answering the new release", func(a *loadtest.Agent, st loadtest.State) bool {
				return len(st.Arrivals) > before[a.Name()] && st.Answered == st.Arrivals[len(st.Arrivals)-1].Version
			})
			for _, a := range agents {
				lat = append(lat, a.State().Arrivals[before[a.Name()]].At.Sub(changed))
			}
		}
		reportLatencies(b, "", lat)
		b.ReportMetric(float64(len(agents)), "agents")
	})

	b.Run("Propagation", func(b *testing.B) {
		// Settled: Fanout's application is gone from every agent.
		awaitAgents(b, agents, "holding no application", func(a *loadtest.Agent, st loadtest.State) bool {
			last := len(st.Arrivals) - 1
			return last >= 0 && st.Arrivals[last].Applications == 0 && st.Answered == st.Arrivals[last].Version
		})
		replicaApp(b, git, hub0, "prop", map[string]string{"prop": "on"})
		// Made through replica 0 each time, for agents it holds (local)
		// and agents replica 1 holds (remote).
		held := agentsOn(agents)
		// Each change places the application on a cluster that has
		// not got it, or takes it off one that has.
		placed := map[string]bool{}
		var local, remote []time.Duration
		measure := func(on string) (lat []time.Duration) {
			for _, a := range held[on][:min(propagationChanges, len(held[on]))] {
				before := len(a.State().Arrivals)
				req := &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"prop": "on"}}
				if placed[a.Name()] {
					req = &droverv1.UpdateClusterLabelsRequest{Remove: []string{"prop"}}
				}
				placed[a.Name()] = !placed[a.Name()]
				want := 0
				if placed[a.Name()] {
					want = 1
				}
				changed := time.Now()
				replicaCall(b, hub0, http.MethodPatch, "/api/v1/clusters/"+a.Name()+"/labels", req, nil)
				awaitAgents(b, []*loadtest.Agent{a}, "given its new assignment", func(a *loadtest.Agent, st loadtest.State) bool {
					return len(st.Arrivals) > before && st.Arrivals[len(st.Arrivals)-1].Applications == want
				})
				lat = append(lat, a.State().Arrivals[before].At.Sub(changed))
			}
			return lat
		}
		for b.Loop() {
			local = append(local, measure(reps.Hubs[0].AgentAddr)...)
			remote = append(remote, measure(reps.Hubs[1].AgentAddr)...)
		}
		reportLatencies(b, "local-", local)
		reportLatencies(b, "remote-", remote)
		b.ReportMetric(float64(loadtest.Percentile(remote, 0.5)-loadtest.Percentile(local, 0.5))/float64(time.Millisecond), "cost-p50-ms")
	})

	b.Run("KillRecovery", func(b *testing.B) {
		victim := reps.Hubs[2]
		for b.Loop() {
			lost := agentsOn(agents)[victim.AgentAddr]
			killed := time.Now()
			victim.Kill(b)
			awaitAgents(b, lost, "served by another replica", func(a *loadtest.Agent, st loadtest.State) bool {
				return a.Connected() && st.Hub != victim.AgentAddr
			})
			lat := make([]time.Duration, 0, len(lost))
			for _, a := range lost {
				lat = append(lat, a.State().SessionAt.Sub(killed))
			}
			reportLatencies(b, "", lat)
			b.ReportMetric(float64(len(lost)), "agents")
			// Settled before the next figure: agents that took more than one
			// try land, and the survivors' rebalancing sees the new loads.
			time.Sleep(5 * time.Second)
		}
	})

	b.Run("OneReplica", func(b *testing.B) {
		for b.Loop() {
			// Every other replica stopped, however many earlier figures
			// left running.
			for _, h := range reps.Hubs[1:] {
				if p := h.Process(); p != nil && !p.Exited() {
					h.Stop(b)
				}
			}
			awaitAgents(b, agents, "served by replica 0", func(a *loadtest.Agent, st loadtest.State) bool {
				return a.Connected() && st.Hub == reps.Hubs[0].AgentAddr
			})
			time.Sleep(10 * time.Second)
			rss := rssKiB(b, reps.Hubs[0].Process().Pid())
			per := float64(rss-base[0]) / float64(len(agents))
			b.ReportMetric(per, "KiB/agent")
			b.Logf("hub-0 alone: RSS idle %d KiB, with %d agents %d KiB: %.1f KiB per agent", base[0], len(agents), rss, per)
		}
	})
	b.Logf("BenchmarkReplicas took %v", time.Since(start).Round(time.Second))
}

// replicaApp creates, through h, an all-at-once application placed on the
// clusters labels select, from a new repository, and deletes it when b
// ends, so that later figures are taken without it.
func replicaApp(b *testing.B, git *testbed.Git, h *testbed.HubProcess, name string, labels map[string]string) *testbed.Repo {
	b.Helper()
	repo := git.CreateRepo(b, name)
	repo.Commit(b, "v1", map[string]string{"app/deploy.yaml": "kind: ConfigMap\n"})
	replicaCall(b, h, http.MethodPost, "/api/v1/applications", &droverv1.Application{Name: name, Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repo.URL, Ref: "main", Path: "app"},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: labels}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true},
	}}, nil)
	b.Cleanup(func() { replicaCall(b, h, http.MethodDelete, "/api/v1/applications/"+name, nil, nil) })
	return repo
}

// replicaCall calls a replica's JSON API; an error fails b.
func replicaCall(b *testing.B, h *testbed.HubProcess, method, path string, in, out proto.Message) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.API(ctx, method, path, in, out); err != nil {
		b.Fatal(err)
	}
}

// agentsOn groups the agents by the replica their stream is with, in name
// order.
func agentsOn(agents []*loadtest.Agent) map[string][]*loadtest.Agent {
	out := map[string][]*loadtest.Agent{}
	for _, a := range agents {
		if st := a.State(); a.Connected() {
			out[st.Hub] = append(out[st.Hub], a)
		}
	}
	return out
}

// heldBy counts the agents each replica holds.
func heldBy(agents []*loadtest.Agent) map[string]int {
	out := map[string]int{}
	for addr, as := range agentsOn(agents) {
		out[addr] = len(as)
	}
	return out
}

// arrivalCounts is how many assignments each agent has received.
func arrivalCounts(agents []*loadtest.Agent) map[string]int {
	out := make(map[string]int, len(agents))
	for _, a := range agents {
		out[a.Name()] = len(a.State().Arrivals)
	}
	return out
}

// reportLatencies reports the p50, p99 and max of lat, each metric's name
// after prefix.
func reportLatencies(b *testing.B, prefix string, lat []time.Duration) {
	b.Helper()
	if len(lat) == 0 {
		b.Fatalf("%sno latencies measured", prefix)
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(loadtest.Percentile(lat, 0.50)), prefix+"p50-ms")
	b.ReportMetric(ms(loadtest.Percentile(lat, 0.99)), prefix+"p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), prefix+"max-ms")
	b.Logf("%s%d: p50 %v p99 %v max %v", prefix, len(lat), loadtest.Percentile(lat, 0.5), loadtest.Percentile(lat, 0.99), lat[len(lat)-1])
}
