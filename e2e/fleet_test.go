// Package e2e holds Drover's end-to-end tests: a real hub on a real
// PostgreSQL, real agents, real local Kubernetes clusters and a real Git
// server, all from the test bed.
package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/drover-dev/drover/agent/daemon"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/server"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// fleet is a hub with agents on local clusters.
type fleet struct {
	t        *testing.T
	hubCfg   server.Config
	hub      *server.Hub
	api      *apiClient
	clusters map[string]*testbed.Cluster
	agents   map[string]*daemon.Agent
	agentCfg map[string]daemon.Config
}

func (f *fleet) startHub() {
	t := f.t
	t.Helper()
	h, err := server.Start(context.Background(), f.hubCfg, testbed.Logger(t).With("component", "hub"), io.Discard)
	if err != nil {
		t.Fatalf("start hub: %v", err)
	}
	f.hub = h
	t.Cleanup(func() {
		if f.hub == h {
			h.Close()
		}
	})
	if f.api == nil {
		tok, err := os.ReadFile(filepath.Join(f.hubCfg.DataDir, "admin-token"))
		if err != nil {
			t.Fatal(err)
		}
		f.api = &apiClient{t: t, base: "http://" + h.HTTPAddr(), token: strings.TrimSpace(string(tok))}
	}
}

func (f *fleet) stopHub() {
	f.t.Helper()
	if err := f.hub.Close(); err != nil {
		f.t.Logf("hub close: %v", err)
	}
	f.hub = nil
}

func (f *fleet) startAgent(name string) {
	t := f.t
	t.Helper()
	a, err := daemon.Start(context.Background(), f.agentCfg[name], testbed.Logger(t).With("component", "agent", "cluster", name))
	if err != nil {
		t.Fatalf("start agent %s: %v", name, err)
	}
	f.agents[name] = a
	t.Cleanup(func() {
		if f.agents[name] == a {
			a.Stop()
		}
	})
}

func (f *fleet) stopAgent(name string) {
	f.agents[name].Stop()
	f.agents[name] = nil
}

func newFleet(t *testing.T, labels map[string]map[string]string) *fleet {
	t.Helper()
	dir, err := os.MkdirTemp("", "drover-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fleet{t: t, clusters: map[string]*testbed.Cluster{}, agents: map[string]*daemon.Agent{}, agentCfg: map[string]daemon.Config{}}

	names := make([]string, 0, len(labels))
	for n := range labels {
		names = append(names, n)
	}
	clusters := testbed.ClustersWithOptions(t, testbed.Options{Names: names})

	cfg := server.DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "hub")
	cfg.DatabaseURL = testbed.Postgres(t)
	// Fixed addresses, so a restarted hub is found again.
	cfg.AgentAddr = testbed.FreeAddr(t)
	cfg.HTTPAddr = testbed.FreeAddr(t)
	cfg.Hostnames = []string{"127.0.0.1"}
	cfg.PollInterval = 5 * time.Second
	cfg.OfflineTimeout = 10 * time.Second
	f.hubCfg = cfg
	f.startHub()
	caFile := filepath.Join(dir, "hub-ca.crt")
	if err := os.WriteFile(caFile, f.hub.CACertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, c := range clusters {
		var tok droverv1.CreateJoinTokenResponse
		f.api.do("POST", "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Labels: labels[c.Name]}, &tok)
		acfg := daemon.DefaultConfig()
		acfg.HubAddr = cfg.AgentAddr
		acfg.HubCAFile = caFile
		acfg.JoinToken = tok.GetToken()
		acfg.ClusterName = c.Name
		acfg.StateDir = filepath.Join(dir, "agent-"+c.Name)
		acfg.Kubeconfig = c.Kubeconfig
		acfg.Heartbeat = 2 * time.Second
		acfg.BackoffMax = 2 * time.Second
		acfg.MetricsAddr = testbed.FreeAddr(t)
		f.agentCfg[c.Name] = acfg
		f.clusters[c.Name] = c
		f.startAgent(c.Name)
	}
	return f
}

func (f *fleet) kube(name string) kubernetes.Interface { return f.clusters[name].Client(f.t) }

// status returns the hub's status of app on cluster, or nil.
func (f *fleet) status(app, cluster string) *droverv1.ApplicationStatus {
	var resp droverv1.GetApplicationResponse
	f.api.do("GET", "/api/v1/applications/"+app, nil, &resp)
	for _, s := range resp.GetStatuses() {
		if s.GetCluster() == cluster {
			return s
		}
	}
	return nil
}

func (f *fleet) waitHealthy(app, cluster, commit string) {
	f.t.Helper()
	testbed.Eventually(f.t, fmt.Sprintf("%s Synced and Healthy at %.7s on %s", app, commit, cluster), 3*time.Minute, func() (bool, string) {
		s := f.status(app, cluster)
		ok := s.GetCommit() == commit && s.GetSync() == droverv1.SyncState_SYNC_STATE_SYNCED && s.GetHealth() == droverv1.Health_HEALTH_HEALTHY
		return ok, fmt.Sprintf("hub says %v", s)
	})
}

func (f *fleet) deployment(cluster string) (*appsv1.Deployment, error) {
	return f.kube(cluster).AppsV1().Deployments("web").Get(context.Background(), "nginx", metav1.GetOptions{})
}

func (f *fleet) waitNoDeployment(cluster string) {
	f.t.Helper()
	testbed.Eventually(f.t, "no nginx Deployment on "+cluster, 2*time.Minute, func() (bool, string) {
		_, err := f.deployment(cluster)
		return apierrors.IsNotFound(err), fmt.Sprintf("get: %v", err)
	})
}

func (f *fleet) scale(cluster string, replicas int) {
	f.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := f.kube(cluster).AppsV1().Deployments("web").Patch(context.Background(), "nginx", types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "kubectl"}); err != nil {
		f.t.Fatalf("scale on %s: %v", cluster, err)
	}
}

func (f *fleet) waitReplicas(cluster string, want int32) {
	f.t.Helper()
	testbed.Eventually(f.t, fmt.Sprintf("%d replicas wanted on %s", want, cluster), 2*time.Minute, func() (bool, string) {
		d, err := f.deployment(cluster)
		if err != nil {
			return false, err.Error()
		}
		return *d.Spec.Replicas == want, fmt.Sprintf("spec.replicas = %d", *d.Spec.Replicas)
	})
}

func (f *fleet) refresh(app string) {
	f.api.do("POST", "/api/v1/applications/"+app+"/refresh", nil, nil)
}

func webApplication(repoURL string) *droverv1.Application {
	return &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repoURL, Ref: "main", Path: "apps/web"},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
	}}
}

// TestFleetGitOps is the scenario Drover is for: a change in Git reaches
// every cluster whose labels match, healthy, visible from the hub.
func TestFleetGitOps(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "web on nginx 1.23.0", testbed.ExampleApp("nginx:1.23.0"))

	f := newFleet(t, map[string]map[string]string{
		"prod-1":  {"env": "prod"},
		"prod-2":  {"env": "prod"},
		"staging": {"env": "staging"},
	})
	f.api.do("POST", "/api/v1/applications", webApplication(repo.URL), nil)

	// Both prod clusters run it; staging has nothing.
	for _, c := range []string{"prod-1", "prod-2"} {
		f.waitHealthy("web", c, c1)
		d, err := f.deployment(c)
		if err != nil || d.Status.AvailableReplicas != 2 {
			t.Fatalf("%s: deployment %v, err %v; want 2 available replicas", c, d.Status, err)
		}
	}
	if _, err := f.deployment("staging"); !apierrors.IsNotFound(err) {
		t.Fatalf("staging has the application: %v", err)
	}

	t.Run("agent metrics", func(t *testing.T) {
		for _, tc := range []struct {
			cluster string
			want    map[string]float64 // metric{application="web",...} values
		}{
			{"prod-1", map[string]float64{"sync=synced": 1, "health=healthy": 1}},
			{"staging", nil},
		} {
			m := testbed.Metrics(t, "http://"+f.agentCfg[tc.cluster].MetricsAddr+"/metrics")
			if v, _ := testbed.MetricValue(m, "drover_agent_hub_connected", nil); v != 1 {
				t.Errorf("%s: drover_agent_hub_connected = %v, want 1", tc.cluster, v)
			}
			_, hasSync := testbed.MetricValue(m, "drover_agent_application_sync", map[string]string{"application": "web"})
			if hasSync != (tc.want != nil) {
				t.Errorf("%s: web in drover_agent_application_sync = %v, want %v", tc.cluster, hasSync, tc.want != nil)
			}
			for label, want := range tc.want {
				k, v, _ := strings.Cut(label, "=")
				name := "drover_agent_application_" + k
				if got, ok := testbed.MetricValue(m, name, map[string]string{"application": "web", k: v}); !ok || got != want {
					t.Errorf("%s: %s{application=web,%s} = %v (present %v), want %v", tc.cluster, name, label, got, ok, want)
				}
			}
		}
	})

	t.Run("new image", func(t *testing.T) {
		c2 := repo.Commit(t, "web on nginx 1.24.0", map[string]string{"apps/web/deployment.yaml": testbed.ExampleApp("nginx:1.24.0")["apps/web/deployment.yaml"]})
		f.refresh("web")
		for _, c := range []string{"prod-1", "prod-2"} {
			f.waitHealthy("web", c, c2)
			d, err := f.deployment(c)
			if err != nil || d.Spec.Template.Spec.Containers[0].Image != "nginx:1.24.0" {
				t.Fatalf("%s runs %v (err %v), want nginx:1.24.0", c, d.Spec.Template.Spec.Containers, err)
			}
		}
	})

	t.Run("removed manifest is pruned", func(t *testing.T) {
		c3 := repo.Remove(t, "drop the service", "apps/web/service.yaml")
		f.refresh("web")
		for _, c := range []string{"prod-1", "prod-2"} {
			f.waitHealthy("web", c, c3)
			testbed.Eventually(t, "service pruned on "+c, time.Minute, func() (bool, string) {
				_, err := f.kube(c).CoreV1().Services("web").Get(context.Background(), "nginx", metav1.GetOptions{})
				return apierrors.IsNotFound(err), fmt.Sprintf("get: %v", err)
			})
		}
	})

	t.Run("hand-made change is reverted", func(t *testing.T) {
		f.scale("prod-1", 5)
		f.waitReplicas("prod-1", 2)
	})

	t.Run("relabel", func(t *testing.T) {
		head := repo.Head(t)
		f.api.do("PATCH", "/api/v1/clusters/staging/labels", &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"env": "prod"}}, nil)
		f.waitHealthy("web", "staging", head)
		f.api.do("PATCH", "/api/v1/clusters/prod-2/labels", &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"env": "dev"}}, nil)
		f.waitNoDeployment("prod-2")
	})

	t.Run("offline autonomy", func(t *testing.T) {
		head := repo.Head(t)
		f.stopHub()
		f.scale("prod-1", 4)
		// An agent restarted while the hub is away works from its stored
		// assignment.
		f.stopAgent("prod-1")
		f.startAgent("prod-1")
		f.waitReplicasNoHub("prod-1", 2)
		before := time.Now()
		f.startHub()
		testbed.Eventually(t, "prod-1's status current on the restarted hub", 2*time.Minute, func() (bool, string) {
			s := f.status("web", "prod-1")
			ok := s.GetCommit() == head && s.GetHealth() == droverv1.Health_HEALTH_HEALTHY && s.GetObservedAt().AsTime().After(before.Add(-time.Minute))
			return ok, fmt.Sprintf("hub says %v", s)
		})
		var cl droverv1.GetClusterResponse
		testbed.Eventually(t, "prod-1 online again", time.Minute, func() (bool, string) {
			f.api.do("GET", "/api/v1/clusters/prod-1", nil, &cl)
			return cl.GetCluster().GetOnline(), fmt.Sprintf("cluster %v", cl.GetCluster())
		})
	})

	t.Run("a broken application fails alone", func(t *testing.T) {
		bad := repo.Commit(t, "a broken app", map[string]string{"apps/broken/bad.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: [not a map\n"})
		app := &droverv1.Application{Name: "broken", Spec: &droverv1.ApplicationSpec{
			Source:     &droverv1.Source{RepoUrl: repo.URL, Ref: "main", Path: "apps/broken"},
			Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
			SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
		}}
		f.api.do("POST", "/api/v1/applications", app, nil)
		f.refresh("web")
		testbed.Eventually(t, "broken fails on prod-1 naming the file", 2*time.Minute, func() (bool, string) {
			s := f.status("broken", "prod-1")
			return s.GetSync() == droverv1.SyncState_SYNC_STATE_FAILED && strings.Contains(s.GetMessage(), "bad.yaml"), fmt.Sprintf("hub says %v", s)
		})
		f.waitHealthy("web", "prod-1", bad)
	})
}

// waitReplicasNoHub waits for the agent to heal on its own.
func (f *fleet) waitReplicasNoHub(cluster string, want int32) { f.waitReplicas(cluster, want) }
