// Package replicas tests several drover-hub replicas on one PostgreSQL, as
// real processes joined by gossip, with real agents on real clusters from
// the test bed: that every replica serves the same fleet, that a replica
// killed in the middle of a rollout loses nothing and advances nothing
// twice, and that a gossip split never gives a job two actors.
package replicas

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/ownership"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

const (
	agentHeartbeat = 2 * time.Second
	offlineTimeout = 30 * time.Second
	// within bounds every wait: how long a broken build takes to say so.
	within = 2 * time.Minute
)

// fleet is three replicas, clusters with agents, and a Git repository.
type fleet struct {
	t        *testing.T
	db       string
	reps     *testbed.Replicas
	repo     *testbed.Repo
	clusters map[string]*testbed.Cluster
	agents   map[string]*testbed.AgentProcess
}

// newFleet starts three replicas and an agent per cluster. With failover,
// each agent is given every replica (it starts at one at random and moves
// on when it loses it); without, only its home replica, cluster i's being
// replica i mod 3, so the clusters are spread over the replicas for sure.
func newFleet(t *testing.T, labels map[string]map[string]string, failover bool) *fleet {
	t.Helper()
	return newFleetOn(t, testbed.Postgres(t), labels, failover)
}

// newFleetOn is newFleet on the database at db.
func newFleetOn(t *testing.T, db string, labels map[string]map[string]string, failover bool) *fleet {
	t.Helper()
	git := testbed.GitServer(t)
	f := &fleet{t: t, db: db, repo: git.CreateRepo(t, "fleet"), clusters: map[string]*testbed.Cluster{}, agents: map[string]*testbed.AgentProcess{}}
	f.reps = testbed.StartReplicas(t, 3, testbed.HubOptions{
		DatabaseURL: f.db,
		Hostnames:   []string{"127.0.0.1"},
		Args:        []string{"--poll-interval", "5s", "--offline-timeout", offlineTimeout.String()},
	})
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range labels {
			if !yield(n) {
				return
			}
		}
	})
	for i, c := range testbed.ClustersWithOptions(t, testbed.Options{Names: names}) {
		home := i % len(f.reps.Hubs)
		addrs := []string{f.reps.Hubs[home].AgentAddr}
		if failover {
			addrs = strings.Split(f.reps.AgentAddrs(), ",")
		}
		f.clusters[c.Name] = c
		f.agents[c.Name] = testbed.StartAgent(t, testbed.AgentOptions{
			Name:       c.Name,
			Kubeconfig: c.Kubeconfig,
			HubAddr:    strings.Join(addrs, ","),
			HubCAFile:  f.reps.CAFile,
			JoinToken:  f.reps.Hubs[home].JoinToken(t, labels[c.Name]),
			Args:       []string{"--heartbeat", agentHeartbeat.String(), "--backoff-max", agentHeartbeat.String()},
		})
	}
	return f
}

func (f *fleet) hub(name string) *testbed.HubProcess {
	for i, h := range f.reps.Hubs {
		if fmt.Sprintf("hub-%d", i) == name {
			return h
		}
	}
	f.t.Fatalf("no replica %s", name)
	return nil
}

// api calls replica's JSON API; an error fails the test.
func (f *fleet) api(h *testbed.HubProcess, method, path string, in, out proto.Message) {
	f.t.Helper()
	if err := h.API(f.t.Context(), method, path, in, out); err != nil {
		f.t.Fatal(err)
	}
}

// running is the replicas not killed or stopped.
func (f *fleet) running() []*testbed.HubProcess {
	var out []*testbed.HubProcess
	for _, h := range f.reps.Hubs {
		if p := h.Process(); p != nil && !p.Exited() {
			out = append(out, h)
		}
	}
	return out
}

// image is the image of the web Deployment on cluster, "" when none.
func (f *fleet) image(cluster string) string {
	d, err := f.clusters[cluster].Client(f.t).AppsV1().Deployments("web").Get(f.t.Context(), "nginx", metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

// waitSynced waits until every running replica's API says app is synced
// and healthy at commit on each of clusters.
func (f *fleet) waitSynced(app, commit string, clusters ...string) {
	f.t.Helper()
	for _, h := range f.running() {
		for _, c := range clusters {
			testbed.Eventually(f.t, fmt.Sprintf("%s healthy at %.7s on %s, as %s says", app, commit, c, h.HTTPAddr), within, func() (bool, string) {
				st, err := h.Status(f.t.Context(), app, c)
				if err != nil {
					return false, err.Error()
				}
				return st.GetCommit() == commit && st.GetSync() == droverv1.SyncState_SYNC_STATE_SYNCED && st.GetHealth() == droverv1.Health_HEALTH_HEALTHY, fmt.Sprint(st)
			})
		}
	}
}

func webApplication(repoURL string) *droverv1.Application {
	return &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repoURL, Ref: "main", Path: "apps/web"},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
	}}
}

// canaryThenRest rolls releases out to the cluster labelled ring=canary,
// soaks for soak, then to the rest.
func canaryThenRest(soak string) *droverv1.RolloutStrategy {
	return &droverv1.RolloutStrategy{
		ProgressDeadline: within.String(),
		Waves: []*droverv1.RolloutWave{
			{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}, Soak: soak},
			{Name: "rest"},
		},
	}
}

func deploymentAt(image string) map[string]string {
	return map[string]string{"apps/web/deployment.yaml": testbed.ExampleApp(image)["apps/web/deployment.yaml"]}
}

// TestReplicasServeOneFleet: an application made through one replica
// reaches the agents of every replica, and every replica's API says the
// same about it.
func TestReplicasServeOneFleet(t *testing.T) {
	f := newFleet(t, map[string]map[string]string{
		"c1": {"env": "prod"}, "c2": {"env": "prod"}, "c3": {"env": "prod"}, "c4": {"env": "prod"},
	}, false)
	c1 := f.repo.Commit(t, "web on nginx 1.23.0", testbed.ExampleApp("nginx:1.23.0"))

	// Each cluster is held by its home replica.
	for i, name := range []string{"c1", "c2", "c3", "c4"} {
		want := fmt.Sprintf("hub-%d", i%3)
		testbed.Eventually(t, name+" connected to "+want, within, func() (bool, string) {
			c, err := f.reps.Hubs[0].Cluster(t.Context(), name)
			return err == nil && c.GetHubReplica() == want, fmt.Sprint(c, err)
		})
	}

	// Made through hub-0; c2 and c3 are held by hub-1 and hub-2.
	f.api(f.reps.Hubs[0], http.MethodPost, "/api/v1/applications", webApplication(f.repo.URL), nil)
	f.waitSynced("web", c1, "c1", "c2", "c3", "c4")

	// Changed through hub-2: the new commit reaches every cluster too.
	c2 := f.repo.Commit(t, "web on nginx 1.24.0", deploymentAt("nginx:1.24.0"))
	f.api(f.reps.Hubs[2], http.MethodPost, "/api/v1/applications/web/refresh", nil, nil)
	f.waitSynced("web", c2, "c1", "c2", "c3", "c4")
	for _, c := range []string{"c1", "c2", "c3", "c4"} {
		if img := f.image(c); img != "nginx:1.24.0" {
			t.Errorf("%s runs %q, want nginx:1.24.0", c, img)
		}
	}

	// Every replica's API lists the same clusters, applications and
	// statuses.
	type view struct{ clusters, apps string }
	var views []view
	for _, h := range f.reps.Hubs {
		var cl droverv1.ListClustersResponse
		f.api(h, http.MethodGet, "/api/v1/clusters", nil, &cl)
		var cs []string
		for _, c := range cl.GetClusters() {
			cs = append(cs, fmt.Sprintf("%s@%s", c.GetName(), c.GetHubReplica()))
		}
		sort.Strings(cs)
		var app droverv1.GetApplicationResponse
		f.api(h, http.MethodGet, "/api/v1/applications/web", nil, &app)
		var as []string
		for _, s := range app.GetStatuses() {
			as = append(as, fmt.Sprintf("%s:%.7s:%s:%s", s.GetCluster(), s.GetCommit(), s.GetSync().Name(), s.GetHealth().Name()))
		}
		sort.Strings(as)
		views = append(views, view{strings.Join(cs, " "), strings.Join(as, " ")})
	}
	for i, v := range views[1:] {
		if v != views[0] {
			t.Errorf("hub-%d says %+v; hub-0 says %+v", i+1, v, views[0])
		}
	}

	// A dashboard open on hub-2 is told at once of a change made through
	// hub-0 (well before its periodic refresh, every 30 s).
	live := f.liveStream(f.reps.Hubs[2])
	f.api(f.reps.Hubs[0], http.MethodPatch, "/api/v1/clusters/c1/labels", &droverv1.UpdateClusterLabelsRequest{Name: "c1", Set: map[string]string{"tier": "gold"}}, nil)
	select {
	case <-live:
	case <-time.After(15 * time.Second):
		t.Fatal("the dashboard on hub-2 was not told of a change made through hub-0")
	}
}

// liveStream signs in to replica h's dashboard and opens its live update
// stream; each "change" it sends arrives on the channel.
func (f *fleet) liveStream(h *testbed.HubProcess) <-chan struct{} {
	f.t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		f.t.Fatal(err)
	}
	client := &http.Client{Jar: jar}
	base := "http://" + h.HTTPAddr
	resp, err := client.Get(base + "/login")
	if err != nil {
		f.t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(page)
	if m == nil {
		f.t.Fatalf("no sign-in form on %s/login", base)
	}
	resp, err = client.PostForm(base+"/login", url.Values{"csrf": {string(m[1])}, "token": {h.AdminToken}})
	if err != nil {
		f.t.Fatal(err)
	}
	resp.Body.Close()
	req, err := http.NewRequestWithContext(f.t.Context(), http.MethodGet, base+"/live", nil)
	if err != nil {
		f.t.Fatal(err)
	}
	resp, err = client.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		f.t.Fatalf("GET %s/live: %v %v", base, resp.Status, err)
	}
	changes := make(chan struct{}, 16)
	subscribed := make(chan struct{})
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			switch sc.Text() {
			case ": live":
				close(subscribed)
			case "event: change":
				select {
				case changes <- struct{}{}:
				default:
				}
			}
		}
	}()
	select {
	case <-subscribed:
	case <-time.After(within):
		f.t.Fatalf("%s/live sent nothing", base)
	}
	return changes
}

// TestKilledRolloutOwner kills, with SIGKILL, the replica that owns a
// running rollout, first during a soak and then at an approval gate: the
// rollout carries on from another replica, each wave starts and completes
// exactly once, the gated wave gets nothing until it is promoted, and the
// killed replicas' agents are served by the others without losing their
// statuses.
func TestKilledRolloutOwner(t *testing.T) {
	f := newFleet(t, map[string]map[string]string{
		"canary": {"env": "prod", "ring": "canary"},
		"eu":     {"env": "prod", "region": "eu"},
		"rest-1": {"env": "prod"},
		"rest-2": {"env": "prod"},
	}, true)
	c1 := f.repo.Commit(t, "web on nginx 1.23.0", testbed.ExampleApp("nginx:1.23.0"))
	app := webApplication(f.repo.URL)
	app.Spec.Rollout = &droverv1.RolloutStrategy{
		ProgressDeadline: within.String(),
		OfflineTimeout:   offlineTimeout.String(),
		Waves: []*droverv1.RolloutWave{
			{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}, MaxParallel: structpb.NewNumberValue(1), Soak: "20s"},
			{Name: "europe", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}}, MaxParallel: structpb.NewNumberValue(1), RequireApproval: true},
			{Name: "rest", MaxParallel: structpb.NewStringValue("50%")},
		},
	}
	f.api(f.reps.Hubs[0], http.MethodPost, "/api/v1/applications", app, nil)
	f.waitSynced("web", c1, "canary", "eu", "rest-1", "rest-2")

	// The eu cluster must not get the new release before it is promoted:
	// watched from now until the promotion.
	var (
		promoted   = make(chan struct{})
		earlyMu    sync.Mutex
		earlyImage string
	)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-promoted:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if img := f.image("eu"); img != "" && img != "nginx:1.23.0" {
				earlyMu.Lock()
				earlyImage = img
				earlyMu.Unlock()
			}
		}
	}()

	c2 := f.repo.Commit(t, "web on nginx 1.24.0", deploymentAt("nginx:1.24.0"))
	f.api(f.reps.Hubs[1], http.MethodPost, "/api/v1/applications/web/refresh", nil, nil)

	job := ownership.RolloutJob("web")
	members := []string{"hub-0", "hub-1", "hub-2"}
	owner := ownership.Owner(job, members)

	// During the canary's soak, kill the owner.
	waitWave(t, f.running()[0], c2, "canary", "soaking")
	t.Logf("killing %s, the rollout's owner, during the canary's soak", owner)
	killed := time.Now()
	f.hub(owner).Kill(t)
	members = slices.DeleteFunc(members, func(m string) bool { return m == owner })
	f.logTakeover(job, owner, killed)

	// Another replica carries on: the canary completes and the europe wave
	// waits for approval.
	waitWave(t, f.running()[0], c2, "europe", "waiting-approval")
	next := ownership.Owner(job, members)
	t.Logf("killing %s, the rollout's owner now, at the approval gate", next)
	killed = time.Now()
	f.hub(next).Kill(t)
	f.logTakeover(job, next, killed)

	// The last replica holds the gate: eu keeps its release while it stays
	// unpromoted, and every agent is served by the last replica.
	last := f.running()
	if len(last) != 1 {
		t.Fatalf("%d replicas running, want 1", len(last))
	}
	lastName := slices.DeleteFunc(members, func(m string) bool { return m == next })[0]
	for _, c := range []string{"canary", "eu", "rest-1", "rest-2"} {
		testbed.Eventually(t, c+" served by the last replica", within, func() (bool, string) {
			cl, err := last[0].Cluster(t.Context(), c)
			return err == nil && cl.GetOnline() && cl.GetHubReplica() == lastName, fmt.Sprint(cl, err)
		})
	}
	time.Sleep(5 * time.Second) // a gate that leaks lets eu move now; the watcher above sees it
	if img := f.image("eu"); img != "nginx:1.23.0" {
		t.Fatalf("eu runs %q before the europe wave was promoted", img)
	}

	// The killed replicas come back; the promotion goes through one of
	// them.
	f.hub(owner).Restart(t)
	f.hub(next).Restart(t)
	close(promoted)
	<-watchDone
	earlyMu.Lock()
	if earlyImage != "" {
		t.Errorf("eu ran %q before the europe wave was promoted", earlyImage)
	}
	earlyMu.Unlock()
	f.api(f.hub(owner), http.MethodPost, "/api/v1/applications/web/rollout/promote", nil, nil)
	waitPhase(t, f.hub(next), "web", c2, "completed")
	f.waitSynced("web", c2, "canary", "eu", "rest-1", "rest-2")

	// The event log: every step of every wave recorded exactly once, by
	// whichever replica made it.
	var evs droverv1.ListEventsResponse
	f.api(f.reps.Hubs[0], http.MethodGet, "/api/v1/events?application=web&page_size=500", nil, &evs)
	count := waveEvents(evs.GetEvents(), c2)
	want := map[string]int{
		"rollout.wave.started canary": 1, "rollout.wave.soaking canary": 1, "rollout.wave.completed canary": 1,
		"rollout.wave.waiting-approval europe": 1, "rollout.wave.approved europe": 1, "rollout.wave.completed europe": 1,
		"rollout.wave.started rest": 1, "rollout.wave.completed rest": 1,
	}
	if !maps.Equal(count, want) {
		t.Errorf("wave events of the rollout of %.7s: %v, want each once: %v", c2, count, want)
	}
}

// waveEvents counts the wave events of the rollout of commit by kind and
// wave, from events listed newest first.
func waveEvents(evs []*droverv1.Event, commit string) map[string]int {
	count := map[string]int{}
	in := false
	for _, e := range slices.Backward(evs) {
		if e.GetKind() == "rollout.started" {
			in = strings.Contains(e.GetMessage(), commit[:7])
		}
		if in && strings.HasPrefix(e.GetKind(), "rollout.wave.") {
			count[e.GetKind()+" "+waveOf(e.GetMessage())]++
		}
	}
	return count
}

// logTakeover waits until another replica holds the lease of job that
// killed held, and logs how long after the kill that was: a figure, not a
// claim (the README gives it).
func (f *fleet) logTakeover(job, killed string, at time.Time) {
	f.t.Helper()
	st, err := store.Open(f.t.Context(), f.db, testlog.New(f.t))
	if err != nil {
		f.t.Fatal(err)
	}
	defer st.Close()
	testbed.Eventually(f.t, job+" taken over from "+killed, within, func() (bool, string) {
		ls, err := st.ListLeases(f.t.Context())
		if err != nil {
			return false, err.Error()
		}
		for _, l := range ls {
			if l.Job == job {
				return l.Holder.Replica != killed && l.Expires.After(time.Now()), fmt.Sprintf("held by %s", l.Holder.Replica)
			}
		}
		return false, "no lease"
	})
	f.t.Logf("figure: %s taken over %.1f s after its owner %s was killed", job, time.Since(at).Seconds(), killed)
}

// waveOf finds the wave a rollout event's message names.
func waveOf(msg string) string {
	for _, w := range []string{"canary", "europe", "rest"} {
		if strings.Contains(msg, w) {
			return w
		}
	}
	return "?"
}

func waitWave(t *testing.T, h *testbed.HubProcess, commit, wave, phase string) {
	t.Helper()
	testbed.Eventually(t, fmt.Sprintf("wave %s %s", wave, phase), within, func() (bool, string) {
		r, err := h.Rollout(context.Background(), "web")
		if err != nil {
			return false, err.Error()
		}
		for _, w := range r.GetWaves() {
			if w.GetName() == wave {
				return r.GetCommit() == commit && w.GetPhase() == phase, fmt.Sprint(r)
			}
		}
		return false, fmt.Sprint(r)
	})
}

func waitPhase(t *testing.T, h *testbed.HubProcess, app, commit, phase string) {
	t.Helper()
	testbed.Eventually(t, app+" rollout "+phase, within, func() (bool, string) {
		r, err := h.Rollout(context.Background(), app)
		if err != nil {
			return false, err.Error()
		}
		return r.GetCommit() == commit && r.GetPhase() == phase, fmt.Sprint(r)
	})
}

// TestGossipSplit cuts gossip between the replicas while rollouts run, so
// that each replica sees itself alone and wants every job: from the
// database, no job's lease changes hands during the cut, and from the event
// log, each application's rollout is advanced by one replica; when gossip
// heals, ownership converges to what the hash says, and no wave of any
// rollout started or completed twice.
func TestGossipSplit(t *testing.T) {
	f := newFleet(t, map[string]map[string]string{
		"canary": {"env": "prod", "ring": "canary"},
		"rest":   {"env": "prod"},
	}, true)
	apps := []string{"web-a", "web-b", "web-c"}
	files := map[string]string{}
	for _, a := range apps {
		maps.Copy(files, testbed.ExampleAppIn(a, "nginx:1.23.0"))
	}
	f.repo.Commit(t, "three apps on nginx 1.23.0", files)
	for _, a := range apps {
		app := webApplication(f.repo.URL)
		app.Name = a
		app.Spec.Source.Path = "apps/" + a
		app.Spec.Rollout = canaryThenRest("10s")
		f.api(f.reps.Hubs[0], http.MethodPost, "/api/v1/applications", app, nil)
	}
	first := f.repo.Head(t)
	for _, a := range apps {
		f.waitSynced(a, first, "canary", "rest")
	}

	st, err := store.Open(t.Context(), f.db, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	leases := func() map[string]store.Lease {
		ls, err := st.ListLeases(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]store.Lease{}
		for _, l := range ls {
			out[l.Job] = l
		}
		return out
	}

	// New releases for all three, then the cut, while their canaries soak.
	next := map[string]string{}
	for _, a := range apps {
		next["apps/"+a+"/deployment.yaml"] = testbed.ExampleAppIn(a, "nginx:1.24.0")["apps/"+a+"/deployment.yaml"]
	}
	second := f.repo.Commit(t, "three apps on nginx 1.24.0", next)
	for _, a := range apps {
		f.api(f.reps.Hubs[0], http.MethodPost, "/api/v1/applications/"+a+"/refresh", nil, nil)
	}
	before := leases()
	cutAt := time.Now()
	f.reps.CutGossip(t)
	// Long enough for every replica to declare the others dead (about 5
	// s) and for their leases to lapse, were they not renewed.
	deadline := time.Now().Add(25 * time.Second)
	for time.Now().Before(deadline) {
		for job, l := range leases() {
			b, ok := before[job]
			if ok && (l.Holder != b.Holder || l.Epoch != b.Epoch) {
				t.Fatalf("during the gossip cut, %s moved from %s (epoch %d) to %s (epoch %d)", job, b.Holder.Replica, b.Epoch, l.Holder.Replica, l.Epoch)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	healAt := time.Now()
	f.reps.HealGossip(t)

	// The rollouts ran on during the cut, each advanced by one replica.
	for _, a := range apps {
		waitPhase(t, f.reps.Hubs[1], a, second, "completed")
		var evs droverv1.ListEventsResponse
		f.api(f.reps.Hubs[2], http.MethodGet, "/api/v1/events?application="+a+"&kind=rollout.&page_size=500", nil, &evs)
		actors := map[string]int{}
		for _, e := range evs.GetEvents() {
			if at := e.GetTime().AsTime(); at.After(cutAt) && at.Before(healAt) {
				actors[e.GetHubReplica()]++
			}
		}
		if len(actors) != 1 {
			t.Errorf("%s: rollout events during the cut recorded by %v, want one replica", a, actors)
		}
		want := map[string]int{
			"rollout.wave.started canary": 1, "rollout.wave.soaking canary": 1, "rollout.wave.completed canary": 1,
			"rollout.wave.started rest": 1, "rollout.wave.completed rest": 1,
		}
		if got := waveEvents(evs.GetEvents(), second); !maps.Equal(got, want) {
			t.Errorf("%s: wave events of the rollout of %.7s: %v, want each once: %v", a, second, got, want)
		}
	}

	// Healed: every job's lease goes to the replica the hash names.
	members := []string{"hub-0", "hub-1", "hub-2"}
	testbed.Eventually(t, "ownership as the hash says", within, func() (bool, string) {
		var wrong []string
		for job, l := range leases() {
			if want := ownership.Owner(job, members); l.Holder.Replica != want || !l.Expires.After(time.Now()) {
				wrong = append(wrong, fmt.Sprintf("%s held by %s, want %s", job, l.Holder.Replica, want))
			}
		}
		return len(wrong) == 0, strings.Join(wrong, "; ")
	})
}

// TestReplicasSurvivePostgresRestart: every replica's database connections
// are terminated (as a switchover does) and then the server restarts, in the
// middle of a rollout; every replica stays up, the rollout completes, and
// a change made through any replica afterwards still reaches every agent.
func TestReplicasSurvivePostgresRestart(t *testing.T) {
	pg := testbed.PrivatePostgres(t)
	f := newFleetOn(t, pg.URL, map[string]map[string]string{
		"canary": {"env": "prod", "ring": "canary"},
		"rest":   {"env": "prod"},
	}, true)
	c1 := f.repo.Commit(t, "web on nginx 1.23.0", testbed.ExampleApp("nginx:1.23.0"))
	app := webApplication(f.repo.URL)
	app.Spec.Rollout = canaryThenRest("15s")
	f.api(f.reps.Hubs[0], http.MethodPost, "/api/v1/applications", app, nil)
	f.waitSynced("web", c1, "canary", "rest")

	c2 := f.repo.Commit(t, "web on nginx 1.24.0", deploymentAt("nginx:1.24.0"))
	f.api(f.reps.Hubs[1], http.MethodPost, "/api/v1/applications/web/refresh", nil, nil)
	waitWave(t, f.reps.Hubs[2], c2, "canary", "soaking")

	// A switchover: every connection of every replica terminated.
	conn, err := pgx.Connect(t.Context(), pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	var terminated int
	if err := conn.QueryRow(t.Context(), `
		SELECT count(*) FROM (
			SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE application_name LIKE 'drover-hub%' AND pid <> pg_backend_pid()) AS t`).Scan(&terminated); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	if terminated < 6 { // each replica's pool and its listener at least
		t.Fatalf("terminated %d connections of the replicas, want at least 6", terminated)
	}
	// Then the server restarts.
	pg.Stop(t)
	time.Sleep(3 * time.Second) // down long enough for every replica to notice
	pg.Start(t)

	waitPhase(t, f.reps.Hubs[0], "web", c2, "completed")
	f.waitSynced("web", c2, "canary", "rest")
	c3 := f.repo.Commit(t, "web on nginx 1.25.0", deploymentAt("nginx:1.25.0"))
	f.api(f.reps.Hubs[2], http.MethodPost, "/api/v1/applications/web/refresh", nil, nil)
	waitPhase(t, f.reps.Hubs[1], "web", c3, "completed")
	f.waitSynced("web", c3, "canary", "rest")
	for i, h := range f.reps.Hubs {
		if p := h.Process(); p.Exited() {
			t.Errorf("hub-%d exited: %v", i, p.ExitError())
		}
	}
}
