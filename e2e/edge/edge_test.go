// Package edge tests Drover where edge clusters live: agents behind NAT and
// on links that break, in real network namespaces, with real drover-hub and
// drover-agent processes, Kubernetes clusters, PostgreSQL and Git from the
// test bed.
package edge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

const (
	// offlineTimeout is the hub's --offline-timeout: short, so a partition
	// shows within seconds, yet longer than a heartbeat plus the 5 s for
	// which the hub batches last-seen times (agentapi's LastSeenFlush);
	// shorter, and connected clusters flap offline.
	offlineTimeout = 15 * time.Second
	// rolloutOfflineTimeout is the rollout's: how long a cluster the hub
	// shows offline holds up its wave before it is skipped.
	rolloutOfflineTimeout = 5 * time.Second
	// backoffMax is the agents' --backoff-max, and their heartbeat.
	backoffMax = 2 * time.Second
	// waitLong bounds every wait for the fleet to converge on a machine
	// busy with other tests.
	waitLong = 3 * time.Minute
)

// site is a hub in the root namespace and agents in edge namespaces behind
// one NAT router, each edge with its own cluster.
type site struct {
	t        *testing.T
	net      *testbed.Network
	hub      *testbed.HubProcess
	repo     *testbed.Repo
	clusters map[string]*testbed.Cluster
	edges    map[string]*testbed.Edge
	agents   map[string]*testbed.AgentProcess
}

// newSite starts the hub on the root namespace's end of the router's
// uplink, and for every cluster (name → labels) an agent in an edge
// namespace, which reaches its Kubernetes API and the Git server through
// forwarders into its namespace and the hub only through the router.
func newSite(t *testing.T, labels map[string]map[string]string) *site {
	t.Helper()
	s := &site{
		t:        t,
		clusters: map[string]*testbed.Cluster{},
		edges:    map[string]*testbed.Edge{},
		agents:   map[string]*testbed.AgentProcess{},
	}
	s.net = testbed.NewNetwork(t)
	s.repo = testbed.GitServer(t).CreateRepo(t, "fleet")
	names := make([]string, 0, len(labels))
	for name := range labels {
		names = append(names, name)
	}
	for _, c := range testbed.ClustersWithOptions(t, testbed.Options{Names: names}) {
		s.clusters[c.Name] = c
	}
	s.hub = testbed.StartHub(t, testbed.HubOptions{
		DatabaseURL: testbed.Postgres(t),
		AgentAddr:   net.JoinHostPort(s.net.HubIP.String(), "0"),
		Hostnames:   []string{s.net.HubIP.String(), "127.0.0.1"},
		Args:        []string{"--offline-timeout", offlineTimeout.String(), "--poll-interval", "5s"},
	})
	gitURL, err := url.Parse(s.repo.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		e := s.net.AddEdge(t)
		s.edges[name] = e
		e.Forward(t, gitURL.Host)
		s.agents[name] = testbed.StartAgent(t, testbed.AgentOptions{
			Name:       name,
			Kubeconfig: e.Kubeconfig(t, s.clusters[name]),
			HubAddr:    s.hub.AgentAddr,
			HubCAFile:  s.hub.CAFile,
			JoinToken:  s.hub.JoinToken(t, labels[name]),
			Wrap:       e.Exec(),
			Args:       []string{"--heartbeat", backoffMax.String(), "--backoff-max", backoffMax.String()},
		})
	}
	return s
}

// do calls the hub's JSON API; an error fails the test.
func (s *site) do(method, path string, in, out proto.Message) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), time.Minute)
	defer cancel()
	if err := s.hub.API(ctx, method, path, in, out); err != nil {
		s.t.Fatalf("hub API: %v", err)
	}
}

// cluster is the hub's record of a cluster.
func (s *site) cluster(name string) *droverv1.Cluster {
	s.t.Helper()
	c, err := s.hub.Cluster(s.t.Context(), name)
	if err != nil {
		s.t.Fatalf("hub API: %v", err)
	}
	return c
}

// status is the hub's status of app on cluster, or nil.
func (s *site) status(app, cluster string) *droverv1.ApplicationStatus {
	s.t.Helper()
	st, err := s.hub.Status(s.t.Context(), app, cluster)
	if err != nil {
		s.t.Fatalf("hub API: %v", err)
	}
	return st
}

func (s *site) rollout(app string) *droverv1.RolloutStatus {
	s.t.Helper()
	r, err := s.hub.Rollout(s.t.Context(), app)
	if err != nil {
		s.t.Fatalf("hub API: %v", err)
	}
	return r
}

// waitHealthy waits until the hub reports app Synced and Healthy at commit
// on cluster, in a status the agent observed after since, and returns it.
func (s *site) waitHealthy(app, cluster, commit string, since time.Time) *droverv1.ApplicationStatus {
	s.t.Helper()
	var st *droverv1.ApplicationStatus
	testbed.Eventually(s.t, fmt.Sprintf("%s Synced and Healthy at %.7s on %s", app, commit, cluster), waitLong, func() (bool, string) {
		st = s.status(app, cluster)
		ok := st.GetCommit() == commit && st.GetSync() == droverv1.SyncState_SYNC_STATE_SYNCED &&
			st.GetHealth() == droverv1.Health_HEALTH_HEALTHY && !st.GetObservedAt().AsTime().Before(since)
		return ok, fmt.Sprintf("hub says %v", st)
	})
	return st
}

func (s *site) deployment(cluster string) (*appsv1.Deployment, error) {
	return s.clusters[cluster].Client(s.t).AppsV1().Deployments("web").Get(s.t.Context(), "nginx", metav1.GetOptions{})
}

// image is what the cluster's web Deployment runs, "" if there is none.
func (s *site) image(cluster string) string {
	d, err := s.deployment(cluster)
	if err != nil {
		return ""
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

// webApplication places the example application on env=prod, syncing
// automatically and healing drift.
func webApplication(repoURL string) *droverv1.Application {
	return &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repoURL, Ref: "main", Path: "apps/web"},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
	}}
}

// count is how often s occurs in the process's log file.
func count(t *testing.T, p *testbed.Process, s string) int {
	t.Helper()
	b, err := os.ReadFile(p.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), s)
}

// sessionLines are the lines of the process's log where a hub session
// started or ended, for the figures.
func sessionLines(t *testing.T, p *testbed.Process) string {
	t.Helper()
	b, err := os.ReadFile(p.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "connected to the hub") || strings.Contains(line, "hub session ended") {
			lines = append(lines, "\t"+line)
		}
	}
	return strings.Join(lines, "\n")
}

// logTime is the time of the first record of the process's log that
// contains s, zero if there is none.
func logTime(t *testing.T, p *testbed.Process, s string) time.Time {
	t.Helper()
	b, err := os.ReadFile(p.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, s) {
			continue
		}
		field, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, field)
		if err != nil {
			t.Fatalf("no time in log line %q: %v", line, err)
		}
		return at
	}
	return time.Time{}
}

// TestNAT: an agent behind masquerade registers, gets its assignment,
// deploys and reports Healthy; the hub knows it by the router's address,
// cannot open a connection to it, and never tries.
func TestNAT(t *testing.T) {
	start := time.Now()
	s := newSite(t, map[string]map[string]string{"nat-1": {"env": "prod"}})
	c1 := s.repo.Commit(t, "web on nginx 1.23.0", testbed.ExampleApp("nginx:1.23.0"))
	s.do(http.MethodPost, "/api/v1/applications", webApplication(s.repo.URL), nil)

	s.waitHealthy("web", "nat-1", c1, start)
	if img := s.image("nat-1"); img != "nginx:1.23.0" {
		t.Fatalf("nat-1 runs %q, want nginx:1.23.0", img)
	}
	c := s.cluster("nat-1")
	if !c.GetOnline() || c.GetAckedVersion() == "" || c.GetAckedVersion() != c.GetAssignmentVersion() {
		t.Fatalf("hub's record of nat-1: online %v, assignment %q, acked %q: want online and the assignment acknowledged",
			c.GetOnline(), c.GetAssignmentVersion(), c.GetAckedVersion())
	}
	peer, err := netip.ParseAddrPort(c.GetPeerAddress())
	if err != nil {
		t.Fatalf("hub's peer address of nat-1 %q: %v", c.GetPeerAddress(), err)
	}
	edge := s.edges["nat-1"]
	if peer.Addr() != s.net.RouterIP {
		t.Fatalf("hub saw nat-1 at %s, want the router's address %s (the agent is at %s)", peer, s.net.RouterIP, edge.IP)
	}

	// The hub's namespace has no way to the agent: the dial fails in the
	// local stack, before any packet is sent.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dialStart := time.Now()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(edge.IP.String(), "443"))
	if err == nil {
		conn.Close()
		t.Fatalf("the hub's namespace opened a connection to the agent at %s", edge.IP)
	}
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("dial the agent at %s from the hub's namespace: %v, want %v (blackhole route)", edge.IP, err, syscall.EINVAL)
	}
	dialTook := time.Since(dialStart)

	// The blackhole route only shows what the test bed set up. What shows
	// that the hub never dials a cluster is the router, which every packet
	// between the two passes: it counted no connection started from the
	// hub's side, to itself or towards the edge, over the whole test, and
	// it did count the agent's, so it was counting.
	conns := s.net.Connections(t)
	if conns.FromEdges == 0 {
		t.Fatalf("the router counted no connection from the edge, yet the agent reached the hub: the counter does not count")
	}
	if conns.FromUplink != 0 {
		t.Fatalf("the router counted %d connections started from the hub's side towards the edge site, want 0", conns.FromUplink)
	}
	t.Logf("figures: hub saw the agent at %s (agent at %s); dial to the agent failed locally in %v: %v; agent sessions: %d; "+
		"connections through the router: %d from the edge, %d towards it",
		peer, edge.IP, dialTook.Round(time.Microsecond), err,
		count(t, s.agents["nat-1"].Process(), "connected to the hub"), conns.FromEdges, conns.FromUplink)
}

// TestPartition: an agent cut off from the hub beyond the offline timeout
// is shown offline and skipped by a rollout, keeps its cluster right on
// its own, and when the link returns reconnects, catches up to the latest
// completed release and reports it.
func TestPartition(t *testing.T) {
	start := time.Now()
	s := newSite(t, map[string]map[string]string{
		"cut":    {"env": "prod"},
		"steady": {"env": "prod"},
	})
	c1 := s.repo.Commit(t, "web on nginx 1.23.0", testbed.ExampleApp("nginx:1.23.0"))
	app := webApplication(s.repo.URL)
	app.Spec.Rollout = &droverv1.RolloutStrategy{
		OnFailure:        "pause",
		ProgressDeadline: "2m",
		OfflineTimeout:   rolloutOfflineTimeout.String(),
		Waves:            []*droverv1.RolloutWave{{Name: "all", MaxParallel: structpb.NewStringValue("100%")}},
	}
	s.do(http.MethodPost, "/api/v1/applications", app, nil)
	for _, c := range []string{"cut", "steady"} {
		s.waitHealthy("web", c, c1, start)
	}
	testbed.Eventually(t, "the rollout of c1 completed", waitLong, func() (bool, string) {
		r := s.rollout("web")
		return r.GetCommit() == c1 && r.GetPhase() == "completed", fmt.Sprintf("rollout %v", r)
	})
	agent := s.agents["cut"].Process()
	before := s.cluster("cut")
	sessionsBefore := count(t, agent, "connected to the hub")

	edge := s.edges["cut"]
	edge.Partition(t)
	cutAt := time.Now()
	testbed.Eventually(t, "the hub shows cut offline", waitLong, func() (bool, string) {
		c := s.cluster("cut")
		return !c.GetOnline(), fmt.Sprintf("online %v, last seen %v", c.GetOnline(), c.GetLastSeen().AsTime())
	})
	offlineAfter := time.Since(cutAt)

	var c2 string
	t.Run("a rollout skips the cut-off cluster", func(t *testing.T) {
		c2 = s.repo.Commit(t, "web on nginx 1.24.0", testbed.ExampleApp("nginx:1.24.0"))
		s.do(http.MethodPost, "/api/v1/applications/web/refresh", nil, nil)
		var r *droverv1.RolloutStatus
		testbed.Eventually(t, "the rollout of c2 completed", waitLong, func() (bool, string) {
			r = s.rollout("web")
			return r.GetCommit() == c2 && r.GetPhase() == "completed", fmt.Sprintf("rollout %v", r)
		})
		phases := map[string]string{}
		for _, c := range r.GetClusters() {
			phases[c.GetName()] = c.GetPhase()
		}
		if phases["cut"] != "skipped" || phases["steady"] != "succeeded" {
			t.Fatalf("rollout of c2: clusters %v, want cut skipped and steady succeeded", phases)
		}
		s.waitHealthy("web", "steady", c2, cutAt)
		if img := s.image("steady"); img != "nginx:1.24.0" {
			t.Fatalf("steady runs %q, want nginx:1.24.0", img)
		}
		if img := s.image("cut"); img != "nginx:1.23.0" {
			t.Fatalf("cut runs %q while cut off, want nginx:1.23.0", img)
		}
	})

	t.Run("the cut-off cluster reverts a hand-made change", func(t *testing.T) {
		patch := []byte(`{"spec":{"replicas":5}}`)
		_, err := s.clusters["cut"].Client(t).AppsV1().Deployments("web").Patch(t.Context(), "nginx", types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kubectl"})
		if err != nil {
			t.Fatalf("scale nginx on cut: %v", err)
		}
		testbed.Eventually(t, "cut's agent to put nginx back to 2 replicas", waitLong, func() (bool, string) {
			d, err := s.deployment("cut")
			if err != nil {
				return false, err.Error()
			}
			return *d.Spec.Replicas == 2, fmt.Sprintf("spec.replicas %d", *d.Spec.Replicas)
		})
		if c := s.cluster("cut"); c.GetOnline() {
			t.Fatalf("cut is online again during the partition: %v", c)
		}
	})

	// The agent notices the dead link by its keepalive; only then is the
	// return a reconnect rather than a stalled connection resuming.
	var noticedAt time.Time
	testbed.Eventually(t, "cut's agent to notice the link is gone", waitLong, func() (bool, string) {
		noticedAt = logTime(t, agent, "hub session ended")
		return !noticedAt.IsZero(), `no "hub session ended" in the agent's log`
	})
	noticedAfter := noticedAt.Sub(cutAt)
	// Stay cut off a while longer, so that the agent's redials have been
	// failing for some time when the link returns, as after a real outage.
	time.Sleep(10 * time.Second)

	edge.Heal(t)
	healedAt := time.Now()
	testbed.Eventually(t, "cut online again in a new session", waitLong, func() (bool, string) {
		c := s.cluster("cut")
		ok := c.GetOnline() && c.GetConnectedSince().AsTime().After(before.GetConnectedSince().AsTime())
		return ok, fmt.Sprintf("online %v, connected since %v", c.GetOnline(), c.GetConnectedSince().AsTime())
	})
	onlineAfter := time.Since(healedAt)
	st := s.waitHealthy("web", "cut", c2, healedAt)
	convergedAfter := time.Since(healedAt)
	if img := s.image("cut"); img != "nginx:1.24.0" {
		t.Fatalf("cut runs %q after catching up, want nginx:1.24.0", img)
	}
	c := s.cluster("cut")
	if c.GetAckedVersion() != c.GetAssignmentVersion() {
		t.Fatalf("cut acknowledged %q, hub wants %q", c.GetAckedVersion(), c.GetAssignmentVersion())
	}
	peer, err := netip.ParseAddrPort(c.GetPeerAddress())
	if err != nil || peer.Addr() != s.net.RouterIP {
		t.Fatalf("hub's peer address of cut %q (%v), want the router's %s", c.GetPeerAddress(), err, s.net.RouterIP)
	}
	t.Logf("figures: offline on the hub %v after the cut (timeout %v); agent noticed the dead link after %v; "+
		"after repair: online in %v (backoff cap %v), Healthy at c2 on the hub in %v (status observed %v after repair); "+
		"agent sessions %d before the cut, %d after; sessions ended or redials failed: %d",
		offlineAfter.Round(time.Millisecond), offlineTimeout, noticedAfter.Round(time.Millisecond),
		onlineAfter.Round(time.Millisecond), backoffMax, convergedAfter.Round(time.Millisecond),
		st.GetObservedAt().AsTime().Sub(healedAt).Round(time.Millisecond),
		sessionsBefore, count(t, agent, "connected to the hub"), count(t, agent, "hub session ended"))
	t.Logf("figures: cut at %s, repaired at %s; cut's agent log:\n%s",
		cutAt.UTC().Format("15:04:05.000"), healedAt.UTC().Format("15:04:05.000"), sessionLines(t, agent))
}
