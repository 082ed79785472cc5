// Package e2e holds Drover's end-to-end tests: a real hub on a real
// PostgreSQL, real agents, real local Kubernetes clusters and a real Git
// server, all from the test bed.
package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

const (
	// waitConverge bounds every wait for a cluster to reach a state the
	// test asked for (and is the rollouts' progress deadline, so a rollout
	// gives a slow cluster as long as the test does). Outcomes are
	// asserted, never how long they took.
	waitConverge = 3 * time.Minute
	// agentHeartbeat is how often agents beat; their reconnect backoff is
	// capped at the same.
	agentHeartbeat = 2 * time.Second
	// hubOfflineTimeout is how long a cluster goes without a heartbeat
	// before the hub shows it offline: fifteen beats missed in a row is an
	// agent gone, not a busy machine. A test that waits for a cluster to
	// go offline adds it to its wait.
	hubOfflineTimeout = 15 * agentHeartbeat
)

// fleet is a drover-hub process with drover-agent processes on local
// clusters, so that a test can kill any of them as a crash would.
type fleet struct {
	t        *testing.T
	hub      *testbed.HubProcess
	api      *apiClient
	clusters map[string]*testbed.Cluster
	agents   map[string]*testbed.AgentProcess
	// metricsAddrs are the agents' --metrics-addr, for those given one.
	metricsAddrs map[string]string
}

// with returns f for the subtest t: failures go to t, the test that runs
// the caller.
func (f *fleet) with(t *testing.T) *fleet {
	c := *f
	c.t = t
	return &c
}

// killHub kills the hub with SIGKILL, as a crash does.
func (f *fleet) killHub() {
	f.t.Helper()
	f.t.Logf("killing drover-hub (pid %d)", f.hub.Process().Pid())
	f.hub.Kill(f.t)
}

// restartHub starts the killed hub again on the same database, data
// directory and addresses.
func (f *fleet) restartHub() {
	f.t.Helper()
	f.hub.Restart(f.t)
}

// newFleet starts a hub, one cluster per entry of labels and an agent on
// each, registered with those labels. The agents named in withMetrics
// serve their metrics.
func newFleet(t *testing.T, labels map[string]map[string]string, withMetrics ...string) *fleet {
	t.Helper()
	names := make([]string, 0, len(labels))
	for n := range labels {
		names = append(names, n)
	}
	sort.Strings(names)
	f := &fleet{t: t, clusters: map[string]*testbed.Cluster{}, agents: map[string]*testbed.AgentProcess{}, metricsAddrs: map[string]string{}}
	f.hub = testbed.StartHub(t, testbed.HubOptions{
		DatabaseURL: testbed.Postgres(t),
		Hostnames:   []string{"127.0.0.1"},
		Args:        []string{"--poll-interval", "5s", "--offline-timeout", hubOfflineTimeout.String()},
	})
	f.api = &apiClient{base: "http://" + f.hub.HTTPAddr, token: f.hub.AdminToken}
	for _, c := range testbed.ClustersWithOptions(t, testbed.Options{Names: names}) {
		args := []string{"--heartbeat", agentHeartbeat.String(), "--backoff-max", agentHeartbeat.String()}
		if slices.Contains(withMetrics, c.Name) {
			f.metricsAddrs[c.Name] = testbed.FreeAddr(t)
			args = append(args, "--metrics-addr", f.metricsAddrs[c.Name])
		}
		f.clusters[c.Name] = c
		f.agents[c.Name] = testbed.StartAgent(t, testbed.AgentOptions{
			Name:       c.Name,
			Kubeconfig: c.Kubeconfig,
			HubAddr:    f.hub.AgentAddr,
			HubCAFile:  f.hub.CAFile,
			JoinToken:  f.hub.JoinToken(t, labels[c.Name]),
			Args:       args,
		})
	}
	return f
}

// restartAgent starts the stopped or killed agent of cluster name again,
// with the same state directory and addresses.
func (f *fleet) restartAgent(name string) {
	f.t.Helper()
	var ports []string
	if addr, ok := f.metricsAddrs[name]; ok {
		ports = append(ports, addr)
	}
	f.agents[name].Restart(f.t, ports...)
}

// agentMetrics scrapes the metrics of cluster name's agent.
func (f *fleet) agentMetrics(name string) map[string]*dto.MetricFamily {
	f.t.Helper()
	return testbed.Metrics(f.t, "http://"+f.metricsAddrs[name]+"/metrics")
}

// do calls the hub's admin API; an error fails the test.
func (f *fleet) do(method, path string, in, out proto.Message) {
	f.t.Helper()
	f.api.do(f.t, method, path, in, out)
}

func (f *fleet) kube(name string) kubernetes.Interface { return f.clusters[name].Client(f.t) }

// status returns the hub's status of app on cluster, nil when it has none.
// Polls take an error as "not yet": the hub may be starting.
func (f *fleet) status(app, cluster string) (*droverv1.ApplicationStatus, error) {
	var resp droverv1.GetApplicationResponse
	if err := f.api.call(f.t.Context(), http.MethodGet, "/api/v1/applications/"+app, nil, &resp); err != nil {
		return nil, err
	}
	for _, s := range resp.GetStatuses() {
		if s.GetCluster() == cluster {
			return s, nil
		}
	}
	return nil, nil
}

// cluster is the hub's record of a cluster.
func (f *fleet) cluster(name string) (*droverv1.Cluster, error) {
	var resp droverv1.GetClusterResponse
	if err := f.api.call(f.t.Context(), http.MethodGet, "/api/v1/clusters/"+name, nil, &resp); err != nil {
		return nil, err
	}
	return resp.GetCluster(), nil
}

func isSyncedAt(s *droverv1.ApplicationStatus, commit string) bool {
	return s.GetCommit() == commit && s.GetSync() == droverv1.SyncState_SYNC_STATE_SYNCED && s.GetHealth() == droverv1.Health_HEALTH_HEALTHY
}

func (f *fleet) waitHealthy(app, cluster, commit string) {
	f.t.Helper()
	f.waitHealthyAfter(app, cluster, commit, time.Time{})
}

// waitHealthyAfter waits until the hub says app is Synced and Healthy at
// commit on cluster, as the agent observed it after after.
func (f *fleet) waitHealthyAfter(app, cluster, commit string, after time.Time) {
	f.t.Helper()
	what := fmt.Sprintf("%s Synced and Healthy at %.7s on %s", app, commit, cluster)
	if !after.IsZero() {
		what += " observed after " + after.Format(time.StampMilli)
	}
	testbed.Eventually(f.t, what, waitConverge, func() (bool, string) {
		s, err := f.status(app, cluster)
		if err != nil {
			return false, err.Error()
		}
		return isSyncedAt(s, commit) && s.GetObservedAt().AsTime().After(after), fmt.Sprintf("hub says %v", s)
	})
}

// waitConnectedAfter waits until the cluster's agent holds a session with
// the hub that started after since, and has acknowledged the assignment
// the hub wants it to run.
func (f *fleet) waitConnectedAfter(name string, since time.Time) {
	f.t.Helper()
	testbed.Eventually(f.t, fmt.Sprintf("%s connected since %s and its assignment acknowledged", name, since.Format(time.StampMilli)), waitConverge, func() (bool, string) {
		c, err := f.cluster(name)
		if err != nil {
			return false, err.Error()
		}
		ok := c.GetOnline() && c.GetConnectedSince().AsTime().After(since) &&
			c.GetAckedVersion() != "" && c.GetAckedVersion() == c.GetAssignmentVersion()
		return ok, fmt.Sprintf("cluster %v", c)
	})
}

func (f *fleet) deployment(cluster string) (*appsv1.Deployment, error) {
	ctx, cancel := context.WithTimeout(f.t.Context(), apiRequestTimeout)
	defer cancel()
	return f.kube(cluster).AppsV1().Deployments("web").Get(ctx, "nginx", metav1.GetOptions{})
}

func (f *fleet) waitNoDeployment(cluster string) {
	f.t.Helper()
	testbed.Eventually(f.t, "no nginx Deployment on "+cluster, waitConverge, func() (bool, string) {
		_, err := f.deployment(cluster)
		return apierrors.IsNotFound(err), fmt.Sprintf("get: %v", err)
	})
}

func (f *fleet) scale(cluster string, replicas int) {
	f.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	ctx, cancel := context.WithTimeout(f.t.Context(), apiRequestTimeout)
	defer cancel()
	if _, err := f.kube(cluster).AppsV1().Deployments("web").Patch(ctx, "nginx", types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "kubectl"}); err != nil {
		f.t.Fatalf("scale on %s: %v", cluster, err)
	}
}

// waitReplicas waits until the cluster's web Deployment asks for want
// replicas: the agent put back what a hand-made change altered.
func (f *fleet) waitReplicas(cluster string, want int32) {
	f.t.Helper()
	testbed.Eventually(f.t, fmt.Sprintf("%d replicas wanted on %s", want, cluster), waitConverge, func() (bool, string) {
		d, err := f.deployment(cluster)
		if err != nil {
			return false, err.Error()
		}
		return *d.Spec.Replicas == want, fmt.Sprintf("spec.replicas = %d", *d.Spec.Replicas)
	})
}

// ctl runs droverctl against the hub and returns its standard output.
func (f *fleet) ctl(args ...string) string {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.t.Context(), apiRequestTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, testbed.DroverBinaries(f.t).Ctl, args...)
	cmd.Env = append(os.Environ(), "DROVER_SERVER="+f.api.base, "DROVER_TOKEN="+f.api.token, "DROVER_CONFIG="+filepath.Join(f.t.TempDir(), "none"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		f.t.Fatalf("droverctl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// describeApp is app's line in the Applications table of droverctl
// describe cluster, "" when it has none.
func (f *fleet) describeApp(cluster, app string) string {
	f.t.Helper()
	out := f.ctl("describe", "cluster", cluster)
	_, apps, _ := strings.Cut(out, "Applications:\n")
	apps, _, _ = strings.Cut(apps, "Resources:\n")
	for _, line := range strings.Split(apps, "\n") {
		if fs := strings.Fields(line); len(fs) > 0 && fs[0] == app {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// healthyColumn is the HEALTHY column of cluster in droverctl get
// clusters: healthy applications out of those counted.
func (f *fleet) healthyColumn(cluster string) string {
	f.t.Helper()
	for _, line := range strings.Split(f.ctl("get", "clusters"), "\n") {
		if fs := strings.Fields(line); len(fs) >= 3 && fs[0] == cluster {
			return fs[2]
		}
	}
	f.t.Fatalf("droverctl get clusters lists no %s", cluster)
	return ""
}

// clustersMetric is how many clusters the hub's metric
// drover_application_clusters_by_health counts for app, whatever their
// health.
func (f *fleet) clustersMetric(app string) float64 {
	f.t.Helper()
	var n float64
	for _, m := range testbed.Metrics(f.t, "http://"+f.hub.HTTPAddr+"/metrics")["drover_application_clusters_by_health"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "application" && l.GetValue() == app {
				n += m.GetGauge().GetValue()
			}
		}
	}
	return n
}

func (f *fleet) refresh(app string) {
	f.t.Helper()
	f.do(http.MethodPost, "/api/v1/applications/"+app+"/refresh", nil, nil)
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

	fl := newFleet(t, map[string]map[string]string{
		"prod-1":  {"env": "prod"},
		"prod-2":  {"env": "prod"},
		"staging": {"env": "staging"},
	}, "prod-1", "staging")
	fl.do(http.MethodPost, "/api/v1/applications", webApplication(repo.URL), nil)

	// Both prod clusters run it; staging has nothing.
	for _, c := range []string{"prod-1", "prod-2"} {
		fl.waitHealthy("web", c, c1)
		d, err := fl.deployment(c)
		if err != nil || d.Status.AvailableReplicas != 2 {
			t.Fatalf("%s: deployment %v, err %v; want 2 available replicas", c, d.Status, err)
		}
	}
	if _, err := fl.deployment("staging"); !apierrors.IsNotFound(err) {
		t.Fatalf("staging has the application: %v", err)
	}

	t.Run("agent metrics", func(t *testing.T) {
		f := fl.with(t)
		for _, tc := range []struct {
			cluster string
			want    map[string]float64 // metric{application="web",...} values
		}{
			{"prod-1", map[string]float64{"sync=synced": 1, "health=healthy": 1}},
			{"staging", nil},
		} {
			m := f.agentMetrics(tc.cluster)
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
		f := fl.with(t)
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
		f := fl.with(t)
		c3 := repo.Remove(t, "drop the service", "apps/web/service.yaml")
		f.refresh("web")
		for _, c := range []string{"prod-1", "prod-2"} {
			f.waitHealthy("web", c, c3)
			testbed.Eventually(t, "service pruned on "+c, waitConverge, func() (bool, string) {
				_, err := f.kube(c).CoreV1().Services("web").Get(t.Context(), "nginx", metav1.GetOptions{})
				return apierrors.IsNotFound(err), fmt.Sprintf("get: %v", err)
			})
		}
	})

	t.Run("hand-made change is reverted", func(t *testing.T) {
		f := fl.with(t)
		f.scale("prod-1", 5)
		f.waitReplicas("prod-1", 2)
	})

	t.Run("relabel", func(t *testing.T) {
		f := fl.with(t)
		head := repo.Head(t)
		f.do(http.MethodPatch, "/api/v1/clusters/staging/labels", &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"env": "prod"}}, nil)
		f.waitHealthy("web", "staging", head)
		if n := f.clustersMetric("web"); n != 3 {
			t.Fatalf("drover_application_clusters_by_health counts web on %v clusters before prod-2 leaves, want 3", n)
		}

		// prod-2 leaves the placement while its agent is down, so nothing
		// has been pruned: the hub says web is being removed there, and
		// counts it nowhere, also after a restart of its own.
		f.agents["prod-2"].Kill(t)
		f.do(http.MethodPatch, "/api/v1/clusters/prod-2/labels", &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"env": "dev"}}, nil)
		check := func(when string) {
			t.Helper()
			if app := f.describeApp("prod-2", "web"); !strings.Contains(app, "Removing") || !strings.Contains(app, "waiting for the agent to confirm the prune") {
				t.Fatalf("%s: droverctl describe cluster prod-2 shows web as %q, want it Removing, waiting for the agent", when, app)
			}
			if h := f.healthyColumn("prod-2"); h != "0/0" {
				t.Fatalf("%s: droverctl get clusters shows prod-2 HEALTHY %s, want 0/0", when, h)
			}
			if n := f.clustersMetric("web"); n != 2 {
				t.Fatalf("%s: drover_application_clusters_by_health counts web on %v clusters, want 2 (prod-1, staging)", when, n)
			}
			if _, err := f.deployment("prod-2"); err != nil {
				t.Fatalf("%s: web's Deployment on prod-2 is gone (%v) with its agent down", when, err)
			}
		}
		check("after the relabel")
		f.killHub()
		f.restartHub()
		check("after a hub restart")

		// Once its agent pruned web, the hub forgets it there.
		f.restartAgent("prod-2")
		f.waitNoDeployment("prod-2")
		testbed.Eventually(t, "web gone from droverctl describe cluster prod-2", waitConverge, func() (bool, string) {
			app := f.describeApp("prod-2", "web")
			return app == "", "web shown as " + app
		})
		if h := f.healthyColumn("prod-2"); h != "0/0" {
			t.Fatalf("droverctl get clusters shows prod-2 HEALTHY %s after the prune, want 0/0", h)
		}
		if n := f.clustersMetric("web"); n != 2 {
			t.Fatalf("drover_application_clusters_by_health counts web on %v clusters after the prune, want 2", n)
		}
	})

	t.Run("offline autonomy", func(t *testing.T) {
		f := fl.with(t)
		head := repo.Head(t)
		f.killHub()
		// An agent that crashes while the hub is down starts again from
		// its stored assignment and heals on its own what changed while
		// it was down.
		f.agents["prod-1"].Kill(t)
		f.scale("prod-1", 4)
		agentRestarted := time.Now()
		f.restartAgent("prod-1")
		f.waitReplicas("prod-1", 2)
		// It says so itself, for the cluster's own monitoring, before the
		// hub is back: its status has settled and is for the hub to learn.
		testbed.Eventually(t, "prod-1's agent reporting web Synced and Healthy with no hub", waitConverge, func() (bool, string) {
			m := f.agentMetrics("prod-1")
			conn, _ := testbed.MetricValue(m, "drover_agent_hub_connected", nil)
			synced, _ := testbed.MetricValue(m, "drover_agent_application_sync", map[string]string{"application": "web", "sync": "synced"})
			healthy, _ := testbed.MetricValue(m, "drover_agent_application_health", map[string]string{"application": "web", "health": "healthy"})
			return conn == 0 && synced == 1 && healthy == 1, fmt.Sprintf("hub connected %v, web synced %v, healthy %v", conn, synced, healthy)
		})
		hubRestarted := time.Now()
		f.restartHub()
		// The restarted hub shows what the restarted agent observed: a
		// status the hub cannot have had before it died, since that agent
		// started after.
		f.waitHealthyAfter("web", "prod-1", head, agentRestarted)
		f.waitConnectedAfter("prod-1", hubRestarted)
	})

	t.Run("a broken application fails alone", func(t *testing.T) {
		f := fl.with(t)
		bad := repo.Commit(t, "a broken app", map[string]string{"apps/broken/bad.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: [not a map\n"})
		app := &droverv1.Application{Name: "broken", Spec: &droverv1.ApplicationSpec{
			Source:     &droverv1.Source{RepoUrl: repo.URL, Ref: "main", Path: "apps/broken"},
			Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
			SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
		}}
		f.do(http.MethodPost, "/api/v1/applications", app, nil)
		f.refresh("web")
		testbed.Eventually(t, "broken fails on prod-1 naming the file", waitConverge, func() (bool, string) {
			s, err := f.status("broken", "prod-1")
			if err != nil {
				return false, err.Error()
			}
			return s.GetSync() == droverv1.SyncState_SYNC_STATE_FAILED && strings.Contains(s.GetMessage(), "bad.yaml"), fmt.Sprintf("hub says %v", s)
		})
		// web stays where it was: the commit changed nothing under its
		// path, so its release keeps the content it had.
		var web droverv1.GetApplicationResponse
		f.do(http.MethodGet, "/api/v1/applications/web", nil, &web)
		rel := web.GetReleases()[0]
		if rel.GetCommit() != bad || rel.GetContentCommit() == bad {
			t.Errorf("web's release after a commit under apps/broken only: %.7s with the content of %.7s, want %.7s with an older content", rel.GetCommit(), rel.GetContentCommit(), bad)
		}
		f.waitHealthy("web", "prod-1", rel.GetContentCommit())
	})
}
