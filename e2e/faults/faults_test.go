// Package faults tests what Drover promises when a part of it crashes or
// goes away: the hub (kill -9 at a rollout's approval gate, during a soak
// and during a burst of status reports), its PostgreSQL (stopped while
// agents report a release), an agent (kill -9 mid-apply; restarted while
// the hub is down) and a cluster's Kubernetes API. Every part is a real process: drover-hub and drover-agent binaries,
// PostgreSQL, local Kubernetes clusters and a Git server from the test bed.
//
// Each test asserts outcomes (final state, order of releases, nothing lost
// or orphaned) from what the hub, PostgreSQL and the clusters recorded,
// never timings, and logs figures as "figure:" lines: time from fault
// repair to convergence, what the hub held and what came back, and counts
// of reconnects and retries.
package faults

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

const (
	// waitLong bounds every wait for convergence on a machine shared with
	// other heavy tests; outcomes are asserted, never how long they took.
	waitLong = 4 * time.Minute
)

// hubArgs make the hub quick to notice what the tests do. No test waits
// for a cluster to go offline: the offline timeout is ten of the agents'
// heartbeats (agentArgs), so that a loaded machine delaying a few of them
// does not take a connected agent for gone (rollouts hold offline clusters
// in place, which would stall the rollout tests rather than break them).
var hubArgs = []string{"--poll-interval", "5s", "--offline-timeout", "20s", "--ping-interval", "5s"}

// agentArgs make agents reconnect quickly; their statuses flush every
// second (hubclient's default).
var agentArgs = []string{"--heartbeat", "2s", "--backoff-max", agentBackoffMax}

// agentBackoffMax caps the agents' reconnect delays.
const agentBackoffMax = "2s"

// bed is a hub process, a Git repository and agent processes on local
// clusters.
type bed struct {
	t        *testing.T
	dbURL    string
	hub      *testbed.HubProcess
	git      *testbed.Git
	repo     *testbed.Repo
	clusters map[string]*testbed.Cluster
	agents   map[string]*testbed.AgentProcess
	// agentMetrics are the agents' --metrics-addr, by cluster.
	agentMetrics map[string]string
}

// newBed starts a hub on dbURL and one cluster with an agent for each
// entry of labels.
func newBed(t *testing.T, dbURL string, labels map[string]map[string]string) *bed {
	t.Helper()
	names := make([]string, 0, len(labels))
	for n := range labels {
		names = append(names, n)
	}
	sort.Strings(names)
	b := &bed{t: t, dbURL: dbURL, clusters: map[string]*testbed.Cluster{}, agents: map[string]*testbed.AgentProcess{}, agentMetrics: map[string]string{}}
	b.git = testbed.GitServer(t)
	b.repo = b.git.CreateRepo(t, "fleet")
	b.hub = testbed.StartHub(t, testbed.HubOptions{DatabaseURL: dbURL, Args: hubArgs})
	for _, c := range testbed.ClustersWithOptions(t, testbed.Options{Names: names}) {
		b.clusters[c.Name] = c
		b.agentMetrics[c.Name] = testbed.FreeAddr(t)
		b.agents[c.Name] = testbed.StartAgent(t, testbed.AgentOptions{
			Name:       c.Name,
			Kubeconfig: c.Kubeconfig,
			HubAddr:    b.hub.AgentAddr,
			HubCAFile:  b.hub.CAFile,
			JoinToken:  b.hub.JoinToken(t, labels[c.Name]),
			Args:       append([]string{"--metrics-addr", b.agentMetrics[c.Name]}, agentArgs...),
		})
	}
	return b
}

// with returns b for the subtest t: failures go to t.
func (b *bed) with(t *testing.T) *bed {
	c := *b
	c.t = t
	return &c
}

// names are the bed's clusters in name order.
func (b *bed) names() []string {
	out := make([]string, 0, len(b.clusters))
	for n := range b.clusters {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// api calls the hub's JSON API and fails the test on an error.
func (b *bed) api(method, path string, in, out proto.Message) {
	b.t.Helper()
	if err := b.tryAPI(method, path, in, out); err != nil {
		b.t.Fatal(err)
	}
}

// tryAPI calls the hub's JSON API; for polls that tolerate a hub that is
// down for a moment.
func (b *bed) tryAPI(method, path string, in, out proto.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return b.hub.API(ctx, method, path, in, out)
}

// status is the hub's status of app on cluster, nil when it has none.
func (b *bed) status(app, cluster string) (*droverv1.ApplicationStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return b.hub.Status(ctx, app, cluster)
}

// waitSynced waits until the hub says app is Synced and Healthy at commit
// on cluster.
func (b *bed) waitSynced(app, cluster, commit string) *droverv1.ApplicationStatus {
	b.t.Helper()
	return b.waitSyncedAfter(app, cluster, commit, time.Time{})
}

// waitSyncedAfter waits until the hub says app is Synced and Healthy at
// commit ("": any) on cluster, as the agent observed it after after.
func (b *bed) waitSyncedAfter(app, cluster, commit string, after time.Time) *droverv1.ApplicationStatus {
	b.t.Helper()
	var s *droverv1.ApplicationStatus
	what := fmt.Sprintf("%s Synced and Healthy at %.7s on %s", app, commit, cluster)
	if !after.IsZero() {
		what += " observed after " + after.Format(time.StampMilli)
	}
	testbed.Eventually(b.t, what, waitLong, func() (bool, string) {
		var err error
		if s, err = b.status(app, cluster); err != nil {
			return false, err.Error()
		}
		ok := isSyncedAt(s, cmp.Or(commit, s.GetCommit())) && s.GetObservedAt().AsTime().After(after)
		return ok, fmt.Sprintf("hub says %v", s)
	})
	return s
}

func isSyncedAt(s *droverv1.ApplicationStatus, commit string) bool {
	return s.GetCommit() == commit && s.GetSync() == droverv1.SyncState_SYNC_STATE_SYNCED && s.GetHealth() == droverv1.Health_HEALTH_HEALTHY
}

// createApp creates an application on the hub and resolves its ref now.
func (b *bed) createApp(a *droverv1.Application) {
	b.t.Helper()
	b.api(http.MethodPost, "/api/v1/applications", a, nil)
	b.refresh(a.GetName())
}

// refresh resolves the application's ref now instead of at the next poll.
func (b *bed) refresh(app string) {
	b.t.Helper()
	b.api(http.MethodPost, "/api/v1/applications/"+app+"/refresh", nil, nil)
}

// app is an application on path of the bed's repository, placed on the
// clusters labelled env=prod, automated with prune and self-heal.
func (b *bed) app(name, path string) *droverv1.Application {
	return &droverv1.Application{Name: name, Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: b.repo.URL, Ref: "main", Path: path},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
	}}
}

// configMapApps is a repository tree of n applications PREFIX-NN under
// apps/PREFIX/NN, each one ConfigMap PREFIX-NN in namespace default whose
// data says gen.
func configMapApps(prefix string, n, gen int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprintf("apps/%s/%02d/cm.yaml", prefix, i)] = fmt.Sprintf(
			"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s-%02d\n  namespace: default\ndata:\n  gen: %q\n", prefix, i, strconv.Itoa(gen))
	}
	return m
}

// createConfigMapApps creates the n applications of configMapApps. They
// sync only when their release changes (their interval outlasts any test),
// so the agents report exactly one new status per application and release:
// a periodic run would report a second one ("skipped" where the release's
// run said "applied"), and the tests that count statuses sent at a given
// moment could not tell the two apart.
func (b *bed) createConfigMapApps(prefix string, n int) {
	b.t.Helper()
	for i := range n {
		a := b.app(fmt.Sprintf("%s-%02d", prefix, i), fmt.Sprintf("apps/%s/%02d", prefix, i))
		a.Spec.SyncPolicy.Interval = "1h"
		b.createApp(a)
	}
}

// refreshConfigMapApps resolves the refs of the n applications of
// configMapApps now.
func (b *bed) refreshConfigMapApps(prefix string, n int) {
	b.t.Helper()
	for i := range n {
		b.refresh(fmt.Sprintf("%s-%02d", prefix, i))
	}
}

// configMapsAt counts the ConfigMaps in default on cluster whose name
// starts with prefix and whose data says gen.
func (b *bed) configMapsAt(cluster, prefix string, gen int) int {
	b.t.Helper()
	cms, err := b.clusters[cluster].Client(b.t).CoreV1().ConfigMaps("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		b.t.Fatalf("%s: list ConfigMaps: %v", cluster, err)
	}
	n := 0
	for _, cm := range cms.Items {
		if strings.HasPrefix(cm.Name, prefix) && cm.Data["gen"] == strconv.Itoa(gen) {
			n++
		}
	}
	return n
}

// cluster is the hub's record of a cluster.
func (b *bed) cluster(name string) (*droverv1.Cluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return b.hub.Cluster(ctx, name)
}

// waitConnectedAfter waits until every agent's current session with the
// hub started after since.
func (b *bed) waitConnectedAfter(since time.Time) {
	b.t.Helper()
	for _, n := range b.names() {
		testbed.Eventually(b.t, n+" connected to the hub", waitLong, func() (bool, string) {
			c, err := b.cluster(n)
			if err != nil {
				return false, err.Error()
			}
			return c.GetOnline() && c.GetConnectedSince().AsTime().After(since), fmt.Sprintf("cluster %v", c)
		})
	}
}

// sessions counts the sessions agent name opened with the hub, over all
// its runs (its log is appended to across restarts).
func (b *bed) sessions(name string) int {
	b.t.Helper()
	return logCount(b.t, b.agents[name].Process(), "connected to the hub")
}

// connectedSince is when the hub says cluster's current session started.
func (b *bed) connectedSince(cluster string) time.Time {
	b.t.Helper()
	c, err := b.cluster(cluster)
	if err != nil {
		b.t.Fatalf("%s: %v", cluster, err)
	}
	if c.GetConnectedSince() == nil {
		b.t.Fatalf("%s has never connected: %v", cluster, c)
	}
	return c.GetConnectedSince().AsTime()
}

// logCount counts the lines of p's log (all runs) that contain s.
func logCount(t *testing.T, p *testbed.Process, s string) int {
	t.Helper()
	data, err := os.ReadFile(p.LogPath())
	if err != nil {
		t.Fatalf("count %q in the log: %v", s, err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// hubMetric is the hub's metric name (a gauge or counter without labels)
// as /metrics says now.
// waitBacklogHolds waits until the hub holds total statuses in its backlog,
// unwritten because writes fail, and returns the backlog and the failed
// writes it saw.
func (b *bed) waitBacklogHolds(total int) (held, failures float64) {
	testbed.Eventually(b.t, "the hub holding every status of generation 2", waitLong, func() (bool, string) {
		var err error
		if held, err = b.hubMetric("drover_hub_status_backlog"); err != nil {
			return false, err.Error()
		}
		if failures, err = b.hubMetric("drover_hub_status_write_failures"); err != nil {
			return false, err.Error()
		}
		return held == float64(total) && failures > 0, fmt.Sprintf("backlog %v of %d, %v failed writes", held, total, failures)
	})
	return held, failures
}

func (b *bed) hubMetric(name string) (float64, error) {
	fams, err := testbed.ScrapeMetrics("http://" + b.hub.HTTPAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	v, ok := testbed.MetricValue(fams, name, nil)
	if !ok {
		return 0, fmt.Errorf("the hub's /metrics has no %s", name)
	}
	return v, nil
}

// figure logs one figure of the closing note.
func figure(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("figure: "+format, args...)
}
