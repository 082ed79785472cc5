package e2e

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

const (
	// rolloutOfflineTimeout is how long a rollout waits for an offline
	// cluster before its wave skips it. The hub shows a cluster offline
	// only hubOfflineTimeout after its last heartbeat, counted from the
	// same instant, so a cluster is skipped as soon as it shows offline.
	rolloutOfflineTimeout = hubOfflineTimeout
	// revisionHistoryLimit keeps every ReplicaSet the web Deployment has
	// had (the test makes four templates), so that at the end the
	// ReplicaSets of a cluster say every template it ever ran.
	revisionHistoryLimit = 10
)

// rolloutDeployment is the web Deployment at image; a neverReady one has
// pods that never become ready and a deadline short enough for the
// Deployment to report it (a failure the rollout sees as Degraded, not
// through its own progress deadline).
func rolloutDeployment(image string, neverReady bool) string {
	labels, deadline := "{app: nginx}", ""
	if neverReady {
		labels = fmt.Sprintf("{app: nginx, %s: \"true\"}", testbed.NeverReadyLabel)
		deadline = "  progressDeadlineSeconds: 10\n"
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  namespace: web
spec:
  replicas: 2
  revisionHistoryLimit: %d
%s  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: %s
    spec:
      containers:
      - name: nginx
        image: %s
`, revisionHistoryLimit, deadline, labels, image)
}

// rolloutApplication places web on every cluster with env=prod and rolls
// its releases out canary first, then Europe behind an approval, then the
// rest, rolling back on failure. A cluster has as long to become healthy
// as the test waits for it.
func rolloutApplication(repoURL string) *droverv1.Application {
	a := webApplication(repoURL)
	a.Spec.Rollout = &droverv1.RolloutStrategy{
		OnFailure:        "rollback",
		ProgressDeadline: waitConverge.String(),
		OfflineTimeout:   rolloutOfflineTimeout.String(),
		Waves: []*droverv1.RolloutWave{
			{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}, MaxParallel: structpb.NewNumberValue(1), Soak: "5s"},
			{Name: "europe", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}}, MaxParallel: structpb.NewNumberValue(1), RequireApproval: true},
			{Name: "rest", MaxParallel: structpb.NewStringValue("50%")},
		},
	}
	return a
}

func (f *fleet) rollout(app string) (*droverv1.RolloutStatus, error) {
	var r droverv1.GetRolloutResponse
	if err := f.api.call(f.t.Context(), http.MethodGet, "/api/v1/applications/"+app+"/rollout", nil, &r); err != nil {
		return nil, err
	}
	return r.GetRollout(), nil
}

// waitRolloutPhase waits up to within for the rollout of app's commit to
// reach phase.
func (f *fleet) waitRolloutPhase(app, commit, phase string, within time.Duration) *droverv1.RolloutStatus {
	f.t.Helper()
	var r *droverv1.RolloutStatus
	testbed.Eventually(f.t, fmt.Sprintf("rollout of %.7s %s", commit, phase), within, func() (bool, string) {
		var err error
		if r, err = f.rollout(app); err != nil {
			return false, err.Error()
		}
		return r.GetCommit() == commit && r.GetPhase() == phase, fmt.Sprintf("rollout %v", r)
	})
	return r
}

// image is the image the cluster's web Deployment asks for, "" if none.
func (f *fleet) image(cluster string) string {
	d, err := f.deployment(cluster)
	if err != nil {
		return ""
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

// template is a pod template the cluster's web Deployment ran: the
// Deployment controller makes one ReplicaSet per template, and keeps it,
// scaled to zero, up to revisionHistoryLimit.
type template struct {
	revision   int
	image      string
	neverReady bool
	created    time.Time // to the second
}

func (p template) String() string {
	s := fmt.Sprintf("#%d %s created %s", p.revision, p.image, p.created.Format(time.TimeOnly))
	if p.neverReady {
		s += " never ready"
	}
	return s
}

// templates lists every template the web Deployment ran on cluster, in
// the order of its revisions (a template applied again takes a new
// number).
func (f *fleet) templates(cluster string) []template {
	f.t.Helper()
	rss, err := f.kube(cluster).AppsV1().ReplicaSets("web").List(f.t.Context(), metav1.ListOptions{LabelSelector: "app=nginx"})
	if err != nil {
		f.t.Fatalf("%s: list ReplicaSets: %v", cluster, err)
	}
	var out []template
	for _, rs := range rss.Items {
		n, err := strconv.Atoi(rs.Annotations["deployment.kubernetes.io/revision"])
		if err != nil {
			f.t.Fatalf("%s: ReplicaSet %s has no revision: %v", cluster, rs.Name, err)
		}
		_, bad := rs.Spec.Template.Labels[testbed.NeverReadyLabel]
		out = append(out, template{revision: n, image: rs.Spec.Template.Spec.Containers[0].Image, neverReady: bad, created: rs.CreationTimestamp.Time})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].revision < out[j].revision })
	return out
}

// TestFleetRollout moves releases across five real clusters: a canary
// that soaks, Europe behind an approval, then the rest; a hub killed at
// the approval gate resumes there; a release whose pods never become
// ready is rolled back from the canary before any other cluster gets it;
// an offline cluster is skipped and catches up.
func TestFleetRollout(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	m1 := testbed.ExampleApp("nginx:1.23.0")
	m1["apps/web/deployment.yaml"] = rolloutDeployment("nginx:1.23.0", false)
	c1 := repo.Commit(t, "web on nginx 1.23.0", m1)

	fl := newFleet(t, map[string]map[string]string{
		"canary": {"env": "prod", "ring": "canary", "region": "eu"},
		"eu-1":   {"env": "prod", "ring": "main", "region": "eu"},
		"eu-2":   {"env": "prod", "ring": "main", "region": "eu"},
		"us-1":   {"env": "prod", "ring": "main", "region": "us"},
		"us-2":   {"env": "prod", "ring": "main", "region": "us"},
	})
	all := []string{"canary", "eu-1", "eu-2", "us-1", "us-2"}
	others := all[1:]
	fl.do(http.MethodPost, "/api/v1/applications", rolloutApplication(repo.URL), nil)

	// The Deployments of the first release, which the others keep: their
	// ReplicaSets are their whole history only while they are the same
	// objects (a Deployment deleted takes its ReplicaSets along).
	uids := map[string]types.UID{}
	t.Run("first release everywhere", func(t *testing.T) {
		f := fl.with(t)
		for _, c := range all {
			f.waitHealthy("web", c, c1)
			d, err := f.deployment(c)
			if err != nil {
				t.Fatalf("%s: %v", c, err)
			}
			uids[c] = d.UID
		}
		f.waitRolloutPhase("web", c1, "completed", waitConverge)
	})

	c2 := ""
	t.Run("canary, soak, approval, the rest", func(t *testing.T) {
		f := fl.with(t)
		c2 = repo.Commit(t, "web on nginx 1.24.0", map[string]string{"apps/web/deployment.yaml": rolloutDeployment("nginx:1.24.0", false)})
		f.refresh("web")
		// Until Europe is approved, only the canary moves.
		stayOnC1 := func() {
			for _, c := range others {
				if img := f.image(c); img != "nginx:1.23.0" {
					t.Fatalf("%s runs %s before the approval of europe, want nginx:1.23.0", c, img)
				}
				if s, err := f.status("web", c); err == nil && s.GetCommit() != c1 {
					t.Fatalf("hub says %s is at %.7s before the approval of europe, want %.7s", c, s.GetCommit(), c1)
				}
			}
		}
		testbed.Eventually(t, "canary Healthy at c2", waitConverge, func() (bool, string) {
			stayOnC1()
			s, err := f.status("web", "canary")
			if err != nil {
				return false, err.Error()
			}
			return isSyncedAt(s, c2), fmt.Sprintf("hub says %v", s)
		})
		if img := f.image("canary"); img != "nginx:1.24.0" {
			t.Fatalf("canary runs %s, want nginx:1.24.0", img)
		}
		var r *droverv1.RolloutStatus
		testbed.Eventually(t, "europe waiting for approval", waitConverge, func() (bool, string) {
			stayOnC1()
			var err error
			if r, err = f.rollout("web"); err != nil {
				return false, err.Error()
			}
			return r.GetPhase() == "waiting-approval", fmt.Sprintf("rollout %v", r)
		})
		if !strings.Contains(r.GetWaiting(), "approval") || !strings.Contains(r.GetWaiting(), "europe") {
			t.Fatalf("waiting = %q, want the approval of europe", r.GetWaiting())
		}
		stayOnC1()

		// A hub killed at the gate resumes there: same rollout, same
		// pins, still waiting, nothing sent to Europe or the US. Every
		// agent reconnects and acknowledges what the restarted hub wants
		// it to run, and that is still the first release.
		before := r.GetId()
		killed := time.Now()
		f.killHub()
		f.restartHub()
		testbed.Eventually(t, "the restarted hub back at the gate", waitConverge, func() (bool, string) {
			stayOnC1()
			var err error
			if r, err = f.rollout("web"); err != nil {
				return false, err.Error()
			}
			return r.GetPhase() == "waiting-approval" && r.GetId() == before, fmt.Sprintf("rollout %v", r)
		})
		for _, c := range all {
			f.waitConnectedAfter(c, killed)
		}
		stayOnC1()

		promoted := time.Now()
		f.do(http.MethodPost, "/api/v1/applications/web/rollout/promote", nil, nil)
		for _, c := range others {
			f.waitHealthy("web", c, c2)
			if img := f.image(c); img != "nginx:1.24.0" {
				t.Fatalf("%s runs %s, want nginx:1.24.0", c, img)
			}
		}
		f.waitRolloutPhase("web", c2, "completed", waitConverge)
		for _, c := range all {
			f.waitHealthy("web", c, c2)
		}
		// What the clusters record: each of the others ran the first
		// release, then the second, made no earlier than the approval
		// (ReplicaSets are timed to the second).
		for _, c := range others {
			hist := f.templates(c)
			if len(hist) != 2 || hist[0].image != "nginx:1.23.0" || hist[1].image != "nginx:1.24.0" {
				t.Errorf("%s ran %v: want nginx:1.23.0, then nginx:1.24.0", c, hist)
				continue
			}
			if hist[1].created.Before(promoted.Truncate(time.Second)) {
				t.Errorf("%s got nginx:1.24.0 at %s, before the approval of europe at %s", c, hist[1].created.Format(time.TimeOnly), promoted.Format(time.TimeOnly))
			}
		}
	})

	t.Run("a release that never becomes ready is rolled back from the canary", func(t *testing.T) {
		f := fl.with(t)
		c3 := repo.Commit(t, "web on nginx 1.25.0, never ready", map[string]string{"apps/web/deployment.yaml": rolloutDeployment("nginx:1.25.0", true)})
		f.refresh("web")
		// Every poll also checks that no other cluster has c3 now; the
		// clusters' ReplicaSets say at the end that none ever had it.
		neverElsewhere := func() {
			for _, c := range others {
				d, err := f.deployment(c)
				if err != nil {
					t.Fatalf("get deployment on %s: %v", c, err)
				}
				if _, ok := d.Spec.Template.Labels[testbed.NeverReadyLabel]; ok || d.Spec.Template.Spec.Containers[0].Image != "nginx:1.24.0" {
					t.Fatalf("%s got the bad release: template %v", c, d.Spec.Template)
				}
				if s, err := f.status("web", c); err == nil && s.GetCommit() == c3 {
					t.Fatalf("hub says %s is at the bad release: %v", c, s)
				}
			}
		}
		testbed.Eventually(t, "the canary applies c3", waitConverge, func() (bool, string) {
			neverElsewhere()
			d, err := f.deployment("canary")
			if err != nil {
				return false, err.Error()
			}
			_, ok := d.Spec.Template.Labels[testbed.NeverReadyLabel]
			return ok, fmt.Sprintf("canary template %v", d.Spec.Template.Labels)
		})
		var r *droverv1.RolloutStatus
		testbed.Eventually(t, "the rollout of c3 rolled back", waitConverge, func() (bool, string) {
			neverElsewhere()
			if s, err := f.status("web", "canary"); err == nil && s.GetCommit() == c3 && s.GetHealth() == droverv1.Health_HEALTH_HEALTHY {
				t.Fatalf("the canary is Healthy at the never-ready release: %v", s)
			}
			var err error
			if r, err = f.rollout("web"); err != nil {
				return false, err.Error()
			}
			return r.GetCommit() == c3 && r.GetPhase() == "rolled-back", fmt.Sprintf("rollout %v", r)
		})
		if r.GetPreviousCommit() != c2 {
			t.Fatalf("rolled back to %.7s, want %.7s", r.GetPreviousCommit(), c2)
		}
		testbed.Eventually(t, "the canary back on c2", waitConverge, func() (bool, string) {
			neverElsewhere()
			d, err := f.deployment("canary")
			if err != nil {
				return false, err.Error()
			}
			_, bad := d.Spec.Template.Labels[testbed.NeverReadyLabel]
			s, err := f.status("web", "canary")
			if err != nil {
				return false, err.Error()
			}
			ok := !bad && d.Spec.Template.Spec.Containers[0].Image == "nginx:1.24.0" && isSyncedAt(s, c2)
			return ok, fmt.Sprintf("canary template %v; hub says %v", d.Spec.Template, s)
		})
		neverElsewhere()

		// The whole history: the canary's ReplicaSets show the bad
		// template (so they would show it anywhere it went); the others'
		// show only the two good ones, on the Deployment they have had
		// from the start.
		if hist := f.templates("canary"); !hasNeverReady(hist) {
			t.Errorf("the canary's ReplicaSets show no never-ready template: %v", hist)
		}
		for _, c := range others {
			d, err := f.deployment(c)
			if err != nil {
				t.Fatalf("%s: %v", c, err)
			}
			if d.UID != uids[c] {
				t.Errorf("%s: the web Deployment was replaced (uid %s, was %s): its ReplicaSets are not its whole history", c, d.UID, uids[c])
			}
			hist := f.templates(c)
			if hasNeverReady(hist) || len(hist) != 2 || hist[0].image != "nginx:1.23.0" || hist[1].image != "nginx:1.24.0" {
				t.Errorf("%s ran %v: want nginx:1.23.0, then nginx:1.24.0, never the never-ready nginx:1.25.0", c, hist)
			}
		}
	})

	t.Run("an offline cluster is skipped and catches up", func(t *testing.T) {
		f := fl.with(t)
		f.agents["eu-2"].Kill(t)
		c4 := repo.Commit(t, "web on nginx 1.26.0", map[string]string{"apps/web/deployment.yaml": rolloutDeployment("nginx:1.26.0", false)})
		f.refresh("web")
		f.waitRolloutPhase("web", c4, "waiting-approval", waitConverge)
		f.do(http.MethodPost, "/api/v1/applications/web/rollout/promote", nil, nil)
		// eu-2 shows offline hubOfflineTimeout after its last heartbeat,
		// and is skipped then.
		r := f.waitRolloutPhase("web", c4, "completed", waitConverge+hubOfflineTimeout+rolloutOfflineTimeout)
		skipped := false
		for _, c := range r.GetClusters() {
			if c.GetName() == "eu-2" {
				skipped = c.GetPhase() == "skipped"
			}
		}
		if !skipped {
			t.Fatalf("eu-2 not skipped: rollout %v", r)
		}
		for _, c := range []string{"canary", "eu-1", "us-1", "us-2"} {
			f.waitHealthy("web", c, c4)
		}
		if img := f.image("eu-2"); img != "nginx:1.24.0" {
			t.Fatalf("eu-2 runs %s while its agent is down, want nginx:1.24.0", img)
		}
		f.restartAgent("eu-2")
		f.waitHealthy("web", "eu-2", c4)
		if img := f.image("eu-2"); img != "nginx:1.26.0" {
			t.Fatalf("eu-2 runs %s after catching up, want nginx:1.26.0", img)
		}
	})
}

func hasNeverReady(hist []template) bool {
	for _, p := range hist {
		if p.neverReady {
			return true
		}
	}
	return false
}
